"""Fits to data with missing entries (NaN, missing at random): `jaxem.fit(..., missing="em")`.

The missing entries are latent variables of EM like the component labels (EM_NOTES, "Scope
the notes name"): the E-step takes expectations over them given each row's observed
entries (jaxem.models.conditional_gaussian), the statistics are the expected complete-data
moments, the model's closed-form M-step is unchanged, and the objective is the
log-likelihood of the observed entries.

`MissingValues` wraps a model with Gaussian components (GaussianMixture of any covariance
type, FactorAnalysis, PPCA, MixtureOfFactorAnalyzers: those with `gaussian_components` and
`statistics_from_moments`)
into a jaxem.protocol.Model, so the engine (restarts, chunking, acceleration, implicit
gradients, progress) runs it unchanged. Complete rows keep the base model's own E-step
(the GEMM path of a Gaussian mixture); only incomplete rows take the conditional one.
What it factorises (the W x W block of the precision on the missing columns, W the most
entries any row misses) depends only on the row's missingness pattern, so on concrete data
`prepare` orders the rows complete first, then the incomplete ones by how many entries they
miss and by pattern. When patterns have many rows each, their rows are padded into blocks
of one pattern (weight-0 copies) and the E-step is two batched GEMMs over blocks with
per-pattern coefficients (conditional_gaussian.blocked_e_step), or, for patterns of fewer
rows than that E-step's O(K D^2) work per pattern pays for, the complete-data GEMMs shared by
all patterns with rank-W corrections per block (low_rank_e_step; `choose_blocks`); when padding and per-block
overhead would cost too much more than the rows (many patterns of very few rows, as at
larger D), the rows are grouped by how many entries W they miss and the same choice is made
per group: blocks of one pattern, or a per-row E-step of width W, one GEMM plus
O(K (D + W^2)) per row (conditional_gaussian.width_e_step). (At D = 16 with 10% missing the
rows missing one or two entries have few patterns of many rows and run in blocks with
per-pattern coefficients; those missing three (560 patterns of ~25 rows) in low-rank blocks;
those missing more have patterns of a few rows each and run per row.) Either way each pattern's
block is factorised once. For diagonal covariances no pattern matters (missing coordinates
are independent of the observed ones given the component) and it is one GEMM each way
(diagonal_e_step).
Inside a user's jit the patterns are unknown: every row takes the per-row conditional
E-step with W = D. With an explicit chunk_size, a chunk of complete rows takes the base
E-step and any other chunk the per-row one (one `lax.cond` per chunk).
Streamed fits (jaxem.stream, `streamed`) see the data one block at a time, so neither can
the patterns of the whole data be known nor the rows of the whole data be ordered:
`StreamedMissingValues` regroups each unchunked block's rows on the host (`arranged`: by
how many entries they miss, each group padded to a capacity that grows when a block needs
more) and runs each group as jaxem.fit's width groups: in blocks of one pattern (blocked or
low-rank, `choose_blocks` on the first block that has the width) against the static table of
every pattern of that width when there are few enough (`width_patterns`), else on
`width_e_step` with a table of the group's distinct patterns in the block. A chunk of a chunked block is run as such a chunk
above, in one program compiled for the chunk's shape: with few features every possible
pattern is tabulated (2^D of them, a row's index its bit field), so the blocks are
factorised once per pattern, else per row with W the most entries any row of the stream
has missed so far (`for_block`: the program is compiled again when a block needs more
slots). Diagonal covariances take `diagonal_e_step` as above. The checks on whole columns are
made over each pass (`check_block_rows`, `validation.check_observed_columns`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from jaxem import validation
from jaxem.models import conditional_gaussian as cg
from jaxem.models.mixture import weighted_posterior
from jaxem.protocol import Model
from jaxem.pytrees import register_model

MISSING_METHODS = (None, "em")


class SplitRows(NamedTuple):
    """The whole data set, precomputed: complete rows in the base model's form (None when
    there are none) and the incomplete rows (None when there are none)."""

    complete: Any
    incomplete: cg.PartialRows | None


class ChunkRows(NamedTuple):
    """A chunk (or all chunks, with a leading n_chunks axis), in both forms."""

    complete: Any
    rows: cg.PartialRows


class MissingFactors(NamedTuple):
    """Params with the base model's per-E-step work and the Gaussian components."""

    params: Any
    base: Any
    components: cg.GaussianComponents


def check_missing(missing: Any) -> Any:
    return validation.check_choice(missing, "missing", MISSING_METHODS)


@register_model
@dataclasses.dataclass(frozen=True)
class MissingValues(Model):
    """`base` fitted with missing entries as latent variables (module docstring).

    base: the model; n_complete: how many leading rows of the data are complete (static);
    width: W, the slots per row for missing columns (static); patterns: the distinct sets
    of missing columns, a tuple of tuples (static) starting with the empty one, whose blocks
    the E-step factorises once per pattern; () when unknown (traced data): once per row.
    block_size: B > 0 when the incomplete rows come in consecutive groups of one pattern,
    each a multiple of B rows, for conditional_gaussian.blocked_e_step (`prepare`).
    groups: ((W_g, n_g), ...) when the incomplete rows come as consecutive groups of n_g
    rows that each miss exactly W_g entries, widths increasing, and `patterns` is sorted
    the same way (`prepare`): each group's E-step has its own pattern table of width W_g
    (`width_groups`, conditional_gaussian.width_e_step), so no row pays for the widest
    pattern; (): every incomplete row on the conditional E-step with `width` slots.
    group_blocks: per entry of groups, B_g > 0 when that group's patterns are each padded
    to a multiple of B_g rows and run as blocks of one pattern (blocked_e_step) rather than
    per row (0); (): every group per row.
    low_rank: per entry of groups, True when that group's blocks take
    conditional_gaussian.low_rank_e_step rather than blocked_e_step (`choose_blocks`);
    (): none does (the blocks of `block_size` never do).
    """

    base: Any
    n_complete: int = dataclasses.field(default=0, metadata=dict(static=True))
    width: int = dataclasses.field(default=1, metadata=dict(static=True))
    patterns: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    block_size: int = dataclasses.field(default=0, metadata=dict(static=True))
    groups: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    group_blocks: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    low_rank: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    additive_statistics = True

    def as_data(self, X: Any) -> cg.PartialRows:
        """PartialRows of X (NaN = missing) with each row's index into `patterns`; see
        `partial_rows`. PartialRows pass through unchanged (jaxem.select makes them once,
        outside its program, where the patterns can be looked up)."""
        if isinstance(X, cg.PartialRows):
            return X
        rows = partial_rows(X, self.width)
        self.base.check_data(rows.values)
        if self.patterns and not validation.is_traced(rows.values):
            rows = rows._replace(pattern=jnp.asarray(self.pattern_ids(np.asarray(rows.observed) == 0)))
        return rows

    def pattern_ids(self, missing: np.ndarray) -> np.ndarray:
        """(n,) int32 index into `patterns` of each row of the mask missing (n, D)."""
        table = np.zeros((len(self.patterns), missing.shape[1]), bool)
        for i, columns in enumerate(self.patterns):
            table[i, list(columns)] = True
        _, inverse = np.unique(pattern_keys(np.concatenate([table, missing])), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        lookup = np.full(inverse.max() + 1, -1, np.int64)
        lookup[inverse[: len(table)]] = np.arange(len(table))
        ids = lookup[inverse[len(table) :]]
        if np.any(ids < 0):
            raise ValueError("X has a pattern of missing entries that this model was not prepared for.")
        return ids.astype(np.int32)

    @property
    def _diagonal(self) -> bool:
        """The base model's covariances are diagonal (`diagonal_e_step` applies)."""
        return bool(getattr(self.base, "diagonal_covariances", False))

    def pattern_table(self) -> cg.MissingPatterns | None:
        """`patterns` as constant (P, W) slots and valid flags, or None."""
        if not self.patterns:
            return None
        slots = np.zeros((len(self.patterns), self.width), np.int32)
        valid = np.zeros((len(self.patterns), self.width), bool)
        for i, columns in enumerate(self.patterns):
            slots[i, : len(columns)], valid[i, : len(columns)] = columns, True
        return cg.MissingPatterns(slots, valid)

    def width_groups(self) -> list[tuple[slice, int, cg.MissingPatterns, int, bool]]:
        """Per entry of `groups`: (its rows among the incomplete ones, the offset of its
        patterns in `patterns`, its own (P_g, W_g) pattern table, no padding slots, its
        block size B_g or 0: per row, whether its blocks are low-rank)."""
        out, row, first = [], 0, 1
        for g, (width, n_rows) in enumerate(self.groups):
            count = sum(len(columns) == width for columns in self.patterns)
            slots = np.array(self.patterns[first : first + count], np.int32).reshape(count, width)
            table = cg.MissingPatterns(slots, np.ones(slots.shape, bool))
            block = self.group_blocks[g] if self.group_blocks else 0
            low_rank = bool(self.low_rank[g]) if self.low_rank else False
            out.append((slice(row, row + n_rows), first, table, block, low_rank))
            row, first = row + n_rows, first + count
        return out

    def start_params(self, values: dict, data: cg.PartialRows) -> Any:
        return self.base.start_params(values, data.values)

    def init_params(self, key, data: cg.PartialRows, sample_weight, method, chunk_size=None) -> Any:
        """The base model's start on the rows with missing entries at their column means."""
        return self.base.init_params(key, data.values, sample_weight, method, chunk_size)

    def precompute(self, data: cg.PartialRows) -> SplitRows:
        n_complete, n_rows = self.n_complete, data.values.shape[0]
        complete = self.base.precompute(data.values[:n_complete]) if n_complete else None
        incomplete = jax.tree.map(lambda leaf: leaf[n_complete:], data) if n_complete < n_rows else None
        if incomplete is not None and self._diagonal:
            incomplete = cg.observed_features(incomplete)
        elif incomplete is not None and self.block_size:
            incomplete = cg.pattern_blocks(incomplete.values, incomplete.pattern, self.block_size)
        elif incomplete is not None and self.groups:
            incomplete = tuple(
                _width_group(incomplete, rows, first, table.slots.shape[1], block, low_rank)
                for rows, first, table, block, low_rank in self.width_groups()
            )
        return SplitRows(complete, incomplete)

    def precompute_chunks(self, chunks: cg.PartialRows) -> ChunkRows:
        return ChunkRows(self.base.precompute_chunks(chunks.values), chunks)

    def init_m_state(self, params: Any) -> Any:
        return self.base.init_m_state(params)

    def param_constraints(self, params: Any) -> Any:
        return self.base.param_constraints(params)

    def e_step_params(self, params: Any) -> MissingFactors:
        if isinstance(params, MissingFactors):
            return params
        components = cg.gaussian_components(*self.base.gaussian_components(params))
        return MissingFactors(params, self.base.e_step_params(params), components)

    def e_step(self, params: Any, data: SplitRows | ChunkRows, sample_weight: jax.Array) -> tuple[Any, jax.Array]:
        """Statistics and the observed-data log-likelihood: the base E-step on complete rows,
        the conditional one on the others, summed."""
        factors = self.e_step_params(params)
        if isinstance(data, ChunkRows):
            return jax.lax.cond(
                jnp.any(data.rows.missing_valid),
                lambda: self._conditional_e_step(factors, data.rows, sample_weight),
                lambda: self.base.e_step(factors.base, data.complete, sample_weight),
            )
        parts = []
        if data.complete is not None:
            parts.append(self.base.e_step(factors.base, data.complete, sample_weight[: self.n_complete]))
        if data.incomplete is not None:
            parts.append(self._incomplete_e_step(factors, data.incomplete, sample_weight[self.n_complete :]))
        return jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *parts)

    def _incomplete_e_step(self, factors: MissingFactors, incomplete: Any, sample_weight: jax.Array):
        """(statistics, log-likelihood) of the incomplete rows in their `precompute` form."""
        if isinstance(incomplete, cg.ObservedFeatures):
            log_weights, means, covariances = self.base.gaussian_components(factors.params)
            variances = jnp.diagonal(covariances, axis1=-2, axis2=-1)
            moments, log_lik = cg.diagonal_e_step(log_weights, means, variances, incomplete, sample_weight)
        elif isinstance(incomplete, cg.PatternBlocks):
            weights = sample_weight.reshape(-1, self.block_size)
            moments, log_lik = cg.blocked_e_step(factors.components, incomplete, weights, self.pattern_table())
        elif isinstance(incomplete, cg.PartialRows):
            return self._conditional_e_step(factors, incomplete, sample_weight)
        else:  # a tuple of width groups, each in blocks of one pattern or per row
            parts = [
                _blocked_e_step(factors.components, group, sample_weight[rows], table, block, low_rank)
                if block else cg.width_e_step(factors.components, group, sample_weight[rows], table)
                for group, (rows, _, table, block, low_rank) in zip(incomplete, self.width_groups())
            ]
            moments, log_lik = jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *parts)
        return self.base.statistics_from_moments(*moments), log_lik

    def _conditional_e_step(self, factors: MissingFactors, rows: cg.PartialRows, sample_weight: jax.Array):
        patterns = self.pattern_table()
        log_joint, moments = cg.observed_log_joint(factors.components, rows, patterns)
        resp, log_lik = weighted_posterior(log_joint, sample_weight, axis=1)
        stats = self.base.statistics_from_moments(*cg.expected_moments(moments, rows, resp, patterns))
        return stats, log_lik

    def log_prior(self, params: Any) -> jax.Array:
        return self.base.log_prior(params)

    def maximize(self, stats, params, m_state, data, sample_weight):
        return self.base.maximize(stats, params, m_state, data, sample_weight)


def _width_group(incomplete: cg.PartialRows, rows: slice, first: int, width: int, block: int, low_rank: bool) -> Any:
    """One entry of `MissingValues.groups` (or an arranged streamed block's group, first = 0)
    from the incomplete rows: its rows with `width` slots and pattern ids local to its
    table, in blocks of `block` rows (block > 0; LowRankBlocks or PatternBlocks) or as
    PartialRows."""
    group = cg.PartialRows(
        incomplete.values[rows], incomplete.observed[rows], incomplete.missing_index[rows, :width],
        incomplete.missing_valid[rows, :width], incomplete.pattern[rows] - first,
    )
    if not block:
        return group
    return (cg.low_rank_blocks if low_rank else cg.pattern_blocks)(group.values, group.pattern, block)


def _blocked_e_step(components: cg.GaussianComponents, blocks: Any, weights: jax.Array, table: cg.MissingPatterns, block: int, low_rank: bool):
    """`_width_group`'s blocks of `block` rows with weights (n,): low_rank_e_step or
    blocked_e_step against the pattern table."""
    step = cg.low_rank_e_step if low_rank else cg.blocked_e_step
    return step(components, blocks, weights.reshape(-1, block), table)


def prepare(model: Any, X: Any, sample_weight: Any) -> tuple[MissingValues, Any, Any]:
    """(MissingValues(model), X, sample_weight) for `jaxem.fit(..., missing="em")`. On
    concrete data the rows are reordered, complete rows first and then the incomplete ones
    by how many entries they miss and by pattern; the weights move with the rows. The
    wrapper's E-step then splits complete rows statically and runs the incomplete ones in
    blocks of one pattern (each pattern padded with weight-0 copies of its last row) where
    patterns have rows enough (`choose_blocks`: all of them, or the groups of one width
    that do; each in the form of blocked E-step that suits its patterns), the others per
    row, each group at its own width. Traced data is unchanged:
    every row on the per-row conditional E-step (W = D).

    Raises:
      TypeError: a model without Gaussian components.
      ValueError: as `partial_rows`.
    """
    if callable(getattr(model, "with_missing_values", None)):  # GaussianHMM: in its emissions
        return model.with_missing_values(X), X, sample_weight
    check_gaussian_components(model)
    if validation.is_traced(X):
        return MissingValues(model, 0, validation.as_data(X, allow_nan=True).shape[1]), X, sample_weight
    validation.as_data(X, allow_nan=True)
    mask = BlockMask(np.isnan(np.asarray(X, dtype=float)))
    check_missing_pattern(mask)
    missing, n_missing = mask.missing, mask.n_missing
    _, group, pattern_widths, first, _ = mask.patterns
    patterns = tuple(tuple(int(c) for c in np.flatnonzero(missing[i])) for i in first)
    if patterns[0]:  # no complete row: still keep the empty pattern at index 0
        patterns, group, pattern_widths = ((),) + patterns, group + 1, np.concatenate([[0], pattern_widths])
    sizes = np.bincount(group, minlength=len(patterns))[1:]
    # All incomplete rows in one table of the widest width only with per-pattern coefficients:
    # low-rank blocks would pay for its padding slots in every row.
    block_size, low_rank = choose_blocks(sizes, missing.shape[1])
    block_size = 0 if low_rank else block_size
    widths, group_blocks, blocks, low_rank = np.unique(pattern_widths[1:]), (), block_size, ()
    if not block_size:  # in groups of one width, each in blocks of one pattern or per row
        group_blocks, low_rank = zip(*(choose_blocks(sizes[pattern_widths[1:] == w], missing.shape[1]) for w in widths))
        # Each pattern's block size is its width group's (0 for the complete rows' pattern).
        blocks = np.array((0,) + group_blocks)[np.searchsorted(np.concatenate([[0], widths]), pattern_widths)]
    order, is_pad = pattern_order(group, blocks)
    row_widths = pattern_widths[group[order]]
    groups = () if block_size else tuple((int(w), int(np.sum(row_widths == w))) for w in widths)
    group_blocks, low_rank = (group_blocks if any(group_blocks) else ()), (low_rank if any(low_rank) else ())
    weights = sample_weight
    if sample_weight is not None or np.any(is_pad):
        weights = jnp.ones(n_missing.size) if sample_weight is None else jnp.asarray(sample_weight)
        if weights.shape == (n_missing.size,):
            weights = jnp.where(is_pad, 0.0, weights[order])
        else:
            weights = sample_weight  # wrong shape: jaxem.fit's check reports it
    n_complete = int(np.sum(n_missing == 0))
    wrapped = MissingValues(model, n_complete, max(int(n_missing.max()), 1), patterns, block_size, groups, group_blocks, low_rank)
    return wrapped, np.asarray(X)[order], weights


def check_gaussian_components(model: Any) -> None:
    """Raise TypeError unless model has the hooks `MissingValues` needs."""
    for hook in ("gaussian_components", "statistics_from_moments"):
        if not callable(getattr(model, hook, None)):
            raise TypeError(
                f'missing="em" needs a model with Gaussian components (GaussianMixture, '
                f"FactorAnalysis, PPCA, MixtureOfFactorAnalyzers, GaussianHMM); "
                f"{type(model).__name__} has no {hook}."
            )


def pattern_order(group: np.ndarray, block_size: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, is_pad): the rows by pattern id group (n,) (stable: the data's order within a
    pattern), each pattern but 0 (the complete rows) padded to a multiple of block_size
    (one for all patterns or one per pattern; 0: not padded) by repeating its last row, and
    which entries of order are such copies."""
    counts = np.bincount(group)
    blocks = np.broadcast_to(block_size, counts.shape)[1:]
    padded = counts.copy()
    padded[1:] += np.where(blocks > 0, -counts[1:] % np.maximum(blocks, 1), 0)
    by_pattern = np.argsort(group, kind="stable")
    pattern = np.repeat(np.arange(counts.size), padded)
    within = np.arange(padded.sum()) - np.repeat(np.cumsum(padded) - padded, padded)
    starts = np.cumsum(counts) - counts
    order = by_pattern[starts[pattern] + np.minimum(within, counts[pattern] - 1)]
    return order, within >= counts[pattern]


BLOCK_SIZES = (8, 16, 32, 64, 128, 256)
# A block costs about as much as this many rows beyond its own (batched-GEMM overhead).
BLOCK_OVERHEAD_ROWS = 16
# Blocks when their padded rows plus overhead are at most this many times the rows.
BLOCK_WASTE = 1.5
# Patterns that average fewer rows than this times D take low-rank blocks
# (conditional_gaussian.low_rank_e_step), which may pad more: D = 16, K = 8, the rows
# missing three entries (561 patterns of ~25 rows), E-step alone, float32: per row 8-9 ms;
# blocks of 16 (1.3 times the rows, a cost of 2.6) with per-pattern coefficients 14-20 ms,
# low-rank 4.5-5.1 ms. Patterns of ~230 and ~2060 rows (W = 2, 1) ran as fast either way;
# at D = 5, patterns of ~1300 rows ran 1.3-2x faster with per-pattern coefficients.
LOW_RANK_ROWS_PER_FEATURE = 8
LOW_RANK_WASTE = 3.0
# At most this many features x rows per block: a block's features beyond it fall out of
# cache between its two GEMMs (D = 16: blocks of 64 rows ran 1.3-1.6x faster per row than
# blocks of 256).
BLOCK_FEATURE_ENTRIES = 16384


def choose_blocks(group_sizes: np.ndarray, n_features: int) -> tuple[int, bool]:
    """(B, low_rank) for patterns with group_sizes rows each: the block size
    (`choose_block_size`), or 0 when blocks would cost more than BLOCK_WASTE times the rows
    (LOW_RANK_WASTE for low-rank blocks; then the rows run per row:
    conditional_gaussian.width_e_step); low_rank when the patterns average fewer than
    LOW_RANK_ROWS_PER_FEATURE * D rows, too few to amortise blocked_e_step's O(K D^2) work
    per pattern, so that low_rank_e_step's O(K W D) per pattern and per row costs less."""
    low_rank = bool(group_sizes.sum() < LOW_RANK_ROWS_PER_FEATURE * n_features * group_sizes.size)  # by the mean
    block_size, cost = choose_block_size(group_sizes, n_features)
    if cost > (LOW_RANK_WASTE if low_rank else BLOCK_WASTE) * group_sizes.sum():
        return 0, False
    return block_size, low_rank


def choose_block_size(group_sizes: np.ndarray, n_features: int) -> tuple[int, int]:
    """(block size of BLOCK_SIZES, its cost): the size that minimises padded rows plus
    per-block overhead for patterns with group_sizes rows each, of at most
    BLOCK_FEATURE_ENTRIES / n_phi rows (n_phi = (D + 1) (D + 2) / 2 features a row).

    benchmarks/bench_missing.py, D = 16, K = 8, 10% missing (3858 patterns of 21 rows on
    average): blocks of 16 for all incomplete rows cost 3.9 times the rows, and ran slower
    than the per-row E-step; blocks of 64 for the rows missing one entry (16 patterns of
    ~2060 rows) and two (120 of ~230) cost 1.0 and 1.4 times the rows and ran 5-7x faster
    than per row (so `prepare` decides per width); D = 5 (31 patterns of ~1300 rows):
    blocks of 256, 1.1 times the rows.
    """
    n_phi = (n_features + 1) * (n_features + 2) // 2
    sizes = [size for size in BLOCK_SIZES if size * n_phi <= BLOCK_FEATURE_ENTRIES] or BLOCK_SIZES[:1]

    def cost(size):
        n_blocks = np.sum(-(-group_sizes // size))
        return n_blocks * (size + BLOCK_OVERHEAD_ROWS)

    size = min(sizes, key=cost)
    return size, int(cost(size))


class BlockPatterns(NamedTuple):
    """The distinct patterns of missing entries of a block's rows (`sorted_patterns`).

    order: (n,) the rows sorted by pattern (stable); pattern: (n,) each row's index among
    the distinct patterns, which are sorted by how many entries they miss, then by
    `pattern_keys` (the empty one first when a row is complete); widths: (P,) how many
    entries each pattern misses (non-decreasing); first: (P,) the first row of each;
    counts: (P,) the rows of each.
    """

    order: np.ndarray
    pattern: np.ndarray
    widths: np.ndarray
    first: np.ndarray
    counts: np.ndarray


def sorted_patterns(missing: np.ndarray, keys: np.ndarray | None = None) -> BlockPatterns:
    """BlockPatterns of the mask missing (n, D), given its `pattern_keys` when known. Keys
    below max(n, MIN_BINNED_KEYS) are counted in a table of every key (np.bincount: one
    pass, no sort), larger ones sorted (np.unique); either way the rows are ordered by one
    stable radix sort of their pattern ids."""
    keys = pattern_keys(missing) if keys is None else keys
    n_rows, n_features = missing.shape
    if keys.ndim == 1 and 1 << n_features <= max(n_rows, MIN_BINNED_KEYS):
        counts = np.bincount(keys, minlength=1 << n_features)
        distinct = np.flatnonzero(counts)  # sorted keys
        inverse = np.empty(counts.size, np.intp)
        inverse[distinct] = np.arange(distinct.size)
        pattern, counts = np.take(inverse, keys), counts[distinct]
        widths = np.bitwise_count(distinct)
    else:
        distinct, pattern, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        widths = np.bitwise_count(distinct) if keys.ndim == 1 else distinct.sum(axis=1)
    rank = np.argsort(widths, kind="stable")  # the keys were sorted already
    position = np.empty_like(rank)
    position[rank] = np.arange(rank.size)
    pattern = np.take(position, pattern.reshape(-1))
    counts, widths = counts[rank], widths[rank].astype(np.intp)
    small = pattern.astype(np.int16) if rank.size <= np.iinfo(np.int16).max else pattern  # radix sort
    order = np.argsort(small, kind="stable")
    return BlockPatterns(order, pattern, widths, order[np.cumsum(counts) - counts], counts)


# `sorted_patterns` counts the keys of blocks of D features in a table of 2^D entries when
# 2^D is at most max(rows, this) (n = 50k, D = 5: 0.3 ms against np.unique's 1.8 ms).
MIN_BINNED_KEYS = 1 << 12


class BlockMask:
    """The missing entries of one host block (n, D) and what fits derive from them (the
    checks, `StreamedMissingValues.for_block` and `arranged_rows` each need some), each
    computed once, when first asked for, and from the distinct patterns where it can:
    numpy's reductions along either axis of an (n, D) mask cost about 1 ms each for n = 50k
    and D = 5, more than counting the patterns."""

    def __init__(self, missing: np.ndarray):
        self.missing = missing

    @functools.cached_property
    def keys(self) -> np.ndarray:
        """`pattern_keys` of the rows."""
        return pattern_keys(self.missing)

    @functools.cached_property
    def n_missing(self) -> np.ndarray:
        """(n,) entries each row misses."""
        return np.bitwise_count(self.keys) if self.keys.ndim == 1 else self.missing.sum(axis=1)

    @functools.cached_property
    def patterns(self) -> BlockPatterns:
        return sorted_patterns(self.missing, self.keys)

    @functools.cached_property
    def column_missing(self) -> np.ndarray:
        """(D,) entries missing in each column (from the patterns when keys are bit fields:
        sorting more than 62 columns' rows costs more than the sum)."""
        if self.keys.ndim == 2:
            return self.missing.sum(axis=0)
        return self.patterns.counts @ self.missing[self.patterns.first]

    @property
    def observed_columns(self) -> np.ndarray:
        """(D,) whether each column has an observed entry in the block."""
        return self.column_missing < self.missing.shape[0]

    @property
    def empty_rows(self) -> np.ndarray:
        """The rows with every entry missing, in order."""
        return np.flatnonzero(self.n_missing == self.missing.shape[1])


def as_block_mask(mask: BlockMask | np.ndarray) -> BlockMask:
    """mask itself, or a BlockMask of the boolean array mask (n, D)."""
    return mask if isinstance(mask, BlockMask) else BlockMask(np.asarray(mask, bool))


def pattern_keys(missing: np.ndarray) -> np.ndarray:
    """One sortable key per row of the mask missing (n, D): an int64 bit field for up to
    62 features (fast to sort), else the rows themselves (np.unique along axis 0)."""
    if missing.shape[1] <= 62:
        return missing.astype(np.int64) @ (np.int64(1) << np.arange(missing.shape[1], dtype=np.int64))
    return missing


@register_model
@dataclasses.dataclass(frozen=True)
class StreamedMissingValues(MissingValues):
    """`MissingValues` for data seen one block of rows at a time (jaxem.stream, `streamed`):
    no rows ordered (n_complete = 0) unless `arranged`, and `patterns` either every subset of the D columns
    (`every_pattern`: a row's index is its bit field, `pattern_keys`; width = D) or () (each
    row factorised on its own, width the most entries a row has missed so far, `for_block`).

    arranged: the stream's blocks are unchunked, so each block's rows are reordered on the
    host (`arranged_rows`: complete rows first, then by how many entries they miss, each
    group padded with weight-0 copies to its capacity in `n_complete` and `groups`) and
    each group of W_g-entry rows takes the per-row E-step of width W_g
    (conditional_gaussian.width_e_step), as jaxem.fit's width groups, with a table of the
    group's distinct patterns in the block (each factorised once; `table_sizes` slots per
    group, rows indexing it by `pattern`); capacities and table sizes grow when a block
    needs more (`for_block`). A group whose `group_blocks` entry B_g > 0 instead holds
    its rows in blocks of B_g rows of one pattern (each pattern padded to whole blocks)
    indexing the static table of every pattern of W_g entries (`width_patterns`, C(D, W_g)
    entries, its table size), and takes blocked_e_step, or low_rank_e_step where `low_rank`
    says so, as jaxem.fit's groups in blocks.

    A block is validated alone: a column may be missing throughout one block, and rows with
    every entry missing are left to the stream (`check_block_rows` numbers them in the
    stream). Unchunked, a block is one chunk (`ChunkRows`), so `MissingValues.e_step` gives
    a block without missing entries the base model's own E-step and any other block the
    conditional E-step (one `lax.cond`); chunked, each chunk chooses. Diagonal covariances:
    every block on `diagonal_e_step`.
    """

    arranged: bool = dataclasses.field(default=False, metadata=dict(static=True))
    table_sizes: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    def as_data(self, X: Any, mask: BlockMask | None = None) -> cg.PartialRows:
        """PartialRows of a block X (n, D), NaN where missing, with `width` slots per row
        (missing entries at the block's column means, 0 in a column missing throughout the
        block), given the block's BlockMask when the caller has it. Arranged models take
        their blocks through `arranged_rows`.

        Raises:
          ValueError: a row misses more than `width` entries (`for_block` makes room).
        """
        if self.arranged:
            raise ValueError("an arranged model takes its blocks through arranged_rows, which reorders them.")
        values = validation.as_data(X, allow_nan=True)
        mask = BlockMask(np.isnan(np.asarray(values))) if mask is None else mask
        most = int(mask.n_missing.max(initial=0))
        if most > self.width:
            raise ValueError(f"a row of the block misses {most} entries, more than width={self.width}.")
        rows = _partial_rows(values, self.width)
        self.base.check_data(rows.values)
        if self.patterns:
            rows = rows._replace(pattern=jnp.asarray(mask.keys, jnp.int32))
        return rows

    def for_block(self, mask: BlockMask | np.ndarray) -> StreamedMissingValues:
        """This model, or a copy with as many slots per row as a row of the block mask
        (n, D) misses when that is more than `width` (the stream then compiles its
        block E-step once more). Per-row factorisations cost O(K W^3) a row, so the stream
        keeps W at the most any row has missed so far, not D (D = 16, K = 8, 10% missing,
        50k rows: W = 8 ran the block E-step 5x faster than W = 16). Tabulated patterns and
        diagonal covariances keep W = D. Arranged: a copy whose group capacities and table
        sizes hold the block (`_with_room_for`), when these do not."""
        if self.patterns or self._diagonal:
            return self
        mask = as_block_mask(mask)
        if self.arranged:
            return self._with_room_for(mask)
        most = int(mask.n_missing.max(initial=0))
        return self if most <= self.width else dataclasses.replace(self, width=most)

    def _with_room_for(self, mask: BlockMask) -> StreamedMissingValues:
        """Arranged: this model, or one whose capacities (rows per group) and table sizes
        (patterns per group) hold the block; grown ones are GROUP_HEADROOM times the
        block's count, rounded up to a multiple of n / GROUP_QUANTA (a table at most its
        group's capacity). A group in blocks of one pattern (`group_blocks`, chosen when its
        width first appears: `_choose_group_blocks`) counts its rows with each pattern
        padded to whole blocks, its capacity a whole number of blocks, and keeps the static
        table of every pattern of its width (`width_patterns`)."""
        n_features = mask.missing.shape[1]
        rows_per_pattern, pattern_widths = mask.patterns.counts, mask.patterns.widths
        rows_per_width = np.bincount(pattern_widths, weights=rows_per_pattern).astype(np.int64)
        patterns_per_width = np.bincount(pattern_widths)
        layout = self._group_layout()
        capacity = {width: n_rows for width, n_rows, _, _, _ in layout}
        tables = {width: table_size for width, _, table_size, _, _ in layout}
        blocks = {width: (block, low_rank) for width, _, _, block, low_rank in layout}
        quantum = max(1, mask.missing.shape[0] // GROUP_QUANTA)

        def room(count, multiple):
            rows = -(-math.ceil(count * GROUP_HEADROOM) // quantum) * quantum
            return -(-rows // multiple) * multiple

        grown = False
        for width in map(int, np.flatnonzero(rows_per_width)):
            pattern_rows = rows_per_pattern[pattern_widths == width]
            if width not in blocks:
                blocks[width] = _choose_group_blocks(pattern_rows, n_features, width)
            block = blocks[width][0]
            if block:  # each pattern padded to whole blocks; the table holds every pattern
                n_rows, n_patterns = int(np.sum(-(-pattern_rows // block)) * block), math.comb(n_features, width)
            else:
                n_rows, n_patterns = int(rows_per_width[width]), int(patterns_per_width[width])
            if capacity.get(width, -1) < n_rows:
                capacity[width], grown = max(capacity.get(width, 0), room(n_rows, block or 1)), True
            if tables.get(width, -1) < n_patterns:
                tables[width], grown = max(tables.get(width, 0), n_patterns if block else room(n_patterns, 1)), True
        if not grown:
            return self
        widths = sorted(w for w in capacity if w > 0)
        return dataclasses.replace(
            self, n_complete=capacity[0], groups=tuple((w, capacity[w]) for w in widths),
            table_sizes=tuple(tables[w] if blocks[w][0] else min(tables[w], capacity[w]) for w in widths),
            group_blocks=tuple(blocks[w][0] for w in widths), low_rank=tuple(blocks[w][1] for w in widths),
            width=max(widths, default=1),
        )

    def _group_layout(self) -> list[tuple[int, int, int, int, bool]]:
        """Per arranged group, the complete rows' first: (W_g, capacity, table size, block
        size B_g or 0: per row, low-rank blocks)."""
        n_groups = len(self.groups)
        blocks, low_rank = self.group_blocks or (0,) * n_groups, self.low_rank or (False,) * n_groups
        return [(0, self.n_complete, 1, 0, False)] + [
            (width, capacity, table_size, block, bool(low))
            for (width, capacity), table_size, block, low in zip(self.groups, self.table_sizes, blocks, low_rank)
        ]

    def arranged_rows(self, X: Any, weights: np.ndarray, mask: BlockMask | None = None) -> tuple[cg.PartialRows, np.ndarray]:
        """Arranged: a block X (n, D), NaN where missing, and its weights (n,) as the
        block E-step takes them, with m = sum of the capacities rows (the shape of every
        block of the stream): complete rows first, then the rows missing W_g entries for
        each group, sorted by pattern and padded to the group's capacity with weight-0
        copies of its last row (an empty group: zero rows missing its first W_g entries).
        Missing entries are at the block's column means; each row's `pattern` is its index
        among its group's distinct patterns (sorted by `pattern_keys`), its slots the
        pattern's missing columns. A group in blocks (`group_blocks`) first pads each
        pattern's rows to whole blocks with weight-0 copies, and its rows' `pattern` indexes
        the static table of every pattern of the group's width (`width_patterns`). Made on the host: XLA:CPU's row-wise sort
        (conditional_gaussian.partial_rows) took longer than this whole block.

        Args:
          mask: the block's BlockMask when the caller has it (it is computed once).
        Returns:
          (PartialRows of m rows with `width` slots, weights (m,)).
        Raises:
          ValueError: a group or its table is too small for the block (`for_block` makes
            room), or a row misses a number of entries no group takes.
        """
        values = validation.host_data(X, allow_nan=True)
        mask = BlockMask(np.isnan(values)) if mask is None else mask
        order, pattern, widths, first, counts = mask.patterns
        n_block, n_features = values.shape
        column_means = np.where(mask.missing, 0, values).sum(axis=0) / np.maximum(n_block - mask.column_missing, 1)
        pattern_rows = np.concatenate([[0], np.cumsum(counts)])  # the rows of pattern p: order[pattern_rows[p] : pattern_rows[p + 1]]
        n_rows = self.n_complete + sum(c for _, c in self.groups)
        take, out_pattern, out_weights = np.zeros(n_rows, np.intp), np.zeros(n_rows, np.int32), np.zeros(n_rows, weights.dtype)
        slots, valid = np.zeros((n_rows, self.width), np.int32), np.zeros((n_rows, self.width), bool)
        start, placed, empty_groups = 0, 0, []
        for width, capacity, table_size, block, _ in self._group_layout():
            rows, end = slice(start, start + capacity), start + capacity
            patterns = slice(np.searchsorted(widths, width), np.searchsorted(widths, width, "right"))
            if patterns.stop - patterns.start > table_size:
                raise ValueError(f"a block has {patterns.stop - patterns.start} patterns of {width} missing entries, more than {table_size} (for_block makes room).")
            members = order[pattern_rows[patterns.start] : pattern_rows[patterns.stop]]
            local, real = pattern[members] - patterns.start, np.ones(len(members), bool)
            table = np.nonzero(mask.missing[first[patterns]])[1].reshape(-1, width) if width else None
            if block and len(members):  # each pattern padded to whole blocks; ids into the static table
                padded, is_pad = pattern_order(local + 1, block)
                members, local, real = members[padded], width_pattern_ids(table, n_features)[local[padded]], ~is_pad
                table = width_patterns(n_features, width).slots
            if len(members) > capacity:
                raise ValueError(f"a block has {int(real.sum())} rows missing {width} entries, more than {capacity} rows hold{' in blocks of one pattern' if block else ''} (for_block makes room).")
            valid[rows, :width] = True
            if len(members):  # padded with weight-0 copies of the last row
                filled = slice(start, start + len(members))
                take[filled], take[filled.stop : end] = members, members[-1]
                out_pattern[filled], out_pattern[filled.stop : end] = local, local[-1]
                out_weights[filled] = np.where(real, weights[members], 0)
                if width:
                    slots[rows, :width] = table[out_pattern[rows]]
            else:
                empty_groups.append((rows, width))
            start, placed = end, placed + int(real.sum())
        if placed < len(order):
            raise ValueError(f"a block has rows missing {sorted(set(widths.tolist()) - {w for w, _ in self.groups} - {0})} entries, which no group takes (for_block makes room).")
        out_values = np.take(values, take, axis=0)  # NaN where missing, then the column means
        out_missing = np.isnan(out_values)
        np.copyto(out_values, column_means.astype(values.dtype), where=out_missing)
        observed = (~out_missing).astype(values.dtype)
        for rows, width in empty_groups:  # filler: zero rows missing the static table's first pattern, columns 0 .. W - 1
            out_values[rows], observed[rows], observed[rows, :width], slots[rows, :width] = 0, 1, 0, np.arange(width)
        self.base.check_data(out_values)
        rows = cg.PartialRows(*map(jnp.asarray, (out_values, observed, slots, valid, out_pattern)))
        return rows, out_weights

    def precompute(self, data: cg.PartialRows) -> ChunkRows | SplitRows:
        """The block as one chunk, in both forms; diagonal: its observed features;
        arranged: its complete rows in the base model's form and its groups of rows missing
        W_g entries, each with W_g slots."""
        if self._diagonal:
            return SplitRows(None, cg.observed_features(data))
        if not self.arranged:
            return ChunkRows(self.base.precompute(data.values), data)
        complete = self.base.precompute(data.values[: self.n_complete]) if self.n_complete else None
        groups, start = [], self.n_complete
        for width, capacity, _, block, low_rank in self._group_layout()[1:]:
            groups.append(_width_group(data, slice(start, start + capacity), 0, width, block, low_rank))
            start += capacity
        return SplitRows(complete, tuple(groups) or None)

    def _incomplete_e_step(self, factors: MissingFactors, incomplete: Any, sample_weight: jax.Array):
        """As MissingValues', each arranged group with the table of its distinct patterns
        (`group_patterns`), in chunks of at most GROUP_CHUNK_ROWS rows for groups of more
        than twice that."""
        if not self.arranged:
            return super()._incomplete_e_step(factors, incomplete, sample_weight)
        parts, start = [], 0
        for group, (width, n_rows, table_size, block, low_rank) in zip(incomplete, self._group_layout()[1:]):
            weights = sample_weight[start : start + n_rows]
            start += n_rows
            if block:
                table = width_patterns(factors.components.means.shape[1], width)
                parts.append(_blocked_e_step(factors.components, group, weights, table, block, low_rank))
                continue
            table = group_patterns(group, table_size)
            chunk_rows = GROUP_CHUNK_ROWS if n_rows > 2 * GROUP_CHUNK_ROWS else None
            parts.append(cg.width_e_step(factors.components, group, weights, table, chunk_rows))
        moments, log_lik = jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *parts)
        return self.base.statistics_from_moments(*moments), log_lik

    def precompute_chunks(self, chunks: cg.PartialRows) -> ChunkRows | SplitRows:
        if self._diagonal:
            return SplitRows(None, jax.vmap(cg.observed_features)(chunks))
        return super().precompute_chunks(chunks)


def group_patterns(rows: cg.PartialRows, table_size: int) -> cg.MissingPatterns:
    """The (table_size, W) table of the patterns rows.pattern indexes, for rows that each
    miss exactly W entries: each entry's slots from the first row of that pattern (entries
    no row uses: the last row's, factorised but unused)."""
    n_rows = rows.values.shape[0]
    first = jax.ops.segment_min(jnp.arange(n_rows), rows.pattern, num_segments=table_size)
    slots = rows.missing_index[jnp.minimum(first, n_rows - 1)]
    return cg.MissingPatterns(slots, jnp.ones(slots.shape, bool))


@functools.lru_cache(maxsize=None)
def width_patterns(n_features: int, width: int) -> cg.MissingPatterns:
    """The static (C(D, W), W) table of every pattern of `width` missing entries among
    n_features columns, in itertools.combinations order (the first: columns 0 .. W - 1)."""
    slots = np.array(list(itertools.combinations(range(n_features), width)), np.int32).reshape(-1, width)
    slots.flags.writeable = False
    return cg.MissingPatterns(slots, np.ones(slots.shape, bool))


def width_pattern_ids(columns: np.ndarray, n_features: int) -> np.ndarray:
    """(P,) int32 indices into `width_patterns` of the patterns columns (P, W), each row
    sorted: the combinatorial number system's rank of each (lexicographic order)."""
    n_patterns, width = columns.shape
    ranks = np.zeros(n_patterns, np.int64)
    previous = np.full(n_patterns, -1)
    for slot in range(width):  # the combinations before each row's slot-th column, given the earlier ones
        for column in range(n_features):
            skipped = (column > previous) & (column < columns[:, slot])
            ranks += np.where(skipped, math.comb(n_features - column - 1, width - slot - 1), 0)
        previous = columns[:, slot]
    return ranks.astype(np.int32)


def _choose_group_blocks(pattern_rows: np.ndarray, n_features: int, width: int) -> tuple[int, bool]:
    """(B, low_rank) for an arranged group of rows missing `width` entries whose block has
    pattern_rows (P,) rows per pattern: `choose_blocks`, when the static table of every
    pattern of that width has at most MAX_TABULATED_PATTERNS entries (each factorised per
    E-step), else (0, False): per row with a table of the block's own patterns."""
    if math.comb(n_features, width) > MAX_TABULATED_PATTERNS:
        return 0, False
    return choose_blocks(pattern_rows, n_features)


# Arranged streamed blocks: each group's capacity is GROUP_HEADROOM times the rows of the
# block that first needed more, rounded up to a multiple of 1/GROUP_QUANTA of the block
# (so a block's small groups share one quantum and capacities rarely grow again). D = 16,
# K = 8, 10% missing, blocks of 50k: 1.08 times the rows (1.17 with 1.1 and 1/64: the
# E-step 15% slower).
GROUP_HEADROOM = 1.05
GROUP_QUANTA = 128
# Arranged groups of more than twice this many rows run in chunks of at most this many, one
# after another (memory: the per-row E-step holds a few (K, rows, D) arrays). Not a speed-up: in
# jaxem.fit's width groups (D = 16, K = 8, float32) chunks of 8192 rows made an iteration
# up to 2x slower and chunks of 16384 no faster, though width_e_step called alone on one
# group ran 2x faster in chunks.
GROUP_CHUNK_ROWS = 16_384

# Streamed E-steps tabulate all 2^D patterns when there are at most this many, and at
# least TABULATED_PATTERN_ROWS rows per pattern in a block (or chunk); else every row is
# factorised on its own. A table costs 2^D K factorisations of D x D per E-step call.
MAX_TABULATED_PATTERNS = 1024
TABULATED_PATTERN_ROWS = 4


def every_pattern(n_features: int) -> tuple:
    """Every subset of n_features columns, as sorted tuples, the i-th holding the columns of
    the set bits of i (so `pattern_keys` of a row is its index; the empty one first)."""
    return tuple(tuple(c for c in range(n_features) if key >> c & 1) for key in range(2**n_features))


def streamed(model: Any, n_features: int, n_rows: int, arranged: bool = False) -> StreamedMissingValues:
    """model wrapped for streamed fits with missing values to blocks of n_features columns,
    whose E-step runs n_rows rows at a time (a block, or a chunk of one); arranged: the
    blocks are unchunked, so their rows are regrouped by how many entries they miss, which
    beat the table of every pattern too (bench_missing.py's stream data, 10% missing, per
    pass: D = 3, K = 3 1.2x; D = 5, K = 4 1.4x; D = 8, K = 16 1.7x faster, float32).

    Raises:
      TypeError: a model without Gaussian components over rows (GaussianHMM included: its
        missing entries are in its emissions, which `prepare` sizes on the whole data).
    """
    if callable(getattr(model, "with_missing_values", None)):
        raise TypeError(
            f'streamed fits with missing="em" support models of independent rows with Gaussian '
            f"components (GaussianMixture, FactorAnalysis, PPCA, MixtureOfFactorAnalyzers); fit "
            f'{type(model).__name__} with missing values in memory with jaxem.fit(..., missing="em").'
        )
    check_gaussian_components(model)
    wrapped = StreamedMissingValues(model, 0, n_features)
    n_patterns = 2**n_features if n_features < 31 else math.inf
    if wrapped._diagonal:
        return wrapped
    if arranged or n_patterns > min(MAX_TABULATED_PATTERNS, n_rows // TABULATED_PATTERN_ROWS):
        return dataclasses.replace(wrapped, width=1, arranged=arranged)  # per row: `for_block` widens it
    return dataclasses.replace(wrapped, patterns=every_pattern(n_features))


def partial_rows(X: Any, width: int | None) -> cg.PartialRows:
    """Rows X (n, D) with NaN marking missing entries, as PartialRows with `width` slots per
    row for missing columns (None: the most any row has, at least 1).

    Raises:
      ValueError: as validation.as_data for anything but NaN (inf included); a row or a
        column with every entry missing; a row with more than `width` missing entries.
    """
    values = validation.as_data(X, allow_nan=True)
    if not validation.is_traced(values):
        most = check_missing_pattern(np.isnan(np.asarray(values)))
        width = max(most, 1) if width is None else width
        if most > width:
            raise ValueError(f"a row has {most} missing entries, more than width={width}.")
    elif width is None:
        width = values.shape[1]
    return _partial_rows(values, width)


_partial_rows = jax.jit(cg.partial_rows, static_argnames="width")


def check_missing_pattern(mask: BlockMask | np.ndarray) -> int:
    """Every row and every column of the mask (n, D) needs an observed entry; returns the
    most entries any row misses."""
    mask = as_block_mask(mask)
    check_block_rows(mask, 0)
    validation.check_observed_columns(mask.observed_columns)
    return int(mask.n_missing.max(initial=0))


def check_block_rows(mask: BlockMask | np.ndarray, first_row: int) -> None:
    """Every row of the mask (n, D) needs an observed entry; rows are numbered from
    first_row in the message (a block's place in a stream)."""
    empty_rows = as_block_mask(mask).empty_rows
    if empty_rows.size:
        raise ValueError(
            f"X has {empty_rows.size} row(s) with every entry missing (the first is row "
            f"{first_row + int(empty_rows[0])}); they carry no information: drop them before fitting."
        )


def rows_to_predict(X: Any) -> cg.PartialRows:
    """PartialRows of X (n, D), NaN where missing, for predictions under fitted params: as
    `partial_rows` with the width the rows need, but a row or a column with every entry
    missing is allowed (such a row gets the model's marginal: its weights, its means).

    Raises:
      ValueError: as validation.as_data for anything but NaN (inf included).
    """
    values = validation.as_data(X, allow_nan=True)
    width = values.shape[1]
    if not validation.is_traced(values):
        width = max(int(np.isnan(np.asarray(values)).sum(axis=1).max(initial=0)), 1)
    return _partial_rows(values, width)


def posterior(model: Any, params: Any, X: Any) -> tuple[jax.Array, jax.Array]:
    """p(z=k | x_o) and log p(x_o) of the rows of X under a fitted model with Gaussian
    components: each component's density on the row's observed coordinates (the marginal
    density; jaxem.models.conditional_gaussian).

    Args:
      X: (n_samples, n_features), NaN where missing.
    Returns:
      (probabilities (n, K), log_density (n,)); K = 1 for FactorAnalysis and PPCA.
    """
    return _posterior_rows(model, params, rows_to_predict(X))


@jax.jit
def _posterior_rows(model: Any, params: Any, rows: cg.PartialRows) -> tuple[jax.Array, jax.Array]:
    components = cg.gaussian_components(*model.gaussian_components(params))
    log_joint, _ = cg.observed_log_joint(components, rows)
    log_density = logsumexp(log_joint, axis=1)
    return jnp.exp(log_joint - log_density[:, None]), log_density


def information_criteria(model: Any, params: Any, X: Any) -> tuple[float, float]:
    """(BIC, AIC) of the rows X (n, D), NaN where missing, from the observed-data
    log-likelihood L (`posterior`): -2 L + p log n and -2 L + 2 p, p = model.n_parameters(D)."""
    log_likelihood = float(jnp.sum(posterior(model, params, X)[1]))
    n_samples, n_features = np.shape(X)
    n_parameters = model.n_parameters(n_features)
    return -2.0 * log_likelihood + n_parameters * math.log(n_samples), -2.0 * log_likelihood + 2.0 * n_parameters


def impute(model: Any, params: Any, X: Any) -> tuple[jax.Array, jax.Array]:
    """Conditional means of the missing entries of X given its observed ones under a fitted
    model with Gaussian components, and their conditional covariances.

    Args:
      X: (n_samples, n_features), NaN where missing (`rows_to_predict`).
    Returns:
      (X_imputed (n, D): X with every NaN replaced by E[x_m | x_o]; covariances (n, D, D):
      Cov[x | x_o], zero in every row and column of an observed entry).
    """
    return _impute_rows(model, params, rows_to_predict(X))


@jax.jit
def _impute_rows(model: Any, params: Any, rows: cg.PartialRows) -> tuple[jax.Array, jax.Array]:
    components = cg.gaussian_components(*model.gaussian_components(params))
    mean, covariance = cg.conditional_mean_and_covariance(components, rows)
    return jnp.where(rows.observed > 0, rows.values, mean), covariance
