"""Categorical mixture: textbook MAP-EM parity, Bernoulli equivalence, Q stationarity, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxem
from mixture_checks import (
    as_init,
    assert_m_step_maximises_q,
    assert_monotone,
    assert_predictions_by_hand,
)

# (K=2, D=3, C=4) generating probabilities.
PROBS = np.array(
    [
        [[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]],
        [[0.1, 0.1, 0.1, 0.7], [0.4, 0.1, 0.1, 0.4], [0.1, 0.1, 0.7, 0.1]],
    ]
)


def code_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    cumulative = PROBS[labels].cumsum(-1)  # (n, D, C)
    return (rng.uniform(size=(n, 3, 1)) > cumulative).sum(-1).astype(float)


def start(seed=1, n_categories=4, n_features=3):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_categories, 5.0), size=(2, n_features))
    return jaxem.CategoricalMixtureParams(jnp.asarray([0.4, 0.6]), jnp.asarray(probs))


def reference_log_density(X, probs):
    """sum_d log probs[k, d, x_d] by plain indexing: (n, K)."""
    probs = np.asarray(probs)
    codes = X.astype(int)
    return np.stack([np.log(probs[k, np.arange(X.shape[1]), codes]).sum(1) for k in range(probs.shape[0])], 1)


def reference_em(X, weights, probs, n_iter, pseudo_count):
    """MAP-EM under symmetric Dirichlet(1 + a) priors, straight from the textbook."""
    weights, probs = np.array(weights), np.array(probs)
    one_hot = np.eye(probs.shape[-1])[X.astype(int)]  # (n, D, C)
    for _ in range(n_iter):
        log_joint = reference_log_density(X, probs) + np.log(weights)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        n_k = resp.sum(0)
        weights = n_k / n_k.sum()
        counts = np.einsum("nk,ndc->kdc", resp, one_hot) + pseudo_count
        probs = counts / counts.sum(-1, keepdims=True)
    return weights, probs


@pytest.mark.parametrize("pseudo_count", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("n_iter", [1, 7])
def test_matches_textbook_map_em_after_same_iterations(n_iter, pseudo_count):
    X = code_data()
    init = start()
    model = jaxem.CategoricalMixture(2, n_categories=4, pseudo_count=pseudo_count)
    res = jaxem.fit(model, X, key=jax.random.key(0), init=as_init(init), max_iter=n_iter, tol=0.0)
    weights, probs = reference_em(X, init.weights, init.probs, n_iter, pseudo_count)
    np.testing.assert_allclose(res.params.weights, weights, rtol=1e-10)
    np.testing.assert_allclose(res.params.probs, probs, rtol=1e-10)
    log_lik = logsumexp(reference_log_density(X, probs) + np.log(weights), axis=1).sum()
    log_prior = pseudo_count * np.sum(np.log(probs))
    np.testing.assert_allclose(res.log_likelihood, (log_lik + log_prior) / X.shape[0], rtol=1e-10)


def test_two_categories_equal_the_bernoulli_mixture():
    X = code_data()
    X = (X >= 2).astype(float)
    init = start(n_categories=2)
    categorical = jaxem.fit(
        jaxem.CategoricalMixture(2, n_categories=2, pseudo_count=0.3), X,
        key=jax.random.key(0), init=as_init(init), max_iter=25, tol=0.0,
    )
    bernoulli_init = dict(weights=np.asarray(init.weights), probs=np.asarray(init.probs[..., 1]))
    bernoulli = jaxem.fit(
        jaxem.BernoulliMixture(2, pseudo_count=0.3), X,
        key=jax.random.key(0), init=bernoulli_init, max_iter=25, tol=0.0,
    )
    np.testing.assert_allclose(categorical.params.weights, bernoulli.params.weights, rtol=1e-10)
    np.testing.assert_allclose(categorical.params.probs[..., 1], bernoulli.params.probs, rtol=1e-10)
    np.testing.assert_allclose(categorical.trace, bernoulli.trace, rtol=1e-10)


@pytest.mark.parametrize("pseudo_count", [0.0, 0.5])
def test_m_step_is_a_stationary_point_of_the_map_q(pseudo_count):
    X = code_data()
    w = np.random.default_rng(3).uniform(0.5, 2.0, X.shape[0])
    model = jaxem.CategoricalMixture(2, n_categories=4, pseudo_count=pseudo_count)
    assert_m_step_maximises_q(model, start(), X, w)


def test_restarts_are_monotone_and_recover_the_probs():
    X = code_data(n=1500)
    model = jaxem.CategoricalMixture(2, n_categories=4)
    res = jaxem.fit(model, X, key=jax.random.key(1), n_restarts=3, max_iter=300, tol=1e-10)
    for r in range(3):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts))
    order = np.argsort(-np.asarray(res.params.probs[:, 0, 0]))
    np.testing.assert_allclose(res.params.probs[order], PROBS, atol=0.1)


def test_predictions_and_criteria_by_hand():
    X = code_data()
    params = start()
    log_density = reference_log_density(X, params.probs)
    model = jaxem.CategoricalMixture(2, n_categories=4)
    assert_predictions_by_hand(model, params, X, log_density, n_free_parameters=2 * 3 * 3 + 1)


def test_sample_has_the_params_frequencies():
    params = start()
    X, labels = jaxem.CategoricalMixture(2, n_categories=4).sample(jax.random.key(0), params, 50_000)
    X, labels = np.asarray(X).astype(int), np.asarray(labels)
    np.testing.assert_allclose(np.bincount(labels) / labels.size, params.weights, atol=1e-2)
    for k in range(2):
        for d in range(3):
            freq = np.bincount(X[labels == k, d], minlength=4) / np.sum(labels == k)
            np.testing.assert_allclose(freq, params.probs[k, d], atol=1.5e-2)


@pytest.mark.parametrize("X", [[[0.0, 4.0], [1.0, 0.0]], [[0.0, 1.5], [1.0, 0.0]], [[0.0, -1.0], [1.0, 0.0]]])
def test_bad_codes_raise(X):
    with pytest.raises(ValueError, match="category codes"):
        jaxem.fit(jaxem.CategoricalMixture(2, n_categories=4), X, key=jax.random.key(0))


def test_bad_init_and_options_raise():
    model = jaxem.CategoricalMixture(2, n_categories=2)
    X = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    bad_probs = np.full((2, 2, 2), 0.7)
    with pytest.raises(ValueError, match="sum to 1"):
        jaxem.fit(model, X, key=jax.random.key(0), init=dict(weights=[0.5, 0.5], probs=bad_probs))
    with pytest.raises(ValueError, match="shape"):
        jaxem.fit(model, X, key=jax.random.key(0), init=dict(weights=[0.5, 0.5], probs=np.full((2, 2, 3), 1 / 3)))
    with pytest.raises(ValueError, match="n_categories"):
        jaxem.CategoricalMixture(2, n_categories=1)


def test_predictions_check_the_data_domain():
    X = code_data()[:3].copy()
    X[1, 2] = 4.0
    model = jaxem.CategoricalMixture(2, n_categories=4)
    for method in (model.predict, model.predict_proba, model.score_samples, model.score, model.bic, model.aic):
        with pytest.raises(ValueError, match="category codes"):
            method(start(), X)
