"""Out-of-core EM: the data streamed through the device in blocks of rows, pass by pass.

Statistics add up over data units (docs/design.md), so an E-step over data that does not
fit in memory is the sum of E-steps over blocks of it. Two fits build on that:

* `fit_stream`: exact (batch) EM. Every iteration streams all blocks through one compiled
  block E-step, sums their statistics and log-likelihoods, and runs the model's M-step on
  the sums, with the EM iteration, stopping rule, trace and FitResult of `jaxem.fit`
  (`jaxem.core.em_iteration`, `core.fit_result`). From the same start it computes what the
  in-memory `jaxem.fit` computes, to rounding of the summation order (tested to 1e-10 in
  float64); each iteration costs one pass over the data, plus one final pass that
  evaluates the objective at the returned params, as `jaxem.fit` does.
* `fit_online`: stepwise (online) EM (Cappé & Moulines 2009; Liang & Klein 2009). After
  every block, running statistics s <- (1 - eta_t) s + eta_t (N / W_b) stats(block), with
  N the total weight of the data and W_b the block's, followed by the M-step: many
  parameter updates per pass, so one or two passes get close to the batch optimum.

The loop over passes and blocks is a Python loop by necessity (the data is not in
memory); each block is one call of a compiled program of fixed shapes: the last block is
padded to the block size with zero-weight copies of its last row, so it reuses it.

Block sources (`blocks`):
  * a callable returning a fresh iterable of blocks each pass (a generator function
    reading files, a database cursor, ...); a block is an (n, ...) array or a pair
    (X, sample_weight);
  * a list or tuple of such blocks, or one array (a `np.memmap` included);
  * the path of a .npy file, memory-mapped (np.load(mmap_mode="r")) and read block by block;
  * the path of a directory of .npy and/or .parquet shards, read in sorted name order
    (parquet needs pyarrow; its numeric columns, in order, are the features).
Rows are regrouped into blocks of `block_size` rows (default: the length of the first
block for lists and callables, DEFAULT_BLOCK_SIZE for paths and arrays), whatever the
sizes of the pieces, so one compiled shape serves every block. `sample_weight`, when
given, is one (n_rows,) array aligned with the stream's rows (it may be a memmap too).

Models: the M-step sees only the summed statistics, so a model must declare
`additive_statistics` and its `maximize` must not use the data (all built-in closed-form
families; a `LatentModel` with gradient M-steps or a `jaxem.freeze`-guarded model are
refused with a clear error). Online EM averages statistics computed at different params,
which needs them in one frame: statistics that are plain sums (Poisson, Bernoulli,
categorical mixtures) are averaged as they are, a Gaussian mixture's (centred on the means
they were computed at) are re-centred on every M-step's new means (`reframe_statistics`);
other families are refused until they provide `reframe_statistics(stats, old, new)`.

Missing values (`missing="em"`, as jaxem.fit takes it; jaxem.missing): NaN entries of the
blocks are latent, each block's statistics are the expected complete-data ones given its
observed entries, and the objective is the observed-data log-likelihood (GaussianMixture,
FactorAnalysis, PPCA, MixtureOfFactorAnalyzers). jaxem.fit orders the rows of the whole
data by missingness pattern and factorises once per pattern; a stream cannot, so the
model is wrapped by `jaxem.missing.streamed`. Unchunked blocks (chunk_size "auto" or None)
are regrouped on the host, complete rows first and then by how many entries they miss,
each group padded to a capacity that grows (one more compile) when a block needs more;
complete rows take the base model's own E-step and each group of rows missing W entries
either blocks of one pattern (each pattern padded to whole blocks, against the static table
of every pattern of W entries when there are few enough; chosen on the first block with such
rows) or the per-row E-step of width W with a table of the group's distinct patterns, as
jaxem.fit's width groups (jaxem.missing.StreamedMissingValues, `arranged`). With an explicit
chunk_size smaller than a block, a chunk without missing entries takes the base E-step
and any other the conditional one (one `lax.cond` per chunk), factorising its blocks once
per pattern of a table of all 2^D patterns when D is small (at most
jaxem.missing.MAX_TABULATED_PATTERNS, and 4 rows per pattern in a chunk), else per row
with as many slots as the most entries a row has missed so far.
benchmarks/bench_missing.py --stream (N = 100k in blocks of 50k, 10% missing, float32,
2-core CPU) measures a pass against a complete one (README).
Diagonal covariances need no pattern (conditional_gaussian.diagonal_e_step: GEMMs as for
complete rows). As in jaxem.fit, a row with every entry missing is an error (when
its block is read), and so is a column with no observed entry in the whole stream (at the
end of the first pass); a column may be missing throughout some blocks. Starts computed on
the first block ("kmeans++", ...) see its missing entries at its column means (0 for a
column it never observes). Online EM with missing values: GaussianMixture (its statistics
are re-centred as without them).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import mmap
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import api, core, parallel, restarts, units, validation
from jaxem import missing as missing_lib
from jaxem.config import FitConfig
from jaxem.core import FitResult, Status
from jaxem.init import INIT_METHODS
from jaxem.precision import full_precision
from jaxem.progress import PRINTER
from jaxem.protocol import check_model

__all__ = ["DEFAULT_BLOCK_SIZE", "default_step_size", "fit_online", "fit_stream", "reframe_statistics"]

DEFAULT_BLOCK_SIZE = 65_536

# Byte alignment at which jax.device_put on CPU uses a NumPy array's memory in place
# rather than copying it (XLA's minimum buffer alignment); NumPy's own is 16.
DEVICE_ALIGNMENT = 64


def default_step_size(t: int) -> float:
    """eta_t = (t + 2) ** -0.6 (Liang & Klein 2009: alpha in (0.5, 1])."""
    return (t + 2) ** -0.6


# --- block sources ---------------------------------------------------------------------------
def _is_path(blocks: Any) -> bool:
    return isinstance(blocks, (str, os.PathLike))


def _read_parquet(path: Path, batch_rows: int) -> Iterator[np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - pyarrow is optional
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow).") from err
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield np.column_stack([column.to_numpy(zero_copy_only=False) for column in batch.columns])


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose memory starts at a multiple of
    DEVICE_ALIGNMENT bytes, so that jax.device_put on CPU uses it in place."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = np.empty(nbytes + DEVICE_ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % DEVICE_ALIGNMENT
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


# Bytes of a memory-mapped file `_read_npy` copies before releasing their pages: a block's
# copy and the mapped pages it was read from are resident together only this much.
RELEASE_BYTES = 1 << 20


def _read_npy(path: Path, batch_rows: int) -> Iterator[np.ndarray]:
    """Read-only copies of batch_rows-row slices of a memory-mapped .npy file, aligned
    (`_aligned_empty`) so that the device uses them in place (`validation.to_device`):
    one copy of a block in memory, not two. The mapped pages are released from this
    process every RELEASE_BYTES as they are copied (madvise MADV_DONTNEED: they stay in
    the OS page cache, not in the process's resident memory), so a pass over a file
    larger than memory keeps only the blocks in flight resident."""
    array = np.load(path, mmap_mode="r")
    if array.ndim == 0 or (array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous):
        yield np.asarray(array)  # Fortran order: rows are not contiguous (or a 0-d array)
        return
    mapping = getattr(array, "_mmap", None)
    if not (hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED")):
        mapping = None
    row_bytes = max(array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)), 1)
    offset = getattr(array, "offset", 0) % mmap.ALLOCATIONGRANULARITY  # the array's start in the mapping
    rows_per_copy = max(RELEASE_BYTES // row_bytes, 1)
    for start in range(0, array.shape[0], batch_rows):
        stop = min(start + batch_rows, array.shape[0])
        block = _aligned_empty((stop - start,) + array.shape[1:], array.dtype)
        for first in range(start, stop, rows_per_copy):
            last = min(first + rows_per_copy, stop)
            block[first - start : last - start] = array[first:last]
            mapping = _release_pages(mapping, offset + first * row_bytes, offset + last * row_bytes)
        block.flags.writeable = False
        yield block
        del block  # not alive while the next block is read


def _release_pages(mapping: Any, first_byte: int, last_byte: int) -> Any:
    """madvise(MADV_DONTNEED) the mapping's pages over [first_byte, last_byte); the
    mapping, or None once the OS refused (nothing more is released then)."""
    if mapping is None:
        return None
    first = first_byte // mmap.PAGESIZE * mmap.PAGESIZE
    try:
        mapping.madvise(mmap.MADV_DONTNEED, first, last_byte - first)
    except (OSError, ValueError):
        return None
    return mapping


def _path_pieces(path: Path, batch_rows: int) -> Iterator[np.ndarray]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".parquet"))
        if not files:
            raise ValueError(f"the directory {path} holds no .npy or .parquet shards.")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"no such file or directory: {path}")
    for file in files:
        if file.suffix == ".npy":
            yield from _read_npy(file, batch_rows)
        elif file.suffix == ".parquet":
            yield from _read_parquet(file, batch_rows)
        else:
            raise ValueError(f"cannot read {file}: blocks from paths are .npy or .parquet files.")


class Source:
    """A re-iterable stream of host blocks of exactly `block_size` rows (the last may be
    shorter), each with its weights (None for unit weights)."""

    def __init__(self, blocks: Any, block_size: int | None = None, sample_weight: Any = None):
        if block_size is not None:
            validation.check_positive_int(block_size, "block_size")
        if _is_path(blocks):
            path = Path(blocks)
            self._pieces = lambda: _path_pieces(path, self.block_size)
            self.block_size = block_size or DEFAULT_BLOCK_SIZE
        elif callable(blocks):
            self._pieces = blocks
            self.block_size = block_size
        elif isinstance(blocks, (list, tuple)):
            if not blocks:
                raise ValueError("blocks is an empty list.")
            self._pieces = lambda: iter(blocks)
            self.block_size = block_size
        elif hasattr(blocks, "shape") and hasattr(blocks, "__getitem__"):
            self._pieces = lambda: iter([blocks])
            self.block_size = block_size or DEFAULT_BLOCK_SIZE
        else:
            raise TypeError(
                "blocks must be a callable returning an iterable of blocks, a list of arrays, an "
                f"array, or the path of a .npy file or of a directory of shards; got {type(blocks).__name__}."
            )
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight)  # a memmap stays a view of its file
            if sample_weight.ndim != 1:
                raise ValueError(f"sample_weight must be 1-D (one weight per row), got shape {sample_weight.shape}.")
        self.sample_weight = sample_weight

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        offset, buffer, buffered = 0, [], 0
        pieces = self._pieces()
        if pieces is None or not hasattr(pieces, "__iter__"):
            raise TypeError("a blocks callable must return an iterable of blocks.")
        for piece in pieces:
            X, w = piece if isinstance(piece, tuple) else (piece, None)
            if not hasattr(X, "shape") or getattr(X, "ndim", 0) < 1:
                X = np.asarray(X)
            if X.ndim < 1 or X.shape[0] == 0:
                continue
            if self.sample_weight is not None:
                if w is not None:
                    raise ValueError("give weights either as sample_weight or in the blocks, not both.")
                w = self.sample_weight[offset : offset + X.shape[0]]
                if len(w) != X.shape[0]:
                    raise ValueError(f"sample_weight has fewer entries than the stream's rows (> {offset}).")
            elif w is not None and np.shape(w) != (X.shape[0],):
                raise ValueError(f"a block's weights must have shape ({X.shape[0]},), got {np.shape(w)}.")
            offset += X.shape[0]
            if self.block_size is None:
                self.block_size = X.shape[0]
            start = 0
            while start < X.shape[0]:
                take = min(self.block_size - buffered, X.shape[0] - start)
                buffer.append((X[start : start + take], None if w is None else w[start : start + take]))
                buffered += take
                start += take
                if buffered == self.block_size:
                    yield _joined(buffer)
                    buffer, buffered = [], 0
            del piece, X, w  # a yielded block is not alive while the next piece is read
        if buffered:
            yield _joined(buffer)
        if offset == 0:
            raise ValueError("the blocks hold no rows.")
        if self.sample_weight is not None and offset != len(self.sample_weight):
            raise ValueError(f"sample_weight has {len(self.sample_weight)} entries for {offset} rows.")

    def total_weight(self) -> float:
        """The stream's total weight without an E-step: the sum of sample_weight, or of the
        pieces' weights and row counts (free for arrays and memory-mapped .npy files; a
        callable's blocks, and parquet shards, are read once)."""
        if self.sample_weight is not None:
            return float(np.sum(np.asarray(self.sample_weight, np.float64)))
        total = 0.0
        for piece in self._pieces():
            X, w = piece if isinstance(piece, tuple) else (piece, None)
            total += np.shape(X)[0] if w is None else float(np.sum(np.asarray(w, np.float64)))
            del piece, X, w  # not alive while the next piece is read
        return total


def _joined(parts: list) -> tuple[np.ndarray, np.ndarray | None]:
    X = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts], axis=0)
    if all(p[1] is None for p in parts):
        return np.asarray(X), None
    w = [np.ones(len(p[0])) if p[1] is None else np.asarray(p[1], np.float64) for p in parts]
    return np.asarray(X), np.concatenate(w) if len(w) > 1 else np.asarray(w[0])


# --- one block on the device -------------------------------------------------------------------
def _device_block(model: Any, X: np.ndarray, w: np.ndarray | None, block_size: int, mask=None) -> tuple[Any, jax.Array]:
    """The model's data and weights of one host block, padded to block_size rows with
    zero-weight copies of its last row (so every block has the compiled shape), or as
    the model arranges them (`arranged_rows`, missing values: rows regrouped, given the
    block's jaxem.missing.BlockMask when the stream has made it)."""
    n = X.shape[0]
    if w is not None:
        w = np.asarray(w)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample weights must be finite and non-negative.")
    if getattr(model, "arranged", False):
        data, weights = model.arranged_rows(X, np.ones(n) if w is None else w, mask)
        return data, jnp.asarray(weights, units.float_dtype(data))
    if n < block_size:
        X, mask = _padded(X, block_size, X[-1]), None  # the mask is the unpadded block's
    data = _block_data(model, X, mask)
    weights = _padded(np.ones(n, np.float32) if w is None else w, block_size, 0.0, units.float_dtype(data))
    return data, validation.to_device(weights)


def _padded(values: np.ndarray, rows: int, fill: Any, dtype: Any = None) -> np.ndarray:
    """values (n, ...) followed by rows - n copies of fill, in one read-only aligned array
    (`_aligned_empty`) that the device uses in place: a ragged last block costs one padded
    copy, not a concatenation and then a device copy of it."""
    out = _aligned_empty((rows,) + values.shape[1:], values.dtype if dtype is None else dtype)
    out[: len(values)] = values
    out[len(values) :] = fill
    out.flags.writeable = False
    return out


def _block_data(model: Any, X: np.ndarray, mask=None) -> Any:
    """model.as_data of a block (given its jaxem.missing.BlockMask when the stream has
    made it); NaN refused (missing=None) with a pointer to missing="em"."""
    try:
        return model.as_data(X) if mask is None else model.as_data(X, mask)
    except ValueError as err:
        floating = np.issubdtype(np.asarray(X).dtype, np.floating)
        if isinstance(model, missing_lib.MissingValues) or not (floating and np.isnan(X).any()):
            raise
        raise ValueError(
            f'{err} Streamed fits take NaN as missing values too: fit_stream(..., missing="em") '
            'and fit_online(..., missing="em").'
        ) from None


@partial(jax.jit, static_argnames=("chunk_size",))
def _accumulate(total, model, params, data, weights, chunk_size):
    """total + (statistics, log-likelihood, weight) of one block: the block E-step."""
    with full_precision():
        stats, log_lik = parallel.e_step(model, params, data, weights, chunk_size)
        return parallel.tree_add(total, (stats, log_lik, jnp.sum(weights)))


def _zero_totals(model, params, data, weights, chunk_size):
    shapes = jax.eval_shape(lambda p, d, w: parallel.e_step(model, p, d, w, chunk_size), params, data, weights)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return zeros + (jnp.zeros((), weights.dtype),)


class _Stream:
    """The blocks of a fit on the device, with one compiled block E-step.

    With missing="em", `model` becomes the given one wrapped by jaxem.missing.streamed when
    the first block shows the number of features (`first_block`, which the fits call first),
    and a copy with more room whenever a block needs it (`StreamedMissingValues.for_block`:
    more slots per row, or, when it regroups rows, larger groups or pattern tables; the
    statistics keep their shape).
    """

    def __init__(self, model, source: Source, chunk_size, missing=None, prefetch="auto"):
        self.model = model
        self.source = source
        self.chunk_size = chunk_size
        self.prefetch = check_prefetch(prefetch)
        self.missing = missing_lib.check_missing(missing) == "em"
        self.first = self.first_rows = None
        self.zeros = None

    def first_block(self):
        if self.first is None:
            blocks = iter(self.source)
            try:
                X, w = next(blocks)
            finally:
                blocks.close()
            auto = self.chunk_size == "auto"
            if auto:
                self.chunk_size = api.auto_chunk_size(self.model, self.source.block_size)
            if self.missing and not isinstance(self.model, missing_lib.MissingValues):
                rows = min(self.chunk_size or self.source.block_size, self.source.block_size)
                arranged = auto or rows == self.source.block_size
                self.model = missing_lib.streamed(self.model, np.shape(X)[-1], rows, arranged=arranged)
                if self.model.arranged:  # the block's groups of rows chunk themselves
                    self.chunk_size = None
            mask = missing_lib.BlockMask(np.isnan(X)) if self.missing else None
            if self.missing:
                self._make_room(mask)
            self.first = _device_block(self.model, X, w, self.source.block_size, mask)
            self.first_rows = X, w
        return self.first

    def start_block(self):
        """The first block as starts see it: as `first_block`, but in its own row order
        when the model regroups rows (`arranged`, missing values), so that a start drawn
        from it does not depend on the regrouping."""
        data, weights = self.first_block()
        if not getattr(self.model, "arranged", False):
            return data, weights
        X, w = self.first_rows
        in_order = dataclasses.replace(
            self.model, arranged=False, width=np.shape(X)[-1], n_complete=0, groups=(), table_sizes=(), group_blocks=(), low_rank=()
        )
        return _device_block(in_order, X, w, self.source.block_size)

    def release_first(self):
        """Free the first block (the first pass reads it again)."""
        self.first = self.first_rows = None
        gc.collect(0)  # as in `blocks`

    def blocks(self):
        """The source's blocks on the device, in order. With missing values, as jaxem.fit
        requires, every row needs an observed entry (checked block by block) and every
        column one in the pass (checked once the pass has read every block)."""
        observed, first_row = None, 0
        for X, w in self.source:
            mask = None
            if self.missing:
                mask = missing_lib.BlockMask(np.isnan(X))
                missing_lib.check_block_rows(mask, first_row)
                seen = mask.observed_columns
                observed, first_row = seen if observed is None else observed | seen, first_row + X.shape[0]
                self._make_room(mask)
            block = _device_block(self.model, X, w, self.source.block_size, mask)
            del X, w, mask  # the block's host rows are not alive while the next block is read
            yield block
            del block
            # jaxlib lets go of a host array the device used in place (validation.to_device,
            # _read_npy's blocks) only when Python's garbage collector next runs (jax's gc
            # callback): a young-generation pass frees finished blocks before the next is read.
            gc.collect(0)
        if self.missing:
            validation.check_observed_columns(observed)

    def _make_room(self, mask) -> None:
        if isinstance(self.model, missing_lib.StreamedMissingValues):
            self.model = self.model.for_block(mask)

    def zero_totals(self, params, data, weights):
        """`_zero_totals` of the block E-step, traced once per fit (shapes do not change)."""
        if self.zeros is None:
            self.zeros = _zero_totals(self.model, params, data, weights, self.chunk_size)
        return self.zeros

    def e_pass(self, params):
        """(summed statistics, summed log-likelihood, total weight) at params: one pass.

        The host reads, prepares and puts the next block on the device while the E-steps
        of up to `prefetch` earlier blocks still run (dispatch is asynchronous): at most
        prefetch + 1 blocks are alive at once, the streamed fit's memory beyond the model.
        """
        total, queued = None, collections.deque()
        for data, weights in self.blocks():
            if total is None:
                total = self.zero_totals(params, data, weights)
            total = _accumulate(total, self.model, params, data, weights, self.chunk_size)
            del data, weights  # only the queued E-steps hold blocks while the next is read
            queued.append(total)
            self.wait_for_room(queued)
        return total

    def wait_for_room(self, queued: collections.deque) -> None:
        """Wait for the oldest of the queued results until at most `prefetch` remain."""
        while len(queued) > self.prefetch:
            jax.block_until_ready(queued.popleft())


def check_prefetch(prefetch: int | str) -> int:
    """Blocks whose E-steps may still run while the next block is read: "auto" is 0 on a
    CPU backend (device memory is host memory, and the E-step already uses every core:
    on bench_stream.py reading ahead with 2 held 4.1 blocks rather than 1.5-2.1 and its
    time per fit was within the machine's noise) and 2 on an accelerator (the host reads
    while the device computes); or a non-negative int."""
    if isinstance(prefetch, str):
        if prefetch != "auto":
            raise ValueError(f'prefetch must be "auto" or a non-negative int, got {prefetch!r}.')
        return 0 if jax.default_backend() == "cpu" else 2
    return validation.check_positive_int(prefetch, "prefetch", minimum=0)


# --- the model's M-step on summed statistics ----------------------------------------------------
class _SummedEStep:
    """`model` seen by jaxem.core.em_iteration with its E-step already done: the data is
    the (statistics, log-likelihood) summed over the stream, and the M-step gets no data."""

    def __init__(self, model):
        self.model = model

    def e_step(self, params, summed, weights):
        return summed

    def log_prior(self, params):
        return self.model.log_prior(params)

    def maximize(self, stats, params, m_state, data, sample_weight):
        return self.model.maximize(stats, params, m_state, None, None)


def _em_data(model, stats, log_lik, total_weight, tol):
    weights = jnp.reshape(total_weight, (1,))  # objective divides by sum(weights)
    summed = (stats, log_lik)
    return core.EMData(_SummedEStep(model), summed, weights, (summed, weights), tol)


@partial(jax.jit, static_argnames=("config",))
def _iteration(state, model, totals, tol, config):
    with full_precision():
        return core.em_iteration(state, _em_data(model, *totals, tol), config)


@jax.jit
def _objective(model, params, totals):
    with full_precision():
        em_data = _em_data(model, *totals, jnp.zeros((), totals[2].dtype))
        return core.objective(em_data.model, params, None, em_data.sample_weight, prepared=em_data.prepared)[0]


def _check_streamable(model: Any, what: str) -> None:
    check_model(model)
    if not model.additive_statistics:
        raise ValueError(
            f"{what} needs statistics that add up over blocks of rows; {type(model).__name__}'s "
            "(additive_statistics = False) are per-sample responsibilities. Fit it in memory with jaxem.fit."
        )


def _check_maximize_without_data(model, params, m_state, stats, what: str) -> None:
    try:
        jax.eval_shape(lambda s, p, m: model.maximize(s, p, m, None, None), stats, params, m_state)
    except Exception as err:  # noqa: BLE001 - any failure means the M-step needs the data
        raise TypeError(
            f"{what} runs the M-step on summed statistics alone, but {type(model).__name__}.maximize "
            f"needs the data ({type(err).__name__}: {err}). Streaming supports closed-form M-steps "
            "(the built-in families, unfrozen); fit this model in memory with jaxem.fit."
        ) from None


def _start(stream: _Stream, init, key):
    """Starting params: a dict as jaxem.fit takes it, or an init method on the first block
    (with missing values, missing entries at the block's column means, as jaxem.fit's
    starts see them at the data's)."""
    data, weights = stream.start_block()
    model = stream.model
    if isinstance(init, dict):
        return model.start_params(init, data)
    if init is not None:
        validation.check_choice(init, "init", INIT_METHODS)
    if key is None:
        raise ValueError(f"init={init!r} draws random starting params: pass key=jax.random.key(...).")
    with full_precision():
        return jax.jit(model.init_params, static_argnums=(3, 4))(key, data, weights, init, stream.chunk_size)


def _as_progress(progress):
    return PRINTER if progress is True else (progress or None)


def _single_run(result: FitResult) -> FitResult:
    """The FitResult of one run as jaxem.fit returns it with n_restarts=1."""
    return restarts.select_best(jax.tree.map(lambda leaf: jnp.asarray(leaf)[None], result))


def fit_stream(
    model: Any,
    blocks: Any,
    *,
    init: str | dict = "kmeans++",
    key: jax.Array | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    criterion: str = "loglik",
    sample_weight: Any = None,
    block_size: int | None = None,
    chunk_size: int | str | None = "auto",
    progress: bool | Callable | None = None,
    missing: str | None = None,
    prefetch: int | str = "auto",
) -> FitResult:
    """Exact EM on data streamed in blocks: one pass over the blocks per iteration.

    Args:
      model: a model with additive statistics and a closed-form M-step (module docstring).
      blocks: the block source (module docstring): a callable returning a fresh iterable of
        blocks, a list of arrays, an array or memmap, a .npy path, or a directory of shards.
      init: a dict of starting params as jaxem.fit takes it, or "kmeans++", "random",
        "random_from_data" computed on the first block (with `key`).
      max_iter, tol, criterion: as jaxem.fit (stopping rule of jaxem.core).
      sample_weight: None, or (n_rows,) weights aligned with the stream's rows; blocks may
        instead be (X, w) pairs.
      block_size: rows per compiled block (module docstring); memory on the device is
        O(block_size) (the E-step of a block runs in chunks of `chunk_size` rows, "auto" as
        jaxem.fit; with missing="em", "auto" and None regroup each block's rows instead
        and the groups chunk themselves, module docstring).
      progress: None, True or a callable (n_iter, objective, change), called once per pass.
      missing: None (default): NaN in a block is an error. "em": NaN entries are missing
        values, as jaxem.fit(..., missing="em") takes them (module docstring): each block's
        statistics are the expected complete-data statistics given its observed entries,
        the objective is the observed-data log-likelihood, and from the same start the fit
        equals jaxem.fit's with missing="em" to rounding. GaussianMixture, FactorAnalysis,
        PPCA, MixtureOfFactorAnalyzers; a row with every entry missing, or a column with
        none observed in the whole stream, is an error.
      prefetch: blocks whose E-steps may still run while the next block is read, so at
        most prefetch + 1 blocks are in memory at once. "auto": 0 on a CPU backend (one
        block at a time; `check_prefetch`), 2 on an accelerator.
    Returns:
      jaxem.FitResult as jaxem.fit's with n_restarts=1 (trace: the objective at the params
      entering each iteration; n_evals: passes over the data, the final evaluation included).
    Raises:
      ValueError / TypeError: unusable data, options, or a model that cannot be streamed.
    """
    _check_streamable(model, "fit_stream")
    config = FitConfig(max_iter=max_iter, criterion=criterion, init=None, diff=None, progress=_as_progress(progress))
    tol = validation.check_non_negative(tol, "tol")
    stream = _Stream(model, Source(blocks, block_size, sample_weight), chunk_size, missing, prefetch)
    params = _start(stream, init, key)
    model = stream.model
    m_state = model.init_m_state(params)
    dtype = units.float_dtype(stream.first_block()[0])
    _check_maximize_without_data(model, params, m_state, stream.zero_totals(params, *stream.first_block())[0], "fit_stream")
    stream.release_first()  # nothing else holds the first block: the first pass reads it again

    state = core.start_state(params, m_state, dtype, config.max_iter)
    tol = jnp.asarray(tol, dtype)
    while int(state.status) == Status.RUNNING:
        state = _iteration(state, model, stream.e_pass(state.params), tol, config)
    final_value = _objective(model, state.params, stream.e_pass(state.params))
    return _single_run(
        core.fit_result(
            state.params, final_value, n_iter=state.n_iter, status=state.status, trace=state.trace,
            n_evals=state.n_iter + 1, method=core.Method.EM,
        )
    )


# --- online EM ---------------------------------------------------------------------------------
def _frame_free_types():
    from jaxem.models.bernoulli_mixture import BernoulliMixtureStats
    from jaxem.models.categorical_mixture import CategoricalMixtureStats
    from jaxem.models.poisson_mixture import PoissonMixtureStats

    return (PoissonMixtureStats, BernoulliMixtureStats, CategoricalMixtureStats)


def _recentre_gaussian(covariance_type: str, stats, old_means, new_means):
    """GaussianMixtureStats about old_means -> about new_means (x - c' = (x - c) - d):
    s' = s - n d, S' = S - s d^T - d s^T + n d d^T (summed / diagonal as the type keeps it)."""
    n, s, S = stats.counts, stats.centred_sums, stats.centred_squares
    d = new_means - old_means
    if covariance_type in ("full", "tied"):
        cross = s[:, :, None] * d[:, None, :]
        shift = -cross - jnp.swapaxes(cross, -1, -2) + n[:, None, None] * d[:, :, None] * d[:, None, :]
        S = S + (jnp.sum(shift, axis=0) if covariance_type == "tied" else shift)
    else:
        shift = -2.0 * s * d + n[:, None] * d * d
        S = S + (jnp.sum(shift, axis=1) if covariance_type == "spherical" else shift)
    return stats._replace(centred_sums=s - n[:, None] * d, centred_squares=S)


def reframe_statistics(model: Any, stats: Any, old_params: Any, new_params: Any) -> Any:
    """Statistics computed at old_params, expressed as if computed in new_params' frame, so
    that statistics from different iterations can be averaged (online EM).

    A model's own `reframe_statistics(stats, old_params, new_params)` is used when it has
    one; plain sums (Poisson, Bernoulli, categorical mixtures) are unchanged; a Gaussian
    mixture's are re-centred on the new means.
    Raises:
      TypeError: a family whose statistics depend on the params' frame in a way not known here.
    """
    if isinstance(model, missing_lib.MissingValues):  # expected complete-data statistics of its base
        model = model.base
    own = getattr(model, "reframe_statistics", None)
    if callable(own):
        return own(stats, old_params, new_params)
    if isinstance(stats, _frame_free_types()):
        return stats
    from jaxem.models.gaussian_mixture import GaussianMixture, GaussianMixtureStats

    if isinstance(stats, GaussianMixtureStats) and isinstance(model, GaussianMixture):
        return _recentre_gaussian(model.covariance_type, stats, old_params.means, new_params.means)
    raise TypeError(
        f"fit_online averages statistics computed at different params; {type(stats).__name__} of "
        f"{type(model).__name__} may depend on the params they were computed at (e.g. centred on "
        "their means), and the model has no reframe_statistics(stats, old_params, new_params) to "
        "move them between params. Online EM supports GaussianMixture, PoissonMixture, "
        "BernoulliMixture and CategoricalMixture; use fit_stream (exact EM) for this model."
    )


@partial(jax.jit, static_argnames=("chunk_size",))
def _online_step(model, running, params, m_state, data, weights, eta, total_weight, chunk_size):
    """One block of stepwise EM: E-step on the block, s <- (1 - eta) s + eta (N / W_b)
    stats, M-step, and s moved to the new params' frame. Returns the new (running, params,
    m_state, finite) and the block's (log-likelihood, weight) at the params it saw."""
    with full_precision():
        stats, log_lik = parallel.e_step(model, params, data, weights, chunk_size)
        block_weight = jnp.sum(weights)
        eta = jnp.where(block_weight > 0, eta, 0.0)  # a block of zero weight changes nothing
        scale = jnp.where(block_weight > 0, eta * total_weight / block_weight, 0.0)
        running = jax.tree.map(lambda s, b: (1 - eta) * s + scale * b, running, stats)
        new_params, new_m_state = model.maximize(running, params, m_state, None, None)
        finite = core.all_finite(new_params) & jnp.isfinite(log_lik)
        new_params = core.tree_where(finite, new_params, params)
        new_m_state = core.tree_where(finite, new_m_state, m_state)
        running = reframe_statistics(model, running, params, new_params)
        return (running, new_params, new_m_state, finite), (log_lik, block_weight)


def fit_online(
    model: Any,
    blocks: Any,
    *,
    init: str | dict = "kmeans++",
    key: jax.Array | None = None,
    step_size: Callable[[int], float] = default_step_size,
    n_passes: int = 1,
    tol: float | None = None,
    sample_weight: Any = None,
    total_weight: float | None = None,
    block_size: int | None = None,
    chunk_size: int | str | None = "auto",
    evaluate: bool = True,
    progress: bool | Callable | None = None,
    missing: str | None = None,
    prefetch: int | str = "auto",
) -> FitResult:
    """Stepwise (online) EM: an M-step after every block, on running averaged statistics.

    Block t (counted over all passes, from 0) at params theta_t gives statistics b_t with
    total weight W_t; the running statistics become
        s_t = (1 - eta_t) s_{t-1} + eta_t (N / W_t) b_t,     eta_0 = 1, eta_t = step_size(t),
    scaled to the whole data's weight N so that the M-step (which may add priors or
    pseudo-counts) sees statistics of the data's size, and theta_{t+1} = M(s_t). With
    sum eta_t = inf and sum eta_t^2 < inf (step_size (t + 2)^-alpha, 0.5 < alpha <= 1)
    this converges to a stationary point of the likelihood (Cappé & Moulines 2009).

    Args:
      model, blocks, init, key, sample_weight, block_size, chunk_size, prefetch: as
        `fit_stream`.
        Blocks come in the source's order each pass; for data sorted by anything related
        to the latent structure, shuffle the rows (or the blocks) first.
      step_size: t -> eta_t for t >= 1.
      n_passes: passes over the data.
      tol: None (run n_passes), or stop after a pass whose streamed objective changed by
        less than tol from the previous pass's (Status.CONVERGED).
      total_weight: N; None: the sum of sample_weight, or the number of rows, found without
        an E-step (a counting pass over the blocks for a callable source, whose rows are
        only known by reading them).
      evaluate: end with one exact pass evaluating the objective at the final params
        (FitResult.log_likelihood); False: the last pass's streamed objective instead.
      progress: None, True or a callable (n_pass, objective, change), after every pass.
      missing: None or "em", as `fit_stream`: with "em" each block's statistics are the
        expected complete-data ones given its observed entries at the params it is given
        (GaussianMixture, whose statistics are re-centred as without missing values).
    Returns:
      jaxem.FitResult (n_restarts=1 layout). Here an iteration is a pass: n_iter = passes
      done; trace[p] = the streamed objective of pass p (each block's log-likelihood at the
      params it was given, summed, over the pass's weight, plus log_prior / N); n_evals =
      passes including the evaluation pass; status NON_FINITE if an update became
      non-finite (its params are then the last finite ones).
    """
    _check_streamable(model, "fit_online")
    validation.check_positive_int(n_passes, "n_passes")
    if tol is not None:
        tol = float(validation.check_non_negative(tol, "tol"))
    progress = _as_progress(progress)
    source = Source(blocks, block_size, sample_weight)
    stream = _Stream(model, source, chunk_size, missing, prefetch)
    params = _start(stream, init, key)
    model = stream.model
    m_state = model.init_m_state(params)
    dtype = units.float_dtype(stream.first_block()[0])
    zeros = stream.zero_totals(params, *stream.first_block())
    _check_maximize_without_data(model, params, m_state, zeros[0], "fit_online")
    reframe_statistics(model, zeros[0], params, params)  # refuse unsupported families early
    stream.release_first()
    if total_weight is None:
        total_weight = source.total_weight()
    total_weight = jnp.asarray(total_weight, dtype)

    running = zeros[0]
    trace = np.full(n_passes, np.nan)
    status, t, n_done, previous = Status.MAX_ITER, 0, 0, -np.inf
    for n_pass in range(n_passes):
        log_lik, weight, finite = jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.asarray(True)
        queued = collections.deque()
        for data, weights in stream.blocks():
            eta = jnp.asarray(1.0 if t == 0 else step_size(t), dtype)
            (running, params, m_state, ok), (block_ll, block_w) = _online_step(
                stream.model, running, params, m_state, data, weights, eta, total_weight, stream.chunk_size
            )
            log_lik, weight, finite = log_lik + block_ll, weight + block_w, finite & ok
            t += 1
            del data, weights  # as _Stream.e_pass
            queued.append(params)
            stream.wait_for_room(queued)
        value = float((log_lik + model.log_prior(params) * weight / total_weight) / weight)
        trace[n_pass], n_done = value, n_pass + 1
        if progress is not None:
            progress(jnp.asarray(n_done), jnp.asarray(value), jnp.asarray(value - previous))
        if not bool(finite) or not np.isfinite(value):
            status = Status.NON_FINITE
            break
        if tol is not None and abs(value - previous) < tol:
            status = Status.CONVERGED
            break
        previous = value
    final_value = _objective(model, params, stream.e_pass(params)) if evaluate else jnp.asarray(trace[n_done - 1], dtype)
    return _single_run(
        core.fit_result(
            params, final_value, n_iter=jnp.asarray(n_done, jnp.int32), status=jnp.asarray(status, jnp.int32),
            trace=jnp.asarray(trace, dtype), n_evals=jnp.asarray(n_done + int(evaluate), jnp.int32),
            method=core.Method.EM,
        )
    )
