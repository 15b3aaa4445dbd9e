"""jaxem.sklearn's FactorAnalysis and PPCA (scikit-learn's estimator checks, against
sklearn.decomposition) and its HMM estimators (hmmlearn's API, against hmmlearn given the
same params), clone / pickle / get_params by hand for the HMMs."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.decomposition import PCA as SklearnPCA  # noqa: E402
from sklearn.decomposition import FactorAnalysis as SklearnFactorAnalysis  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jaxem import sklearn as jsk  # noqa: E402


# --- factor analysis and PPCA ---------------------------------------------------------------------
# PPCA shares FactorAnalysis's estimator code (validation, fit, attributes) and passed every
# check when run (about 22 s more); only FactorAnalysis runs them here, to keep CI short.
@parametrize_with_checks([jsk.FactorAnalysis()])
def test_estimator_checks(estimator, check):
    check(estimator)


def factor_rows(n=300, n_features=6, n_factors=2, seed=0):
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(n_factors, n_features))
    noise = rng.uniform(0.3, 1.0, size=n_features)
    return rng.normal(size=(n, n_factors)) @ loadings + rng.normal(size=(n, n_features)) * noise + 1.0


def test_factor_analysis_matches_sklearn():
    X = factor_rows()
    sk = SklearnFactorAnalysis(2, tol=1e-13, max_iter=100_000, svd_method="lapack").fit(X)
    fa = jsk.FactorAnalysis(2, tol=1e-13, max_iter=50_000).fit(X)  # plain EM: ~5000 iterations
    assert fa.components_.shape == (2, 6) and fa.noise_variance_.shape == (6,) and fa.n_iter_ == len(fa.loglike_)
    np.testing.assert_allclose(fa.score(X), sk.score(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fa.loglike_[-1] / len(X), sk.score(X), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fa.score_samples(X), sk.score_samples(X), rtol=0, atol=1e-5)
    np.testing.assert_allclose(fa.mean_, sk.mean_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fa.noise_variance_, sk.noise_variance_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fa.get_covariance(), sk.get_covariance(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(fa.get_precision(), sk.get_precision(), rtol=0, atol=1e-5)
    # The same orientation as scikit-learn's components_, up to the sign of each factor.
    signs = np.sign(np.sum(fa.components_ * sk.components_, axis=1))
    np.testing.assert_allclose(fa.components_ * signs[:, None], sk.components_, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fa.transform(X) * signs, sk.transform(X), rtol=0, atol=1e-5)


def test_ppca_is_pca_at_the_optimum():
    """Maximum-likelihood PPCA is PCA (Tipping & Bishop 1999) with the variances divided by n,
    not n - 1: the same axes, explained variances and noise variance."""
    X = factor_rows(n=200, n_features=5, n_factors=2, seed=1)
    pca = SklearnPCA(2, svd_solver="full").fit(X)
    ppca = jsk.PPCA(2, tol=1e-12, max_iter=20_000).fit(X)  # plain EM: ~1000 iterations
    scale = (len(X) - 1) / len(X)
    np.testing.assert_allclose(np.abs(ppca.components_ @ pca.components_.T), np.eye(2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ppca.explained_variance_, pca.explained_variance_ * scale, rtol=1e-6)
    np.testing.assert_allclose(ppca.noise_variance_, pca.noise_variance_ * scale, rtol=1e-6)
    np.testing.assert_allclose(ppca.mean_, pca.mean_, rtol=0, atol=1e-12)


# --- hidden Markov models against hmmlearn --------------------------------------------------------
hmm = pytest.importorskip("hmmlearn.hmm")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)

LENGTHS = np.array([60, 40, 1, 49])
MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 3.0]])


def gaussian_steps(seed=0):
    rng = np.random.default_rng(seed)
    return MEANS[rng.integers(3, size=LENGTHS.sum())] + rng.normal(size=(LENGTHS.sum(), 2))


def gaussian_start(seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3, 2, 2))
    return dict(startprob_=rng.dirichlet(np.ones(3)), transmat_=rng.dirichlet(3 * np.ones(3), size=3),
                means_=MEANS + 0.3 * rng.normal(size=(3, 2)), covars_=a @ a.transpose(0, 2, 1) + np.eye(2))


def set_attributes(estimator, values):
    for name, value in values.items():
        setattr(estimator, name, value)
    return estimator


HMM_OPTIONS = dict(covariance_type="full", covars_prior=0.0, n_iter=5, tol=0.0, params="smc")


@pytest.fixture(scope="module")
def fitted_pair():
    """Our GaussianHMM and hmmlearn's, five maximum-likelihood iterations from the same start,
    the transition matrix held ("t" not in params)."""
    X, start = gaussian_steps(), gaussian_start()
    options = dict(HMM_OPTIONS, init_params="")
    ours = set_attributes(jsk.GaussianHMM(3, **options), start).fit(X, LENGTHS)
    ref = set_attributes(hmm.GaussianHMM(3, **options), start).fit(X, LENGTHS)
    return X, ours, ref


def test_gaussian_hmm_fit_and_predictions_match_hmmlearn(fitted_pair):
    X, ours, ref = fitted_pair
    for name in ("startprob_", "transmat_", "means_", "covars_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(ours.transmat_, gaussian_start()["transmat_"])
    assert ours.monitor_.iter == ref.monitor_.iter == 5 and ours.monitor_.converged
    np.testing.assert_allclose(list(ours.monitor_.history), list(ref.monitor_.history), rtol=1e-10)
    # hmmlearn's model given our fitted params: the same scores, paths, posteriors and BIC/AIC
    # (which count every param, held ones included, as hmmlearn).
    given = set_attributes(hmm.GaussianHMM(3, covariance_type="full", params="smc", init_params=""),
                           dict(startprob_=ours.startprob_, transmat_=ours.transmat_, means_=ours.means_,
                                covars_=ours._covars_))
    np.testing.assert_allclose(ours.score(X, LENGTHS), given.score(X, LENGTHS), rtol=1e-10)
    log_prob, posteriors = ours.score_samples(X, LENGTHS)
    ref_log_prob, ref_posteriors = given.score_samples(X, LENGTHS)
    np.testing.assert_allclose(log_prob, ref_log_prob, rtol=1e-10)
    np.testing.assert_allclose(posteriors, ref_posteriors, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X, LENGTHS), given.predict(X, LENGTHS))
    for algorithm in ("viterbi", "map"):
        value, states = ours.decode(X, LENGTHS, algorithm=algorithm)
        ref_value, ref_states = given.decode(X, LENGTHS, algorithm=algorithm)
        np.testing.assert_allclose(value, ref_value, rtol=1e-10)
        np.testing.assert_array_equal(states, ref_states)
    np.testing.assert_allclose(ours.bic(X, LENGTHS), given.bic(X, LENGTHS), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(X, LENGTHS), given.aic(X, LENGTHS), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", ["spherical", "diag", "tied"])
def test_gaussian_hmm_covars_shapes_as_hmmlearn(covariance_type):
    full = gaussian_start()["covars_"]
    stored = {"spherical": np.array([1.0, 1.5, 0.7]), "diag": np.stack([np.diag(c) for c in full]),
              "tied": full[0]}[covariance_type]
    ours = jsk.GaussianHMM(3, covariance_type=covariance_type)
    ref = hmm.GaussianHMM(3, covariance_type=covariance_type)
    ours.means_ = ref.means_ = MEANS
    ours.covars_ = ref.covars_ = stored
    ref.n_features = 2
    np.testing.assert_array_equal(ours._covars_, stored)
    np.testing.assert_allclose(ours.covars_, ref.covars_, rtol=0, atol=0)


def test_categorical_and_poisson_hmm_match_hmmlearn():
    rng = np.random.default_rng(2)
    codes = rng.integers(3, size=(LENGTHS.sum(), 1))
    counts = rng.poisson(np.where(np.arange(LENGTHS.sum())[:, None] // 10 % 2, 6.0, 1.0), size=(LENGTHS.sum(), 2))
    # The categorical fit from a given start (hmmlearn's init_params=""), the Poisson one from
    # jaxem's drawn start.
    categorical_start = dict(startprob_=np.array([0.6, 0.4]), transmat_=np.array([[0.8, 0.2], [0.3, 0.7]]),
                             emissionprob_=np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]))
    cases = [
        (set_attributes(jsk.CategoricalHMM(2, n_iter=20, init_params=""), categorical_start),
         hmm.CategoricalHMM(2, init_params=""), codes, ("startprob_", "transmat_", "emissionprob_")),
        (jsk.PoissonHMM(2, n_iter=20, random_state=0), hmm.PoissonHMM(2, init_params=""), counts,
         ("startprob_", "transmat_", "lambdas_")),
    ]
    for ours, ref, X, names in cases:
        ours.fit(X, LENGTHS)
        set_attributes(ref, {name: getattr(ours, name) for name in names})
        np.testing.assert_allclose(ours.score(X, LENGTHS), ref.score(X, LENGTHS), rtol=1e-10)
        np.testing.assert_array_equal(ours.predict(X, LENGTHS), ref.predict(X, LENGTHS))
    assert cases[0][0].emissionprob_.shape == (2, 3) and cases[0][0].n_categories_ == 3
    drawn, states = cases[1][0].sample(30, currstate=1)
    assert drawn.shape == (30, 2) and drawn.dtype == np.int64 and states[0] == 1


# --- the estimator API by hand (parametrize_with_checks does not apply to sequence models) -------
def test_hmm_get_params_clone_pickle(fitted_pair):
    X, ours, _ = fitted_pair
    est = jsk.GaussianHMM(3, covariance_type="tied", n_iter=7, random_state=3, n_init=2)
    params = est.get_params()
    assert params["covariance_type"] == "tied" and params["n_iter"] == 7 and params["n_init"] == 2
    assert set(params) >= {"n_components", "startprob_prior", "transmat_prior", "covars_prior", "covars_weight",
                           "min_covar", "algorithm", "random_state", "n_iter", "tol", "verbose", "params",
                           "init_params"}
    copy = clone(est.set_params(tol=1e-4))
    assert copy.get_params() == est.get_params() and copy is not est
    assert pickle.loads(pickle.dumps(est)).get_params() == est.get_params()
    restored = pickle.loads(pickle.dumps(ours))
    assert restored.score(X, LENGTHS) == ours.score(X, LENGTHS)
    assert list(restored.monitor_.history) == list(ours.monitor_.history)
    assert not hasattr(clone(ours), "startprob_")
    drawn, states = ours.sample(25, random_state=0)
    again, _ = ours.sample(25, random_state=0)
    assert drawn.shape == (25, 2) and states.shape == (25,) and np.array_equal(drawn, again)


def test_hmm_params_codes_and_partial_starts(fitted_pair):
    X, _, _ = fitted_pair
    start = gaussian_start()
    # Start and transitions given, the transitions held (params="smc"); means and covariances
    # drawn by jaxem (init_params="mc").
    est = jsk.GaussianHMM(3, **dict(HMM_OPTIONS, init_params="mc"), random_state=0)
    set_attributes(est, {"startprob_": start["startprob_"], "transmat_": start["transmat_"]}).fit(X, LENGTHS)
    np.testing.assert_array_equal(est.transmat_, start["transmat_"])
    assert not np.allclose(est.startprob_, start["startprob_"])
    assert est.means_.shape == (3, 2) and est.covars_.shape == (3, 2, 2)
    with pytest.raises(ValueError, match="unknown codes"):
        jsk.GaussianHMM(3, init_params="stmx").fit(X, LENGTHS)
    with pytest.raises(ValueError, match="lengths"):
        jsk.GaussianHMM(3).fit(X, LENGTHS[:-1])
    with pytest.raises(ValueError, match="n_components"):
        jsk.GaussianHMM(0).fit(X)
    bad = set_attributes(jsk.GaussianHMM(3, covariance_type="full", init_params="mc"),
                         {"startprob_": np.array([0.5, 0.6, 0.1]), "transmat_": start["transmat_"]})
    with pytest.raises(ValueError, match="initial"):
        bad.fit(X, LENGTHS)
