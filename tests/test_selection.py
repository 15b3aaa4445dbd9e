"""jaxem.select: every K in one vmapped program equals the separate fit of model_factory(K)."""

import jax
import numpy as np
import pytest

import jaxem

from mixture_checks import assert_trees_close


def faithful():
    return np.loadtxt(jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1)


def assert_equals_separate_fits(selection, model_factory, X, **options):
    for i, k in enumerate(selection.n_components):
        model = model_factory(int(k))
        separate = jaxem.fit(model, X, **options)
        np.testing.assert_allclose(selection.log_likelihood[i], separate.log_likelihood, rtol=1e-10)
        np.testing.assert_array_equal(selection.n_iter[i], separate.n_iter)
        np.testing.assert_allclose(selection.bic[i], model.bic(separate.params, X), rtol=1e-10)
        np.testing.assert_allclose(selection.aic[i], model.aic(separate.params, X), rtol=1e-10)
        assert_trees_close(selection.fits[i].params, separate.params, rtol=1e-8, atol=1e-10)
        assert_trees_close(selection.fits[i].restarts.params, separate.restarts.params, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(selection.fits[i].trace, separate.trace, rtol=1e-10)
        if k == selection.best_n_components:
            assert selection.best is selection.fits[i]


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_gaussian_bic_sweep_equals_separate_fits(covariance_type):
    X = faithful()
    factory = lambda k: jaxem.GaussianMixture(k, covariance_type=covariance_type)  # noqa: E731
    options = dict(key=jax.random.key(0), n_restarts=3, max_iter=200, tol=1e-6)
    selection = jaxem.select(factory, X, n_components=[3, 1, 2], **options)  # sorted by select
    np.testing.assert_array_equal(selection.n_components, [1, 2, 3])
    assert selection.best_n_components == selection.n_components[np.argmin(selection.bic)]
    assert selection.best.params.means.shape == (selection.best_n_components, 2)
    assert_equals_separate_fits(selection, factory, X, **options)


def test_more_than_eight_components_and_aic():
    rng = np.random.default_rng(0)
    X = rng.poisson(rng.choice([1.0, 4.0, 9.0, 16.0], size=(300, 1))).astype(float)
    options = dict(key=jax.random.key(1), n_restarts=2, max_iter=300, tol=1e-8)
    selection = jaxem.select(jaxem.PoissonMixture, X, n_components=[2, 9, 10], criterion="aic", **options)
    assert selection.best_n_components == selection.n_components[np.argmin(selection.aic)]
    assert_equals_separate_fits(selection, jaxem.PoissonMixture, X, **options)


def test_bad_arguments_raise():
    X = faithful()
    with pytest.raises(ValueError, match="n_components"):
        jaxem.select(jaxem.GaussianMixture, X, key=jax.random.key(0), n_components=[0, 2])
    with pytest.raises(ValueError, match="criterion"):
        jaxem.select(jaxem.GaussianMixture, X, key=jax.random.key(0), criterion="icl")
    with pytest.raises(ValueError, match="mixture"):
        jaxem.select(lambda k: jaxem.GaussianMixture(2), X, key=jax.random.key(0), n_components=[3])


def _observed_log_likelihood(X, weights, means, covariances):
    """sum_n log sum_k w_k N(x_n,o | mu_k,o, Sigma_k,oo) over the observed entries o of each
    row (numpy, directly on the observed blocks); covariances (K, D, D)."""
    total = 0.0
    for x in X:
        o = ~np.isnan(x)
        terms = []
        for w, mu, cov in zip(weights, means, covariances):
            diff, block = x[o] - mu[o], cov[np.ix_(o, o)]
            maha = diff @ np.linalg.solve(block, diff)
            terms.append(np.log(w) - 0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(block)[1] + maha))
        total += np.logaddexp.reduce(terms)
    return total


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_missing_values_sweep_equals_separate_fits_and_observed_data_bic(covariance_type):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]] + 3])
    X[rng.random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    factory = lambda k: jaxem.GaussianMixture(k, covariance_type=covariance_type)  # noqa: E731
    options = dict(key=jax.random.key(0), n_restarts=2, max_iter=100, tol=1e-6, missing="em")
    selection = jaxem.select(factory, X, n_components=[1, 3], **options)  # K = 1 and K > 1
    d = X.shape[1]
    for i, k in enumerate(selection.n_components):
        separate = jaxem.fit(factory(int(k)), X, **options)
        np.testing.assert_allclose(selection.log_likelihood[i], separate.log_likelihood, rtol=1e-10)
        np.testing.assert_array_equal(selection.n_iter[i], separate.n_iter)
        assert_trees_close(selection.fits[i].params, separate.params, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(selection.fits[i].trace, separate.trace, rtol=1e-10)
        weights, means, covariances = (np.asarray(leaf) for leaf in separate.params)
        if covariance_type == "diag":
            covariances = np.stack([np.diag(c) for c in covariances])
        n_params = (k - 1) + k * d + k * (d * (d + 1) // 2 if covariance_type == "full" else d)
        log_lik = _observed_log_likelihood(X, weights, means, covariances)
        np.testing.assert_allclose(selection.bic[i], -2 * log_lik + n_params * np.log(len(X)), rtol=1e-10)
        np.testing.assert_allclose(selection.aic[i], -2 * log_lik + 2 * n_params, rtol=1e-10)
    assert selection.best_n_components == selection.n_components[np.argmin(selection.bic)]
    with pytest.raises(ValueError, match='missing="em"'):
        jaxem.select(factory, X, key=jax.random.key(0), n_components=[1])
    with pytest.raises(TypeError, match="Gaussian components"):
        jaxem.select(jaxem.PoissonMixture, np.abs(X), key=jax.random.key(0), missing="em")
