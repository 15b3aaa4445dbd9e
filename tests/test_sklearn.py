"""jaxem.sklearn: scikit-learn's estimator checks, scikit-learn's own GaussianMixture tests
run against jaxem.sklearn.GaussianMixture, parity with scikit-learn from the same start, and
clone / pickle / get_params / set_params."""

from __future__ import annotations

import functools
import importlib
import pickle
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

import sklearn.mixture  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from jaxem import sklearn as jsk  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


# --- (1) scikit-learn's estimator checks ------------------------------------------------------
ESTIMATORS = [
    jsk.GaussianMixture(),
    jsk.PoissonMixture(),
    jsk.BernoulliMixture(),
    jsk.CategoricalMixture(),
    jsk.StudentTMixture(),
    jsk.MixtureOfRegressions(),
]

_FRACTIONAL_DATA = (
    "the check fits rng.rand floats without applying the estimator's input tags; this "
    "family accepts only non-negative whole numbers (jaxem rejects fractional counts and "
    "codes with a ValueError), so weights cannot be compared with repeated rows here "
    "(test_poisson_sample_weight_is_repetition does it on counts)"
)
EXPECTED_FAILED_CHECKS = {
    "PoissonMixture": {"check_sample_weight_equivalence_on_dense_data": _FRACTIONAL_DATA},
    "CategoricalMixture": {"check_sample_weight_equivalence_on_dense_data": _FRACTIONAL_DATA},
}


@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS.get(type(estimator).__name__, {})
)
def test_estimator_checks(estimator, check):
    check(estimator)


# --- (2) scikit-learn's own GaussianMixture tests, run against jaxem.sklearn ------------------
# sklearn/mixture/tests/test_gaussian_mixture.py of the installed scikit-learn, imported as a
# module; every test_* function of it runs here (its own parametrisations and marks kept)
# with the module's `GaussianMixture` name replaced by jaxem.sklearn.GaussianMixture, except:
UPSTREAM_EXCLUDED = {
    # scikit-learn's private helpers, tested without any estimator:
    "test_suffstat_sk_full": "tests sklearn's private _estimate_gaussian_covariances_full / _compute_precision_cholesky",
    "test_suffstat_sk_tied": "tests sklearn's private _estimate_gaussian_covariances_tied / _compute_precision_cholesky",
    "test_suffstat_sk_diag": "tests sklearn's private _estimate_gaussian_covariances_diag / _compute_precision_cholesky",
    "test_gaussian_suffstat_sk_spherical": "tests sklearn's private _estimate_gaussian_covariances_spherical",
    "test_compute_log_det_cholesky": "tests sklearn's private _compute_log_det_cholesky",
    "test_gaussian_mixture_log_probabilities": "tests sklearn's private _estimate_log_gaussian_prob",
    # scikit-learn's private estimator internals:
    "test_gaussian_mixture_precisions_init": (
        "calls the private GaussianMixture._set_parameters and ._initialize(X, resp), which "
        "jaxem.sklearn does not have (its starts go to jaxem.fit as an init dict)"
    ),
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "counts calls of sklearn's private M-step _estimate_gaussian_parameters; jaxem.sklearn "
        "never calls it (its M-steps are jaxem's), so the count is 0 by construction"
    ),
    # Array API dispatch:
    "test_gaussian_mixture_array_api_compliance": (
        "array_api_dispatch: jaxem.sklearn computes with JAX and returns NumPy arrays, it does "
        "not dispatch to the input's array namespace"
    ),
    "test_gaussian_mixture_raises_where_array_api_not_implemented": "array_api_dispatch, as above",
    # A degenerate fit that rounds the other way in jaxem:
    "test_gaussian_mixture_setting_best_params": (
        "reg_covar=0 and two of the 6 spherical components on single points: their variances "
        "are 0 up to rounding; sklearn's E[x^2] - mu^2 rounds to +3.6e-16 and +9.5e-16 "
        "(precisions ~1e15, a finite lower bound), jaxem's centred S/n - |d|^2 to -4.8e-18 "
        "and -1.4e-17, so jaxem's run ends NON_FINITE (returning those params, whose "
        "log-likelihood is NaN) and the estimator raises sklearn's own 'ill-defined "
        "empirical covariance' ValueError, which sklearn raises whenever its rounding goes "
        "negative. The test asserts that this fit does not raise"
    ),
}
# scikit-learn runs its tests with only DeprecationWarning and FutureWarning as errors
# (sklearn.utils._testing._get_warnings_filters_info_list); this project makes every warning
# an error. KMeans's warning in this test is scikit-learn's own (its GaussianMixture runs the
# same KMeans), shown but not an error in scikit-learn's runs.
UPSTREAM_WARNING_FILTERS = {
    "test_regularisation": "ignore:Number of distinct clusters:sklearn.exceptions.ConvergenceWarning",
}

upstream = importlib.import_module("sklearn.mixture.tests.test_gaussian_mixture")


@pytest.fixture(params=[np.float64])
def global_dtype(request):
    """scikit-learn's fixture (sklearn/conftest.py): float64, and float32 only when
    SKLEARN_RUN_FLOAT32_TESTS=1; here float64."""
    return request.param


@pytest.fixture
def global_random_seed():
    """scikit-learn's fixture without SKLEARN_TESTS_GLOBAL_RANDOM_SEED: 42."""
    return 42


@pytest.fixture
def jaxem_gaussian_mixture(monkeypatch):
    monkeypatch.setattr(upstream, "GaussianMixture", jsk.GaussianMixture)


def _upstream_test(name):
    func = getattr(upstream, name)

    @functools.wraps(func)  # keeps the signature (fixtures) and marks (parametrize, filterwarnings)
    def test(*args, **kwargs):
        assert upstream.GaussianMixture is jsk.GaussianMixture
        return func(*args, **kwargs)

    test = pytest.mark.usefixtures("jaxem_gaussian_mixture")(test)
    if name in UPSTREAM_WARNING_FILTERS:
        test = pytest.mark.filterwarnings(UPSTREAM_WARNING_FILTERS[name])(test)
    return test


UPSTREAM_TESTS = sorted(name for name in vars(upstream) if name.startswith("test_"))
for _name in UPSTREAM_TESTS:
    if _name not in UPSTREAM_EXCLUDED:
        globals()["test_upstream_" + _name[len("test_"):]] = _upstream_test(_name)


def test_upstream_exclusions_exist():
    """Every exclusion names a test of the installed scikit-learn, so none is stale."""
    assert set(UPSTREAM_EXCLUDED) <= set(UPSTREAM_TESTS)
    assert len(UPSTREAM_TESTS) - len(UPSTREAM_EXCLUDED) >= 30


# --- (3) parity with scikit-learn from the same start ------------------------------------------
def _mixture_data(n_samples=300, seed=0):
    rng = np.random.RandomState(seed)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 2.0]])
    labels = rng.choice(3, size=n_samples, p=[0.5, 0.3, 0.2])
    mixing = rng.randn(3, 3, 3) * 0.6 + np.eye(3)
    X = means[labels] + np.einsum("nd,nde->ne", rng.randn(n_samples, 3), mixing[labels])
    return X


def _user_start(X, covariance_type, seed=1):
    """A rough start from random rows: weights, means and precisions in sklearn's shapes."""
    rng = np.random.RandomState(seed)
    k, d = 3, X.shape[1]
    means = X[rng.choice(len(X), k, replace=False)] + 0.3 * rng.randn(k, d)
    weights = np.array([0.2, 0.5, 0.3])
    cov = np.cov(X.T) * np.array([0.5, 0.8, 1.2])[:, None, None] + 0.1 * np.eye(d)
    precisions = {
        "full": np.linalg.inv(cov),
        "tied": np.linalg.inv(cov[0]),
        "diag": 1.0 / np.diagonal(cov, axis1=1, axis2=2),
        "spherical": 1.0 / np.trace(cov, axis1=1, axis2=2) * d,
    }[covariance_type]
    return dict(weights_init=weights, means_init=means, precisions_init=precisions)


FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


def _assert_same_fit(ours, ref, rtol=1e-8):
    for name in FITTED:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=rtol, atol=1e-12, err_msg=name)
    assert ours.n_iter_ == ref.n_iter_
    assert ours.converged_ == ref.converged_
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=rtol)
    if hasattr(ref, "lower_bounds_"):
        np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=rtol)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_start_same_fit_as_sklearn(covariance_type):
    """From the same weights/means/precisions, 100 EM iterations (tol=0) give sklearn's
    params, lower bounds and predictions to 1e-8 in float64."""
    X = _mixture_data()
    options = dict(n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=100,
                   **_user_start(X, covariance_type))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        ours = jsk.GaussianMixture(**options).fit(X)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        ref = sklearn.mixture.GaussianMixture(**options).fit(X)
    assert ours.n_iter_ == 100
    _assert_same_fit(ours, ref)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(X), ref.score_samples(X), rtol=1e-8)
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-8)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_default_kmeans_init_same_fit_as_sklearn(covariance_type):
    """init_params="kmeans" (the default) starts from the labels of sklearn's KMeans with the
    same RandomState, so n_init=3 restarts with random_state=0 pick the same run and reach
    the same converged fit as sklearn's."""
    X = _mixture_data()
    options = dict(n_components=3, covariance_type=covariance_type, n_init=3, random_state=0)
    _assert_same_fit(jsk.GaussianMixture(**options).fit(X), sklearn.mixture.GaussianMixture(**options).fit(X))


def test_sample_weight_is_repetition_against_sklearn():
    """Integer sample weights fit as sklearn fits the rows repeated that many times."""
    X = _mixture_data()
    weights = np.random.RandomState(3).randint(0, 4, size=len(X))
    options = dict(n_components=3, tol=0.0, max_iter=100, **_user_start(X, "full"))
    with pytest.warns(ConvergenceWarning):
        ours = jsk.GaussianMixture(**options).fit(X, sample_weight=weights)
    with pytest.warns(ConvergenceWarning):
        ref = sklearn.mixture.GaussianMixture(**options).fit(np.repeat(X, weights, axis=0))
    _assert_same_fit(ours, ref)


@pytest.mark.parametrize("user", ["means_init", None])
def test_max_iter_zero_start_as_sklearn(user):
    """max_iter=0 returns the start: sklearn's KMeans labels turned into params by jaxem's
    M-step equal sklearn's own start, with user values replacing drawn ones."""
    X = _mixture_data()
    options = dict(n_components=3, max_iter=0, random_state=0)
    if user:
        options[user] = _user_start(X, "full")[user]
    ours = jsk.GaussianMixture(**options).fit(X)
    ref = sklearn.mixture.GaussianMixture(**options).fit(X)
    for name in FITTED:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12, err_msg=name)
    assert ours.n_iter_ == ref.n_iter_ == 0
    assert ours.lower_bound_ == ref.lower_bound_ == -np.inf
    assert not ours.converged_


@pytest.mark.parametrize("max_iter", [1, 3])
def test_warm_start_steps_as_sklearn(max_iter):
    """warm_start=True: every refit is sklearn's, up to one that sklearn declares converged
    at its first iteration (within tol of the previous fit's lower bound), which jaxem,
    starting every run from -inf, would have continued."""
    X = _mixture_data()
    options = dict(n_components=3, warm_start=True, max_iter=max_iter, tol=1e-4, **_user_start(X, "full"))
    ours, ref = jsk.GaussianMixture(**options), sklearn.mixture.GaussianMixture(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(200):
            ours.fit(X)
            ref.fit(X)
            _assert_same_fit(ours, ref)
            if ref.converged_ and ref.n_iter_ == 1:
                break
    assert ours.converged_ and ours.n_iter_ == 1


def test_restarts_are_vmapped(monkeypatch):
    """n_init draws of jaxem's own starts are one jaxem.fit with n_restarts=n_init; KMeans
    starts are one jaxem.fit(init=dict) each, and all user values give a single run."""
    X = _mixture_data()
    calls = []

    def spy(model, data, **options):
        calls.append((options["n_restarts"] if "n_restarts" in options else 1, type(options["init"]).__name__))
        return fit(model, data, **options)

    fit = jsk.jaxem.fit
    monkeypatch.setattr(jsk.jaxem, "fit", spy)
    jsk.GaussianMixture(3, n_init=3, init_params="k-means++", random_state=0).fit(X)
    assert calls == [(3, "str")]
    calls.clear()
    jsk.GaussianMixture(3, n_init=3, random_state=0).fit(X)
    assert calls == [(1, "dict")] * 3
    calls.clear()
    with pytest.warns(ConvergenceWarning):
        jsk.GaussianMixture(3, n_init=3, tol=0.0, max_iter=100, **_user_start(X, "full")).fit(X)
    assert calls == [(1, "dict")]


# --- the other families: closed forms and references ------------------------------------------
def test_poisson_london_deaths_optimum():
    """README: deaths per day in London 1910-12, two Poisson components, sample weights = days;
    the published optimum -log L = 1989.945859883."""
    deaths = np.arange(10.0)[:, None]
    days = np.array([162, 267, 271, 185, 111, 61, 27, 8, 3, 1])
    est = jsk.PoissonMixture(2, n_init=4, max_iter=5000, tol=1e-14, random_state=0).fit(deaths, sample_weight=days)
    assert est.converged_
    assert abs(-est.lower_bound_ * days.sum() - 1989.945859883) < 1e-6
    order = np.argsort(est.rates_[:, 0])
    np.testing.assert_allclose(est.weights_[order], [0.360, 0.640], atol=1e-3)
    np.testing.assert_allclose(est.rates_[order, 0], [1.256, 2.663], atol=1e-3)


def test_poisson_sample_weight_is_repetition():
    """Integer weights give the fit of the repeated rows, from the same start."""
    rng = np.random.RandomState(0)
    X = rng.poisson([[1.0, 4.0]], size=(12, 2)).astype(float)
    weights = rng.randint(0, 4, size=12)
    start = dict(weights_init=[0.4, 0.6], rates_init=[[0.5, 2.0], [2.0, 5.0]], tol=0.0, max_iter=40)
    with pytest.warns(ConvergenceWarning):
        weighted = jsk.PoissonMixture(2, **start).fit(X, sample_weight=weights)
    with pytest.warns(ConvergenceWarning):
        repeated = jsk.PoissonMixture(2, **start).fit(np.repeat(X, weights, axis=0))
    np.testing.assert_allclose(weighted.weights_, repeated.weights_, rtol=1e-10)
    np.testing.assert_allclose(weighted.rates_, repeated.rates_, rtol=1e-10)
    np.testing.assert_allclose(weighted.lower_bound_, repeated.lower_bound_, rtol=1e-10)
    if hasattr(repeated, "lower_bounds_"):
        np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-10)


def test_bernoulli_binarize_as_bernoulli_nb():
    """binarize=t fits the 0/1 data X > t, as BernoulliNB reads it; binarize=None checks it."""
    X = np.random.RandomState(0).rand(40, 5)
    options = dict(n_components=2, random_state=0)
    thresholded = jsk.BernoulliMixture(binarize=0.5, **options).fit(X)
    binary = jsk.BernoulliMixture(binarize=None, **options).fit((X > 0.5).astype(float))
    np.testing.assert_array_equal(thresholded.probs_, binary.probs_)
    np.testing.assert_array_equal(thresholded.predict(X), binary.predict(X > 0.5))
    with pytest.raises(ValueError, match="binary values"):
        jsk.BernoulliMixture(binarize=None, **options).fit(X)


def test_categorical_codes():
    """n_categories=None is max code + 1; codes outside [0, C) raise, in fit and predict."""
    X = np.random.RandomState(0).randint(0, 4, size=(30, 3))
    est = jsk.CategoricalMixture(2, random_state=0).fit(X)
    assert est.n_categories_ == 4 and est.probs_.shape == (2, 3, 4)
    np.testing.assert_allclose(est.probs_.sum(axis=-1), 1.0)
    with pytest.raises(ValueError, match="category codes"):
        est.predict(X + 1)
    with pytest.raises(ValueError, match="category codes"):
        jsk.CategoricalMixture(2, n_categories=3).fit(X)


def test_mixture_of_regressions_sample():
    """Targets are drawn for given covariates, one column of X short of the target."""
    rng = np.random.RandomState(0)
    x = rng.randn(60, 1)
    X = np.column_stack([x, np.where(rng.rand(60) < 0.5, 1 + 2 * x[:, 0], -1 - x[:, 0]) + 0.1 * rng.randn(60)])
    est = jsk.MixtureOfRegressions(2, random_state=0).fit(X)
    assert est.coefs_.shape == (2, 2) and est.variances_.shape == (2,)
    drawn, labels = est.sample(5, design=x[:5])
    np.testing.assert_array_equal(drawn[:, 0], x[:5, 0])
    assert labels.shape == (5,)
    with pytest.raises(ValueError, match="design"):
        est.sample(5)


# --- (4) clone, pickle, get_params, set_params ---------------------------------------------------
def test_get_params_are_sklearns():
    """The constructor parameters and defaults are sklearn.mixture.GaussianMixture's, plus
    jaxem's `missing` (None by default: NaN is an error, as in scikit-learn)."""
    params = jsk.GaussianMixture().get_params()
    assert params.pop("missing") is None
    assert params == sklearn.mixture.GaussianMixture().get_params()


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda est: type(est).__name__)
def test_clone_and_set_params(estimator):
    est = clone(estimator).set_params(n_components=3, tol=1e-5, random_state=7)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert copy.get_params()["n_components"] == 3 and copy.get_params()["random_state"] == 7
    assert pickle.loads(pickle.dumps(est)).get_params() == est.get_params()


def test_fitted_pickle_and_clone_round_trip():
    X = _mixture_data()
    est = jsk.GaussianMixture(3, random_state=0).fit(X)
    restored = pickle.loads(pickle.dumps(est))
    for name in (*FITTED, "n_iter_", "converged_", "lower_bound_", "n_features_in_"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(est, name))
        assert isinstance(getattr(est, name), (np.ndarray, bool, int, float))
    np.testing.assert_array_equal(restored.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(restored.sample(10)[0], est.sample(10)[0])
    fresh = clone(est)
    assert fresh.get_params() == est.get_params() and not hasattr(fresh, "means_")


def test_verbose_messages(capsys):
    X = _mixture_data()
    jsk.GaussianMixture(3, verbose=2, verbose_interval=1, random_state=0).fit(X)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "  Iteration 1\t ll change inf" in out
    assert "Initialization converged." in out


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(_mixture_data(), columns=["a", "b", "c"])
    est = jsk.GaussianMixture(3, random_state=0).fit(X)
    np.testing.assert_array_equal(est.feature_names_in_, ["a", "b", "c"])


def test_import_error_without_sklearn(monkeypatch):
    """Without scikit-learn, importing jaxem.sklearn says how to install it."""
    for name in [name for name in sys.modules if name == "sklearn" or name.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None: "not installed" to the import system
    monkeypatch.delitem(sys.modules, "jaxem.sklearn")
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        importlib.import_module("jaxem.sklearn")
