"""Streamed fits with missing values (jaxem.stream, missing="em") against the in-memory
jaxem.fit(..., missing="em"), itself tested against a numpy EM in tests/test_missing.py.

The stream sees one block at a time (its rows regrouped within the block, or a table of
every pattern, or a per-row conditional E-step with as many slots as a row has needed so
far; the base E-step on complete rows), so equality with the in-memory fit (rows ordered
and grouped by pattern over the whole data) tests the bookkeeping of each block: padding,
weights, regrouping, complete and incomplete blocks, chunks. Float64 (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import missing, stream

KEY = jax.random.key(0)
EXACT = 1e-10
N_ROWS, BLOCK = 300, 64


def _data(n_rows=N_ROWS, seed=0):
    """Three correlated clusters in 3-D with ~15% of entries missing; column 0 missing in
    every row of the first 40 (a block may miss a column the stream observes elsewhere) and
    rows 64-127 complete (a whole block on the base E-step). Returns (X with NaN, weights)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -1.0], [1.0, 5.0, 2.0]])
    X = centres[rng.integers(0, 3, n_rows)] + rng.normal(size=(n_rows, 3)) @ [[1.0, 0.3, 0.1], [0.0, 0.8, 0.2], [0.0, 0.0, 0.7]]
    missing = rng.random(X.shape) < 0.15
    missing[:40, 0] = True
    missing[64:128] = False
    missing[missing.all(axis=1), 1] = False
    return np.where(missing, np.nan, X), rng.uniform(0.2, 2.0, n_rows)


X, W = _data()
# X with at most one entry missing per row in the first block (the rest as X): a per-row
# stream starts at one slot per row and widens to two at a later block.
X_NARROW_START = X.copy()
_first_nan = np.isnan(X[:BLOCK])
X_NARROW_START[:BLOCK][_first_nan & (np.cumsum(_first_nan, axis=1) > 1)] = 0.5
PIECES = [(0, 37), (37, 200), (200, 201), (201, N_ROWS)]  # uneven, regrouped into blocks of 64 (last: 44 rows)

STARTS = {
    "gmm": (
        jaxem.GaussianMixture(3),
        {
            "weights": np.array([0.3, 0.3, 0.4]),
            "means": np.array([[0.5, 0.5, 0.0], [3.0, 1.0, -0.5], [1.0, 4.0, 1.0]]),
            "covariances": np.stack([np.eye(3), 1.5 * np.eye(3), [[1.0, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 1.0]]]),
        },
    ),
    "diag": (
        jaxem.GaussianMixture(3, covariance_type="diag"),
        {"weights": np.array([0.3, 0.3, 0.4]), "means": np.array([[0.5, 0.5, 0.0], [3.0, 1.0, -0.5], [1.0, 4.0, 1.0]]), "covariances": np.ones((3, 3))},
    ),
    "fa": (
        jaxem.FactorAnalysis(1),
        {"mean": np.array([1.5, 2.0, 0.5]), "loadings": np.array([[1.0], [-1.0], [0.5]]), "noise_variances": np.ones(3)},
    ),
}


def weighted_pieces(X, W):
    return [(X[a:b], W[a:b]) for a, b in PIECES]


def assert_same_fit(a, b, tol=EXACT):
    """Same iterations, status and evaluations; params and trace equal to tol relative."""
    assert (int(a.n_iter), int(a.status), int(a.n_evals)) == (int(b.n_iter), int(b.status), int(b.n_evals))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol * 1e-3)
    np.testing.assert_allclose(np.asarray(a.trace), np.asarray(b.trace), rtol=tol)  # NaN padding equal
    np.testing.assert_allclose(float(a.log_likelihood), float(b.log_likelihood), rtol=tol)


def test_streamed_e_step_choice():
    """Blocks of 64 rows and D = 3 tabulate the 8 patterns; chunks of 16 rows (fewer than 4
    per pattern) and diagonal covariances do not; a pattern's index is its bit field."""
    table = missing.every_pattern(3)
    assert missing.streamed(STARTS["gmm"][0], 3, BLOCK).patterns == table
    assert missing.streamed(STARTS["fa"][0], 3, 16).patterns == ()
    assert missing.streamed(STARTS["diag"][0], 3, BLOCK).patterns == ()
    assert missing.streamed(STARTS["gmm"][0], 11, 10**6).patterns == ()  # 2048 > MAX_TABULATED_PATTERNS
    # Unchunked blocks are regrouped (diagonal covariances need not be).
    assert missing.streamed(STARTS["gmm"][0], 3, BLOCK, arranged=True).arranged
    assert not missing.streamed(STARTS["diag"][0], 3, BLOCK, arranged=True).arranged
    # Per row, the slots grow with the most entries a block's row misses; a table or
    # diagonal covariances keep D.
    per_row = missing.streamed(STARTS["fa"][0], 3, 16)
    assert per_row.width == 1
    two = np.array([[True, False, True], [False, False, False]])
    assert per_row.for_block(two).width == 2 and per_row.for_block(two[1:]) is per_row
    assert missing.streamed(STARTS["gmm"][0], 3, BLOCK).for_block(two).width == 3
    assert missing.streamed(STARTS["diag"][0], 3, BLOCK).for_block(two[1:]).width == 3
    with pytest.raises(ValueError, match="misses 2 entries, more than width=1"):
        per_row.as_data(np.where(two, np.nan, 1.0))
    masks = np.array([[c in columns for c in range(3)] for columns in table])
    np.testing.assert_array_equal(missing.pattern_keys(masks), np.arange(8))


@pytest.mark.parametrize(
    "name, chunk_size", [("gmm", 32), ("fa", 16), ("diag", 16), ("gmm_arranged", None), ("gmm_arranged_blocks", None)]
)
def test_stream_equals_the_in_memory_fit(name, chunk_size, monkeypatch):
    # Full covariances in chunks of 32 rows: the tabulated patterns; FactorAnalysis in
    # chunks of 16 rows: per-row factorisations, each chunk choosing its E-step, one slot
    # per row until the second block needs two; diagonal: its own. Arranged (unchunked
    # blocks): regrouped by how many entries a row misses, the rows reordered so that the
    # first block is complete (no group), the second adds a group of one-entry rows and the
    # third one of two-entry rows, and groups of more than 2 x 8 rows in chunks of at most 8 (a loop).
    # Arranged in blocks: as arranged, the one-entry rows in blocks of 8 rows of one pattern
    # (per-pattern coefficients) and the two-entry rows in low-rank blocks of 8.
    model, init = STARTS[name.split("_")[0]]
    data, weights = (X, W) if name in ("gmm", "diag") else (X_NARROW_START, W)
    arranged = name.startswith("gmm_arranged")
    if name == "gmm_arranged_blocks":
        monkeypatch.setattr(missing, "_choose_group_blocks", lambda rows, n_features, width: (8, width == 2))
    if arranged:
        order = np.r_[BLOCK : 2 * BLOCK, :BLOCK, 2 * BLOCK : N_ROWS]
        data, weights = data[order], W[order]
    options = dict(init=init, max_iter=40, tol=1e-8)
    ref = jaxem.fit(model, data, key=KEY, sample_weight=weights, missing="em", **options)  # groups unchunked
    if name == "gmm_arranged":
        monkeypatch.setattr(missing, "GROUP_CHUNK_ROWS", 8)
    models = []
    widen = missing.StreamedMissingValues.for_block
    monkeypatch.setattr(missing.StreamedMissingValues, "for_block", lambda self, m: models.append(widen(self, m)) or models[-1])
    res = stream.fit_stream(model, weighted_pieces(data, weights), block_size=BLOCK, chunk_size=chunk_size, missing="em", **options)
    assert int(res.n_iter) > 5
    assert_same_fit(res, ref)
    widths = [m.width for m in models]
    assert sorted(set(widths)) == ([3] if name in ("gmm", "diag") else [1, 2]) and widths[0] == min(widths)
    assert all(m.arranged for m in models) == arranged
    if arranged:
        groups = [[w for w, _ in m.groups] for m in models]
        assert [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]] == [[], [1], [1, 2]]
    if name == "gmm_arranged":
        assert max(c for _, c in models[-1].groups) > 2 * 8  # a chunked group
        assert models[-1].group_blocks == (0, 0)
    if name == "gmm_arranged_blocks":
        assert (models[-1].group_blocks, models[-1].low_rank, models[-1].table_sizes) == ((8, 8), (False, True), (3, 3))
        assert all(c % 8 == 0 for _, c in models[-1].groups)


def test_arranged_blocks_group_rows_by_missing_entries():
    """arranged_rows orders a block complete rows first, then by entries missing and by
    pattern, pads each group to its capacity with weight-0 copies (or filler rows missing
    the group's entries), and refuses a block its capacities cannot hold; for_block grows
    them."""
    model = missing.streamed(STARTS["gmm"][0], 3, 8, arranged=True)  # 8 patterns, too few rows for a table
    assert model.arranged and model.groups == () and model.width == 1
    block = np.array([[1.0, np.nan, np.nan], [2.0, 2.0, 2.0], [3.0, np.nan, 3.0], [4.0, 4.0, np.nan], [5.0, 5.0, 5.0]])
    # Rows missing 2 0 1 1 0 entries.
    grown = model.for_block(np.isnan(block))
    # Counts 2, 2, 1 rows with 0, 1, 2 missing: GROUP_HEADROOM (1.05) times, rounded up to
    # a multiple of 5 // GROUP_QUANTA -> 1 row.
    # Patterns: 2 of one entry (columns 1, 2), 1 of two, tables as many, rounded the same.
    assert (grown.n_complete, grown.groups, grown.table_sizes, grown.width) == (3, ((1, 3), (2, 2)), (3, 2), 2)
    assert grown.for_block(np.isnan(block)) is grown
    with pytest.raises(ValueError, match="through arranged_rows"):
        grown.as_data(block)
    rows, w = grown.arranged_rows(block, np.arange(1.0, 6.0))
    order = [1, 4, 4, 2, 3, 3, 0, 0]
    filled = np.where(np.isnan(block), [3.0, 11.0 / 3.0, 10.0 / 3.0], block)  # the column means by hand
    np.testing.assert_allclose(rows.values, filled[order], rtol=1e-15)
    np.testing.assert_array_equal(rows.observed, ~np.isnan(block[order]))
    np.testing.assert_array_equal(w, [2.0, 5.0, 0.0, 3.0, 4.0, 0.0, 1.0, 0.0])
    # Each row's index among its group's distinct patterns, its slots, and the table built from them.
    np.testing.assert_array_equal(rows.pattern, [0, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows.missing_index, [[0, 0]] * 3 + [[1, 0], [2, 0], [2, 0]] + [[1, 2]] * 2)
    np.testing.assert_array_equal(rows.missing_valid, [[False, False]] * 3 + [[True, False]] * 3 + [[True, True]] * 2)
    one_entry = jax.tree.map(lambda leaf: leaf[3:6], rows)._replace(missing_index=rows.missing_index[3:6, :1])
    np.testing.assert_array_equal(missing.group_patterns(one_entry, 3).slots, [[1], [2], [2]])
    three = np.ones((5, 3))  # three one-entry patterns
    three[[0, 1, 2], [0, 1, 2]] = np.nan
    with pytest.raises(ValueError, match="3 patterns of 1 missing entries, more than 2"):
        dataclasses.replace(grown, table_sizes=(2, 2)).arranged_rows(three, np.ones(5))
    wider = grown.for_block(np.isnan(np.array([[np.nan, np.nan, 1.0]] * 3)))
    assert wider.groups == ((1, 3), (2, 4)) and wider.n_complete == 3 and wider.table_sizes == (3, 2)
    rows, w = wider.arranged_rows(block[[1, 2]], np.ones(2))
    assert rows.values.shape == (10, 3) and w.tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    # An empty group: filler rows missing the group's first entries, finite values.
    np.testing.assert_array_equal(rows.observed[6:], [[0.0, 0.0, 1.0]] * 4)
    np.testing.assert_array_equal(rows.missing_index[6:], [[0, 1]] * 4)
    assert np.isfinite(rows.values).all()
    with pytest.raises(ValueError, match="3 rows missing 1 entries, more than 2"):
        dataclasses.replace(grown, groups=((1, 2), (2, 2))).arranged_rows(block[[2, 3, 3]], np.ones(3))
    with pytest.raises(ValueError, match=r"rows missing \[2\] entries, which no group takes"):
        dataclasses.replace(grown, groups=((1, 3),), table_sizes=(3,)).arranged_rows(block, np.ones(5))


def test_width_patterns_and_their_ids():
    """The static table of every pattern of W missing entries is itertools.combinations'
    order, and width_pattern_ids ranks any pattern's columns into it."""
    for n_features, width in [(3, 1), (5, 2), (7, 3), (16, 2)]:
        table = missing.width_patterns(n_features, width)
        combos = list(itertools.combinations(range(n_features), width))
        np.testing.assert_array_equal(table.slots, combos)
        assert table.valid.all()
        shuffled = np.random.default_rng(width).permutation(len(combos))
        np.testing.assert_array_equal(missing.width_pattern_ids(table.slots[shuffled], n_features), shuffled)


def test_arranged_rows_in_blocks_of_one_pattern(monkeypatch):
    """A group in blocks: each pattern's rows padded to whole blocks with weight-0 copies,
    every block one pattern whose id indexes the static table of its width, the group
    padded to its capacity (whole blocks) with weight-0 copies; each row of the block
    appears once, with its weight."""
    monkeypatch.setattr(missing, "_choose_group_blocks", lambda rows, n_features, width: (4, False) if width == 1 else (0, False))
    rng = np.random.default_rng(5)
    block = rng.normal(size=(40, 4))
    holes = (rng.random(40) < 0.7) & (np.arange(40) >= 3)
    block[holes, rng.integers(0, 4, holes.sum())] = np.nan  # one entry: 4 patterns
    block[:3, :2] = np.nan  # two entries: per row
    model = missing.streamed(STARTS["gmm"][0], 4, 40, arranged=True).for_block(np.isnan(block))
    (one, capacity), (two, _) = model.groups
    assert (one, two, model.group_blocks, model.table_sizes[0]) == (1, 2, (4, 0), 4) and capacity % 4 == 0
    rows, w = model.arranged_rows(block, np.arange(1.0, 41.0))
    group = slice(model.n_complete, model.n_complete + capacity)
    pattern = np.asarray(rows.pattern[group]).reshape(-1, 4)
    assert (pattern == pattern[:, :1]).all()  # one pattern per block
    np.testing.assert_array_equal(rows.missing_index[group, 0], missing.width_patterns(4, 1).slots[rows.pattern[group], 0])
    np.testing.assert_array_equal(np.asarray(rows.observed[group]) == 0, np.arange(4) == np.asarray(rows.missing_index[group, :1]))
    real = w > 0
    assert sorted(w[real].astype(int).tolist()) == list(range(1, 41))
    np.testing.assert_array_equal(np.isnan(block[w[real].astype(int) - 1]), np.asarray(rows.observed)[real] == 0)
    observed = ~np.isnan(block[w[real].astype(int) - 1])
    np.testing.assert_array_equal(np.asarray(rows.values)[real][observed], block[w[real].astype(int) - 1][observed])


def test_arranged_rows_equal_partial_rows_of_the_arranged_block():
    """The host-built PartialRows of an arranged block equal conditional_gaussian's
    partial_rows (the device builder jaxem.fit uses) of the same rows in the same order,
    when no padding changes the column means; the weights move with their rows; each group
    is sorted by pattern and its pattern ids index its distinct patterns."""
    rng = np.random.default_rng(3)
    block = rng.normal(size=(60, 5))
    mask = rng.random(block.shape) < 0.3
    mask[mask.all(axis=1), 0] = False
    block[mask] = np.nan
    n_missing = mask.sum(axis=1)
    widths = [int(v) for v in np.unique(n_missing) if v > 0]
    keys = missing.pattern_keys(mask)
    model = dataclasses.replace(
        missing.streamed(STARTS["gmm"][0], 5, 60, arranged=True),
        n_complete=int(np.sum(n_missing == 0)), width=max(widths),
        groups=tuple((v, int(np.sum(n_missing == v))) for v in widths),
        table_sizes=tuple(len(np.unique(keys[n_missing == v])) for v in widths),
    )  # capacities that fit exactly: no padding
    rows, w = model.arranged_rows(block, np.arange(1.0, 61.0))
    arranged = block[w.astype(int) - 1]  # the weights name the rows
    np.testing.assert_array_equal(np.isnan(arranged), np.asarray(rows.observed) == 0)
    assert sorted(w.tolist()) == list(range(1, 61))
    reference = missing.cg.partial_rows(jnp.asarray(arranged), model.width)
    for name in ("values", "observed", "missing_index", "missing_valid"):
        np.testing.assert_allclose(getattr(rows, name), getattr(reference, name), rtol=1e-14, err_msg=name)
    arranged_keys, arranged_missing = missing.pattern_keys(np.isnan(arranged)), np.isnan(arranged).sum(axis=1)
    assert np.all(np.diff(arranged_missing) >= 0)
    start = model.n_complete
    for (width, capacity), table_size in zip(model.groups, model.table_sizes):
        group = slice(start, start + capacity)
        assert np.all(np.diff(arranged_keys[group]) >= 0)
        _, ranks = np.unique(arranged_keys[group], return_inverse=True)
        np.testing.assert_array_equal(rows.pattern[group], ranks)
        start += capacity


# Keys counted in a table of every key (5 features), sorted (14: 2^14 keys > 200 rows), and
# the rows themselves (70 features: no bit field).
@pytest.mark.parametrize("n_features", [5, 14, 70])
def test_sorted_patterns_groups_rows_by_pattern(n_features):
    """sorted_patterns: one id per distinct pattern, ids ordered by entries missed, each
    id's first row, width and rows, and an order that keeps each pattern's rows together
    and in their order."""
    rng = np.random.default_rng(4)
    templates = rng.random((6, n_features)) < 0.2
    templates[0] = False  # complete rows
    mask = templates[rng.integers(0, 6, 200)]
    order, pattern, widths, first, counts = missing.sorted_patterns(mask)
    distinct = {tuple(row) for row in mask}
    assert len(widths) == len(first) == len(counts) == len(distinct)
    for p in range(len(widths)):
        rows = np.flatnonzero(pattern == p)
        assert all((mask[rows] == mask[rows[0]]).all(axis=1)) and rows[0] == first[p] and mask[rows[0]].sum() == widths[p]
        assert counts[p] == rows.size
    assert len({tuple(mask[first[p]]) for p in range(len(first))}) == len(first)  # distinct ids, distinct patterns
    assert np.all(np.diff(widths) >= 0) and np.all(np.diff(pattern[order]) >= 0)
    for p in range(len(widths)):
        np.testing.assert_array_equal(order[pattern[order] == p], np.flatnonzero(pattern == p))  # stable


@pytest.mark.parametrize("n_features", [5, 14, 70])
@pytest.mark.parametrize("empty_rows", [False, True])
def test_block_mask_counts_equal_numpy_reductions(n_features, empty_rows):
    """BlockMask derives its per-row and per-column counts from the distinct patterns; they
    equal numpy's reductions of the mask, and the checks name the first empty row."""
    rng = np.random.default_rng(5)
    mask = rng.random((300, n_features)) < 0.3
    mask[:, 1] = True  # a column missing throughout
    mask[mask.all(axis=1), 0] = False
    if empty_rows:
        mask[[7, 150, 299]] = True
    block = missing.BlockMask(mask)
    np.testing.assert_array_equal(block.n_missing, mask.sum(axis=1))
    np.testing.assert_array_equal(block.column_missing, mask.sum(axis=0))
    np.testing.assert_array_equal(block.observed_columns, ~mask.all(axis=0))
    np.testing.assert_array_equal(block.empty_rows, np.flatnonzero(mask.all(axis=1)))
    if empty_rows:
        with pytest.raises(ValueError, match=r"3 row\(s\) with every entry missing \(the first is row 1007\)"):
            missing.check_block_rows(block, 1000)
    else:
        missing.check_block_rows(block, 1000)
    with pytest.raises(ValueError, match="every"):
        missing.check_missing_pattern(mask)


def test_kmeans_start_sees_the_first_blocks_column_means():
    model, _ = STARTS["gmm"]
    res = stream.fit_stream(model, X, key=KEY, block_size=BLOCK, max_iter=40, tol=1e-8, missing="em")
    first = X[:BLOCK]
    observed_means = np.nanmean(np.where(np.isnan(first).all(axis=0), 0.0, first), axis=0)  # a column missing throughout: 0
    filled = np.where(np.isnan(first), observed_means, first)
    start = jax.jit(model.init_params, static_argnums=(3, 4))(KEY, jnp.asarray(filled), jnp.ones(BLOCK), "kmeans++", None)
    ref = jaxem.fit(model, X, key=KEY, init={k: np.asarray(v) for k, v in start._asdict().items()}, max_iter=40, tol=1e-8, missing="em")
    assert_same_fit(res, ref)


def test_online_single_block_first_step_is_one_em_iteration():
    # eta_0 = 1 and one block holding all the weight: s_0 = stats, so theta_1 = M(stats).
    # The reference is exact streamed EM, equal to jaxem.fit (test above).
    model, init = STARTS["gmm"]
    block = X[:BLOCK], W[:BLOCK]
    ref = stream.fit_stream(model, [block], init=init, max_iter=1, tol=0.0, missing="em")
    res = stream.fit_online(model, [block], init=init, evaluate=False, missing="em")
    for x, y in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-14)
    # The pass's streamed objective: the observed-data log-likelihood at the start.
    np.testing.assert_allclose(float(res.trace[0]), float(ref.trace[0]), rtol=1e-12)


def test_online_approaches_the_streamed_optimum():
    """Stepwise EM on 1200 rows in blocks of 64 (19 updates per pass). Measured (data seeds
    1-4, and 2400 rows): after 16 passes 2.5e-4 .. 3.7e-4 per row below exact EM's optimum
    (4.5e-4 .. 7.5e-4 after 8: the gap shrinks with the step size, eta_t = (t + 2)^-0.6),
    so 1e-3, the complete-data online tests' bound (tests/test_stream.py), leaves a margin
    of 2.7; after 2 passes 2.3e-3 .. 3.5e-3, at most 0.27 of exact EM's gap after its 2
    iterations (1.3e-2 .. 2.1e-2)."""
    Xl, _ = _data(n_rows=1200, seed=1)
    model, init = STARTS["gmm"]
    optimum = stream.fit_stream(model, Xl, init=init, block_size=BLOCK, max_iter=40, tol=1e-12, missing="em")
    assert bool(optimum.converged)
    best = float(optimum.log_likelihood)
    online = stream.fit_online(model, Xl, init=init, block_size=BLOCK, n_passes=16, missing="em")
    assert 0.0 <= best - float(online.log_likelihood) < 1e-3  # never above the maximum
    two = stream.fit_online(model, Xl, init=init, block_size=BLOCK, n_passes=2, missing="em")
    assert best - float(two.log_likelihood) < 0.5 * (best - float(optimum.trace[2]))


def test_errors():
    model, init = STARTS["gmm"]
    with pytest.raises(ValueError, match='fit_stream\\(..., missing="em"\\)'):
        stream.fit_stream(model, X, init=init, block_size=BLOCK)
    with pytest.raises(ValueError, match="missing"):
        stream.fit_stream(model, X, init=init, block_size=BLOCK, missing="drop")
    empty_row = X.copy()
    empty_row[130] = np.nan
    with pytest.raises(ValueError, match="every entry missing \\(the first is row 130\\)"):
        stream.fit_stream(model, empty_row, init=init, block_size=BLOCK, missing="em")
    empty_column = np.where(np.isnan(X), 1.0, X)
    empty_column[:, 2] = np.nan
    with pytest.raises(ValueError, match="column\\(s\\) \\[2\\] with every entry missing"):
        stream.fit_stream(model, empty_column, init=init, block_size=BLOCK, missing="em")
    with pytest.raises(TypeError, match="Gaussian components"):
        stream.fit_stream(jaxem.PoissonMixture(2), np.abs(X), key=KEY, block_size=BLOCK, missing="em")
    with pytest.raises(TypeError, match="jaxem.fit"):
        stream.fit_stream(jaxem.GaussianHMM(2), X, key=KEY, block_size=BLOCK, missing="em")
    with pytest.raises(TypeError, match="reframe_statistics"):
        stream.fit_online(STARTS["fa"][0], X, init=STARTS["fa"][1], block_size=BLOCK, missing="em")
