"""scikit-learn / hmmlearn style estimators for jaxem's continuous-latent and sequence models.

Exported from `jaxem.sklearn` (import them from there):

    from jaxem.sklearn import FactorAnalysis, PPCA, MixtureOfFactorAnalyzers, GaussianHMM
    fa = FactorAnalysis(2, random_state=0).fit(X)          # sklearn.decomposition.FactorAnalysis
    fa.components_, fa.noise_variance_, fa.transform(X), fa.score(X)
    mfa = MixtureOfFactorAnalyzers(3, n_factors=2, random_state=0).fit(X)   # GaussianMixture-like
    mfa.components_, mfa.covariances_, mfa.predict(X), mfa.bic(X)
    hmm = GaussianHMM(3, covariance_type="full", n_iter=100).fit(X, lengths)   # hmmlearn.hmm
    hmm.predict(X, lengths), hmm.score(X, lengths), hmm.sample(200)

As in `jaxem.sklearn`, the estimators hold no EM and no densities: every fit is `jaxem.fit`
and every transform, density, decoding and draw a method of the jaxem model
(`jaxem.FactorAnalysis`, `jaxem.PPCA`, `jaxem.GaussianHMM`, `jaxem.CategoricalHMM`,
`jaxem.PoissonHMM`) on the fitted params. They choose the starts, pass the options on and
translate the result into scikit-learn's (FactorAnalysis, PPCA) or hmmlearn's (the HMMs)
names, shapes and conventions. `MixtureOfFactorAnalyzers` (`jaxem.MixtureOfFactorAnalyzers`)
is a mixture and uses `jaxem.sklearn`'s mixture estimator code (its fit, restarts, starts,
warm_start and `tol` on the mean per-sample log-likelihood, as `GaussianMixture`); what
follows is about the others:

* `tol` is on the change of the TOTAL log-likelihood between iterations, as in
  scikit-learn's FactorAnalysis and in hmmlearn; jaxem's criterion is the mean per unit
  (row, sequence), so jaxem.fit gets tol / (number of units). `n_init` restarts are
  jaxem's vmapped restarts (neither scikit-learn's FactorAnalysis nor hmmlearn has them).
  `random_state` gives the jax.random key of the starts and of `sample`.
* Starts are jaxem's (`init_params` of the jaxem model: for FA / PPCA the data's mean and
  variances and random loadings, for the HMMs k-means++ clusters of the steps), not
  scikit-learn's SVD or hmmlearn's KMeans / Dirichlet draws, so fits from the default
  start are not those of scikit-learn or hmmlearn; the optimum reached is the same model
  (tested to 1e-6 per sample against scikit-learn's FactorAnalysis), and from the same
  start an HMM fit is hmmlearn's (jaxem's tests).
* Fitted arrays are NumPy. Fits run in the data's float dtype; float64 needs
  `jax.config.update("jax_enable_x64", True)`.
* `missing="em"` (FactorAnalysis, PPCA, and MixtureOfFactorAnalyzers as jaxem.sklearn's
  GaussianMixture): NaN entries are missing values, fitted by `jaxem.fit(...,
  missing="em")`; `transform` is E[z | x_o], `score_samples` log p(x_o), `impute` fills NaN
  with E[x_m | x_o]; the `allow_nan` tag follows the parameter. GaussianHMM takes it too:
  every step's emission density is that of its observed coordinates (a step may miss
  every entry), in the fit and in score, predict_proba, decode and predict; its `impute`
  conditions on every observed entry of the sequence.
"""

from __future__ import annotations

import collections
import numbers
import sys
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

import jax
import jax.numpy as jnp

import jaxem
from jaxem import missing as _missing
from jaxem.config import ACCELERATIONS
from jaxem.sklearn import (
    _ARRAY,
    _COMMON_PARAMETERS,
    _NON_NEGATIVE,
    _ALLOW_NAN,
    _MISSING,
    _OtherMixture,
    _bucket,
    _impute,
    _init_params,
    _pad_rows,
    _padded_rows_and_weights,
    _random_key,
    _validate_data,
)

__all__ = ["CategoricalHMM", "FactorAnalysis", "GaussianHMM", "MixtureOfFactorAnalyzers", "PPCA", "PoissonHMM"]

_ACCELERATE = [StrOptions({name for name in ACCELERATIONS if name is not None}), None]


@jax.jit
def _transform_and_density(model, params, X):
    return model.transform(params, X), model.score_samples(params, X)


# --- factor analysis and PPCA -------------------------------------------------------------------
class _FactorEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """`jaxem.fit` of a jaxem factor model (FactorAnalysis, PPCA); subclasses set
    `_model_class`, `_noise_field` and `_set_fitted_params`."""

    _model_class = None
    _noise_field = None
    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "tol": [Interval(numbers.Real, 0.0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "min_noise": [Interval(numbers.Real, 0.0, None, closed="left")],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
        "accelerate": _ACCELERATE,
        "random_state": ["random_state"],
        "missing": _MISSING,
    }

    def _n_latent(self, n_features):
        raise NotImplementedError

    def _check_n_latent(self, n_latent, n_features):
        raise NotImplementedError

    def _make_model(self):
        return self._model_class(int(self.n_components_), min_noise=float(self.min_noise))

    def _user_noise(self, n_features, dtype):
        """The user's starting noise (FA: noise_variance_init), or None."""
        return None

    def fit(self, X, y=None, sample_weight=None):
        """Fit the model by EM (`jaxem.fit`), the best of `n_init` runs.

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
        X = self._validate_X(X, reset=True, ensure_min_samples=2)
        n_samples, n_features = X.shape
        n_latent = self._n_latent(n_features)
        self._check_n_latent(n_latent, n_features)
        self.n_components_ = n_latent
        data, weights = _padded_rows_and_weights(X, sample_weight)
        total = float(np.sum(weights))
        if not total > 0:
            raise ValueError("sample_weight must have a positive sum.")
        missing = "em" if np.isnan(data).any() else None  # only with self.missing == "em"
        # A start made here sees the missing entries at their column means, as jaxem.fit's own.
        start_data = data if missing is None else _missing.partial_rows(data, None).values
        model = self._make_model()
        key = _random_key(self.random_state)
        options = dict(max_iter=int(self.max_iter), tol=float(self.tol) / total, sample_weight=weights,
                       accelerate=self.accelerate, missing=missing)
        noise = self._user_noise(n_features, X.dtype)
        if noise is None:
            result = jaxem.fit(model, data, key=key, n_restarts=int(self.n_init), **options)
        else:
            runs = []
            for run_key in jax.random.split(key, int(self.n_init)):
                start = _init_params(model, run_key, jnp.asarray(start_data), jnp.asarray(weights), "kmeans++")._asdict()
                start[self._noise_field] = noise
                runs.append(jaxem.fit(model, data, key=run_key, init=start, **options))
            finite = [run for run in runs if run.status != jaxem.Status.NON_FINITE] or runs
            result = max(finite, key=lambda run: float(run.log_likelihood))
        if int(result.status) == jaxem.Status.NON_FINITE:
            raise ValueError(f"Fitting {type(self).__name__} failed: {jaxem.status_message(result.status)}.")
        params = jax.device_get(result.params)
        self.mean_ = np.array(params.mean)
        self._set_fitted_params(params)
        self.n_iter_ = int(result.n_iter)
        self.loglike_ = [float(value) * total for value in np.asarray(result.trace)[: self.n_iter_]]
        if int(result.status) != jaxem.Status.CONVERGED:
            warnings.warn(
                f"{type(self).__name__} did not converge. You might want to increase the number of iterations.",
                ConvergenceWarning,
            )
        return self

    def _params(self):
        """The jaxem model and params of the fit."""
        check_is_fitted(self)
        return self._make_model(), self._jaxem_params()

    def _validate_X(self, X, reset, **kwargs):
        if self.missing == "em":
            kwargs.update(_ALLOW_NAN)
        return _validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], **kwargs)

    def _evaluate(self, X):
        """(E[z | x] (n_samples, n_components_), log p(x) (n_samples,)) of the rows of X; of
        their observed coordinates x_o where entries are missing (missing="em"): E[z | x_o]
        is E[z | x] at E[x | x_o], E[z | x] being linear in x."""
        model, params = self._params()
        X = self._validate_X(X, reset=False)
        n_samples = X.shape[0]
        padded = jnp.asarray(_pad_rows(X, _bucket(n_samples)), params.mean.dtype)
        if np.isnan(X).any():
            outputs = (
                model.transform(params, _missing.impute(model, params, padded)[0]),
                _missing.posterior(model, params, padded)[1],
            )
        else:
            outputs = _transform_and_density(model, params, padded)
        return [np.array(np.asarray(out)[:n_samples]) for out in outputs]

    def impute(self, X):
        """X with every NaN replaced by E[x_m | x_o] under the fitted Gaussian: (n_samples, n_features)."""
        return _impute(self, *self._params(), X)

    def transform(self, X):
        """Posterior means of the latent variables, E[z | x]: (n_samples, n_components_)."""
        return self._evaluate(X)[0]

    def score_samples(self, X):
        """Log-likelihood of every sample under the fitted Gaussian: (n_samples,)."""
        return self._evaluate(X)[1]

    def score(self, X, y=None):
        """Mean log-likelihood of the samples, a float."""
        return float(np.mean(self.score_samples(X)))

    def get_covariance(self):
        """The model covariance W W^T + Psi: (n_features, n_features)."""
        model, params = self._params()
        return np.array(model.covariance(params))

    def get_precision(self):
        """The inverse of `get_covariance()`: (n_features, n_features)."""
        return np.linalg.inv(self.get_covariance())

    @property
    def _n_features_out(self):
        return self.n_components_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.allow_nan = self.missing == "em"
        return tags


class FactorAnalysis(_FactorEstimator):
    """Factor analysis by EM (`jaxem.FactorAnalysis`), with scikit-learn's FactorAnalysis
    interface: x = mean + W z + e, z ~ N(0, I), e ~ N(0, diag(noise_variance_)).

    Parameters
    ----------
    n_components : int or None, default=None
        The latent dimension q (None: n_features).
    tol : float, default=1e-2
        Stop when the total log-likelihood rises by less than tol in an iteration
        (scikit-learn's rule).
    max_iter : int, default=1000
    noise_variance_init : array-like of shape (n_features,), default=None
        Starting noise variances (None: jaxem's start, half of each feature's variance).
    min_noise : float, default=1e-6
        Floor on every fitted noise variance (jaxem's; scikit-learn's is 1e-12).
    n_init : int, default=1
        Random starts (jaxem's vmapped restarts); the fit keeps the best.
    accelerate : {None, "squarem", "quasi_newton", "auto", "preconditioned"}, default=None
        jaxem's accelerators; EM for factor analysis is slow near the optimum.
    random_state : int, RandomState or None, default=0
    missing : {None, "em"}, default=None
        "em": NaN entries are missing values (missing at random), fitted by EM
        (`jaxem.fit(..., missing="em")`); `transform`, `score_samples` and `score` use each
        row's observed coordinates (E[z | x_o], log p(x_o)) and `impute` fills NaN with
        E[x_m | x_o]. None: NaN is an error, as in scikit-learn.

    Attributes
    ----------
    components_ : (n_components_, n_features), the loadings W^T, in the orientation of
        scikit-learn's (W^T Psi^-1 W diagonal and decreasing; each row's largest entry positive).
    noise_variance_ : (n_features,)
    mean_ : (n_features,)
    n_components_ : int
    n_iter_ : int
    loglike_ : list of float, the total log-likelihood entering every iteration.
    n_features_in_, feature_names_in_

    Differences from scikit-learn: the fit is EM (scikit-learn iterates SVDs), from jaxem's
    random start; `rotation`, `svd_method`, `iterated_power` and `copy` do not apply; `fit`
    also takes `sample_weight`. `transform` is E[z | x], as in scikit-learn.
    """

    _model_class = jaxem.FactorAnalysis
    _noise_field = "noise_variances"
    _parameter_constraints: dict = {**_FactorEstimator._parameter_constraints, "noise_variance_init": ["array-like", None]}

    def __init__(self, n_components=None, *, tol=1e-2, max_iter=1000, noise_variance_init=None, min_noise=1e-6,
                 n_init=1, accelerate=None, random_state=0, missing=None):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.noise_variance_init = noise_variance_init
        self.min_noise = min_noise
        self.n_init = n_init
        self.accelerate = accelerate
        self.random_state = random_state
        self.missing = missing

    def _n_latent(self, n_features):
        return n_features if self.n_components is None else int(self.n_components)

    def _check_n_latent(self, n_latent, n_features):
        if n_latent > n_features:
            raise ValueError(f"n_components={n_latent} must be <= n_features={n_features}.")

    def _user_noise(self, n_features, dtype):
        if self.noise_variance_init is None:
            return None
        noise = check_array(self.noise_variance_init, ensure_2d=False, dtype=dtype)
        if noise.shape != (n_features,):
            raise ValueError(f"noise_variance_init must have shape ({n_features},), got {noise.shape}.")
        if np.any(noise <= 0):
            raise ValueError("noise_variance_init must be positive.")
        return noise

    def _set_fitted_params(self, params):
        self.components_ = np.array(params.loadings.T)
        self.noise_variance_ = np.array(params.noise_variances)

    def _jaxem_params(self):
        return jaxem.FactorAnalysisParams(
            jnp.asarray(self.mean_), jnp.asarray(self.components_.T), jnp.asarray(self.noise_variance_)
        )


class PPCA(_FactorEstimator):
    """Probabilistic PCA by EM (`jaxem.PPCA`, Tipping & Bishop 1999), PCA-like:
    x = mean + W z + e, z ~ N(0, I), e ~ N(0, noise_variance_ I).

    Parameters
    ----------
    n_components : int or None, default=None
        The latent dimension q < n_features (None: n_features - 1).
    tol, max_iter, min_noise, n_init, accelerate, random_state, missing : as `FactorAnalysis`.

    Attributes
    ----------
    components_ : (n_components_, n_features), orthonormal rows, the principal axes (as
        sklearn.decomposition.PCA's, signs aside: each row's largest entry is positive).
    explained_variance_ : (n_components_,), the variance along each axis under the model,
        ||w_j||^2 + noise_variance_ (at the optimum the top eigenvalues of the
        maximum-likelihood covariance, i.e. PCA's explained_variance_ times (n - 1) / n).
    noise_variance_ : float (at the optimum the mean of the other eigenvalues).
    mean_, n_components_, n_iter_, loglike_, n_features_in_, feature_names_in_

    `transform` is the posterior mean E[z | x] of the latents (Tipping & Bishop's reduced
    representation), not PCA's projection (X - mean_) @ components_.T; `get_covariance`,
    `get_precision`, `score_samples` and `score` are those of the fitted model, as PCA's
    are of its PPCA model.
    """

    _model_class = jaxem.PPCA
    _noise_field = "noise_variance"

    def __init__(self, n_components=None, *, tol=1e-2, max_iter=1000, min_noise=1e-6, n_init=1, accelerate=None,
                 random_state=0, missing=None):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.min_noise = min_noise
        self.n_init = n_init
        self.accelerate = accelerate
        self.random_state = random_state
        self.missing = missing

    def _n_latent(self, n_features):
        return n_features - 1 if self.n_components is None else int(self.n_components)

    def _check_n_latent(self, n_latent, n_features):
        if n_latent < 1 or n_latent >= n_features:
            raise ValueError(
                f"PPCA needs 1 <= n_components < n_features; got n_components={n_latent} with "
                f"n_features={n_features}."
            )

    def _set_fitted_params(self, params):
        # The canonical orientation makes the loadings' columns orthogonal (jaxem.models.factor_analysis).
        norms = np.linalg.norm(params.loadings, axis=0)
        self.components_ = np.array(params.loadings.T / norms[:, None])
        self.noise_variance_ = float(params.noise_variance)
        self.explained_variance_ = norms**2 + self.noise_variance_

    def _jaxem_params(self):
        dtype = self.components_.dtype
        scale = np.sqrt(np.maximum(self.explained_variance_ - self.noise_variance_, 0.0))
        loadings = (self.components_ * scale[:, None]).T
        return jaxem.PPCAParams(jnp.asarray(self.mean_), jnp.asarray(loadings), jnp.asarray(self.noise_variance_, dtype))


# --- mixture of factor analyzers ------------------------------------------------------------------
class MixtureOfFactorAnalyzers(_OtherMixture):
    """Mixture of factor analyzers (`jaxem.MixtureOfFactorAnalyzers`, Ghahramani & Hinton
    1996), with scikit-learn's GaussianMixture interface: component k is
    x = means_[k] + components_[k]^T z + e, z ~ N(0, I_q), e ~ N(0, Psi), so a Gaussian
    mixture with covariances W_k W_k^T + Psi, K D q + D parameters in place of K D (D + 1) / 2.

    Parameters
    ----------
    n_components : int, default=1
        Number of components K.
    n_factors : int, default=1
        Latent dimension q of every component (1 <= q <= n_features).
    noise_type : {"shared", "per_component"}, default="shared"
        One diagonal Psi for all components (Ghahramani & Hinton) or one per component.
    min_noise : float, default=1e-6
        Floor on every fitted noise variance.
    accelerate : {None, "squarem", "quasi_newton", "auto", "preconditioned"}, default=None
        jaxem's accelerators, passed on to `jaxem.fit`.
    missing : {None, "em"}, default=None
        "em": NaN entries are missing values, as in `jaxem.sklearn.GaussianMixture`.
    weights_init (K,), means_init (K, D), loadings_init (K, D, q), noise_variances_init
        ((D,) shared, (K, D) per component): starting values in jaxem's shapes (loadings
        are the transpose of components_); the others are drawn (`init_params`).

    Attributes
    ----------
    weights_ : (K,)
    means_ : (K, D)
    components_ : (K, q, D), each component's loadings W_k^T in the orientation of
        scikit-learn's FactorAnalysis.components_ (W_k^T Psi^-1 W_k diagonal and
        decreasing; the sign of each factor is arbitrary).
    loadings_ : (K, D, q), jaxem's loadings, components_ transposed (the fitted param;
        components_ is derived from it).
    noise_variances_ : (D,) shared or (K, D) per component, jaxem's field; `noise_variance_`
        is the same array under scikit-learn's FactorAnalysis name.
    covariances_ : (K, D, D), the implied component covariances W_k W_k^T + Psi_k.

    Differences from scikit-learn's mixtures: no `reg_covar` (the noise floor `min_noise`
    keeps every covariance positive definite); `init_params` "kmeans" gives the starting
    responsibilities from scikit-learn's KMeans, then jaxem's start (random loadings).
    """

    __doc__ += _COMMON_PARAMETERS
    _model_class = jaxem.MixtureOfFactorAnalyzers
    _params_class = jaxem.MixtureOfFactorAnalyzersParams
    _parameter_constraints: dict = {
        **_OtherMixture._parameter_constraints,
        "n_factors": [Interval(numbers.Integral, 1, None, closed="left")],
        "noise_type": [StrOptions({"shared", "per_component"})],
        "min_noise": _NON_NEGATIVE,
        "accelerate": _ACCELERATE,
        "means_init": _ARRAY,
        "loadings_init": _ARRAY,
        "noise_variances_init": _ARRAY,
        "missing": _MISSING,
    }

    def __init__(self, n_components=1, n_factors=1, *, noise_type="shared", min_noise=1e-6, tol=1e-3,
                 max_iter=100, n_init=1, init_params="k-means++", weights_init=None, means_init=None,
                 loadings_init=None, noise_variances_init=None, random_state=None, warm_start=False,
                 accelerate=None, verbose=0, verbose_interval=10, missing=None):
        self._set_common(n_components, tol, max_iter, n_init, init_params, weights_init, random_state,
                         warm_start, verbose, verbose_interval)
        self.n_factors = n_factors
        self.noise_type = noise_type
        self.min_noise = min_noise
        self.means_init = means_init
        self.loadings_init = loadings_init
        self.noise_variances_init = noise_variances_init
        self.accelerate = accelerate
        self.missing = missing

    def _model_kwargs(self, X=None):
        return {"n_factors": int(self.n_factors), "noise_type": self.noise_type, "min_noise": float(self.min_noise)}

    def impute(self, X):
        """X with every NaN replaced by E[x_m | x_o] under the fitted mixture: (n_samples, n_features)."""
        return _impute(self, *self._fitted(), X)

    def _fit_options(self):
        return {"accelerate": self.accelerate}

    def _check_fit_data(self, X):
        if self.n_factors > X.shape[1]:
            raise ValueError(f"n_factors={self.n_factors} must be <= n_features={X.shape[1]}.")

    def _start_shapes(self, X):
        k, d, q = int(self.n_components), X.shape[1], int(self.n_factors)
        noise = (d,) if self.noise_type == "shared" else (k, d)
        return {"weights": (k,), "means": (k, d), "loadings": (k, d, q), "noise_variances": noise}

    def _set_fitted_params(self, params, model):
        super()._set_fitted_params(params, model)
        self.components_ = np.ascontiguousarray(np.swapaxes(self.loadings_, 1, 2))
        self.noise_variance_ = self.noise_variances_
        fitted = self._params_class(*(jnp.asarray(params[field]) for field in self._fields))
        self.covariances_ = np.array(model.covariances(fitted))


# --- hidden Markov models ------------------------------------------------------------------------
class _Monitor:
    """hmmlearn's ConvergenceMonitor, filled after the fit: tol and n_iter (the estimator's),
    history (the total log-likelihood, plus the log-prior of MAP fits, entering every
    iteration), iter (iterations run) and `converged` by hmmlearn's rule (iter == n_iter, or
    the last change below tol)."""

    def __init__(self, tol, n_iter, verbose):
        self.tol = tol
        self.n_iter = n_iter
        self.verbose = verbose
        self.history = collections.deque()
        self.iter = 0

    @property
    def converged(self):
        return self.iter == self.n_iter or (
            len(self.history) >= 2 and self.history[-1] - self.history[-2] < self.tol
        )

    def __repr__(self):
        return f"{type(self).__name__}(tol={self.tol}, n_iter={self.n_iter}, iter={self.iter}, history={list(self.history)})"


class _BaseHMM(BaseEstimator):
    """`jaxem.fit` of a jaxem HMM, with hmmlearn's estimator API.

    Subclasses set `_letters` ({code: (attribute, jaxem params field)}, in the params'
    order), `_model_class`, `_params_class`, and `_model_kwargs`.
    """

    _letters: dict = {}
    _model_class = None
    _params_class = None
    _integer_data = False
    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "startprob_prior": [Interval(numbers.Real, 1.0, None, closed="left"), "array-like"],
        "transmat_prior": [Interval(numbers.Real, 1.0, None, closed="left"), "array-like"],
        "algorithm": [StrOptions({"viterbi", "map"})],
        "random_state": ["random_state"],
        "n_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0.0, None, closed="left")],
        "verbose": ["verbose"],
        "params": [str],
        "init_params": [str],
        "n_init": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def _set_common(self, n_components, startprob_prior, transmat_prior, algorithm, random_state, n_iter, tol,
                    verbose, params, init_params, n_init):
        self.n_components = n_components
        self.startprob_prior = startprob_prior
        self.transmat_prior = transmat_prior
        self.algorithm = algorithm
        self.random_state = random_state
        self.n_iter = n_iter
        self.tol = tol
        self.verbose = verbose
        self.params = params
        self.init_params = init_params
        self.n_init = n_init

    # --- hooks ---------------------------------------------------------------------------------
    def _model_kwargs(self, X):
        """The jaxem model's arguments besides n_states, priors and fixed; X at fit, else None."""
        return {}

    def _make_model(self, X=None, fixed=()):
        return self._model_class(
            int(self.n_components),
            initial_prior=_prior(self.startprob_prior),
            transition_prior=_prior(self.transmat_prior),
            fixed=tuple(fixed),
            **self._model_kwargs(X),
        )

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = getattr(self, "missing", None) == "em"  # GaussianHMM's parameter
        return tags

    # --- data ----------------------------------------------------------------------------------
    def _check_X(self, X, reset):
        """X validated as float; NaN entries pass only with missing="em"."""
        if not hasattr(self, "missing"):
            return _validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        X = _validate_data(self, X, reset=reset, dtype=[np.float64, np.float32], **_ALLOW_NAN)
        if self.missing != "em" and np.isnan(X).any():
            raise ValueError(
                f"Input X contains NaN. {type(self).__name__} fits NaN entries as missing values "
                f'only with missing="em"; with missing={self.missing!r} X must be finite.'
            )
        return X

    def _checked_letters(self, value, name):
        unknown = sorted(set(value) - set(self._letters))
        if unknown:
            raise ValueError(
                f"{name}={value!r} holds unknown codes {unknown}; the codes of {type(self).__name__} are "
                f"{''.join(self._letters)!r}."
            )
        return value

    # --- fitting -------------------------------------------------------------------------------
    def _user_start(self):
        """{jaxem field: value} of the attributes set before fit whose code is not in init_params
        (hmmlearn's way of giving starting values)."""
        start = {}
        for code, (attribute, field) in self._letters.items():
            if code not in self.init_params and hasattr(self, attribute):
                start[field] = np.asarray(getattr(self, attribute))
        return start

    def fit(self, X, lengths=None):
        """Estimate the params by Baum-Welch (`jaxem.fit`), the best of `n_init` runs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), the sequences one after another.
        lengths : array-like of int of shape (n_sequences,), default=None (one sequence).

        Returns
        -------
        self
        """
        self._validate_params()
        self._checked_letters(self.params, "params")
        self._checked_letters(self.init_params, "init_params")
        user = self._user_start()
        X = self._check_X(X, reset=True)
        fixed = [field for code, (_, field) in self._letters.items() if code not in self.params]
        model = self._make_model(X, fixed)
        missing = "em" if np.isnan(X).any() else None  # only with self.missing == "em"
        # With NaN, jaxem.fit(missing="em") fits the model with missing_width from the data
        # (with_missing_values, which refuses a column with every entry missing); that model
        # also reads the data and draws the starts made here.
        reader = model if missing is None else model.with_missing_values((X, lengths))
        data = reader.as_data((X, lengths))
        n_sequences = int(data.lengths.shape[0])
        key = _random_key(self.random_state)
        n_init = int(self.n_init)
        options = dict(max_iter=int(self.n_iter), tol=float(self.tol) / n_sequences, missing=missing)
        if not user:
            result = jaxem.fit(model, data, key=key, n_restarts=n_init, **options)
        else:
            keys = [key] if len(user) == len(self._letters) else jax.random.split(key, n_init)
            runs = []
            for run_key in keys:
                start = dict(user)
                if len(user) < len(self._letters):
                    drawn = _init_params(reader, run_key, data, jnp.ones(n_sequences, data.observations.dtype), "kmeans++")
                    start = {**drawn._asdict(), **user}
                runs.append(jaxem.fit(model, data, key=run_key, init=start, **options))
            finite = [run for run in runs if run.status != jaxem.Status.NON_FINITE] or runs
            result = max(finite, key=lambda run: float(run.log_likelihood))
        if int(result.status) == jaxem.Status.NON_FINITE:
            raise ValueError(f"Fitting {type(self).__name__} failed: {jaxem.status_message(result.status)}.")
        params = jax.device_get(result.params)
        for code, (attribute, field) in self._letters.items():
            setattr(self, attribute, np.array(getattr(params, field)))
        self._set_fitted(model)
        monitor = _Monitor(self.tol, self.n_iter, self.verbose)
        n_iter = int(result.n_iter)
        monitor.history.extend(float(value) * n_sequences for value in np.asarray(result.trace)[:n_iter])
        monitor.iter = n_iter
        self.monitor_ = monitor
        if self.verbose:
            previous = np.nan
            for i, log_prob in enumerate(monitor.history):
                print(f"{i + 1:>10d} {log_prob:>16.8f} {log_prob - previous:>+16.8f}", file=sys.stderr)
                previous = log_prob
        return self

    def _set_fitted(self, model):
        """Fitted attributes besides the params (n_categories_ ...)."""

    # --- prediction ------------------------------------------------------------------------------
    def _fitted(self, X, lengths):
        """(jaxem model, params, data as (X, lengths)) for prediction; with NaN in X
        (missing="em") the model whose emissions are the densities of the observed entries."""
        check_is_fitted(self, [attribute for attribute, _ in self._letters.values()])
        params = self._params_class(*(jnp.asarray(getattr(self, attribute)) for attribute, _ in self._letters.values()))
        X = self._check_X(X, reset=False).astype(np.asarray(params[0]).dtype, copy=False)
        model = self._make_model()
        if np.isnan(X).any():
            model = model.with_missing_values((X, lengths))
        return model, params, (X, lengths)

    def predict_proba(self, X, lengths=None):
        """Posterior state probabilities p(z_t = k | its sequence): (n_samples, n_components)."""
        model, params, data = self._fitted(X, lengths)
        return np.array(model.predict_proba(params, data))

    def score(self, X, lengths=None):
        """Log-likelihood of X, summed over its sequences (hmmlearn's score), a float."""
        model, params, data = self._fitted(X, lengths)
        return float(model.score(params, data))

    def score_samples(self, X, lengths=None):
        """(log-likelihood of X as `score`, posteriors as `predict_proba`), as hmmlearn."""
        return self.score(X, lengths), self.predict_proba(X, lengths)

    def decode(self, X, lengths=None, algorithm=None):
        """Most likely state sequence.

        algorithm: "viterbi" (the most likely path; log_prob = sum over sequences of
        max_z log p(x, z)) or "map" (the most likely state at each step; log_prob as
        hmmlearn's, the sum of the largest posterior probabilities); None: `self.algorithm`.
        Returns (log_prob, state_sequence (n_samples,)).
        """
        algorithm = self.algorithm if algorithm is None else algorithm
        if algorithm not in ("viterbi", "map"):
            raise ValueError(f"algorithm must be 'viterbi' or 'map', got {algorithm!r}.")
        model, params, data = self._fitted(X, lengths)
        if algorithm == "map":
            posteriors = np.array(model.predict_proba(params, data))
            return float(np.max(posteriors, axis=1).sum()), np.argmax(posteriors, axis=1)
        log_prob, states = model.decode(params, data)
        return float(log_prob), np.asarray(states).astype(np.int64)

    def predict(self, X, lengths=None):
        """State sequence by `self.algorithm` (Viterbi by default): (n_samples,) int."""
        return self.decode(X, lengths)[1]

    def bic(self, X, lengths=None):
        """-2 log L + p log(n_samples) (lower is better); p counts every param, those not in
        `params` included, as hmmlearn does."""
        model, params, data = self._fitted(X, lengths)
        return float(model.bic(params, data))

    def aic(self, X, lengths=None):
        """-2 log L + 2 p, p as in `bic` (lower is better)."""
        model, params, data = self._fitted(X, lengths)
        return float(model.aic(params, data))

    def sample(self, n_samples=1, random_state=None, currstate=None):
        """Draw one sequence of n_samples steps (jaxem's sampler).

        random_state: None (the estimator's random_state), an int or a RandomState;
        currstate: the first state (None: drawn from startprob_).
        Returns (X (n_samples, n_features), state_sequence (n_samples,)).
        """
        check_is_fitted(self, [attribute for attribute, _ in self._letters.values()])
        params = self._params_class(*(jnp.asarray(getattr(self, attribute)) for attribute, _ in self._letters.values()))
        if currstate is not None:
            if not (isinstance(currstate, numbers.Integral) and 0 <= currstate < self.n_components):
                raise ValueError(f"currstate must be a state in [0, {self.n_components}), got {currstate!r}.")
            params = params._replace(initial=jnp.zeros_like(params.initial).at[int(currstate)].set(1.0))
        key = _random_key(self.random_state if random_state is None else random_state)
        X, states = self._make_model().sample(key, params, 1, int(n_samples))
        X = np.array(X[0])
        return (X.astype(np.int64) if self._integer_data else X), np.asarray(states[0]).astype(np.int64)


def _prior(value):
    return float(value) if isinstance(value, numbers.Real) else np.asarray(value, dtype=np.float64)


_HMM_COMMON = """
    Parameters shared by the HMM estimators (hmmlearn's, with its defaults):
    n_components (states), startprob_prior, transmat_prior (Dirichlet pseudo-counts >= 1),
    algorithm ("viterbi" or "map", for predict / decode), random_state, n_iter (most EM
    iterations), tol (on the change of the total log-likelihood), verbose, params (codes of
    the params updated by EM; the others stay at their starts), init_params (codes of the
    params drawn at the start; the others must have been set as attributes before fit, as
    in hmmlearn). Besides hmmlearn's: n_init (jaxem's vmapped restarts; the best is kept).
    hmmlearn's `implementation` does not apply.

    Fitted attributes: startprob_ (K,), transmat_ (K, K), the emission params below,
    monitor_ (hmmlearn's ConvergenceMonitor fields: history, iter, converged, tol, n_iter),
    n_features_in_.
"""


class GaussianHMM(_BaseHMM):
    """HMM with Gaussian emissions (`jaxem.GaussianHMM`), with hmmlearn's GaussianHMM interface.

    Parameters: covariance_type ("diag" by default, as hmmlearn; "full", "tied",
    "spherical"), min_covar, covars_prior, covars_weight (hmmlearn's); codes "stmc".
    hmmlearn's means_prior and means_weight are not supported.
    Emission params: means_ (K, D); covars_ (K, D, D) full matrices for every
    covariance_type, as hmmlearn's getter; it may be set (before fit, with "c" not in
    init_params) in hmmlearn's shapes for the covariance_type: full (K, D, D), diag (K, D),
    spherical (K,), tied (D, D), which is how the fit stores them (`_covars_`).
    missing: None (default; NaN is an error) or "em": NaN entries are missing values (missing
    at random), fitted by `jaxem.fit(..., missing="em")`; every step's emission density is
    that of its observed coordinates (a step may miss every entry: its emission is 1), in
    the fit and in score, score_samples, predict_proba, decode, predict, bic and aic;
    `impute` fills NaN with the conditional means given the observed entries.
    """

    __doc__ += _HMM_COMMON
    _model_class = jaxem.GaussianHMM
    _params_class = jaxem.GaussianHMMParams
    _letters = {"s": ("startprob_", "initial"), "t": ("transmat_", "transition"), "m": ("means_", "means"),
                "c": ("_covars_", "covariances")}
    _parameter_constraints: dict = {
        **_BaseHMM._parameter_constraints,
        "covariance_type": [StrOptions({"full", "diag", "spherical", "tied"})],
        "min_covar": [Interval(numbers.Real, 0.0, None, closed="left")],
        "covars_prior": [Interval(numbers.Real, 0.0, None, closed="left"), "array-like"],
        "covars_weight": [Interval(numbers.Real, None, None, closed="neither"), "array-like"],
        "missing": _MISSING,
    }

    def __init__(self, n_components=1, covariance_type="diag", min_covar=1e-3, startprob_prior=1.0,
                 transmat_prior=1.0, covars_prior=1e-2, covars_weight=1, algorithm="viterbi", random_state=None,
                 n_iter=10, tol=1e-2, verbose=False, params="stmc", init_params="stmc", n_init=1, missing=None):
        self._set_common(n_components, startprob_prior, transmat_prior, algorithm, random_state, n_iter, tol,
                         verbose, params, init_params, n_init)
        self.covariance_type = covariance_type
        self.min_covar = min_covar
        self.covars_prior = covars_prior
        self.covars_weight = covars_weight
        self.missing = missing

    def _model_kwargs(self, X):
        return {"covariance_type": self.covariance_type, "min_covar": float(self.min_covar),
                "covars_prior": _prior(self.covars_prior), "covars_weight": _prior(self.covars_weight)}

    @property
    def covars_(self):
        """Covariances as full matrices, (K, D, D) (hmmlearn's getter)."""
        cov = np.asarray(self._covars_)
        k, d = np.shape(self.means_)
        if self.covariance_type == "full":
            return cov.copy()
        if self.covariance_type == "tied":
            return np.broadcast_to(cov, (k, d, d)).copy()
        variances = np.broadcast_to(cov[:, None] if self.covariance_type == "spherical" else cov, (k, d))
        return variances[:, :, None] * np.eye(d)

    @covars_.setter
    def covars_(self, covars):
        self._covars_ = np.array(covars, copy=True)

    def impute(self, X, lengths=None):
        """X with every NaN replaced by its conditional mean given every observed entry of its
        sequence, sum_k p(z_t = k | observed) E[x_t | x_t,o, z_t = k] (`jaxem.GaussianHMM.impute`):
        (n_samples, n_features)."""
        model, params, data = self._fitted(X, lengths)
        return np.array(model.impute(params, data)[0])


class CategoricalHMM(_BaseHMM):
    """HMM with categorical emissions (`jaxem.CategoricalHMM`), with hmmlearn's CategoricalHMM
    interface: X holds integer codes 0 .. C - 1, one column (or several, independent given
    the state).

    Parameters: emissionprob_prior (Dirichlet pseudo-count >= 1), n_features (hmmlearn's
    name for the number of symbols C; None: from a preset emissionprob_, else max(X) + 1);
    codes "ste". Emission params: emissionprob_ (K, C) ((K, D, C) for D columns).
    Fitted: n_categories_ (C; hmmlearn overwrites n_features instead).
    """

    __doc__ += _HMM_COMMON
    _model_class = jaxem.CategoricalHMM
    _params_class = jaxem.CategoricalHMMParams
    _integer_data = True
    _letters = {"s": ("startprob_", "initial"), "t": ("transmat_", "transition"), "e": ("emissionprob_", "probs")}
    _parameter_constraints: dict = {
        **_BaseHMM._parameter_constraints,
        "emissionprob_prior": [Interval(numbers.Real, 1.0, None, closed="left"), "array-like"],
        "n_features": [Interval(numbers.Integral, 2, None, closed="left"), None],
    }

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0, *, emissionprob_prior=1.0,
                 n_features=None, algorithm="viterbi", random_state=None, n_iter=10, tol=1e-2, verbose=False,
                 params="ste", init_params="ste", n_init=1):
        self._set_common(n_components, startprob_prior, transmat_prior, algorithm, random_state, n_iter, tol,
                         verbose, params, init_params, n_init)
        self.emissionprob_prior = emissionprob_prior
        self.n_features = n_features

    def _categories(self, X):
        if X is None:  # prediction: the fitted C, or that of an emissionprob_ set by hand
            return getattr(self, "n_categories_", None) or int(np.shape(self.emissionprob_)[-1])
        if self.n_features is not None:
            return int(self.n_features)
        if "e" not in self.init_params and hasattr(self, "emissionprob_"):
            return int(np.shape(self.emissionprob_)[-1])
        return max(int(np.max(X)) + 1, 2)

    def _model_kwargs(self, X):
        return {"n_categories": self._categories(X), "emission_prior": _prior(self.emissionprob_prior)}

    def _set_fitted(self, model):
        self.n_categories_ = int(model.n_categories)


class PoissonHMM(_BaseHMM):
    """HMM with independent Poisson counts (`jaxem.PoissonHMM`), with hmmlearn's PoissonHMM
    interface. Parameters: min_rate (jaxem's floor on the rates; hmmlearn's lambdas_prior
    and lambdas_weight are not supported); codes "stl". Emission params: lambdas_ (K, D).
    """

    __doc__ += _HMM_COMMON
    _model_class = jaxem.PoissonHMM
    _params_class = jaxem.PoissonHMMParams
    _integer_data = True
    _letters = {"s": ("startprob_", "initial"), "t": ("transmat_", "transition"), "l": ("lambdas_", "rates")}
    _parameter_constraints: dict = {
        **_BaseHMM._parameter_constraints,
        "min_rate": [Interval(numbers.Real, 0.0, None, closed="left")],
    }

    def __init__(self, n_components=1, startprob_prior=1.0, transmat_prior=1.0, *, min_rate=1e-10,
                 algorithm="viterbi", random_state=None, n_iter=10, tol=1e-2, verbose=False, params="stl",
                 init_params="stl", n_init=1):
        self._set_common(n_components, startprob_prior, transmat_prior, algorithm, random_state, n_iter, tol,
                         verbose, params, init_params, n_init)
        self.min_rate = min_rate

    def _model_kwargs(self, X):
        return {"min_rate": float(self.min_rate)}
