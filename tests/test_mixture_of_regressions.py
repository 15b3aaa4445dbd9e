"""Mixture of regressions: least-squares and Gaussian-mixture limits, textbook EM parity, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm

import jaxem
from mixture_checks import (
    as_init,
    assert_m_step_maximises_q,
    assert_monotone,
    assert_predictions_by_hand,
)

COEFS = np.array([[1.0, 2.0, -1.0], [-2.0, -0.5, 1.5]])  # intercept, two slopes
NOISE = np.array([0.3, 0.6])


def regression_data(seed=0, n=300):
    """Covariates in the first two columns, the target last."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    x = rng.normal(size=(n, 2))
    y = COEFS[labels, 0] + np.sum(x * COEFS[labels, 1:], axis=1) + NOISE[labels] * rng.normal(size=n)
    return np.column_stack([x, y])


def start():
    return jaxem.MixtureOfRegressionsParams(
        jnp.asarray([0.5, 0.5]), jnp.asarray([[0.5, 1.0, 0.0], [-1.0, 0.0, 1.0]]), jnp.asarray([1.0, 2.0])
    )


def with_intercept(X):
    return np.column_stack([np.ones(X.shape[0]), X[:, :-1]])


def weighted_least_squares(design, y, weights):
    """numpy.linalg.lstsq on rows scaled by sqrt(weight): (coefs, weighted mean squared residual)."""
    root = np.sqrt(weights)
    coefs = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)[0]
    return coefs, np.sum(weights * (y - design @ coefs) ** 2) / np.sum(weights)


def reference_log_density(X, coefs, variances):
    mean = with_intercept(X) @ np.asarray(coefs).T
    return norm.logpdf(X[:, -1:], mean, np.sqrt(np.asarray(variances)))


def reference_em(X, params, n_iter, reg_variance=1e-6):
    """EM for K regressions: responsibilities, then one weighted least squares per component."""
    weights, coefs, variances = (np.array(p) for p in params)
    for _ in range(n_iter):
        log_joint = reference_log_density(X, coefs, variances) + np.log(weights)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        weights = resp.sum(0) / resp.sum()
        fits = [weighted_least_squares(with_intercept(X), X[:, -1], resp[:, k]) for k in range(len(weights))]
        coefs = np.stack([c for c, _ in fits])
        variances = np.array([v for _, v in fits]) + reg_variance
    return weights, coefs, variances


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_one_component_is_weighted_least_squares(fit_intercept):
    X = regression_data()
    w = np.random.default_rng(1).uniform(0.2, 3.0, X.shape[0])
    model = jaxem.MixtureOfRegressions(1, fit_intercept=fit_intercept, reg_variance=0.0)
    design = with_intercept(X) if fit_intercept else X[:, :-1]
    coefs, variance = weighted_least_squares(design, X[:, -1], w)
    res = jaxem.fit(model, X, key=jax.random.key(0), sample_weight=w, max_iter=2, tol=0.0)
    np.testing.assert_allclose(res.params.coefs[0], coefs, rtol=1e-10)
    np.testing.assert_allclose(res.params.variances[0], variance, rtol=1e-10)
    np.testing.assert_allclose(res.params.weights, [1.0])
    np.testing.assert_allclose(res.trace[0], res.trace[1], rtol=1e-12)  # the start is already the optimum


def test_intercept_only_is_the_one_dimensional_gaussian_mixture():
    y = regression_data()[:, -1:]
    init = dict(weights=np.array([0.3, 0.7]), coefs=np.array([[-1.0], [1.0]]), variances=np.array([1.0, 2.0]))
    gaussian_init = dict(weights=init["weights"], means=init["coefs"], covariances=init["variances"])
    options = dict(key=jax.random.key(0), max_iter=15, tol=0.0)
    regressions = jaxem.fit(jaxem.MixtureOfRegressions(2, reg_variance=1e-6), y, init=init, **options)
    gaussian = jaxem.fit(
        jaxem.GaussianMixture(2, covariance_type="spherical", reg_covar=1e-6), y, init=gaussian_init, **options
    )
    np.testing.assert_allclose(regressions.params.weights, gaussian.params.weights, rtol=1e-9)
    np.testing.assert_allclose(regressions.params.coefs, gaussian.params.means, rtol=1e-9)
    np.testing.assert_allclose(regressions.params.variances, gaussian.params.covariances, rtol=1e-9)
    np.testing.assert_allclose(regressions.trace, gaussian.trace, rtol=1e-11)


@pytest.mark.parametrize("n_iter", [1, 7])
def test_matches_textbook_em_after_same_iterations(n_iter):
    X = regression_data()
    res = jaxem.fit(
        jaxem.MixtureOfRegressions(2), X, key=jax.random.key(0), init=as_init(start()), max_iter=n_iter, tol=0.0
    )
    for name, ours, theirs in zip(res.params._fields, res.params, reference_em(X, start(), n_iter)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, err_msg=name)


def test_m_step_is_a_stationary_point_of_q():
    X = regression_data()
    w = np.random.default_rng(3).uniform(0.5, 2.0, X.shape[0])
    assert_m_step_maximises_q(jaxem.MixtureOfRegressions(2, reg_variance=0.0), start(), X, w)


def test_restarts_are_monotone_and_recover_the_lines():
    X = regression_data(n=600)
    res = jaxem.fit(jaxem.MixtureOfRegressions(2), X, key=jax.random.key(1), n_restarts=4, max_iter=300, tol=1e-10)
    for r in range(4):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts))
    order = np.argsort(-np.asarray(res.params.coefs[:, 0]))
    np.testing.assert_allclose(res.params.coefs[order], COEFS, atol=0.15)
    np.testing.assert_allclose(np.sqrt(res.params.variances[order]), NOISE, atol=0.1)


def test_predictions_and_criteria_by_hand():
    X = regression_data()
    params = start()
    log_density = reference_log_density(X, params.coefs, params.variances)
    assert_predictions_by_hand(jaxem.MixtureOfRegressions(2), params, X, log_density, n_free_parameters=2 * 3 + 2 + 1)


def test_sample_draws_targets_around_each_line():
    params = jaxem.MixtureOfRegressionsParams(jnp.asarray([0.4, 0.6]), jnp.asarray(COEFS), jnp.asarray(NOISE**2))
    design = np.random.default_rng(0).normal(size=(40_000, 2))
    X, labels = jaxem.MixtureOfRegressions(2).sample(jax.random.key(0), params, 40_000, design=design)
    X, labels = np.asarray(X), np.asarray(labels)
    np.testing.assert_array_equal(X[:, :2], design)
    np.testing.assert_allclose(np.bincount(labels) / labels.size, params.weights, atol=1e-2)
    for k in range(2):
        rows = labels == k
        coefs, variance = weighted_least_squares(with_intercept(X[rows]), X[rows, -1], np.ones(rows.sum()))
        np.testing.assert_allclose(coefs, COEFS[k], atol=0.02)
        np.testing.assert_allclose(variance, NOISE[k] ** 2, rtol=0.05)


def test_bad_inputs_raise():
    X = regression_data()
    with pytest.raises(ValueError, match="at least 2 columns"):
        jaxem.fit(jaxem.MixtureOfRegressions(2, fit_intercept=False), X[:, -1:], key=jax.random.key(0))
    model = jaxem.MixtureOfRegressions(2)
    with pytest.raises(ValueError, match="pass design"):
        model.sample(jax.random.key(0), start(), 10)
    with pytest.raises(ValueError, match="design must have shape"):
        model.sample(jax.random.key(0), start(), 10, design=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="variances must be positive"):
        jaxem.fit(model, X, key=jax.random.key(0), init=as_init(start()) | dict(variances=[1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        jaxem.fit(model, X, key=jax.random.key(0), init=as_init(start()) | dict(coefs=np.zeros((2, 2))))
    with pytest.raises(ValueError, match="reg_variance"):
        jaxem.MixtureOfRegressions(2, reg_variance=-1.0)


def test_float32_target_far_from_origin_keeps_accurate_variances():
    X = regression_data()
    X[:, -1] += 1e4
    options = dict(key=jax.random.key(0), n_restarts=3, max_iter=300, tol=1e-6)
    res32 = jaxem.fit(jaxem.MixtureOfRegressions(2), X.astype(np.float32), **options)
    res64 = jaxem.fit(jaxem.MixtureOfRegressions(2), X, **options)
    assert res32.params.variances.dtype == jnp.float32
    order32 = np.argsort(np.asarray(res32.params.coefs[:, 1]))
    order64 = np.argsort(np.asarray(res64.params.coefs[:, 1]))
    np.testing.assert_allclose(res32.params.variances[order32], res64.params.variances[order64], rtol=5e-3)
    np.testing.assert_allclose(res32.params.coefs[order32], res64.params.coefs[order64], rtol=1e-3, atol=1e-3)


def test_empty_component_keeps_its_coefficients_and_stays_finite():
    X = regression_data()[:50]
    init = dict(weights=[0.5, 0.5], coefs=[[1.0, 2.0, -1.0], [1e4, 0.0, 0.0]], variances=[1.0, 1.0])
    res = jaxem.fit(jaxem.MixtureOfRegressions(2), X, key=jax.random.key(0), init=init, max_iter=5, tol=0)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in res.params)
    assert float(res.params.weights[1]) < 1e-10
    np.testing.assert_allclose(res.params.coefs[1], init["coefs"][1])
