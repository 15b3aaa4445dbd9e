"""scikit-learn estimators over `jaxem.fit`.

    from jaxem.sklearn import GaussianMixture
    gm = GaussianMixture(n_components=3, n_init=8, random_state=0).fit(X)
    gm.means_, gm.predict(X), gm.bic(X)

`GaussianMixture` takes scikit-learn's constructor parameters and gives its fitted
attributes and methods, in the same names and shapes; `fit` also takes `sample_weight`.
The other built-in families (`PoissonMixture`, `BernoulliMixture`, `CategoricalMixture`,
`StudentTMixture`, `MixtureOfRegressions`, and `MixtureOfFactorAnalyzers`, defined in
`jaxem.sklearn_latent`) follow the same conventions, with fitted
attributes named after the fields of jaxem's params plus a trailing underscore
(`weights_`, `rates_`, ...) and starting values `<field>_init` (`rates_init`, ...).
scikit-learn is an optional dependency of jaxem, needed only by this module.

The estimators hold no EM: every fit is `jaxem.fit`, every density, prediction and draw a
method of the jaxem model on the fitted params. They choose the starts, pass the options
on, and translate the result into scikit-learn's conventions:

* `n_init` restarts are jaxem's vmapped restarts (`n_restarts`), one compiled program,
  for the starts jaxem draws itself. `random_state` (None, an int or a RandomState) gives
  the `jax.random.key` of the fit and of `sample`.
* `init_params`: "k-means++", "random" and "random_from_data" are jaxem's methods of those
  names (jaxem.init): k-means++ seeding or distinct random rows as centres, each row then
  assigned to its nearest centre, or uniform random responsibilities; the starting params
  are one jaxem M-step on those responsibilities. (scikit-learn's "k-means++" and
  "random_from_data" start from the centres alone, with covariances reg_covar * I.)
  "kmeans", scikit-learn's default, runs scikit-learn's `KMeans(n_init=1,
  random_state=...)` as scikit-learn does, so the labels are the ones scikit-learn starts
  from, and turns them into starting params by jaxem's M-step on the one-hot
  responsibilities (jaxem has no Lloyd iterations of its own); with the same
  random_state, the fit is scikit-learn's. Starts made outside jaxem's vmapped draw
  ("kmeans", and starts mixing user values with drawn ones) are fitted by one
  `jaxem.fit(init=dict)` each, all by one compiled program.
* `weights_init`, `means_init`, `precisions_init` (GaussianMixture; `<field>_init` for the
  other families) replace the corresponding drawn starting values, as in scikit-learn;
  precisions are inverted into the covariances jaxem starts from. With every starting
  value given, the `n_init` identical runs are one run.
* `warm_start=True`: a refit starts from the fitted params with one run and, as in
  scikit-learn, its first iteration counts as converged when the log-likelihood moved by
  less than `tol` from the previous fit's `lower_bound_`.
* The run kept among restarts is scikit-learn's: the largest `lower_bound_`, among the
  runs that stayed finite; the fit raises ValueError only when no run did (scikit-learn
  raises at the first run whose covariances are not positive definite). `lower_bound_` is
  the mean per-sample log-likelihood at the params entering the last iteration (for the
  MAP families, plus the log-prior per unit of weight), `lower_bounds_` one per iteration;
  `n_iter_` and `converged_` are jaxem's, which counts and stops as scikit-learn does.
* `verbose` messages are printed after each compiled fit returns (no callback runs inside
  it), from the per-iteration trace; the time printed is the whole fit's.
* `max_iter=0` gives the starting params, as in scikit-learn.
* Fitted arrays and outputs are NumPy. Fits run in the data's float dtype; float64 needs
  `jax.config.update("jax_enable_x64", True)`, without which JAX computes in float32.
* `missing="em"` (GaussianMixture, MixtureOfFactorAnalyzers; default None, NaN is an
  error as in scikit-learn): NaN entries are missing values and `fit` is
  `jaxem.fit(..., missing="em")`; rows with NaN are predicted and scored on their
  observed coordinates (`jaxem.missing.posterior`: p(z | x_o), log p(x_o)), `bic`/`aic`
  from that log-likelihood, and `impute(X)` fills NaN with E[x_m | x_o]. Starts drawn
  outside jaxem.fit ("kmeans", user values) see the missing entries at their column
  means. The `allow_nan` tag follows the parameter.
* `sample` draws with jaxem (labels in random order; scikit-learn groups them).
* Rows are padded to a few sizes so that data sets of nearby sizes share compiled
  programs (`_bucket`).
"""

from __future__ import annotations

import functools
import numbers
import time
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as _SklearnGaussianMixture
    from sklearn.utils import check_array, check_random_state
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, check_non_negative
except ImportError as err:  # pragma: no cover - tested with sklearn hidden from sys.modules
    raise ImportError(
        "jaxem.sklearn needs scikit-learn, an optional dependency of jaxem: pip install scikit-learn"
    ) from err

try:
    from sklearn.utils.validation import validate_data as _validate_data

    _ALLOW_NAN = {"ensure_all_finite": "allow-nan"}
except ImportError:  # scikit-learn < 1.6

    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)

    _ALLOW_NAN = {"force_all_finite": "allow-nan"}


import jax
import jax.numpy as jnp

import jaxem
from jaxem import missing as _missing
from jaxem.models import checks as _checks

__all__ = [
    "BernoulliMixture",
    "CategoricalHMM",
    "CategoricalMixture",
    "FactorAnalysis",
    "GaussianHMM",
    "GaussianMixture",
    "MixtureOfFactorAnalyzers",
    "MixtureOfRegressions",
    "PPCA",
    "PoissonHMM",
    "PoissonMixture",
    "StudentTMixture",
]

# scikit-learn >= 1.7 records every iteration's lower bound.
_HAS_LOWER_BOUNDS = "lower_bounds_" in (_SklearnGaussianMixture.__doc__ or "")

_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
_JAXEM_INIT = {"k-means++": "kmeans++", "random": "random", "random_from_data": "random_from_data"}

_NOT_CONVERGED = (
    "Best performing initialization did not converge. "
    "Try different init parameters, or increase max_iter, "
    "tol, or check for degenerate data."
)
_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)


# --- compiled helpers ------------------------------------------------------------------------
# Every data shape compiles its own programs: a fit (1-2 s on a 2-core CPU), and the helpers
# below, each a jaxem model method run as one program (run op by op, the same methods
# compile every primitive for every new shape: 1.3-2.5 s for predict + predict_proba +
# score_samples on a new shape, 0.4-0.8 s as one program). So fits, starts, predictions
# and draws run on row counts rounded up by `_bucket`, and data of nearby sizes (the folds
# of a cross-validation, the checks of scikit-learn's test suite) share programs. Padding
# rows copy the first row. In a fit they have weight zero: they add exactly zero to every
# statistic, jaxem's k-means++ and random_from_data never draw them, and they only move
# the point jaxem's Gaussian features are centred on, which changes rounding. Predictions
# and draws drop them (rows are independent there).


def _bucket(n):
    """Rows to pad n to: powers of two from 256 to 1024, then multiples of 1/8 of the octave
    (at most 12.5% more rows). 256 rows of a small problem cost microseconds per iteration,
    a compile a second."""
    if n <= 1024:
        return max(256, 1 << (n - 1).bit_length())
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def _pad_rows(X, n_rows):
    """X with copies of its first row appended up to n_rows rows."""
    if n_rows <= X.shape[0]:
        return X
    return np.concatenate([X, np.repeat(X[:1], n_rows - X.shape[0], axis=0)])


def _padded_rows_and_weights(X, sample_weight):
    """X padded to `_bucket` rows (copies of its first row) and the validated sample weights
    (ones when None) padded with zeros, so that fits of nearby sizes share compiled programs."""
    n_samples = X.shape[0]
    weights = np.ones(n_samples, X.dtype) if sample_weight is None else _check_sample_weight(sample_weight, X, dtype=X.dtype)
    n_rows = _bucket(n_samples)
    return _pad_rows(X, n_rows), np.concatenate([weights, np.zeros(n_rows - n_samples, X.dtype)])


@jax.jit
def _evaluate(model, params, X):
    return model.predict(params, X), model.predict_proba(params, X), model.score_samples(params, X)


@jax.jit
def _criteria(model, params, X):
    return model.bic(params, X), model.aic(params, X)


@functools.partial(jax.jit, static_argnames=("n_samples",))
def _sample(model, key, params, n_samples, design=None):
    if design is None:
        return model.sample(key, params, n_samples)
    return model.sample(key, params, n_samples, design=design)


@jax.jit
def _params_from_resp(model, X, resp):
    return model.params_from_resp(X, resp)


def _impute(estimator, model, params, X):
    """X (NaN where missing) with every NaN replaced by E[x_m | x_o] under a fitted model
    with Gaussian components (`jaxem.missing.impute`), as NumPy: the estimators' `impute`."""
    X = _validate_data(estimator, X, reset=False, dtype=[np.float64, np.float32], **_ALLOW_NAN)
    return np.array(_missing.impute(model, params, X)[0])


_MISSING = [StrOptions({"em"}), None]


def _random_key(random_state, rng=None):
    """The jax.random key for a scikit-learn random_state (None, an int or a RandomState):
    an int is the key's seed; otherwise a seed is drawn from `rng`
    (check_random_state(random_state) when None)."""
    if isinstance(random_state, numbers.Integral):
        return jax.random.key(int(random_state))
    rng = check_random_state(random_state) if rng is None else rng
    return jax.random.key(int(rng.randint(np.iinfo(np.int32).max)))


@functools.partial(jax.jit, static_argnames=("method",))
def _init_params(model, key, X, sample_weight, method):
    return model.init_params(key, X, sample_weight, method, None)


# --- runs and user starts --------------------------------------------------------------------
class _Run:
    """One EM run of a jaxem fit, in NumPy: params ({field: array}), trace, n_iter, status."""

    def __init__(self, fields, params, trace, n_iter, status):
        self.params = {field: np.array(leaf) for field, leaf in zip(fields, params)}
        self.trace = np.array(trace, dtype=np.float64)
        self.n_iter = int(n_iter)
        self.status = int(status)

    @property
    def lower_bound(self):
        """scikit-learn's lower_bound_: the objective entering the last iteration."""
        return self.trace[self.n_iter - 1]

    @property
    def finite(self):
        return self.status != jaxem.Status.NON_FINITE and np.isfinite(self.lower_bound)


def _runs(result, fields):
    """Every restart of a jaxem FitResult, as _Run objects."""
    runs = jax.device_get(result.restarts)
    return [
        _Run(fields, [leaf[r] for leaf in runs.params], runs.trace[r], runs.n_iter[r], runs.status[r])
        for r in range(len(runs.n_iter))
    ]


def _as_dict(fields, params):
    return {field: np.array(leaf) for field, leaf in zip(fields, params)}


def _check_shape(param, param_shape, name):
    if param.shape != param_shape:
        raise ValueError(
            "The parameter '%s' should have the shape of %s, but got %s" % (name, param_shape, param.shape)
        )


def _check_weights(weights, n_components):
    """User starting weights, with scikit-learn's checks and messages."""
    weights = check_array(weights, dtype=[np.float64, np.float32], ensure_2d=False)
    _check_shape(weights, (n_components,), "weights")
    if np.any(weights < 0.0) or np.any(weights > 1.0):
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max value %.5f, "
            "min value %.5f" % (np.min(weights), np.max(weights))
        )
    atol = 1e-6 if weights.dtype == np.float32 else 1e-8
    if not np.allclose(np.abs(1.0 - np.sum(weights)), 0.0, atol=atol):
        raise ValueError(
            "The parameter 'weights' should be normalized, but got sum(weights) = %.5f" % np.sum(weights)
        )
    return weights


def _check_init_array(value, shape, name):
    """A user starting value: finite numbers of the expected shape."""
    value = check_array(value, dtype=[np.float64, np.float32], ensure_2d=False, allow_nd=True)
    _check_shape(value, shape, name)
    return value


# --- the shared estimator --------------------------------------------------------------------
class _BaseMixture(DensityMixin, BaseEstimator):
    """Starts, `jaxem.fit`, the choice among restarts, fitted attributes and methods.

    A family sets `_model_class` (the jaxem model) and `_params_class` (its params), and
    supplies `_model_kwargs` (the jaxem model's arguments besides n_components) and
    `_start_shapes`; the other hooks have defaults.
    """

    _model_class = None
    _params_class = None

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0.0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "init_params": [StrOptions(set(_INIT_PARAMS))],
        "weights_init": ["array-like", None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    # --- hooks -------------------------------------------------------------------------
    @property
    def _fields(self):
        return self._params_class._fields

    def _missing(self):
        """jaxem.fit's `missing`: the estimator's parameter, None for families without it."""
        return getattr(self, "missing", None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._missing() == "em"
        return tags

    def _model_kwargs(self, X=None):
        """The jaxem model's arguments besides n_components; X: the training data in fit."""
        return {}

    def _make_model(self, X=None):
        return self._model_class(int(self.n_components), **self._model_kwargs(X))

    def _start_shapes(self, X):
        """{field: shape} of the params for data X."""
        raise NotImplementedError

    def _prepare(self, X):
        """Validated data -> the data the jaxem model reads (BernoulliMixture binarises)."""
        return X

    def _check_fit_data(self, X):
        """Checks on training data before jaxem's own."""

    def _check_predict_data(self, X):
        """Domain checks on data to predict or score (jaxem checks only training data)."""

    def _user_start(self, X):
        """The user's `<field>_init` values, validated: {field: array}, possibly empty."""
        start = {}
        for field, shape in self._start_shapes(X).items():
            value = getattr(self, f"{field}_init", None)
            if value is not None:
                start[field] = (
                    _check_weights(value, shape[0]) if field == "weights" else _check_init_array(value, shape, field)
                )
        return start

    def _check_start(self, start):
        """Raise ValueError when drawn starting params cannot start a fit."""

    def _fit_options(self):
        """Further keyword arguments of every `jaxem.fit` call (accelerate, ...)."""
        return {}

    def _non_finite_message(self):
        return f"Fitting the mixture model failed: {jaxem.status_message(jaxem.Status.NON_FINITE)}."

    def _set_fitted_params(self, params, model):
        for field in self._fields:
            setattr(self, field + "_", params[field])

    # --- fitting -----------------------------------------------------------------------
    def _validate_X(self, X, reset):
        extra = {"ensure_min_samples": 2} if reset else {}
        if self._missing() == "em":
            extra.update(_ALLOW_NAN)
        return self._prepare(_validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], **extra))

    def _kmeans_start(self, model, X, sample_weight, data, rng):
        """Starting params from scikit-learn's KMeans labels of X, by jaxem's M-step on the
        padded data (padding rows get zero responsibility)."""
        k = int(self.n_components)
        labels = KMeans(n_clusters=k, n_init=1, random_state=rng).fit(X, sample_weight=sample_weight).labels_
        resp = np.zeros((data[0].shape[0], k), X.dtype)
        resp[np.arange(X.shape[0]), labels] = 1.0
        params = _params_from_resp(model, jnp.asarray(data[0]), jnp.asarray(resp * data[1][:, None]))
        return _as_dict(self._fields, params)

    def _method_start(self, model, data, key):
        """The start jaxem.fit draws with this key, by jaxem's init method."""
        params = _init_params(model, key, jnp.asarray(data[0]), jnp.asarray(data[1]), _JAXEM_INIT[self.init_params])
        return _as_dict(self._fields, params)

    def fit(self, X, y=None, sample_weight=None):
        """Estimate the params by EM (`jaxem.fit`), keeping the best of `n_init` runs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights, used in every statistic of the fit.

        Returns
        -------
        self
        """
        self._validate_params()
        X = self._validate_X(X, reset=True)
        n_samples = X.shape[0]
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, n_samples = {n_samples}"
            )
        self._check_fit_data(X)
        data = _padded_rows_and_weights(X, sample_weight)
        missing = "em" if np.isnan(data[0]).any() else None  # only with self.missing == "em"
        # Starts made here (KMeans, jaxem's draw next to user values) from the rows with
        # missing entries at their column means, as jaxem.fit's own starts.
        start_data = data if missing is None else (np.asarray(_missing.partial_rows(data[0], None).values), data[1])
        model = self._make_model(X)
        user = self._user_start(X)
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        rng = check_random_state(self.random_state)
        n_init = int(self.n_init)

        if warm:
            starts = [{field: getattr(self, field + "_") for field in self._fields}]
        elif len(user) == len(self._fields):
            starts = [user]
        elif self.init_params == "kmeans":
            starts = [
                {**self._kmeans_start(model, start_data[0][:n_samples], sample_weight, start_data, rng), **user}
                for _ in range(n_init)
            ]
        elif user or self.max_iter == 0:
            keys = jax.random.split(_random_key(self.random_state, rng), n_init)
            starts = [{**self._method_start(model, start_data, key), **user} for key in keys]
        else:
            starts = None  # drawn by jaxem.fit, vmapped
        for start in starts or ():
            if start is not user:
                self._check_start(start)
        if self.max_iter == 0:
            # As scikit-learn: the (last) start, no iteration, no lower bound.
            self._set_fitted(starts[-1], model, converged=False, n_iter=0, trace=np.array([]))
            return self

        def fit_runs(init, n_restarts=1, max_iter=int(self.max_iter), key=jax.random.key(0)):
            result = jaxem.fit(
                model, data[0], key=key, n_restarts=n_restarts, max_iter=max_iter, tol=float(self.tol),
                init=init, sample_weight=data[1], missing=missing, **self._fit_options(),
            )
            return _runs(result, self._fields)

        began = time.perf_counter()
        if starts is None:
            runs = fit_runs(_JAXEM_INIT[self.init_params], n_restarts=n_init, key=_random_key(self.random_state, rng))
        else:
            runs = [run for start in starts for run in fit_runs(start)]
        elapsed = time.perf_counter() - began

        finite = [run for run in runs if run.finite]
        if not finite:
            raise ValueError(self._non_finite_message())
        best = max(finite, key=lambda run: run.lower_bound)  # the first of equal ones
        converged, n_iter = best.status == jaxem.Status.CONVERGED, best.n_iter
        if warm and abs(best.trace[0] - self.lower_bound_) < self.tol:
            # scikit-learn compares a warm fit's first iteration with the previous fit's
            # lower bound and stops there; a jaxem run starts from -inf.
            if n_iter > 1:
                (best,) = fit_runs(starts[0], max_iter=1)
            converged, n_iter = True, 1
        if self.verbose:
            self._print_runs(runs, elapsed)
        if not converged:
            warnings.warn(_NOT_CONVERGED, ConvergenceWarning)
        self._set_fitted(best.params, model, converged=converged, n_iter=n_iter, trace=best.trace)
        return self

    def _set_fitted(self, params, model, *, converged, n_iter, trace):
        self._set_fitted_params(params, model)
        self.converged_ = bool(converged)
        self.n_iter_ = int(n_iter)
        self.lower_bound_ = float(trace[n_iter - 1]) if n_iter else -np.inf
        if _HAS_LOWER_BOUNDS:
            self.lower_bounds_ = [float(value) for value in trace[:n_iter]]

    def _print_runs(self, runs, elapsed):
        """scikit-learn's verbose messages, from every run's trace after the fit."""
        for r, run in enumerate(runs):
            print("Initialization %d" % r)
            for n_iter in range(1, run.n_iter + 1):
                if n_iter % self.verbose_interval == 0:
                    if self.verbose == 1:
                        print("  Iteration %d" % n_iter)
                    else:
                        change = run.trace[n_iter - 1] - (run.trace[n_iter - 2] if n_iter > 1 else -np.inf)
                        print("  Iteration %d\t ll change %.5f" % (n_iter, change))
            message = "converged" if run.status == jaxem.Status.CONVERGED else "did not converge"
            if self.verbose == 1:
                print(f"Initialization {message}.")
            else:
                print(
                    f"Initialization {message}. time lapse {elapsed:.5f}s (the whole fit)\t"
                    f" lower bound {run.lower_bound:.5f}."
                )

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then the most probable component of every sample of X: (n_samples,)."""
        return self.fit(X, y, sample_weight=sample_weight).predict(X)

    # --- prediction ------------------------------------------------------------------------
    def _fitted(self):
        """The jaxem model and params of the fit, for the prediction methods."""
        check_is_fitted(self)
        params = self._params_class(*(jnp.asarray(getattr(self, field + "_")) for field in self._fields))
        return self._make_model(), params

    def _predict_data(self, X):
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        self._check_predict_data(X)
        return X

    def _evaluate(self, X):
        """(labels, posterior probabilities, log-densities) of the rows of X; with missing
        entries (missing="em") those of their observed coordinates."""
        model, params = self._fitted()
        X = self._predict_data(X)
        n_samples = X.shape[0]
        padded = jnp.asarray(_pad_rows(X, _bucket(n_samples)))
        if np.isnan(X).any():
            probabilities, log_density = _missing.posterior(model, params, padded)
            outputs = (jnp.argmax(probabilities, axis=1), probabilities, log_density)
        else:
            outputs = _evaluate(model, params, padded)
        return [np.array(np.asarray(output)[:n_samples]) for output in outputs]

    def predict(self, X):
        """Most probable component of every sample: (n_samples,) int."""
        return self._evaluate(X)[0]

    def predict_proba(self, X):
        """Posterior probabilities of the components: (n_samples, n_components)."""
        return self._evaluate(X)[1]

    def score_samples(self, X):
        """log p(x) of every sample: (n_samples,)."""
        return self._evaluate(X)[2]

    def score(self, X, y=None):
        """Mean per-sample log-likelihood of X, a float."""
        return float(np.mean(self.score_samples(X)))

    def _information_criteria(self, X):
        """(BIC, AIC) on X; with missing entries from the observed-data log-likelihood."""
        model, params = self._fitted()
        X = self._predict_data(X)
        if np.isnan(X).any():
            return _missing.information_criteria(model, params, X)
        return _criteria(model, params, jnp.asarray(X))

    def bic(self, X):
        """Bayesian information criterion on X (lower is better)."""
        return float(self._information_criteria(X)[0])

    def aic(self, X):
        """Akaike information criterion on X (lower is better)."""
        return float(self._information_criteria(X)[1])

    def _n_parameters(self):
        """Free parameters of the model, as BIC/AIC count them."""
        model, _ = self._fitted()
        return int(model.n_parameters(self.n_features_in_))

    def _sample_key(self):
        return jax.random.fold_in(_random_key(self.random_state), 1)

    def sample(self, n_samples=1):
        """Draw from the fitted model.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,), the components drawn
        """
        model, params = self._fitted()
        self._check_n_samples(n_samples)
        X, labels = _sample(model, self._sample_key(), params, _bucket(int(n_samples)))
        return np.array(np.asarray(X)[:n_samples]), np.asarray(labels)[:n_samples].astype(np.int64)

    @staticmethod
    def _check_n_samples(n_samples):
        if n_samples < 1:
            raise ValueError(
                "Invalid value for 'n_samples': %d . The sampling requires at least one sample." % n_samples
            )


# --- Gaussian mixture -------------------------------------------------------------------------
class GaussianMixture(_BaseMixture):
    """Gaussian mixture fitted by `jaxem.fit`, with scikit-learn's GaussianMixture interface.

    Parameters and defaults are scikit-learn's (`sklearn.mixture.GaussianMixture`); how they
    map onto jaxem is in the `jaxem.sklearn` module docstring. `fit` also accepts
    `sample_weight`. Besides scikit-learn's: missing (None or "em": NaN entries are missing
    values, fitted by EM and predicted from the observed coordinates; `impute`).

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
        In scikit-learn's shapes for `covariance_type`.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float (with scikit-learn >= 1.7, as scikit-learn)
    n_features_in_ : int
    feature_names_in_ : ndarray (when X has string column names)
    """

    _model_class = jaxem.GaussianMixture
    _params_class = jaxem.GaussianMixtureParams
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "covariance_type": [StrOptions({"full", "tied", "diag", "spherical"})],
        "reg_covar": [Interval(numbers.Real, 0.0, None, closed="left")],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "missing": _MISSING,
    }

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        missing=None,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.missing = missing

    def _model_kwargs(self, X=None):
        return {"covariance_type": self.covariance_type, "reg_covar": float(self.reg_covar)}

    def impute(self, X):
        """X with every NaN replaced by E[x_m | x_o] under the fitted mixture: (n_samples, n_features)."""
        return _impute(self, *self._fitted(), X)

    def _start_shapes(self, X):
        k, d = int(self.n_components), X.shape[1]
        covariances = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
        return {"weights": (k,), "means": (k, d), "covariances": covariances[self.covariance_type]}

    def _user_start(self, X):
        """scikit-learn's checks and messages; precisions are inverted into covariances."""
        shapes = self._start_shapes(X)
        start = {}
        if self.weights_init is not None:
            start["weights"] = _check_weights(self.weights_init, shapes["weights"][0])
        if self.means_init is not None:
            start["means"] = _check_init_array(self.means_init, shapes["means"], "means")
        if self.precisions_init is not None:
            start["covariances"] = self._covariances_from_precisions(self.precisions_init, shapes["covariances"])
        return start

    def _covariances_from_precisions(self, precisions, shape):
        cov_type = self.covariance_type
        precisions = _check_init_array(precisions, shape, f"{cov_type} precision")
        if cov_type in ("full", "tied"):
            for matrix in precisions.reshape((-1,) + shape[-2:]):
                if not (np.allclose(matrix, matrix.T) and np.all(np.linalg.eigvalsh(matrix) > 0.0)):
                    raise ValueError(f"'{cov_type} precision' should be symmetric, positive-definite")
            return np.linalg.inv(precisions)
        if np.any(precisions <= 0.0):
            raise ValueError(f"'{cov_type} precision' should be positive")
        return 1.0 / precisions

    def _check_start(self, start):
        """scikit-learn's error for a start with a covariance that is not positive definite
        (e.g. a KMeans cluster of one point with reg_covar=0)."""
        cov = start["covariances"]
        if self.covariance_type in ("full", "tied"):
            ok = np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0.0)
        else:
            ok = np.all(np.isfinite(cov)) and np.all(cov > 0.0)
        if not ok:
            raise ValueError(_ILL_DEFINED)

    def _non_finite_message(self):
        return _ILL_DEFINED

    def _set_fitted_params(self, params, model):
        super()._set_fitted_params(params, model)
        covariances = jaxem.GaussianMixtureParams(None, None, jnp.asarray(params["covariances"]))
        chol = np.array(model.precisions_cholesky(covariances))
        self.precisions_cholesky_ = chol
        if self.covariance_type == "full":
            self.precisions_ = np.einsum("kij,klj->kil", chol, chol)
        elif self.covariance_type == "tied":
            self.precisions_ = chol @ chol.T
        else:
            self.precisions_ = chol**2


# --- the other families ------------------------------------------------------------------------
_COMMON_PARAMETERS = """
    Parameters shared with `GaussianMixture` (see the `jaxem.sklearn` module docstring):
    n_components, tol, max_iter, n_init, init_params (here "k-means++" by default, jaxem's
    default start, drawn in the vmapped restarts), weights_init, random_state, warm_start,
    verbose, verbose_interval. `fit` also accepts `sample_weight`. Fitted attributes besides
    the params: converged_, n_iter_, lower_bound_, lower_bounds_, n_features_in_.
"""
_NON_NEGATIVE = [Interval(numbers.Real, 0.0, None, closed="left")]
_POSITIVE = [Interval(numbers.Real, 0.0, None, closed="neither")]
_ARRAY = ["array-like", None]


class _OtherMixture(_BaseMixture):
    """The parameters every non-Gaussian family shares, set by `_set_common`."""

    def _set_common(self, n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                    warm_start, verbose, verbose_interval):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval


class _WholeNumbers(_OtherMixture):
    """Families of non-negative whole numbers (counts, category codes).

    Their tags are `positive_only` and `categorical`: under the latter, scikit-learn's
    estimator checks feed non-negative integer data (`_enforce_estimator_tags_X`).
    """

    _data_what = None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.categorical = True
        return tags

    def _check_fit_data(self, X):
        check_non_negative(X, f"{type(self).__name__}.fit")

    def _check_predict_data(self, X):
        _checks.check_integer_data(X, self._data_what, low=0, high=self._highest_code())

    def _highest_code(self):
        return np.inf


class PoissonMixture(_WholeNumbers):
    """Mixture of independent Poisson counts (`jaxem.PoissonMixture`), scikit-learn style.

    Parameters: min_rate (floor on every fitted rate); weights_init (K,), rates_init (K, D).
    Fitted params: weights_ (K,), rates_ (K, D).
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.PoissonMixture
    _params_class = jaxem.PoissonMixtureParams
    _data_what = "non-negative counts"
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints, "min_rate": _NON_NEGATIVE, "rates_init": _ARRAY,
    }

    def __init__(self, n_components=1, *, min_rate=1e-10, tol=1e-3, max_iter=100, n_init=1,
                 init_params="k-means++", weights_init=None, rates_init=None, random_state=None,
                 warm_start=False, verbose=0, verbose_interval=10):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.min_rate = min_rate
        self.rates_init = rates_init

    def _model_kwargs(self, X=None):
        return {"min_rate": float(self.min_rate)}

    def _start_shapes(self, X):
        k = int(self.n_components)
        return {"weights": (k,), "rates": (k, X.shape[1])}


class BernoulliMixture(_OtherMixture):
    """Mixture of independent Bernoulli features (`jaxem.BernoulliMixture`), scikit-learn style.

    Parameters: pseudo_count (the Beta prior's pseudo-count of jaxem's MAP M-step);
    binarize (float or None, default 0.0): as in `sklearn.naive_bayes.BernoulliNB`, values
    above it read as 1 and the others as 0; None: X must already be 0/1.
    weights_init (K,), probs_init (K, D). Fitted params: weights_ (K,), probs_ (K, D).
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.BernoulliMixture
    _params_class = jaxem.BernoulliMixtureParams
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "pseudo_count": _NON_NEGATIVE,
        "binarize": [None, Interval(numbers.Real, None, None, closed="neither")],
        "probs_init": _ARRAY,
    }

    def __init__(self, n_components=1, *, pseudo_count=1e-3, binarize=0.0, tol=1e-3, max_iter=100, n_init=1,
                 init_params="k-means++", weights_init=None, probs_init=None, random_state=None,
                 warm_start=False, verbose=0, verbose_interval=10):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.pseudo_count = pseudo_count
        self.binarize = binarize
        self.probs_init = probs_init

    def _model_kwargs(self, X=None):
        return {"pseudo_count": float(self.pseudo_count)}

    def _prepare(self, X):
        return X if self.binarize is None else (X > self.binarize).astype(X.dtype)

    def _check_predict_data(self, X):
        _checks.check_integer_data(X, "binary values", low=0, high=1)

    def _start_shapes(self, X):
        k = int(self.n_components)
        return {"weights": (k,), "probs": (k, X.shape[1])}


class CategoricalMixture(_WholeNumbers):
    """Mixture of independent categorical features (`jaxem.CategoricalMixture`), scikit-learn style.

    X holds integer codes 0 .. C - 1. Parameters: n_categories (C; None: from probs_init,
    else max(X) + 1 at fit, at least 2), pseudo_count (the Dirichlet prior's pseudo-count of
    jaxem's MAP M-step); weights_init (K,), probs_init (K, D, C).
    Fitted params: weights_ (K,), probs_ (K, D, C); and n_categories_.
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.CategoricalMixture
    _params_class = jaxem.CategoricalMixtureParams
    _data_what = "category codes"
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "n_categories": [None, Interval(numbers.Integral, 2, None, closed="left")],
        "pseudo_count": _NON_NEGATIVE,
        "probs_init": _ARRAY,
    }

    def __init__(self, n_components=1, *, n_categories=None, pseudo_count=1e-3, tol=1e-3, max_iter=100,
                 n_init=1, init_params="k-means++", weights_init=None, probs_init=None, random_state=None,
                 warm_start=False, verbose=0, verbose_interval=10):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.n_categories = n_categories
        self.pseudo_count = pseudo_count
        self.probs_init = probs_init

    def _categories(self, X):
        if self.n_categories is not None:
            return int(self.n_categories)
        if self.probs_init is not None:
            return int(np.shape(self.probs_init)[-1])
        return max(int(np.max(X)) + 1, 2)

    def _model_kwargs(self, X=None):
        n_categories = self.n_categories_ if X is None else self._categories(X)
        return {"n_categories": n_categories, "pseudo_count": float(self.pseudo_count)}

    def _highest_code(self):
        return self.n_categories_ - 1

    def _start_shapes(self, X):
        k = int(self.n_components)
        return {"weights": (k,), "probs": (k, X.shape[1], self._categories(X))}

    def _set_fitted_params(self, params, model):
        super()._set_fitted_params(params, model)
        self.n_categories_ = int(model.n_categories)


class StudentTMixture(_OtherMixture):
    """Mixture of multivariate Student-t distributions (`jaxem.StudentTMixture`), scikit-learn style.

    Parameters: learn_dof, dof (the starting degrees of freedom), min_dof, max_dof,
    reg_covar; weights_init (K,), means_init (K, D), covariances_init (K, D, D) (scale
    matrices), dofs_init (K,). Fitted params: weights_ (K,), means_ (K, D), covariances_
    (K, D, D) scale matrices, dofs_ (K,).
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.StudentTMixture
    _params_class = jaxem.StudentTMixtureParams
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "learn_dof": ["boolean"],
        "dof": _POSITIVE,
        "min_dof": _POSITIVE,
        "max_dof": _POSITIVE,
        "reg_covar": _NON_NEGATIVE,
        "means_init": _ARRAY,
        "covariances_init": _ARRAY,
        "dofs_init": _ARRAY,
    }

    def __init__(self, n_components=1, *, learn_dof=True, dof=10.0, min_dof=0.1, max_dof=1000.0,
                 reg_covar=1e-6, tol=1e-3, max_iter=100, n_init=1, init_params="k-means++", weights_init=None,
                 means_init=None, covariances_init=None, dofs_init=None, random_state=None, warm_start=False,
                 verbose=0, verbose_interval=10):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.learn_dof = learn_dof
        self.dof = dof
        self.min_dof = min_dof
        self.max_dof = max_dof
        self.reg_covar = reg_covar
        self.means_init = means_init
        self.covariances_init = covariances_init
        self.dofs_init = dofs_init

    def _model_kwargs(self, X=None):
        floats = {name: float(getattr(self, name)) for name in ("dof", "min_dof", "max_dof", "reg_covar")}
        return {"learn_dof": bool(self.learn_dof), **floats}

    def _start_shapes(self, X):
        k, d = int(self.n_components), X.shape[1]
        return {"weights": (k,), "means": (k, d), "covariances": (k, d, d), "dofs": (k,)}


class MixtureOfRegressions(_OtherMixture):
    """Mixture of linear regressions (`jaxem.MixtureOfRegressions`), scikit-learn style.

    As in jaxem, X holds the covariates and the target in its LAST column, and the
    estimator is a density estimator of the target given the covariates: `score_samples`
    is log p(y | x), `predict` the most probable component of each (x, y).
    Parameters: fit_intercept, reg_variance; weights_init (K,), coefs_init (K, P) (P = D
    with an intercept, coefs[:, 0], else D - 1), variances_init (K,).
    Fitted params: weights_ (K,), coefs_ (K, P), variances_ (K,).
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.MixtureOfRegressions
    _params_class = jaxem.MixtureOfRegressionsParams
    _parameter_constraints: dict = {
        **_BaseMixture._parameter_constraints,
        "fit_intercept": ["boolean"],
        "reg_variance": _NON_NEGATIVE,
        "coefs_init": _ARRAY,
        "variances_init": _ARRAY,
    }

    def __init__(self, n_components=1, *, fit_intercept=True, reg_variance=1e-6, tol=1e-3, max_iter=100,
                 n_init=1, init_params="k-means++", weights_init=None, coefs_init=None, variances_init=None,
                 random_state=None, warm_start=False, verbose=0, verbose_interval=10):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.fit_intercept = fit_intercept
        self.reg_variance = reg_variance
        self.coefs_init = coefs_init
        self.variances_init = variances_init

    def _model_kwargs(self, X=None):
        return {"fit_intercept": bool(self.fit_intercept), "reg_variance": float(self.reg_variance)}

    def _start_shapes(self, X):
        k = int(self.n_components)
        return {"weights": (k,), "coefs": (k, X.shape[1] - 1 + int(bool(self.fit_intercept))), "variances": (k,)}

    def sample(self, n_samples=1, design=None):
        """Draw targets for the covariates `design` (n_samples, n_features_in_ - 1), which may
        be omitted only without covariates. Returns (X = [design, y], labels)."""
        model, params = self._fitted()
        self._check_n_samples(n_samples)
        n_covariates = self.n_features_in_ - 1
        if design is None and n_covariates > 0:
            raise ValueError(
                f"MixtureOfRegressions models y given the covariates: pass design=(n_samples, {n_covariates})."
            )
        design = np.zeros((n_samples, 0)) if design is None else check_array(design, dtype=np.float64)
        if design.shape != (n_samples, n_covariates):
            raise ValueError(f"design must have shape ({n_samples}, {n_covariates}), got {design.shape}.")
        padded = jnp.asarray(_pad_rows(design, _bucket(int(n_samples))), params.coefs.dtype)
        X, labels = _sample(model, self._sample_key(), params, padded.shape[0], padded)
        return np.array(np.asarray(X)[:n_samples]), np.asarray(labels)[:n_samples].astype(np.int64)



# The continuous-latent (FactorAnalysis, PPCA, MixtureOfFactorAnalyzers) and sequence
# (GaussianHMM, CategoricalHMM, PoissonHMM, with hmmlearn's API) estimators live in
# jaxem.sklearn_latent, which uses this module's helpers; exported from here on first
# access (PEP 562).
_LATENT = ("CategoricalHMM", "FactorAnalysis", "GaussianHMM", "MixtureOfFactorAnalyzers", "PPCA", "PoissonHMM")


def __getattr__(name):
    if name in _LATENT:
        from jaxem import sklearn_latent

        return getattr(sklearn_latent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
