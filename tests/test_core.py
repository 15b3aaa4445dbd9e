"""The EM loop: stopping rules, status, trace, jit/no-jit and batching of fits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxem
from jaxem.core import Status, max_relative_change, run_em


def mixture_data(seed, n=200, d=2, k=3, spread=3.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    return centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))


def start_params(model, X, seed):
    return model.init_params(jax.random.key(seed), jnp.asarray(X), jnp.ones(len(X)), "random")


@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_loglik_criterion_stops_where_sklearn_stops(tol):
    X = mixture_data(0, spread=1.5)
    model = jaxem.GaussianMixture(3)
    start = start_params(model, X, 0)
    init = {n: np.asarray(v) for n, v in start._asdict().items()}
    res = jaxem.fit(model, X, key=jax.random.key(0), init=init, tol=tol, max_iter=500)
    sk = SkGaussianMixture(
        3, tol=tol, max_iter=500, weights_init=init["weights"], means_init=init["means"],
        precisions_init=np.linalg.inv(init["covariances"]),
    ).fit(X)
    assert bool(res.converged) and sk.converged_
    assert int(res.n_iter) == sk.n_iter_
    assert res.status == Status.CONVERGED
    np.testing.assert_allclose(res.trace[int(res.n_iter) - 1], sk.lower_bound_, rtol=1e-10)


def test_params_criterion_stops_when_the_last_change_is_below_tol():
    X = jnp.asarray(mixture_data(1))
    w = jnp.ones(len(X))
    model = jaxem.GaussianMixture(3, covariance_type="diag")
    start = start_params(model, X, 1)
    tol = 1e-5
    res = run_em(model, start, X, w, max_iter=1000, tol=tol, criterion="params")
    n = int(res.n_iter)
    assert bool(res.converged) and n > 2
    before = run_em(model, start, X, w, max_iter=n - 1, tol=0.0, criterion="params").params
    earlier = run_em(model, start, X, w, max_iter=n - 2, tol=0.0, criterion="params").params
    assert float(max_relative_change(res.params, before)) < tol
    assert float(max_relative_change(before, earlier)) >= tol


def test_max_iter_without_convergence_is_reported():
    X = mixture_data(2)
    res = jaxem.fit(jaxem.GaussianMixture(3), X, key=jax.random.key(0), max_iter=3, tol=0.0)
    assert int(res.n_iter) == 3 and not bool(res.converged)
    assert res.status == Status.MAX_ITER
    assert jaxem.status_message(res.status).startswith("stopped at max_iter")
    assert np.all(np.isfinite(res.trace[:3])) and res.trace.shape == (3,)


def test_trace_is_nan_padded_after_convergence():
    X = mixture_data(3)
    res = jaxem.fit(jaxem.GaussianMixture(2), X, key=jax.random.key(0), max_iter=200, tol=1e-3)
    n = int(res.n_iter)
    assert n < 200
    assert np.all(np.isfinite(res.trace[:n])) and np.all(np.isnan(res.trace[n:]))


def collapsing_problem():
    """Three distinct points and three components without regularisation: each component
    shrinks onto one point and its covariance becomes singular."""
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 7.0]]), 10, axis=0)
    init = dict(weights=np.full(3, 1 / 3), means=X[[0, 10, 20]] + 0.1,
                covariances=np.stack([np.eye(2)] * 3))
    return X, init


def test_non_finite_run_fails_and_is_never_converged():
    X, init = collapsing_problem()
    model = jaxem.GaussianMixture(3, reg_covar=0.0)
    res = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=50, tol=1e-3)
    assert res.status == Status.NON_FINITE
    assert not bool(res.converged)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in res.params)
    # The same problem with regularisation converges.
    ok = jaxem.fit(jaxem.GaussianMixture(3, reg_covar=1e-3), X, key=jax.random.key(0), init=init)
    assert ok.status == Status.CONVERGED


def test_non_finite_run_keeps_the_last_params_with_a_finite_objective():
    # The first M-step rounds a variance of the tiny spherical component to -4e-20: those
    # params are finite, their objective is NaN. The run keeps the params before them.
    X = np.random.RandomState(1).uniform(size=(30, 3))
    model = jaxem.GaussianMixture(2, covariance_type="spherical", reg_covar=0.0)
    init = dict(weights=[0.5, 0.5], means=X[:2], covariances=[1e-6, 1.0])
    for accelerate in (None, "quasi_newton"):
        res = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=5, tol=0.0, accelerate=accelerate)
        assert res.status == Status.NON_FINITE
        assert np.isnan(res.trace[1]) and np.isfinite(res.trace[0])
        np.testing.assert_allclose(res.params.covariances, init["covariances"], rtol=1e-12)
        np.testing.assert_allclose(res.log_likelihood, res.trace[0], rtol=1e-12)
        np.testing.assert_allclose(res.log_likelihood, model.score(res.params, X), rtol=1e-12)


def test_best_restart_skips_failed_runs():
    X = mixture_data(4)
    res = jaxem.fit(jaxem.GaussianMixture(2), X, key=jax.random.key(5), n_restarts=4, max_iter=30)
    failed = res.restarts._replace(
        log_likelihood=res.restarts.log_likelihood.at[0].set(jnp.inf),
        status=res.restarts.status.at[0].set(Status.NON_FINITE),
    )
    chosen = jaxem.restarts.select_best(failed)
    assert int(chosen.best_restart) != 0
    assert float(chosen.log_likelihood) == float(jnp.max(failed.log_likelihood[1:]))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), covariance_type=st.sampled_from(["full", "tied", "diag", "spherical"]))
def test_trace_is_monotone(seed, k, covariance_type):
    X = mixture_data(seed, n=120, d=2, k=3, spread=2.0)
    res = jaxem.fit(
        jaxem.GaussianMixture(k, covariance_type=covariance_type), X,
        key=jax.random.key(seed), max_iter=40, tol=0.0, init="random",
    )
    trace = np.asarray(res.trace)
    assert int(res.n_decreases) == 0
    assert np.all(np.diff(trace) >= -1e-10 * np.abs(trace[1:]))


def test_restarts_equal_a_python_loop_over_the_same_keys():
    X = jnp.asarray(mixture_data(5))
    model = jaxem.GaussianMixture(3, covariance_type="full")
    key = jax.random.key(7)
    res = jaxem.fit(model, X, key=key, n_restarts=3, max_iter=25, tol=1e-4)
    w = jnp.ones(len(X))
    for r, k in enumerate(jax.random.split(key, 3)):
        single = run_em(model, model.init_params(k, X, w, "kmeans++"), X, w, max_iter=25, tol=1e-4)
        assert int(single.n_iter) == int(res.restarts.n_iter[r])
        np.testing.assert_allclose(single.log_likelihood, res.restarts.log_likelihood[r], rtol=1e-10)
        for a, b in zip(single.params, res.restarts.params):
            np.testing.assert_allclose(a, b[r], rtol=1e-8, atol=1e-10)
    best = int(np.argmax(res.restarts.log_likelihood))
    assert int(res.best_restart) == best
    np.testing.assert_allclose(res.params.means, res.restarts.params.means[best])


def test_jit_and_no_jit_agree():
    X = jnp.asarray(mixture_data(6))
    model = jaxem.GaussianMixture(2, covariance_type="tied")
    eager = jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=30)
    jitted = jax.jit(lambda X, key: jaxem.fit(model, X, key=key, n_restarts=2, max_iter=30))(X, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_vmap_over_data_sets_matches_separate_fits():
    batch = jnp.stack([jnp.asarray(mixture_data(s, n=100)) for s in range(3)])
    keys = jax.random.split(jax.random.key(0), 3)
    model = jaxem.GaussianMixture(2)
    batched = jax.jit(jax.vmap(lambda X, k: jaxem.fit(model, X, key=k, max_iter=20).log_likelihood))(batch, keys)
    separate = [float(jaxem.fit(model, X, key=k, max_iter=20).log_likelihood) for X, k in zip(batch, keys)]
    np.testing.assert_allclose(batched, separate, rtol=1e-10)


def test_chunked_e_step_equals_whole():
    X = jnp.asarray(mixture_data(8, n=203))
    model = jaxem.GaussianMixture(3)
    whole = jaxem.fit(model, X, key=jax.random.key(0), max_iter=10, tol=0.0)
    chunked = jaxem.fit(model, X, key=jax.random.key(0), max_iter=10, tol=0.0, chunk_size=64)
    for a, b in zip(whole.params, chunked.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("init", ["kmeans++", "random", "random_from_data"])
def test_every_init_reaches_the_well_separated_optimum(init):
    X = mixture_data(9, n=300, spread=8.0)
    res = jaxem.fit(jaxem.GaussianMixture(3), X, key=jax.random.key(1), n_restarts=4, init=init, tol=1e-8, max_iter=300)
    sk = SkGaussianMixture(3, n_init=4, tol=1e-8, max_iter=300, random_state=0).fit(X)
    np.testing.assert_allclose(res.log_likelihood, sk.score(X), rtol=1e-6)


def test_auto_chunk_size_chunks_large_data_of_additive_models_only():
    from jaxem.api import AUTO_CHUNK_SIZE, auto_chunk_size

    gmm = jaxem.GaussianMixture(2)
    assert auto_chunk_size(gmm, 100) is None
    assert auto_chunk_size(gmm, 2 * AUTO_CHUNK_SIZE) is None
    for n_samples in (2 * AUTO_CHUNK_SIZE + 1, 3 * AUTO_CHUNK_SIZE, 100_000, 123_457):
        chunk = auto_chunk_size(gmm, n_samples)
        n_chunks = -(-n_samples // chunk)
        assert chunk <= AUTO_CHUNK_SIZE and n_chunks % 2 == 0
        assert (n_chunks - 1) * chunk < n_samples  # no chunk is all padding
    latent = jaxem.LatentModel(lambda p, x: p["w"], lambda key, X: {"w": jnp.zeros(2)})
    assert auto_chunk_size(latent, 3 * AUTO_CHUNK_SIZE) is None
