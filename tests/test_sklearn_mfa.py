"""jaxem.sklearn.MixtureOfFactorAnalyzers: a handful of scikit-learn's estimator checks (the
whole parametrize_with_checks suite compiles a fit per check and takes minutes), one
component against factor analysis (jaxem.sklearn's and scikit-learn's), and two
components against the mixture density computed by hand with scipy from the fitted
attributes. Float64 comes from tests/conftest.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from scipy.special import logsumexp  # noqa: E402
from scipy.stats import multivariate_normal  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.decomposition import FactorAnalysis as SklearnFactorAnalysis  # noqa: E402
from sklearn.utils import estimator_checks  # noqa: E402

from jaxem import sklearn as jsk  # noqa: E402

# Checks of the estimator contract (construction, params, pickling, fitted state, data
# validation); their data have 2 or 3 features, so the fits compile twice.
CHECKS = [
    "check_parameters_default_constructible",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimators_unfitted",
    "check_n_features_in",
    "check_fit_score_takes_y",
    "check_dont_overwrite_parameters",
    "check_estimators_pickle",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
]


@pytest.mark.parametrize("check", CHECKS)
def test_sklearn_check(check):
    check_function = getattr(estimator_checks, check, None)
    if check_function is None:
        pytest.skip(f"{check} is not in this scikit-learn")
    check_function("MixtureOfFactorAnalyzers", jsk.MixtureOfFactorAnalyzers(random_state=0))


def mfa_rows(n_per=200, n_features=5, n_factors=2, n_components=2, seed=0):
    """Rows of a mixture of factor analyzers with well separated means."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.2, 0.6, size=n_features)
    blocks = []
    for k in range(n_components):
        loadings = rng.normal(size=(n_factors, n_features))
        mean = 6.0 * k * np.ones(n_features)
        latent = rng.normal(size=(n_per, n_factors))
        blocks.append(mean + latent @ loadings + rng.normal(size=(n_per, n_features)) * np.sqrt(noise))
    return np.concatenate(blocks)


def test_one_component_is_factor_analysis():
    """K=1: the maximum-likelihood factor analysis model, whatever the EM path."""
    X = mfa_rows(n_per=300, n_features=6, n_factors=2, n_components=1, seed=1)
    mfa = jsk.MixtureOfFactorAnalyzers(1, 2, tol=1e-13, max_iter=20_000, accelerate="squarem", random_state=0).fit(X)
    fa = jsk.FactorAnalysis(2, tol=1e-13, max_iter=50_000, accelerate="squarem").fit(X)
    sk = SklearnFactorAnalysis(2, tol=1e-13, max_iter=100_000, svd_method="lapack").fit(X)
    assert mfa.converged_ and mfa.weights_.shape == (1,) and mfa.components_.shape == (1, 2, 6)
    np.testing.assert_allclose(mfa.weights_, [1.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mfa.score(X), fa.score(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(mfa.score(X), sk.score(X), rtol=0, atol=1e-9)
    # Both optima agree in mean log-likelihood to 1e-9, but FA's likelihood is flat in some
    # directions: the two fits' covariances differ by ~1e-6, so per-sample values are checked
    # at the fitted params, against scipy.
    np.testing.assert_allclose(
        mfa.score_samples(X), multivariate_normal(mfa.means_[0], mfa.covariances_[0]).logpdf(X), rtol=0, atol=1e-10
    )
    np.testing.assert_allclose(mfa.means_[0], fa.mean_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mfa.noise_variance_, fa.noise_variance_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(mfa.covariances_[0], fa.get_covariance(), rtol=0, atol=1e-5)
    # The same orientation as FactorAnalysis.components_, up to the sign of each factor.
    signs = np.sign(np.sum(mfa.components_[0] * fa.components_, axis=1))
    np.testing.assert_allclose(mfa.components_[0] * signs[:, None], fa.components_, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def fitted():
    X = mfa_rows()
    return X, jsk.MixtureOfFactorAnalyzers(2, 2, tol=1e-8, max_iter=2000, n_init=2, random_state=0).fit(X)


def test_two_components_against_scipy(fitted):
    X, mfa = fitted
    k, q, d = 2, 2, X.shape[1]
    assert mfa.converged_ and mfa.n_iter_ >= 2 and np.isfinite(mfa.lower_bound_)
    assert mfa.weights_.shape == (k,) and mfa.means_.shape == (k, d)
    assert mfa.components_.shape == (k, q, d) and mfa.loadings_.shape == (k, d, q)
    assert mfa.noise_variance_.shape == (d,) and mfa.covariances_.shape == (k, d, d)
    np.testing.assert_array_equal(mfa.components_, np.swapaxes(mfa.loadings_, 1, 2))
    by_hand = np.einsum("kqd,kqe->kde", mfa.components_, mfa.components_) + np.diag(mfa.noise_variance_)
    np.testing.assert_allclose(mfa.covariances_, by_hand, rtol=0, atol=1e-12)

    log_joint = np.stack(
        [np.log(mfa.weights_[j]) + multivariate_normal(mfa.means_[j], mfa.covariances_[j]).logpdf(X) for j in range(k)],
        axis=1,
    )
    log_density = logsumexp(log_joint, axis=1)
    score_samples = mfa.score_samples(X)
    np.testing.assert_allclose(score_samples, log_density, rtol=0, atol=1e-10)
    np.testing.assert_allclose(mfa.score(X), np.mean(score_samples), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mfa.score(X), np.mean(log_density), rtol=0, atol=1e-10)
    # The fit's lower bound is the log-likelihood entering its last iteration (tol=1e-8).
    assert abs(mfa.lower_bound_ - mfa.score(X)) < 1e-7
    np.testing.assert_allclose(mfa.predict_proba(X), np.exp(log_joint - log_density[:, None]), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(mfa.predict(X), np.argmax(log_joint, axis=1))
    # The two blocks of rows are found.
    labels = mfa.predict(X)
    assert len(set(labels[:200])) == 1 and len(set(labels[200:])) == 1 and labels[0] != labels[-1]

    # BIC / AIC with the free parameters counted by hand (loadings up to a rotation).
    n_params = (k - 1) + k * d + k * (d * q - q * (q - 1) // 2) + d
    log_lik = np.sum(log_density)
    np.testing.assert_allclose(mfa.bic(X), -2 * log_lik + n_params * np.log(len(X)), rtol=1e-12)
    np.testing.assert_allclose(mfa.aic(X), -2 * log_lik + 2 * n_params, rtol=1e-12)

    draws, components = mfa.sample(500)
    assert draws.shape == (500, d) and components.shape == (500,) and set(components) <= {0, 1}


def test_clone_pickle_warm_start(fitted):
    X, mfa = fitted
    params = mfa.get_params()
    assert params["n_factors"] == 2 and params["accelerate"] is None and params["init_params"] == "k-means++"
    copy = clone(mfa)
    assert copy.get_params() == params and not hasattr(copy, "weights_")
    loaded = pickle.loads(pickle.dumps(mfa))
    np.testing.assert_array_equal(loaded.score_samples(X), mfa.score_samples(X))
    np.testing.assert_array_equal(loaded.covariances_, mfa.covariances_)
    # A warm refit starts at the fitted params and stops after one iteration.
    loaded.set_params(warm_start=True).fit(X)
    assert loaded.converged_ and loaded.n_iter_ == 1
    assert abs(loaded.score(X) - mfa.score(X)) < 1e-7
    # fit_predict is fit, then predict.
    np.testing.assert_array_equal(clone(mfa).fit_predict(X), mfa.predict(X))


def test_invalid_settings(fitted):
    X, _ = fitted
    with pytest.raises(ValueError, match="n_factors=6 must be <= n_features=5"):
        jsk.MixtureOfFactorAnalyzers(2, 6).fit(X)
    with pytest.raises(ValueError, match="noise_type"):
        jsk.MixtureOfFactorAnalyzers(2, 2, noise_type="full").fit(X)
    with pytest.raises(ValueError, match="loadings"):
        jsk.MixtureOfFactorAnalyzers(2, 2, loadings_init=np.zeros((2, 5, 3))).fit(X)
