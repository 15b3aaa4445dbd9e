"""jaxem.sklearn estimators with missing="em": fits equal jaxem.fit(..., missing="em") from the
same start, and predictions on rows with NaN equal the densities, posteriors, latent means
and conditional means of the observed coordinates computed with numpy / scipy from the
fitted attributes. 256 rows: the estimators' row buckets add no padding, so a fit is
exactly the jaxem.fit call it makes. Float64 comes from tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

import jax  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402

import jaxem  # noqa: E402
from jaxem import sklearn as jsk  # noqa: E402

N_ROWS, N_FEATURES = 256, 3


def _data(missing_fraction=0.15, seed=0):
    rng = np.random.default_rng(seed)
    half = N_ROWS // 2
    X = np.concatenate([
        rng.normal(size=(half, N_FEATURES)),
        rng.normal(size=(N_ROWS - half, N_FEATURES)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]] + 3,
    ])
    holes = X.copy()
    holes[rng.random(X.shape) < missing_fraction] = np.nan
    holes[np.isnan(holes).all(axis=1), 0] = 0.0
    return X, holes


def _log_joint(x, weights, means, covariances):
    """log w_k + log N(x_o | mu_k,o, Sigma_k,oo) per component: (K,)."""
    o = ~np.isnan(x)
    return np.array([
        np.log(w) + (multivariate_normal(mu[o], cov[np.ix_(o, o)]).logpdf(x[o]) if o.any() else 0.0)
        for w, mu, cov in zip(weights, means, covariances)
    ])


def _conditional_mean(x, mean, cov):
    o, m = ~np.isnan(x), np.isnan(x)
    filled = x.copy()
    filled[m] = mean[m] + cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - mean[o])
    return filled


def _assert_mixture_predictions(est, X, weights, means, covariances, n_params):
    """score_samples, predict_proba, predict, score, bic, aic and impute of est on rows X
    with NaN, against numpy from the fitted components."""
    log_joint = np.array([_log_joint(x, weights, means, covariances) for x in X])
    log_density = logsumexp(log_joint, axis=1)
    proba = np.exp(log_joint - log_density[:, None])
    # A row with nothing observed has log density log(sum of weights) = 0 up to an ulp: rtol alone cannot hold there.
    np.testing.assert_allclose(est.score_samples(X), log_density, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.predict_proba(X), proba, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(est.predict(X), np.argmax(proba, axis=1))
    np.testing.assert_allclose(est.score(X), log_density.mean(), rtol=1e-10)
    np.testing.assert_allclose(est.bic(X), -2 * log_density.sum() + n_params * np.log(len(X)), rtol=1e-10)
    np.testing.assert_allclose(est.aic(X), -2 * log_density.sum() + 2 * n_params, rtol=1e-10)
    imputed = np.stack([
        sum(p * _conditional_mean(x, mu, cov) for p, mu, cov in zip(row, means, covariances))
        for x, row in zip(X, proba)
    ])
    np.testing.assert_allclose(est.impute(X), imputed, rtol=1e-10, atol=1e-12)


START = {
    "weights": np.array([0.4, 0.6]),
    "means": np.array([[0.5, 0.0, 0.0], [2.0, 2.5, 3.0]]),
    "covariances": np.stack([np.eye(3), [[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 1.5]]]),
}


def test_gaussian_mixture_fit_and_predictions():
    _, holes = _data()
    est = jsk.GaussianMixture(
        2, weights_init=START["weights"], means_init=START["means"], precisions_init=np.linalg.inv(START["covariances"]),
        tol=1e-8, max_iter=30, missing="em",
    ).fit(holes)
    separate = jaxem.fit(
        jaxem.GaussianMixture(2, reg_covar=1e-6), holes, key=jax.random.key(0), init=START, tol=1e-8,
        max_iter=30, missing="em",
    )
    np.testing.assert_allclose(est.weights_, separate.params.weights, rtol=1e-10)
    np.testing.assert_allclose(est.means_, separate.params.means, rtol=1e-10)
    np.testing.assert_allclose(est.covariances_, separate.params.covariances, rtol=1e-10)
    assert est.n_iter_ == int(separate.n_iter)
    np.testing.assert_allclose(est.lower_bound_, separate.trace[est.n_iter_ - 1], rtol=1e-12)

    d = N_FEATURES
    _assert_mixture_predictions(est, holes[:40], est.weights_, est.means_, est.covariances_, 1 + 2 * d + d * (d + 1))
    # a single row, one missing entry (its column has no observed entry) and a row with nothing observed
    lone = np.array([[np.nan, 1.0, 2.0], [np.nan, np.nan, np.nan]])
    _assert_mixture_predictions(est, lone, est.weights_, est.means_, est.covariances_, 1 + 2 * d + d * (d + 1))
    # complete rows: the complete-data predictions
    complete = holes[~np.isnan(holes).any(axis=1)][:10]
    mixed = np.concatenate([complete, holes[np.isnan(holes).any(axis=1)][:3]])
    np.testing.assert_allclose(est.score_samples(mixed)[:10], est.score_samples(complete), rtol=1e-10)


def test_gaussian_mixture_default_start_and_validation():
    """The default "kmeans" start runs KMeans on the rows with column means in the holes;
    the fit is then jaxem.fit from those starting params."""
    _, holes = _data()
    est = jsk.GaussianMixture(2, covariance_type="diag", random_state=0, max_iter=3, tol=0.0, missing="em")
    with pytest.warns(Warning, match="did not converge"):
        est.fit(holes)
    assert np.isfinite(est.lower_bound_) and est.n_iter_ == 3
    assert est.__sklearn_tags__().input_tags.allow_nan
    assert not jsk.GaussianMixture().__sklearn_tags__().input_tags.allow_nan
    with pytest.raises(ValueError, match="NaN"):
        jsk.GaussianMixture(2).fit(holes)
    with pytest.raises(ValueError, match="missing"):
        jsk.GaussianMixture(2, missing="mean").fit(holes)
    empty = holes.copy()
    empty[5] = np.nan
    with pytest.raises(ValueError, match="every entry missing"):
        jsk.GaussianMixture(2, missing="em").fit(empty)


def test_mixture_of_factor_analyzers_fit_and_predictions():
    _, holes = _data()
    start = {
        "weights": np.array([0.4, 0.6]),
        "means": START["means"],
        "loadings": np.array([[[1.0], [0.3], [0.2]], [[0.5], [0.8], [-0.4]]]),
        "noise_variances": np.array([0.5, 0.6, 0.7]),
    }
    est = jsk.MixtureOfFactorAnalyzers(
        2, 1, weights_init=start["weights"], means_init=start["means"], loadings_init=start["loadings"],
        noise_variances_init=start["noise_variances"], tol=1e-8, max_iter=20, missing="em",
    )
    with pytest.warns(Warning, match="did not converge"):
        est.fit(holes)
    separate = jaxem.fit(
        jaxem.MixtureOfFactorAnalyzers(2, 1), holes, key=jax.random.key(0), init=start, tol=1e-8, max_iter=20,
        missing="em",
    )
    np.testing.assert_allclose(est.means_, separate.params.means, rtol=1e-10)
    np.testing.assert_allclose(est.noise_variances_, separate.params.noise_variances, rtol=1e-10)
    np.testing.assert_allclose(est.lower_bound_, separate.trace[est.n_iter_ - 1], rtol=1e-12)
    d = N_FEATURES
    _assert_mixture_predictions(est, holes[:40], est.weights_, est.means_, est.covariances_, 1 + 2 * d + 2 * d + d)


@pytest.mark.parametrize("estimator", ["FactorAnalysis", "PPCA"])
def test_factor_models_fit_and_predictions(estimator):
    _, holes = _data()
    est = getattr(jsk, estimator)(1, tol=1e-6, max_iter=200, missing="em").fit(holes)
    model = getattr(jaxem, estimator)(1)
    separate = jaxem.fit(model, holes, key=jax.random.key(0), tol=1e-6 / N_ROWS, max_iter=200, missing="em")
    np.testing.assert_allclose(est.mean_, separate.params.mean, rtol=1e-10)
    np.testing.assert_allclose(est.get_covariance(), np.asarray(model.covariance(separate.params)), rtol=1e-9)
    np.testing.assert_allclose(est.loglike_[-1], separate.trace[est.n_iter_ - 1] * N_ROWS, rtol=1e-12)

    rows = holes[:40]
    cov, mean = est.get_covariance(), est.mean_
    loadings = est.components_.T * (np.sqrt(est.explained_variance_ - est.noise_variance_) if estimator == "PPCA" else 1.0)
    log_density, latent = [], []
    for x in rows:
        o = ~np.isnan(x)
        log_density.append(multivariate_normal(mean[o], cov[np.ix_(o, o)]).logpdf(x[o]))
        latent.append(loadings[o].T @ np.linalg.solve(cov[np.ix_(o, o)], x[o] - mean[o]))  # E[z | x_o]
    np.testing.assert_allclose(est.score_samples(rows), log_density, rtol=1e-10)
    np.testing.assert_allclose(est.transform(rows), np.array(latent), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.impute(rows), np.stack([_conditional_mean(x, mean, cov) for x in rows]), rtol=1e-10)
    assert est.__sklearn_tags__().input_tags.allow_nan
    with pytest.raises(ValueError, match="NaN"):
        getattr(jsk, estimator)(1).fit(holes)


# scikit-learn's checks that read the allow_nan tag (check_estimators_pickle then fits and
# predicts data with NaN entries) or that refit, with missing="em".
@pytest.mark.parametrize("check", ["check_estimators_pickle", "check_fit_idempotent", "check_get_params_invariance"])
@pytest.mark.parametrize(
    "estimator", [jsk.GaussianMixture(2, random_state=0, missing="em"), jsk.FactorAnalysis(1, missing="em")],
    ids=lambda est: type(est).__name__,
)
def test_sklearn_checks_with_missing_em(estimator, check):
    from sklearn.utils import estimator_checks

    getattr(estimator_checks, check)(type(estimator).__name__, estimator)
