"""One contract every family meets through the engine (jaxem.protocol.Model).

Each case is a model and a small data set; every check compares the engine against
itself run another way (separate runs vs vmapped restarts, jit vs eager, chunks vs one
pass, weights vs repeated rows) or against a property EM guarantees (monotone trace).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import poisson

import jaxem
from jaxem import parallel
from jaxem.protocol import Model, check_model

from mixture_checks import assert_monotone, assert_trees_close

N = 64


def gaussian_rows(rng, n_features=2):
    return rng.normal(size=(N, n_features)) + 4.0 * rng.integers(2, size=(N, 1))


def latent_poisson():
    def log_joint(params, x):
        return jnp.log(params["weights"]) + poisson.logpmf(x[0], params["rates"])

    def init(key, X):
        return {"weights": jnp.array([0.5, 0.5]), "rates": jnp.array([1.0, 5.0]) + jax.random.uniform(key, (2,))}

    return jaxem.LatentModel(log_joint, init, constraints={"weights": "simplex", "rates": "positive"})


def counts(rng):
    return rng.poisson(1.0 + 6.0 * rng.integers(2, size=(N, 1))).astype(float)


def regression_rows(rng):
    x = rng.normal(size=N)
    line = rng.integers(2, size=N)
    return np.column_stack([x, np.where(line, 2.0 * x + 1.0, -x) + 0.1 * rng.normal(size=N)])


CASES = {
    "gaussian_full": (lambda: jaxem.GaussianMixture(2), gaussian_rows),
    "gaussian_diag": (lambda: jaxem.GaussianMixture(2, covariance_type="diag"), gaussian_rows),
    "poisson": (lambda: jaxem.PoissonMixture(2), counts),
    "bernoulli": (lambda: jaxem.BernoulliMixture(2), lambda rng: (rng.uniform(size=(N, 4)) < rng.choice([0.2, 0.8], size=(N, 1))).astype(float)),
    "categorical": (lambda: jaxem.CategoricalMixture(2, n_categories=3), lambda rng: rng.integers(3, size=(N, 3)).astype(float)),
    "student_t": (lambda: jaxem.StudentTMixture(2), gaussian_rows),
    # reg_variance > 0 makes the M-step a perturbed maximiser, which can lower the
    # likelihood by about reg_variance / variance per step near the optimum (seen: 4e-10).
    "regression": (lambda: jaxem.MixtureOfRegressions(2, reg_variance=0.0), regression_rows),
    "latent_model": (latent_poisson, counts),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    make_model, make_data = CASES[request.param]
    X = jnp.asarray(make_data(np.random.default_rng(0)))
    return make_model(), X


def starts(model, X, w, n):
    keys = jax.random.split(jax.random.key(3), n)
    return [model.init_params(k, X, w, "kmeans++", None) for k in keys]


def test_implements_the_protocol(case):
    model, _ = case
    assert isinstance(model, Model) or isinstance(model, jaxem.mstep.FrozenModel)
    check_model(model)


def test_restarts_equal_separate_runs(case):
    model, X = case
    w = jnp.ones(N)
    result = jaxem.fit(model, X, key=jax.random.key(3), n_restarts=3, max_iter=15, tol=0.0)
    for r, start in enumerate(starts(model, X, w, 3)):
        single = jaxem.run_em(model, start, X, w, max_iter=15, tol=0.0)
        restart = jax.tree.map(lambda leaf: leaf[r], result.restarts)
        assert_trees_close(restart.params, single.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(restart.trace, single.trace, rtol=1e-10)


def test_jit_equals_eager(case):
    model, X = case
    w = jnp.ones(N)
    (start,) = starts(model, X, w, 1)
    update = lambda p: jaxem.core.em_update(model, p, model.init_m_state(p), X, w)  # noqa: E731
    assert_trees_close(jax.jit(update)(start), update(start), rtol=1e-12, atol=1e-14)


def test_chunked_equals_one_pass_or_is_refused(case):
    model, X = case
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, N))
    (start,) = starts(model, X, w, 1)
    if not model.additive_statistics:
        with pytest.raises(ValueError, match="chunk_size"):
            jaxem.fit(model, X, key=jax.random.key(0), chunk_size=20)
        return
    whole, log_lik = parallel.e_step(model, start, X, w)
    chunked, chunked_log_lik = parallel.e_step(model, start, X, w, 20)  # 4 chunks, the last padded
    assert_trees_close(chunked, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked_log_lik, log_lik, rtol=1e-12)


def test_trace_is_monotone(case):
    model, X = case
    assert_monotone(jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=40, tol=0.0))


def test_integer_weights_equal_repeated_rows(case):
    model, X = case
    counts = np.random.default_rng(2).integers(0, 3, size=N)
    counts[0] = 1
    (start,) = starts(model, X, jnp.ones(N), 1)
    weighted = jaxem.run_em(model, start, X, jnp.asarray(counts, X.dtype), max_iter=10, tol=0.0)
    repeated = np.repeat(np.asarray(X), counts, axis=0)
    plain = jaxem.run_em(model, start, jnp.asarray(repeated), jnp.ones(len(repeated)), max_iter=10, tol=0.0)
    assert_trees_close(weighted.params, plain.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, plain.log_likelihood, rtol=1e-11)


def test_bad_data_raises_before_fitting(case):
    model, X = case
    bad = np.asarray(X).copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jaxem.fit(model, bad, key=jax.random.key(0))
    with pytest.raises(ValueError, match="2-D"):
        jaxem.fit(model, np.asarray(X)[:, 0], key=jax.random.key(0))


def test_a_model_missing_a_method_fails_before_tracing():
    class NoMStep:
        additive_statistics = True

        def __getattr__(self, name):
            if name == "maximize":
                raise AttributeError(name)
            return getattr(jaxem.GaussianMixture(2), name)

    with pytest.raises(TypeError, match="maximize"):
        jaxem.fit(NoMStep(), np.zeros((10, 2)), key=jax.random.key(0))
    with pytest.raises(TypeError, match="additive_statistics"):
        check_model(object())
