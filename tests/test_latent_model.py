"""LatentModel: EM from a log-joint alone, against closed forms written here in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import multivariate_normal, poisson
from scipy.stats import poisson as sp_poisson

import jaxem
from jaxem.constraints import Interval
from jaxem.models.gaussian_mixture import GaussianMixtureParams

POISSON_CONSTRAINTS = {"weights": "simplex", "rates": "positive"}


def poisson_data(seed=0):
    rng = np.random.default_rng(seed)
    counts = np.concatenate([rng.poisson(2.0, 200), rng.poisson(9.0, 100)])
    return counts.astype(float)[:, None]


def poisson_log_joint(params, x):
    return jnp.log(params["weights"]) + poisson.logpmf(x[0], params["rates"])


def poisson_init(key, X):
    return {"weights": jnp.array([0.5, 0.5]), "rates": jnp.array([1.0, 5.0]) * jnp.mean(X) / 3}


def numpy_poisson_em(X, weights, rates, n_iter=3000, prior=None, fixed_weights=False, min_rate=0.0):
    """Closed-form (MAP-)EM for a Poisson mixture; prior = (dirichlet_alpha, gamma_a, gamma_b);
    rates floored at min_rate (the maximiser of Q over rates >= min_rate: Q is concave)."""
    x = X[:, 0]
    weights, rates = np.array(weights, float), np.array(rates, float)
    for _ in range(n_iter):
        log_joint = np.log(weights) + sp_poisson.logpmf(x[:, None], rates)
        resp = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
        counts = resp.sum(0)
        if prior is None:
            rates = (resp * x[:, None]).sum(0) / counts
            new_weights = counts / counts.sum()
        else:
            alpha, a, b = prior
            rates = ((resp * x[:, None]).sum(0) + a - 1) / (counts + b)
            new_weights = (counts + alpha - 1) / (counts.sum() + len(counts) * (alpha - 1))
        rates = np.maximum(rates, min_rate)
        if not fixed_weights:
            weights = new_weights
    log_joint = np.log(weights) + sp_poisson.logpmf(x[:, None], rates)
    return weights, rates, np.mean(np.logaddexp.reduce(log_joint, axis=1))


def poisson_model(**options):
    return jaxem.LatentModel(poisson_log_joint, poisson_init, constraints=POISSON_CONSTRAINTS, **options)


@pytest.mark.parametrize("optimizer", [optax.adam(0.05), optax.lbfgs()], ids=["adam", "lbfgs"])
def test_gradient_m_step_reaches_closed_form_optimum(optimizer):
    X = poisson_data()
    start = poisson_init(None, jnp.asarray(X))
    weights, rates, log_lik = numpy_poisson_em(X, start["weights"], start["rates"])
    model = poisson_model(optimizer=optimizer, n_steps=10)
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=300, tol=1e-12)
    assert int(result.n_decreases) == 0
    assert bool(result.converged)
    np.testing.assert_allclose(float(result.log_likelihood), log_lik, rtol=1e-10)
    np.testing.assert_allclose(result.params["weights"], weights, rtol=1e-4)
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-4)


def test_lbfgs_m_steps_follow_closed_form_em_to_rounding():
    """With L-BFGS (default: 20 steps per M-step, each reaching Q's maximiser) the GEM path is
    EM's own: after 30 iterations the params equal numpy's closed-form EM to 1e-13. Choosing
    among near-optimal iterates by their computed Q values, as jaxem once did, left them
    1e-9 .. 3e-8 apart (jaxem.mstep)."""
    X = poisson_data()
    start = poisson_init(None, jnp.asarray(X))
    weights, rates, log_lik = numpy_poisson_em(X, start["weights"], start["rates"], n_iter=30)
    result = jaxem.fit(poisson_model(), X, key=jax.random.key(0), max_iter=30, tol=0.0)
    np.testing.assert_allclose(result.params["weights"], weights, rtol=1e-13)
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-13)
    np.testing.assert_allclose(float(result.log_likelihood), log_lik, rtol=1e-14)


def test_interval_constraint_keeps_the_gradient_m_step_on_the_floored_em_path():
    """Rates declared >= 3 (jaxem.constraints.Interval) where the data's low rate is ~2: the
    gradient M-step follows closed-form EM with the rate floored at 3 (under "positive" it
    would go below the floor)."""
    X = poisson_data()
    start = {"weights": np.array([0.5, 0.5]), "rates": np.array([4.0, 8.0])}
    weights, rates, log_lik = numpy_poisson_em(X, start["weights"], start["rates"], n_iter=300, min_rate=3.0)
    assert rates[0] == 3.0
    model = jaxem.LatentModel(
        poisson_log_joint, poisson_init, constraints={"weights": "simplex", "rates": Interval(3.0)}
    )
    result = jaxem.fit(model, X, key=jax.random.key(0), init=start, max_iter=300, tol=0.0)
    assert np.all(result.params["rates"] >= 3.0) and int(result.n_decreases) == 0
    np.testing.assert_allclose(result.params["weights"], weights, rtol=1e-11)
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-11)
    np.testing.assert_allclose(float(result.log_likelihood), log_lik, rtol=1e-13)


def test_optimizer_state_is_carried_or_reset():
    X = jnp.asarray(poisson_data())
    params = poisson_init(None, X)
    carried = poisson_model(optimizer=optax.adam(0.05))
    reset = poisson_model(optimizer=optax.adam(0.05), reset_optimizer=True)
    assert carried.resets_optimizer is False and reset.resets_optimizer is True
    assert poisson_model(optimizer=optax.lbfgs()).resets_optimizer is True
    state = carried.init_m_state(params)
    assert int(state[0].count) == 0
    stats, _ = carried.e_step(params, X, jnp.ones(X.shape[0]))
    _, state = carried.maximize(stats, params, state, X, jnp.ones(X.shape[0]))
    assert int(state[0].count) == carried.n_steps
    assert reset.init_m_state(params) == ()


def gaussian_log_joint(params, x):
    log_density = multivariate_normal.logpdf(x, params["means"], params["covariances"])
    return jnp.log(params["weights"]) + log_density


def test_closed_form_m_step_follows_gaussian_mixture_trajectory():
    X = np.loadtxt(jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1)
    reference = jaxem.GaussianMixture(2, reg_covar=1e-6)

    def init(key, X):
        return reference.init_params(key, X, jnp.ones(X.shape[0], X.dtype), "kmeans++")._asdict()

    def m_step(params, X, resp):
        gaussian_params = GaussianMixtureParams(**params)
        return reference.m_step(reference.statistics(gaussian_params, X, resp), gaussian_params)._asdict()

    model = jaxem.LatentModel(gaussian_log_joint, init, m_step=m_step)
    key = jax.random.key(3)
    ours = jaxem.fit(model, X, key=key, max_iter=8, tol=0.0)
    theirs = jaxem.fit(reference, X, key=key, max_iter=8, tol=0.0)
    np.testing.assert_allclose(ours.trace, theirs.trace, rtol=1e-12)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(ours.params[name], getattr(theirs.params, name), rtol=1e-9)


def test_frozen_leaves_stay_at_init_and_the_rest_is_conditionally_optimal():
    X = poisson_data()
    start = poisson_init(None, jnp.asarray(X))
    _, rates, _ = numpy_poisson_em(X, start["weights"], start["rates"], fixed_weights=True)
    model = poisson_model(optimizer=optax.lbfgs(), frozen="weights")
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=300, tol=1e-12)
    assert int(result.n_decreases) == 0
    np.testing.assert_array_equal(result.params["weights"], start["weights"])
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-5)


def test_frozen_mask_with_closed_form_m_step():
    X = jnp.asarray(poisson_data())

    def m_step(params, X, resp):
        counts = resp.sum(0)
        return {"weights": counts / counts.sum(), "rates": resp.T @ X[:, 0] / counts}

    model = poisson_model(m_step=m_step, frozen={"weights": False, "rates": True})
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=50, tol=0.0)
    start = poisson_init(None, X)
    np.testing.assert_array_equal(result.params["rates"], start["rates"])
    # With the rates fixed, the closed-form weights are the exact conditional maximiser.
    resp = model.predict_proba(result.params, X)
    np.testing.assert_allclose(result.params["weights"], resp.mean(0), rtol=1e-8)
    assert int(result.n_decreases) == 0


def test_map_em_matches_closed_form_conjugate_posterior_mode():
    X = poisson_data(1)
    alpha, a, b = 3.0, 2.0, 0.5

    def log_prior(params):
        dirichlet = (alpha - 1) * jnp.sum(jnp.log(params["weights"]))
        gamma = jnp.sum((a - 1) * jnp.log(params["rates"]) - b * params["rates"])
        return dirichlet + gamma

    start = poisson_init(None, jnp.asarray(X))
    weights, rates, _ = numpy_poisson_em(X, start["weights"], start["rates"], prior=(alpha, a, b))
    model = poisson_model(optimizer=optax.lbfgs(), log_prior=log_prior)
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=300, tol=1e-13)
    assert int(result.n_decreases) == 0
    np.testing.assert_allclose(result.params["weights"], weights, rtol=1e-5)
    np.testing.assert_allclose(result.params["rates"], rates, rtol=1e-5)


def test_fit_under_jit_matches_eager():
    X = jnp.asarray(poisson_data())
    model = poisson_model(optimizer=optax.adam(0.05), n_steps=5)
    key = jax.random.key(0)
    eager = jaxem.fit(model, X, key=key, n_restarts=2, max_iter=20, tol=0.0)
    jitted = jax.jit(lambda X: jaxem.fit(model, X, key=key, n_restarts=2, max_iter=20, tol=0.0))(X)
    np.testing.assert_allclose(jitted.trace, eager.trace, rtol=1e-12)
    np.testing.assert_allclose(jitted.params["rates"], eager.params["rates"], rtol=1e-12)


def test_init_dict_is_used_and_checked():
    X = poisson_data()
    model = poisson_model(optimizer=optax.lbfgs(), n_steps=5)
    start = {"weights": [0.3, 0.7], "rates": [2.0, 9.0]}
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=1, init=start)
    expected = np.mean(np.logaddexp.reduce(np.log(start["weights"]) + sp_poisson.logpmf(X, start["rates"]), axis=1))
    np.testing.assert_allclose(result.trace[0], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="constraints"):
        jaxem.fit(model, X, key=jax.random.key(0), init={"weights": [0.3, 0.7], "rates": [-2.0, 9.0]})
    with pytest.raises(ValueError, match="constraints"):
        jaxem.fit(model, X, key=jax.random.key(0), init={"weights": [0.3, 0.6], "rates": [2.0, 9.0]})


def test_invalid_options_raise_value_errors():
    X = poisson_data()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="unknown constraint"):
        jaxem.LatentModel(poisson_log_joint, poisson_init, constraints={"weights": "simplx"})
    with pytest.raises(ValueError, match="not parameters"):
        jaxem.fit(jaxem.LatentModel(poisson_log_joint, poisson_init, constraints={"scale": "positive"}), X, key=key)
    with pytest.raises(ValueError, match="structure"):
        jaxem.fit(jaxem.LatentModel(poisson_log_joint, poisson_init, constraints=("simplex", "positive")), X, key=key)
    with pytest.raises(ValueError, match="not parameters"):
        jaxem.fit(poisson_model(frozen="rate"), X, key=key)
    with pytest.raises(ValueError, match="frozen"):
        poisson_model(frozen=3)
    with pytest.raises(ValueError, match="optimizer"):
        poisson_model(optimizer="adam")
    with pytest.raises(ValueError, match="n_steps"):
        poisson_model(n_steps=0)
    with pytest.raises(ValueError, match="chunk_size"):
        jaxem.fit(poisson_model(), X, key=key, chunk_size=100)
    scalar_model = jaxem.LatentModel(lambda p, x: jnp.sum(poisson_log_joint(p, x)), poisson_init)
    with pytest.raises(ValueError, match=r"\(K,\)"):
        jaxem.fit(scalar_model, X, key=key)
    with pytest.raises(ValueError, match="positive_definite"):
        model = jaxem.LatentModel(poisson_log_joint, poisson_init, constraints={"rates": "positive_definite"})
        jaxem.fit(model, X, key=key)
