"""Poisson mixture: published optimum, textbook EM parity, Q stationarity, sampling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import poisson

import jaxem
from mixture_checks import (
    as_init,
    assert_m_step_maximises_q,
    assert_monotone,
    assert_predictions_by_hand,
)

RATES = np.array([[1.0, 5.0, 2.0], [6.0, 0.5, 3.0]])


def counts_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    return rng.poisson(RATES[labels]).astype(float)


def start(seed=1):
    rng = np.random.default_rng(seed)
    return jaxem.PoissonMixtureParams(
        jnp.asarray([0.3, 0.7]), jnp.asarray(rng.uniform(0.5, 6.0, size=(2, 3)))
    )


def reference_em(X, weights, rates, n_iter):
    """EM for a Poisson mixture straight from the textbook, with scipy's log-pmf."""
    weights, rates = np.array(weights), np.array(rates)
    for _ in range(n_iter):
        log_joint = poisson.logpmf(X[:, None, :], rates[None]).sum(-1) + np.log(weights)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        n_k = resp.sum(0)
        weights, rates = n_k / n_k.sum(), resp.T @ X / n_k[:, None]
    return weights, rates


def test_london_deaths_reaches_published_optimum():
    # Deaths per day of women over 80 in London, 1910-1912 (Hasselblad 1969); the
    # two-component optimum in McLachlan & Krishnan, The EM Algorithm and Extensions, 1.5.
    deaths = np.arange(10.0)[:, None]
    days = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1.0])
    res = jaxem.fit(
        jaxem.PoissonMixture(2), deaths, key=jax.random.key(0), sample_weight=days,
        n_restarts=4, max_iter=5000, tol=1e-14,
    )
    assert bool(res.converged)
    np.testing.assert_allclose(-res.log_likelihood * days.sum(), 1989.945859883, atol=1e-6)
    order = np.argsort(np.asarray(res.params.rates[:, 0]))
    np.testing.assert_allclose(res.params.weights[order][0], 0.3599, atol=5e-5)
    np.testing.assert_allclose(res.params.rates[order, 0], [1.2561, 2.6634], atol=5e-5)
    assert_monotone(res)


@pytest.mark.parametrize("n_iter", [1, 7])
def test_matches_textbook_em_after_same_iterations(n_iter):
    X = counts_data()
    init = start()
    res = jaxem.fit(jaxem.PoissonMixture(2), X, key=jax.random.key(0), init=as_init(init), max_iter=n_iter, tol=0.0)
    weights, rates = reference_em(X, init.weights, init.rates, n_iter)
    assert int(res.n_iter) == n_iter
    np.testing.assert_allclose(res.params.weights, weights, rtol=1e-10)
    np.testing.assert_allclose(res.params.rates, rates, rtol=1e-10)


def test_m_step_is_a_stationary_point_of_q():
    X = counts_data()
    w = np.random.default_rng(3).uniform(0.5, 2.0, X.shape[0])
    assert_m_step_maximises_q(jaxem.PoissonMixture(2), start(), X, w)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_restarts_are_monotone_and_recover_the_rates(init):
    X = counts_data(n=600)
    res = jaxem.fit(jaxem.PoissonMixture(2), X, key=jax.random.key(1), n_restarts=3, init=init, max_iter=200, tol=1e-10)
    for r in range(3):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts))
    order = np.argsort(np.asarray(res.params.rates[:, 0]))
    np.testing.assert_allclose(res.params.rates[order], RATES, rtol=0.2)


def test_predictions_and_criteria_by_hand():
    X = counts_data()
    params = start()
    log_density = poisson.logpmf(X[:, None, :], np.asarray(params.rates)[None]).sum(-1)
    assert_predictions_by_hand(jaxem.PoissonMixture(2), params, X, log_density, n_free_parameters=2 * 3 + 1)


def test_sample_has_the_params_moments():
    params = start()
    X, labels = jaxem.PoissonMixture(2).sample(jax.random.key(0), params, 50_000)
    assert X.shape == (50_000, 3) and X.dtype == jnp.float64
    X, labels = np.asarray(X), np.asarray(labels)
    np.testing.assert_allclose(np.bincount(labels) / labels.size, params.weights, atol=5e-3)
    for k in range(2):
        np.testing.assert_allclose(X[labels == k].mean(0), params.rates[k], rtol=0.02)
        np.testing.assert_allclose(X[labels == k].var(0), params.rates[k], rtol=0.05)


def test_empty_component_stays_finite():
    X = counts_data()
    init = dict(weights=[0.5, 0.5], rates=[[2.0, 2.0, 2.0], [1e4, 1e4, 1e4]])
    res = jaxem.fit(jaxem.PoissonMixture(2), X, key=jax.random.key(0), init=init, max_iter=5, tol=0)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in res.params)
    assert float(res.params.weights[1]) < 1e-10
    assert float(jnp.min(res.params.rates)) >= 1e-10


def test_fit_inside_jit_skips_value_checks_on_tracers():
    X = counts_data()
    model = jaxem.PoissonMixture(2)
    fit = lambda data: jaxem.fit(model, data, key=jax.random.key(0), max_iter=20).log_likelihood
    np.testing.assert_allclose(jax.jit(fit)(jnp.asarray(X)), fit(X), rtol=1e-12)


@pytest.mark.parametrize(
    "X, message",
    [
        ([[1.0, 2.0], [-1.0, 0.0]], "non-negative counts"),
        ([[1.0, 2.5], [1.0, 0.0]], "non-negative counts"),
        ([[1.0, np.nan], [1.0, 0.0]], "NaN"),
    ],
)
def test_bad_data_raises(X, message):
    with pytest.raises(ValueError, match=message):
        jaxem.fit(jaxem.PoissonMixture(2), X, key=jax.random.key(0))


@pytest.mark.parametrize(
    "init, message",
    [
        (dict(weights=[0.5, 0.5]), "missing"),
        (dict(weights=[0.5, 0.5], rates=[[1.0], [2.0]]), "shape"),
        (dict(weights=[0.5, 0.5], rates=[[1.0, 0.0], [2.0, 1.0]]), "positive"),
        (dict(weights=[0.6, 0.6], rates=[[1.0, 1.0], [2.0, 1.0]]), "sum to 1"),
    ],
)
def test_bad_init_raises(init, message):
    with pytest.raises(ValueError, match=message):
        jaxem.fit(jaxem.PoissonMixture(2), counts_data()[:, :2], key=jax.random.key(0), init=init)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="n_components"):
        jaxem.PoissonMixture(0)
    with pytest.raises(ValueError, match="min_rate"):
        jaxem.PoissonMixture(2, min_rate=-1.0)


def test_predictions_check_the_data_domain():
    X = counts_data()[:3].copy()
    X[1, 2] = -1.0
    model = jaxem.PoissonMixture(2)
    for method in (model.predict, model.predict_proba, model.score_samples, model.score, model.bic, model.aic):
        with pytest.raises(ValueError, match="non-negative counts"):
            method(start(), X)
