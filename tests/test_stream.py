"""Out-of-core EM (jaxem.stream): streamed exact EM equals the in-memory fit; online EM
reaches the batch optimum. Float64 (tests/conftest.py)."""

from __future__ import annotations

import gc
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import stream, validation

KEY = jax.random.key(0)
EXACT = 1e-10


def gaussian_data(n=1003, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    return centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])


X = gaussian_data()


def as_dict(params):
    return {name: np.asarray(value) for name, value in params._asdict().items()}


def start_of(model, X, **kw):
    """A starting point a few EM steps in (so both fits have work left)."""
    return as_dict(jaxem.fit(model, X, key=KEY, max_iter=3, chunk_size=None, **kw).params)


def assert_same_fit(a, b, tol=EXACT):
    assert int(a.n_iter) == int(b.n_iter)
    assert int(a.status) == int(b.status) and bool(a.converged) == bool(b.converged)
    assert int(a.n_evals) == int(b.n_evals)
    assert abs(float(a.log_likelihood) - float(b.log_likelihood)) <= tol
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=tol)
    np.testing.assert_allclose(np.asarray(a.trace), np.asarray(b.trace), rtol=0, atol=tol)  # NaN padding equal
    assert int(a.n_decreases) == int(b.n_decreases)


@pytest.fixture(scope="module")
def gmm_reference():
    model = jaxem.GaussianMixture(3)
    init = start_of(model, X)
    ref = jaxem.fit(model, X, key=KEY, init=init, max_iter=200, tol=1e-10, chunk_size=None)
    return model, init, ref


@pytest.mark.parametrize("block_size", [100, 256, 1003, 2000])
def test_stream_equals_in_memory_fit(gmm_reference, block_size):
    # 256 leaves a ragged last block (235 rows); 2000 pads the single block.
    model, init, ref = gmm_reference
    res = stream.fit_stream(model, X, init=init, max_iter=200, tol=1e-10, block_size=block_size)
    assert bool(ref.converged)
    assert_same_fit(res, ref)
    assert int(res.best_restart) == 0 and res.restarts.trace.shape == (1, 200)


def test_stream_weighted_diag_and_max_iter_stop():
    model = jaxem.GaussianMixture(3, covariance_type="diag")
    w = np.random.default_rng(1).uniform(0.1, 3.0, X.shape[0])
    init = start_of(model, X, sample_weight=w)
    for options in (dict(max_iter=200, tol=1e-9), dict(max_iter=7, tol=0.0), dict(max_iter=200, tol=1e-8, criterion="params")):
        ref = jaxem.fit(model, X, key=KEY, init=init, sample_weight=w, chunk_size=None, **options)
        res = stream.fit_stream(model, X, init=init, sample_weight=w, block_size=300, **options)
        assert_same_fit(res, ref)
    assert int(res.status) == jaxem.Status.CONVERGED
    # Weights inside the blocks as (X, w) pairs give the same fit.
    pairs = [(X[i : i + 300], w[i : i + 300]) for i in range(0, len(X), 300)]
    assert_same_fit(stream.fit_stream(model, pairs, init=init, **options), res, tol=0)


def test_stream_poisson_mixture():
    rng = np.random.default_rng(2)
    rates = np.array([[1.0, 4.0], [6.0, 0.5]])
    counts = rng.poisson(rates[rng.integers(0, 2, 801)]).astype(float)
    model = jaxem.PoissonMixture(2)
    init = start_of(model, counts)
    ref = jaxem.fit(model, counts, key=KEY, init=init, max_iter=300, tol=1e-11, chunk_size=None)
    assert_same_fit(stream.fit_stream(model, counts, init=init, max_iter=300, tol=1e-11, block_size=128), ref)


def test_block_sources_agree(tmp_path, gmm_reference):
    model, init, ref = gmm_reference
    options = dict(init=init, max_iter=200, tol=1e-10, block_size=256)
    base = stream.fit_stream(model, X, **options)
    np.save(tmp_path / "all.npy", X)
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "part0.npy", X[:300])
    np.save(shards / "part1.npy", X[300:650])
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rest = X[650:]
    pq.write_table(pa.table({"a": rest[:, 0], "b": rest[:, 1]}), shards / "part2.parquet", row_group_size=100)
    pieces = [X[:10], X[10:500], X[500:501], X[501:]]  # uneven pieces, regrouped into blocks of 256
    sources = {
        "npy": str(tmp_path / "all.npy"),
        "memmap": np.load(tmp_path / "all.npy", mmap_mode="r"),
        "directory": shards,
        "list": pieces,
        "callable": lambda: (piece for piece in pieces),
    }
    for name, source in sources.items():
        assert_same_fit(stream.fit_stream(model, source, **options), base, tol=0), name
    assert_same_fit(base, ref)


def aligned_read_only(rows):
    block = stream._aligned_empty(rows.shape, rows.dtype)
    block[...] = rows
    block.flags.writeable = False
    return block


def owner(array):
    """The NumPy object whose memory array views."""
    while array.base is not None:
        array = array.base
    return array


def test_npy_blocks_are_aligned_read_only_copies_the_device_uses_in_place(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setattr(stream, "RELEASE_BYTES", 100)  # six rows copied at a time, their pages released
    blocks = list(stream._read_npy(tmp_path / "x.npy", 256))
    assert [len(b) for b in blocks] == [256, 256, 256, 235]
    np.testing.assert_array_equal(np.concatenate(blocks), X)
    for block in blocks:
        assert not block.flags.writeable and block.ctypes.data % stream.DEVICE_ALIGNMENT == 0
        if jax.default_backend() == "cpu":  # used in place: no second copy of the block
            assert validation.to_device(block).unsafe_buffer_pointer() == block.ctypes.data
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")  # jaxem.fit's data checks and transfer
    if jax.default_backend() == "cpu":
        assert validation.as_data(mapped).unsafe_buffer_pointer() == mapped.ctypes.data
    writable = X.copy()
    on_device = validation.to_device(writable)  # copied: later writes do not reach it
    writable[0, 0] = 99.0
    assert float(on_device[0, 0]) == X[0, 0]


def alive_after_release(alive, most, patience=1.0):
    """How many of the weakly referenced blocks are alive, once jaxlib has had up to
    `patience` seconds to let go of finished ones: it releases a host array the device used
    in place from its own thread after the result is ready, and drops the Python reference
    at the next garbage collection. A reference Python code keeps never goes."""
    deadline = time.monotonic() + patience
    while True:
        gc.collect(0)
        count = sum(r() is not None for r in alive)
        if count <= most or time.monotonic() > deadline:
            return count
        time.sleep(0.001)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_at_most_prefetch_blocks_alive_while_the_next_is_read(gmm_reference, prefetch):
    # Blocks the device uses in place (read-only, aligned: as _read_npy's) stay alive as long
    # as anything holds them on the device; when the source is asked for the next block,
    # at most `prefetch` earlier ones may be.
    if jax.default_backend() != "cpu":
        pytest.skip("in-place device blocks are a CPU property")
    model, init, ref = gmm_reference
    alive, counts = [], []

    def tracked(rows):
        block = aligned_read_only(rows)
        alive.append(weakref.ref(owner(block)))
        return block

    def blocks():
        for start in range(0, len(X), 100):
            counts.append(alive_after_release(alive, prefetch))
            yield tracked(X[start : start + 100])

    res = stream.fit_stream(model, blocks, init=init, max_iter=200, tol=1e-10, block_size=100, prefetch=prefetch)
    assert_same_fit(res, ref)
    stream.fit_online(model, blocks, init=init, n_passes=2, block_size=100, prefetch=prefetch)
    assert len(counts) > 100 and max(counts) <= prefetch
    with pytest.raises(ValueError, match="prefetch"):
        stream.fit_stream(model, blocks, init=init, prefetch=-1)
    with pytest.raises(ValueError, match="prefetch"):
        stream.fit_stream(model, blocks, init=init, prefetch="all")


def test_kmeans_start_on_the_first_block():
    model = jaxem.GaussianMixture(3)
    res = stream.fit_stream(model, X, key=KEY, max_iter=200, tol=1e-10, block_size=400)
    first = jnp.asarray(X[:400])
    start = model.init_params(KEY, first, jnp.ones(400), "kmeans++", None)
    ref = jaxem.fit(model, X, key=KEY, init=as_dict(start), max_iter=200, tol=1e-10, chunk_size=None)
    assert_same_fit(res, ref)


def test_progress_once_per_pass(gmm_reference):
    model, init, ref = gmm_reference
    calls = []
    res = stream.fit_stream(
        model, X, init=init, max_iter=200, tol=1e-10, block_size=500,
        progress=lambda n, value, change: calls.append((int(n), float(value))),
    )
    jax.effects_barrier()
    assert [n for n, _ in calls] == list(range(1, int(res.n_iter) + 1))
    np.testing.assert_allclose([v for _, v in calls], np.asarray(res.trace)[: int(res.n_iter)], rtol=0, atol=0)


def test_refuses_models_and_options_it_cannot_stream():
    latent = jaxem.LatentModel(
        lambda p, x: jnp.log(p["weights"]) - 0.5 * (x[0] - p["locs"]) ** 2,
        lambda key, X: {"weights": jnp.full(2, 0.5), "locs": jnp.array([-1.0, 1.0])},
        constraints={"weights": "simplex"},
    )
    with pytest.raises(ValueError, match="add up over blocks"):
        stream.fit_stream(latent, X[:, :1], key=KEY)
    frozen = jaxem.freeze(jaxem.GaussianMixture(3), "weights")
    with pytest.raises(TypeError, match="needs the data"):
        stream.fit_stream(frozen, X, key=KEY, block_size=500)
    with pytest.raises(TypeError, match="reframe_statistics"):
        stream.fit_online(jaxem.StudentTMixture(2), X, key=KEY, block_size=500)
    with pytest.raises(ValueError, match="key"):
        stream.fit_stream(jaxem.GaussianMixture(3), X)
    with pytest.raises(ValueError, match="NaN"):
        stream.fit_stream(jaxem.GaussianMixture(3), np.where(np.arange(1003)[:, None] == 900, np.nan, X), key=KEY, block_size=300)
    with pytest.raises(ValueError, match="sample_weight has"):
        stream.fit_stream(jaxem.GaussianMixture(3), X, key=KEY, sample_weight=np.ones(1000), block_size=300)
    with pytest.raises(TypeError, match="blocks must be"):
        stream.fit_stream(jaxem.GaussianMixture(3), 3.0, key=KEY)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_reframed_statistics_equal_statistics_in_the_new_frame(covariance_type):
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    rng = np.random.default_rng(3)
    resp = jnp.asarray(rng.dirichlet(np.ones(3), X.shape[0]))
    old = model.init_params(KEY, jnp.asarray(X), jnp.ones(X.shape[0]), "kmeans++", None)
    new = old._replace(means=old.means + jnp.asarray(rng.normal(size=old.means.shape)))
    moved = stream.reframe_statistics(model, model.statistics(old, jnp.asarray(X), resp), old, new)
    direct = model.statistics(new, jnp.asarray(X), resp)
    for a, b in zip(moved, direct):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-9)


@pytest.fixture(scope="module")
def large_problem():
    """Two well-separated Gaussian components, 200k rows; the batch optimum by jaxem.fit."""
    rng = np.random.default_rng(0)
    n = 200_000
    z = rng.random(n) < 0.3
    X = np.where(
        z[:, None],
        rng.normal(size=(n, 2)) * [1.0, 0.5] + [4.0, 4.0],
        rng.normal(size=(n, 2)) @ np.array([[1.0, 0.4], [0.0, 0.7]]),
    )
    model = jaxem.GaussianMixture(2)
    best = jaxem.fit(model, X, key=KEY, max_iter=500, tol=1e-12)
    assert bool(best.converged)
    return model, X, float(best.log_likelihood)


def test_online_em_reaches_the_batch_optimum(large_problem):
    model, X, optimum = large_problem
    one_pass = stream.fit_online(model, X, key=KEY, block_size=2000)
    assert int(one_pass.n_iter) == 1 and int(one_pass.n_evals) == 2
    assert optimum - float(one_pass.log_likelihood) < 1e-3
    assert float(one_pass.log_likelihood) <= optimum + 1e-12  # never above the maximum
    # A poorer start (k-means++ with another key) needs a second pass.
    two_passes = stream.fit_online(model, X, key=jax.random.key(1), block_size=2000, n_passes=2)
    assert optimum - float(two_passes.log_likelihood) < 1e-3
    assert np.all(np.diff(np.asarray(two_passes.trace)) > 0)


def test_online_em_weights_and_frame_free_statistics():
    rng = np.random.default_rng(4)
    rates = np.array([[1.0, 4.0], [6.0, 0.5]])
    counts = rng.poisson(rates[rng.integers(0, 2, 40_000)]).astype(float)
    w = rng.uniform(0.5, 1.5, counts.shape[0])
    model = jaxem.PoissonMixture(2)
    optimum = float(jaxem.fit(model, counts, key=KEY, sample_weight=w, max_iter=1000, tol=1e-12).log_likelihood)
    res = stream.fit_online(model, counts, key=KEY, sample_weight=w, block_size=1000, n_passes=2, tol=1e-6)
    assert optimum - float(res.log_likelihood) < 1e-3
    pairs = lambda: ((counts[i : i + 1000], w[i : i + 1000]) for i in range(0, len(counts), 1000))  # noqa: E731
    again = stream.fit_online(model, pairs, key=KEY, n_passes=2, tol=1e-6)  # total weight by a counting pass
    assert_same_fit(again, res, tol=1e-12)
