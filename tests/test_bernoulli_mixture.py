"""Bernoulli mixture: textbook MAP-EM parity, Q stationarity, sampling, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import bernoulli

import jaxem
from jaxem.models.bernoulli_mixture import BernoulliMixtureStats
from mixture_checks import (
    as_init,
    assert_m_step_maximises_q,
    assert_monotone,
    assert_predictions_by_hand,
)

PROBS = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.3, 0.8, 0.7]])


def binary_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    return (rng.uniform(size=(n, 4)) < PROBS[labels]).astype(float)


def start(seed=1):
    rng = np.random.default_rng(seed)
    return jaxem.BernoulliMixtureParams(jnp.asarray([0.4, 0.6]), jnp.asarray(rng.uniform(0.2, 0.8, (2, 4))))


def reference_log_density(X, probs):
    return bernoulli.logpmf(X[:, None, :], np.asarray(probs)[None]).sum(-1)


def reference_em(X, weights, probs, n_iter, pseudo_count):
    """MAP-EM under Beta(1 + a, 1 + a) priors, straight from the textbook."""
    weights, probs = np.array(weights), np.array(probs)
    for _ in range(n_iter):
        log_joint = reference_log_density(X, probs) + np.log(weights)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        n_k = resp.sum(0)
        weights = n_k / n_k.sum()
        probs = (resp.T @ X + pseudo_count) / (n_k[:, None] + 2 * pseudo_count)
    return weights, probs


@pytest.mark.parametrize("pseudo_count", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("n_iter", [1, 7])
def test_matches_textbook_map_em_after_same_iterations(n_iter, pseudo_count):
    X = binary_data()
    init = start()
    model = jaxem.BernoulliMixture(2, pseudo_count=pseudo_count)
    res = jaxem.fit(model, X, key=jax.random.key(0), init=as_init(init), max_iter=n_iter, tol=0.0)
    weights, probs = reference_em(X, init.weights, init.probs, n_iter, pseudo_count)
    np.testing.assert_allclose(res.params.weights, weights, rtol=1e-10)
    np.testing.assert_allclose(res.params.probs, probs, rtol=1e-10)
    # The objective is the mean log-likelihood plus the Beta log prior over n.
    log_lik = logsumexp(reference_log_density(X, probs) + np.log(weights), axis=1).sum()
    log_prior = pseudo_count * np.sum(np.log(probs) + np.log1p(-probs))
    np.testing.assert_allclose(res.log_likelihood, (log_lik + log_prior) / X.shape[0], rtol=1e-10)


def test_m_step_keeps_probabilities_in_the_unit_interval_despite_rounding():
    # Sums of x from a GEMM may exceed the responsibility counts by a rounding error.
    model = jaxem.BernoulliMixture(1, pseudo_count=0.0)
    stats = BernoulliMixtureStats(counts=jnp.asarray([3.0]), sums=jnp.asarray([[3.0 + 1e-13, 0.0]]))
    params = model.m_step(stats, None)
    assert float(params.probs.max()) <= 1.0 and float(params.probs.min()) >= 0.0
    # p = 1 gives x = 0 a log-density of -inf (impossible), never NaN.
    assert not np.any(np.isnan(model.log_joint(params, jnp.asarray([[0.0, 1.0], [1.0, 0.0]]))))


def test_maximum_likelihood_with_a_constant_feature_stays_finite():
    X = binary_data()
    X[:, 0] = 1.0
    res = jaxem.fit(jaxem.BernoulliMixture(2, pseudo_count=0.0), X, key=jax.random.key(0), max_iter=100)
    assert int(res.status) == jaxem.Status.CONVERGED
    assert bool(jnp.all(jnp.isfinite(res.params.probs)))
    np.testing.assert_allclose(res.params.probs[:, 0], 1.0, atol=1e-12)


@pytest.mark.parametrize("pseudo_count", [0.0, 0.5])
def test_m_step_is_a_stationary_point_of_the_map_q(pseudo_count):
    X = binary_data()
    w = np.random.default_rng(3).uniform(0.5, 2.0, X.shape[0])
    assert_m_step_maximises_q(jaxem.BernoulliMixture(2, pseudo_count=pseudo_count), start(), X, w)


def test_restarts_are_monotone_and_recover_the_probs():
    X = binary_data(n=1000)
    res = jaxem.fit(jaxem.BernoulliMixture(2), X, key=jax.random.key(1), n_restarts=3, max_iter=300, tol=1e-10)
    for r in range(3):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts))
    order = np.argsort(-np.asarray(res.params.probs[:, 0]))
    np.testing.assert_allclose(res.params.probs[order], PROBS, atol=0.1)


def test_predictions_and_criteria_by_hand():
    X = binary_data()
    params = start()
    log_density = reference_log_density(X, params.probs)
    assert_predictions_by_hand(jaxem.BernoulliMixture(2), params, X, log_density, n_free_parameters=2 * 4 + 1)


def test_sample_has_the_params_moments():
    params = start()
    X, labels = jaxem.BernoulliMixture(2).sample(jax.random.key(0), params, 50_000)
    X, labels = np.asarray(X), np.asarray(labels)
    assert X.shape == (50_000, 4) and set(np.unique(X)) == {0.0, 1.0}
    np.testing.assert_allclose(np.bincount(labels) / labels.size, params.weights, atol=1e-2)
    for k in range(2):
        np.testing.assert_allclose(X[labels == k].mean(0), params.probs[k], atol=1.5e-2)


@pytest.mark.parametrize("X", [[[0.0, 2.0], [1.0, 0.0]], [[0.0, 0.5], [1.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]])
def test_non_binary_data_raises(X):
    with pytest.raises(ValueError, match="binary values"):
        jaxem.fit(jaxem.BernoulliMixture(2), X, key=jax.random.key(0))


@pytest.mark.parametrize(
    "init, message",
    [
        (dict(weights=[0.5, 0.5], probs=[[0.5, 1.5], [0.5, 0.5]]), r"\[0.0, 1.0\]"),
        (dict(weights=[0.5, 0.5], probs=[[0.5], [0.5]]), "shape"),
        (dict(probs=[[0.5, 0.5], [0.5, 0.5]]), "missing"),
    ],
)
def test_bad_init_raises(init, message):
    with pytest.raises(ValueError, match=message):
        jaxem.fit(jaxem.BernoulliMixture(2), binary_data()[:, :2], key=jax.random.key(0), init=init)


def test_negative_pseudo_count_raises():
    with pytest.raises(ValueError, match="pseudo_count"):
        jaxem.BernoulliMixture(2, pseudo_count=-0.1)


def test_predictions_check_the_data_domain():
    X = binary_data()[:3].copy()
    X[1, 2] = 0.5
    model = jaxem.BernoulliMixture(2)
    for method in (model.predict, model.predict_proba, model.score_samples, model.score, model.bic, model.aic):
        with pytest.raises(ValueError, match="binary values"):
            method(start(), X)
