"""One contract every family meets through the engine (jaxem.protocol.Model).

Each case is a model and a small data set; every check compares the engine against
itself run another way (separate runs vs vmapped restarts, jit vs eager, chunks vs one
pass, weights vs repeated units) or against a property EM guarantees (monotone trace).
Units are rows, or sequences for hidden Markov models (jaxem.units): chunks, weights and
repetition are per unit. The family tests keep only what is specific to a family.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import poisson

import jaxem
from jaxem import parallel, units
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


def hmm_sequences(rng):
    """Twelve sequences of 3..10 steps from a sticky 2-state chain, flat with lengths."""
    lengths = rng.integers(3, 11, size=12)
    states = np.concatenate([np.cumsum(rng.uniform(size=n) < 0.2) % 2 for n in lengths])
    return rng.normal(size=(lengths.sum(), 2)) + 4.0 * states[:, None], lengths


def hmm_codes(rng):
    X, lengths = hmm_sequences(rng)
    return (X > 2.0).astype(int) + (X > 5.0), lengths


def factor_rows(rng, n_features=5, n_factors=2):
    return rng.normal(size=(N, n_factors)) @ rng.normal(size=(n_factors, n_features)) + 0.3 * rng.normal(size=(N, n_features))


def flat(data):
    """The second (wrongly shaped) input of test_bad_data_raises_before_fitting: rows cut to
    one column; HMM observations flattened to 1-D."""
    if isinstance(data, tuple):
        return (np.asarray(data[0]).ravel(), data[1])
    return np.asarray(data)[:, 0]


# name: (model factory, data from a numpy Generator: rows, or (rows, lengths) for HMMs)
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
    "factor_analysis": (lambda: jaxem.FactorAnalysis(2), factor_rows),
    "ppca": (lambda: jaxem.PPCA(2), factor_rows),
    "mixture_of_factor_analyzers": (lambda: jaxem.MixtureOfFactorAnalyzers(2, 1), lambda rng: gaussian_rows(rng, 3)),
    "gaussian_hmm": (lambda: jaxem.GaussianHMM(2, covariance_type="full"), hmm_sequences),
    "categorical_hmm": (lambda: jaxem.CategoricalHMM(2, n_categories=3), hmm_codes),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case(request):
    """(model, its validated data (units: rows, or Sequences for HMMs), the user's data)."""
    make_model, make_data = CASES[request.param]
    model = make_model()
    user_data = make_data(np.random.default_rng(0))
    return model, model.as_data(user_data), user_data


def starts(model, data, w, n):
    keys = jax.random.split(jax.random.key(3), n)
    return [model.init_params(k, data, w, "kmeans++", None) for k in keys]


def unit_weights(data, rng=None):
    """(n_units,) ones, or uniform(0.5, 2) weights given a Generator."""
    n = units.n_units(data)
    return jnp.ones(n) if rng is None else jnp.asarray(rng.uniform(0.5, 2.0, n))


def test_implements_the_protocol(case):
    model, _, _ = case
    assert isinstance(model, Model) or isinstance(model, jaxem.mstep.FrozenModel)
    check_model(model)


# The restarts and monotone-trace tests share one compiled fit per case (3 restarts,
# MAX_ITER iterations): compilation dominates their time.
MAX_ITER = 40


def test_restarts_equal_separate_runs(case):
    model, data, _ = case
    w = unit_weights(data)
    result = jaxem.fit(model, data, key=jax.random.key(3), n_restarts=3, max_iter=MAX_ITER, tol=0.0)
    for r, start in enumerate(starts(model, data, w, 3)):
        single = jaxem.run_em(model, start, data, w, max_iter=MAX_ITER, tol=0.0)
        restart = jax.tree.map(lambda leaf: leaf[r], result.restarts)
        assert_trees_close(restart.params, single.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(restart.trace, single.trace, rtol=1e-10)


def test_jit_equals_eager(case):
    model, data, _ = case
    w = unit_weights(data)
    (start,) = starts(model, data, w, 1)
    update = lambda p: jaxem.core.em_update(model, p, model.init_m_state(p), data, w)  # noqa: E731
    assert_trees_close(jax.jit(update)(start), update(start), rtol=1e-12, atol=1e-14)


def test_chunked_equals_one_pass_or_is_refused(case):
    model, data, _ = case
    w = unit_weights(data, np.random.default_rng(1))
    (start,) = starts(model, data, w, 1)
    chunk_size = units.n_units(data) // 3 + 1  # 3 chunks, the last padded
    if not model.additive_statistics:
        with pytest.raises(ValueError, match="chunk_size"):
            jaxem.fit(model, data, key=jax.random.key(0), chunk_size=chunk_size)
        return
    whole, log_lik = parallel.e_step(model, start, data, w)
    chunked, chunked_log_lik = parallel.e_step(model, start, data, w, chunk_size)
    assert_trees_close(chunked, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(chunked_log_lik, log_lik, rtol=1e-12)


def test_trace_is_monotone(case):
    model, data, _ = case
    assert_monotone(jaxem.fit(model, data, key=jax.random.key(0), n_restarts=3, max_iter=MAX_ITER, tol=0.0))


def test_integer_weights_equal_repeated_units(case):
    model, data, _ = case
    counts = np.random.default_rng(2).integers(0, 3, size=units.n_units(data))
    counts[0] = 1
    (start,) = starts(model, data, unit_weights(data), 1)
    weighted = jaxem.run_em(model, start, data, jnp.asarray(counts, units.float_dtype(data)), max_iter=10, tol=0.0)
    repeated = jax.tree.map(lambda leaf: np.repeat(np.asarray(leaf), counts, axis=0), data)
    plain = jaxem.run_em(model, start, repeated, unit_weights(repeated), max_iter=10, tol=0.0)
    assert_trees_close(weighted.params, plain.params, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, plain.log_likelihood, rtol=1e-11)


def test_bad_data_raises_before_fitting(case):
    model, _, user_data = case
    rows = user_data[0] if isinstance(user_data, tuple) else user_data
    bad_rows = np.asarray(rows, dtype=float).copy()
    bad_rows[3, 0] = np.nan
    bad = (bad_rows, user_data[1]) if isinstance(user_data, tuple) else bad_rows
    with pytest.raises(ValueError, match="NaN"):
        jaxem.fit(model, bad, key=jax.random.key(0))
    with pytest.raises(ValueError, match="2-D|shape"):
        jaxem.fit(model, flat(user_data), key=jax.random.key(0))


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
