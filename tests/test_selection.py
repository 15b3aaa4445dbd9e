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
    selection = jaxem.select(factory, X, n_components=[4, 1, 2, 3], **options)
    np.testing.assert_array_equal(selection.n_components, [1, 2, 3, 4])
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
