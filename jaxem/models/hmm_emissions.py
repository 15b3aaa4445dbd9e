"""Closed-form hidden Markov models: Gaussian, categorical and Poisson emissions.

Each family's M-step is hmmlearn's (hmmlearn.hmm, `_do_mstep`), so a fit from the same
start with the same iteration count gives the same params:
  GaussianHMM     means = sum gamma x / n_k; covariances from the scatter about the new
                  means with hmmlearn's covars_prior / covars_weight (an inverse-Wishart /
                  inverse-gamma MAP term, also in `log_prior`, so EM stays monotone).
                  hmmlearn's min_covar only enters its starting covariances (the data
                  covariance plus min_covar I), and so it does here.
  CategoricalHMM  probs = max(emission_prior - 1 + counts, 0), normalised.
  PoissonHMM      rates = max(sum gamma x / n_k, min_rate).
Second moments are centred on the previous means, which keeps float32 accurate.
Differences from hmmlearn only in degenerate cases: a state with (nearly) no expected
occupancy keeps its emission params instead of becoming NaN, and hmmlearn's 1e-5 floor on
the diagonal-covariance denominator is not applied.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy

from jaxem import validation
from jaxem.constraints import Interval
from jaxem.models import checks
from jaxem.models import conditional_gaussian as cg
from jaxem.models.cholesky import inverse_cholesky_transposed
from jaxem.models.hmm import HMMModel, as_sequences, valid_steps, check_prior, dirichlet_log_prior, dirichlet_update, initial_resp, occupied
from jaxem.pytrees import register_model

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def _inverse_cholesky(cov: jax.Array) -> jax.Array:
    """L^-1 for cov = L L^T, cov (..., D, D)."""
    return jnp.swapaxes(inverse_cholesky_transposed(cov), -1, -2)


def _row_centre(X: jax.Array) -> jax.Array:
    """(D,) the mean of the rows, the origin of the Gaussian GEMMs (float32 accuracy needs
    rows near it). It depends on the data alone, not on the params, so under a vmap over
    restarts the centred rows and their products stay unbatched and each GEMM is one
    GEMM with the restarts side by side (centring on the params' means would make them
    batched GEMMs, slower per restart on XLA:CPU). Any origin gives the same values
    in exact arithmetic, so its gradient is stopped."""
    return jax.lax.stop_gradient(jnp.mean(X, axis=0))


# --- Gaussian -------------------------------------------------------------------------------------
class GaussianHMMParams(NamedTuple):
    """initial (K,), transition (K, K) (row i: from state i), means (K, D), covariances in
    hmmlearn's shapes: full (K, D, D), diag (K, D), spherical (K,), tied (D, D)."""

    initial: jax.Array
    transition: jax.Array
    means: jax.Array
    covariances: jax.Array


class GaussianHMMStats(NamedTuple):
    """counts (K,) sum gamma; sums (K, D) sum gamma (x - c_k); scatter sum gamma (x - c_k)
    (x - c_k)^T (K, D, D) for full/tied, its diagonal (K, D) for diag/spherical; c_k are the
    means the E-step ran at."""

    counts: jax.Array
    sums: jax.Array
    scatter: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class GaussianHMM(HMMModel):
    """HMM with Gaussian emissions.

    Args:
      n_states: K.
      covariance_type: "full" (default), "diag", "spherical" or "tied".
      min_covar: added to the diagonal of the data covariance that every state's starting
        covariance is taken from (hmmlearn's min_covar, which acts only there).
      covars_prior, covars_weight: hmmlearn's covariance prior (defaults 1e-2 and 1, as
        hmmlearn): full/tied covariances are (covars_prior + scatter) / (max(covars_weight
        - D, 0) + n_k), a scalar covars_prior being added to every entry as in hmmlearn;
        diag/spherical variances (covars_prior + scatter) / (max(covars_weight - 1, 0) +
        n_k). covars_prior=0, covars_weight=1 is maximum likelihood.
      initial_prior, transition_prior: Dirichlet pseudo-counts >= 1 (hmmlearn's
        startprob_prior, transmat_prior; 1 means none).
      method: forward-backward "sequential", "parallel" or "auto" (hmm_inference).
      fixed: names of params held at their starting values, e.g. ("transition",).
      missing_width: 0 (default): NaN observations are an error. W > 0: NaN entries are
        missing values, at most W per step (a step may miss every entry), marginalised out
        of the emission densities and replaced by their conditional moments in the
        statistics (jaxem.models.conditional_gaussian). jaxem.fit(..., missing="em") sets
        it from the data; set it to n_features to decode or score data with NaN.
    """

    n_states: int = dataclasses.field(metadata=dict(static=True))
    covariance_type: str = dataclasses.field(default="full", metadata=dict(static=True))
    min_covar: Any = 1e-3
    covars_prior: Any = 1e-2
    covars_weight: Any = 1.0
    initial_prior: Any = 1.0
    transition_prior: Any = 1.0
    method: str = dataclasses.field(default="auto", metadata=dict(static=True))
    fixed: tuple = dataclasses.field(default=(), metadata=dict(static=True))
    missing_width: int = dataclasses.field(default=0, metadata=dict(static=True))

    params_class = GaussianHMMParams

    def __post_init__(self):
        self.check_common()
        validation.check_choice(self.covariance_type, "covariance_type", COVARIANCE_TYPES)
        checks.check_hyperparameter(self.min_covar, "min_covar")
        checks.check_hyperparameter(self.covars_prior, "covars_prior")
        checks.check_hyperparameter(self.covars_weight, "covars_weight")

    @property
    def allows_missing(self) -> bool:
        return self.missing_width > 0

    def with_missing_values(self, X: Any) -> "GaussianHMM":
        """This model with missing_width set to the most NaN entries of any valid step of X
        (at least 1; n_features when X is traced).

        Raises:
          ValueError: a feature with every entry missing (its mean and variance would come
            from the start and the prior alone).
        """
        data, _ = as_sequences(X, allow_nan=True)
        if validation.is_traced(data.observations) or validation.is_traced(data.lengths):
            width = data.observations.shape[-1]
        else:
            missing = np.isnan(np.asarray(data.observations))[np.asarray(valid_steps(data))]  # (valid steps, D)
            validation.check_observed_columns(~missing.all(axis=0))
            width = int(missing.sum(axis=-1).max(initial=0))
        return dataclasses.replace(self, missing_width=max(width, 1))

    def impute(self, params: GaussianHMMParams, X: Any) -> tuple[jax.Array, jax.Array]:
        """Observations with every NaN replaced by its conditional mean given all observed
        entries of its sequence, E[x_t | observed] = sum_k p(z_t=k | observed) E[x_t | x_t,o,
        z_t=k], and Cov[x_t | observed] (zero rows and columns for observed entries); in
        the input's layout: (n_samples, D) and (n_samples, D, D) for flat data, else
        (S, T, D) and (S, T, D, D)."""
        model = dataclasses.replace(self, missing_width=params.means.shape[1])
        data, flat = as_sequences(X, allow_nan=True)
        n_sequences, max_len, n_features = data.observations.shape
        marginals = model.posterior(params, data).marginals.reshape(n_sequences * max_len, -1)
        rows = model._partial_rows(data.observations.reshape(-1, n_features))
        mean, cov = cg.conditional_mean_and_covariance(model._components(params), rows, marginals)
        filled = jnp.where(rows.observed > 0, rows.values, mean)
        shaped = filled.reshape(n_sequences, max_len, n_features), cov.reshape(n_sequences, max_len, n_features, n_features)
        return tuple(self._output(values, flat) for values in shaped)

    def _partial_rows(self, X: jax.Array) -> cg.PartialRows:
        return cg.partial_rows(X, self.missing_width)

    def _components(self, params: GaussianHMMParams) -> cg.GaussianComponents:
        k, d = params.means.shape
        cov = self._full_covariances(params.covariances, k, d)
        if not self._matrix:
            cov = cov[:, :, None] * jnp.eye(d, dtype=cov.dtype)
        return cg.gaussian_components(jnp.zeros((k,), cov.dtype), params.means, cov)

    @property
    def _matrix(self) -> bool:
        return self.covariance_type in ("full", "tied")

    def _full_covariances(self, cov: jax.Array, n_states: int, n_features: int) -> jax.Array:
        """(K, D, D) for "full"/"tied", (K, D) variances for "diag"/"spherical"."""
        if self.covariance_type == "tied":
            return jnp.broadcast_to(cov, (n_states, n_features, n_features))
        if self.covariance_type == "spherical":
            return jnp.broadcast_to(cov[:, None], (n_states, n_features))
        return cov

    # --- densities --------------------------------------------------------------------------
    def emission_factors(self, params: GaussianHMMParams) -> Any:
        """L^-1 of every covariance (full/tied), or the variances (diag/spherical)."""
        k, d = params.means.shape
        cov = self._full_covariances(params.covariances, k, d)
        return _inverse_cholesky(cov) if self._matrix else cov

    def log_emission(self, params: GaussianHMMParams, factors: Any, X: jax.Array) -> jax.Array:
        if self.missing_width:
            return cg.observed_log_joint(self._components(params), self._partial_rows(X))[0]
        k, d = params.means.shape
        constant = d * math.log(2.0 * math.pi)
        if self._matrix:
            # (y - m_k)^T P_k (y - m_k) with y = x - g, m_k = mu_k - g (g the rows' mean) as one
            # GEMM of the features [y_i y_j (i <= j), y] (n, D(D+3)/2) by per-state
            # coefficients: under a vmap over restarts the features are shared and the
            # restarts' coefficients sit side by side in one GEMM (products L_k^-1 y would
            # be a batched GEMM and K D values per row, slower there: benchmarks/bench_hmm.py).
            centre = _row_centre(X)
            y = X - centre
            offsets = params.means - centre
            precision = jnp.swapaxes(factors, -1, -2) @ factors
            first, second = np.triu_indices(d)
            doubled = jnp.asarray(np.where(first == second, 1.0, 2.0), precision.dtype)
            features = jnp.concatenate([y[:, first] * y[:, second], y], axis=1)
            linear = jnp.einsum("kij,kj->ki", precision, offsets)
            coefficients = jnp.concatenate([precision[:, first, second] * doubled, -2.0 * linear], axis=1)
            log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(factors, axis1=-2, axis2=-1)), axis=-1)
            bias = constant + log_det + jnp.sum(offsets * linear, axis=-1)
            return -0.5 * (features @ coefficients.T + bias)
        variances = factors
        y = X[:, None, :] - params.means
        return -0.5 * (constant + jnp.sum(jnp.log(variances), axis=-1) + jnp.sum(y * y / variances, axis=-1))

    # --- statistics and M-step ------------------------------------------------------------------
    def emission_statistics(self, params, X, gamma) -> GaussianHMMStats:
        """Moments about the E-step's means c_k, from GEMMs over rows centred on their
        mean g: with y = x - g and d_k = c_k - g, sum gamma (y - d)(y - d)^T =
        M - f d^T - d f^T + n d d^T, f = gamma^T y, M = gamma^T (y y^T) (GEMMs rather than a
        batched einsum over states, which XLA:CPU runs slower). With missing values, the expected moments
        given each step's observed entries."""
        if self.missing_width:
            return self._expected_statistics(params, X, gamma)
        centre = _row_centre(X)
        y = X - centre
        offsets = params.means - centre
        counts = jnp.sum(gamma, axis=0)
        first = gamma.T @ y
        sums = first - counts[:, None] * offsets
        n, d = y.shape
        if self._matrix:
            second = (gamma.T @ (y[:, :, None] * y[:, None, :]).reshape(n, d * d)).reshape(-1, d, d)
            outer = first[:, :, None] * offsets[:, None, :]
            scatter = (
                second - outer - jnp.swapaxes(outer, -1, -2)
                + counts[:, None, None] * offsets[:, :, None] * offsets[:, None, :]
            )
        else:
            scatter = gamma.T @ (y * y) - 2.0 * first * offsets + counts[:, None] * offsets * offsets
        return GaussianHMMStats(counts, sums, scatter)

    def _expected_statistics(self, params, X, gamma) -> GaussianHMMStats:
        rows = self._partial_rows(X)
        _, moments = cg.observed_log_joint(self._components(params), rows)
        counts, sums, squares = cg.expected_moments(moments, rows, gamma)
        if not self._matrix:
            squares = jnp.diagonal(squares, axis1=-2, axis2=-1)
        return GaussianHMMStats(counts, sums, squares)

    def m_step_emission(self, stats: GaussianHMMStats, params: GaussianHMMParams) -> dict:
        n, s, scatter = stats
        k, d = params.means.shape
        dtype = s.dtype
        visited = occupied(n)
        safe_n = jnp.where(visited, n, 1.0)
        shift = s / safe_n[:, None]  # new means - centres
        if "means" in self.fixed:
            shift = jnp.zeros_like(shift)
        means = jnp.where(visited[:, None], params.means + shift, params.means)
        # Scatter about the new means: S - s d^T - d s^T + n d d^T, d = shift.
        if self._matrix:
            outer = jnp.einsum("kd,ke->kde", s, shift)
            about = scatter - outer - jnp.swapaxes(outer, -1, -2) + n[:, None, None] * jnp.einsum("kd,ke->kde", shift, shift)
            prior = jnp.broadcast_to(jnp.asarray(self.covars_prior, dtype), (d, d) if self.covariance_type == "tied" else (k, d, d))
            weight = jnp.maximum(jnp.asarray(self.covars_weight, dtype) - d, 0.0)
            if self.covariance_type == "tied":
                cov = (prior + jnp.sum(jnp.where(visited[:, None, None], about, 0.0), axis=0)) / (weight + jnp.sum(n))
            else:
                cov = (prior + about) / (weight + n)[:, None, None]
                cov = jnp.where(visited[:, None, None], cov, params.covariances)
            cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
        else:
            about = scatter - 2.0 * s * shift + n[:, None] * shift * shift
            prior = jnp.asarray(self.covars_prior, dtype)
            weight = jnp.maximum(jnp.asarray(self.covars_weight, dtype) - 1.0, 0.0)
            variances = (prior + about) / (weight + n)[:, None]
            if self.covariance_type == "spherical":
                cov = jnp.where(visited, jnp.mean(variances, axis=1), params.covariances)
            else:
                cov = jnp.where(visited[:, None], variances, params.covariances)
        return {"means": means, "covariances": cov}

    def emission_log_prior(self, params: GaussianHMMParams) -> jax.Array:
        """The MAP term hmmlearn's covariance update maximises: for each covariance matrix
        -(c / 2) log|S| - tr(covars_prior S^-1) / 2 with c = max(covars_weight - D, 0), for
        each variance -(c / 2) log s - covars_prior / (2 s) with c = max(covars_weight - 1, 0)
        (D times per spherical state)."""
        cov = params.covariances
        dtype = cov.dtype
        d = params.means.shape[1]
        if self._matrix:
            inverse_chol = _inverse_cholesky(cov)
            log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(inverse_chol, axis1=-2, axis2=-1)), axis=-1)
            precision = jnp.swapaxes(inverse_chol, -1, -2) @ inverse_chol
            prior = jnp.broadcast_to(jnp.asarray(self.covars_prior, dtype), cov.shape)
            weight = jnp.maximum(jnp.asarray(self.covars_weight, dtype) - d, 0.0)
            trace = jnp.sum(prior * precision, axis=(-2, -1))
            return jnp.sum(-0.5 * weight * log_det - 0.5 * trace)
        weight = jnp.maximum(jnp.asarray(self.covars_weight, dtype) - 1.0, 0.0)
        per_entry = -0.5 * weight * jnp.log(cov) - 0.5 * jnp.asarray(self.covars_prior, dtype) / cov
        return jnp.sum(per_entry) * (d if self.covariance_type == "spherical" else 1)

    # --- initialisation -----------------------------------------------------------------------
    def init_emission(self, key, X, row_weight, method) -> dict:
        """Means of the clusters of a jaxem.init method; every state's covariance is the
        weighted data covariance plus min_covar I, as hmmlearn starts them (missing entries
        at their column's observed mean)."""
        if self.missing_width:
            X = self._partial_rows(X).values
        resp = initial_resp(key, X, row_weight, self.n_states, method)
        counts = jnp.sum(resp, axis=0)
        total = jnp.sum(row_weight)
        mean = row_weight @ X / total
        means = jnp.where(counts[:, None] > 0, resp.T @ X / jnp.where(counts > 0, counts, 1.0)[:, None], mean)
        y = X - mean
        cov = (row_weight[:, None] * y).T @ y / total
        cov = cov + jnp.asarray(self.min_covar, X.dtype) * jnp.eye(X.shape[1], dtype=X.dtype)
        k = self.n_states
        if self.covariance_type == "full":
            cov = jnp.broadcast_to(cov, (k,) + cov.shape)
        elif self.covariance_type == "diag":
            cov = jnp.broadcast_to(jnp.diagonal(cov), (k, X.shape[1]))
        elif self.covariance_type == "spherical":
            cov = jnp.full((k,), jnp.mean(jnp.diagonal(cov)), X.dtype)
        return {"means": means, "covariances": cov}

    def emission_from_dict(self, values: dict, n_features: int, dtype: Any) -> dict:
        k, d = self.n_states, n_features
        shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[self.covariance_type]
        arrays = checks.arrays_from_dict(values, {"means": (k, d), "covariances": shape})
        cov = arrays["covariances"]
        if self._matrix:
            if not np.allclose(cov, np.swapaxes(cov, -1, -2)) or np.any(np.linalg.eigvalsh(cov) <= 0):
                raise ValueError("init covariances must be symmetric positive definite.")
        elif np.any(cov <= 0):
            raise ValueError("init covariances must be positive.")
        return {name: jnp.asarray(value, dtype) for name, value in arrays.items()}

    def emission_constraints(self) -> dict:
        return {"means": "real", "covariances": "positive_definite" if self._matrix else "positive"}

    def n_emission_parameters(self, params: GaussianHMMParams) -> dict:
        k, d = params.means.shape
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}
        return {"means": k * d, "covariances": cov[self.covariance_type]}

    def sample_emission(self, key, params: GaussianHMMParams, states: jax.Array) -> jax.Array:
        k, d = params.means.shape
        noise = jax.random.normal(key, states.shape + (d,), params.means.dtype)
        cov = self._full_covariances(params.covariances, k, d)
        if self._matrix:
            scaled = jnp.einsum("...de,...e->...d", jnp.linalg.cholesky(cov)[states], noise)
        else:
            scaled = jnp.sqrt(cov)[states] * noise
        return params.means[states] + scaled


# --- categorical ------------------------------------------------------------------------------------
class CategoricalHMMParams(NamedTuple):
    """initial (K,), transition (K, K), probs (K, C) for one feature (hmmlearn's
    emissionprob_) or (K, D, C) for D features, summing to one over the last axis."""

    initial: jax.Array
    transition: jax.Array
    probs: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class CategoricalHMM(HMMModel):
    """HMM with categorical emissions: observations are integer codes in [0, n_categories),
    one or more features independent given the state.

    Args:
      n_states: K; n_categories: C >= 2.
      emission_prior: Dirichlet pseudo-count >= 1 on each probs row (hmmlearn's
        emissionprob_prior; 1 means none).
      initial_prior, transition_prior, method, fixed: as GaussianHMM.
    """

    n_states: int = dataclasses.field(metadata=dict(static=True))
    n_categories: int = dataclasses.field(default=2, metadata=dict(static=True))
    emission_prior: Any = 1.0
    initial_prior: Any = 1.0
    transition_prior: Any = 1.0
    method: str = dataclasses.field(default="auto", metadata=dict(static=True))
    fixed: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    params_class = CategoricalHMMParams

    def __post_init__(self):
        self.check_common()
        validation.check_positive_int(self.n_categories, "n_categories", minimum=2)
        check_prior(self.emission_prior, "emission_prior")

    def check_observations(self, observations: np.ndarray) -> None:
        checks.check_integer_data(observations.reshape(-1, observations.shape[-1]), "category codes", 0, self.n_categories - 1)

    @staticmethod
    def _probs3(probs: jax.Array) -> jax.Array:
        return probs[:, None, :] if probs.ndim == 2 else probs

    def emission_factors(self, params) -> Any:
        return None

    def log_emission(self, params, factors, X) -> jax.Array:
        log_probs = jnp.log(self._probs3(params.probs))  # (K, D, C); gathered, so 0 * -inf never occurs
        codes = X.astype(jnp.int32)
        gathered = log_probs[:, jnp.arange(X.shape[1])[None, :], codes]  # (K, n, D)
        return jnp.sum(gathered, axis=-1).T

    def emission_statistics(self, params, X, gamma) -> jax.Array:
        one_hot = jax.nn.one_hot(X.astype(jnp.int32), self.n_categories, dtype=gamma.dtype)
        return jnp.einsum("nk,ndc->kdc", gamma, one_hot)

    def m_step_emission(self, counts: jax.Array, params) -> dict:
        previous = self._probs3(params.probs)
        visited = occupied(jnp.sum(counts[:, 0], axis=-1))
        probs = dirichlet_update(counts, self.emission_prior, previous)
        probs = jnp.where(visited[:, None, None], probs, previous)
        return {"probs": probs.reshape(params.probs.shape)}

    def emission_log_prior(self, params) -> jax.Array:
        return dirichlet_log_prior(params.probs, self.emission_prior)

    def init_emission(self, key, X, row_weight, method) -> dict:
        """Category frequencies of the clusters of one-hot rows, half mixed with the overall
        frequencies so no probability starts at 0."""
        n, d = X.shape
        one_hot = jax.nn.one_hot(X.astype(jnp.int32), self.n_categories, dtype=X.dtype)
        resp = initial_resp(key, X, row_weight, self.n_states, method, one_hot.reshape(n, -1))
        counts = jnp.einsum("nk,ndc->kdc", resp, one_hot) + 1.0
        overall = jnp.einsum("n,ndc->dc", row_weight, one_hot) + 1.0
        probs = 0.5 * counts / jnp.sum(counts, -1, keepdims=True) + 0.5 * overall / jnp.sum(overall, -1, keepdims=True)
        return {"probs": probs[:, 0] if d == 1 else probs}

    def emission_from_dict(self, values: dict, n_features: int, dtype: Any) -> dict:
        k, c = self.n_states, self.n_categories
        shape = (k, c) if n_features == 1 else (k, n_features, c)
        probs = checks.arrays_from_dict(values, {"probs": shape})["probs"]
        checks.check_probabilities(probs, "probs")
        return {"probs": jnp.asarray(probs, dtype)}

    def emission_constraints(self) -> dict:
        return {"probs": "simplex"}

    def n_emission_parameters(self, params) -> dict:
        k, d, c = self._probs3(params.probs).shape
        return {"probs": k * d * (c - 1)}

    def sample_emission(self, key, params, states) -> jax.Array:
        log_probs = jnp.log(self._probs3(params.probs))[states]  # (S, L, D, C)
        return jax.random.categorical(key, log_probs, axis=-1).astype(params.probs.dtype)


# --- Poisson ----------------------------------------------------------------------------------------
class PoissonHMMParams(NamedTuple):
    """initial (K,), transition (K, K), rates (K, D) (hmmlearn's lambdas_)."""

    initial: jax.Array
    transition: jax.Array
    rates: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class PoissonHMM(HMMModel):
    """HMM with independent Poisson counts per feature.

    Args:
      n_states: K.
      min_rate: floor >= 0 on the fitted rates (the floored value is the exact maximiser of
        Q over rates >= min_rate); 1e-10 keeps log-rates finite for a state seeing only 0s.
      initial_prior, transition_prior, method, fixed: as GaussianHMM.
    """

    n_states: int = dataclasses.field(metadata=dict(static=True))
    min_rate: Any = 1e-10
    initial_prior: Any = 1.0
    transition_prior: Any = 1.0
    method: str = dataclasses.field(default="auto", metadata=dict(static=True))
    fixed: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    params_class = PoissonHMMParams

    def __post_init__(self):
        self.check_common()
        checks.check_hyperparameter(self.min_rate, "min_rate")

    def check_observations(self, observations: np.ndarray) -> None:
        checks.check_integer_data(observations.reshape(-1, observations.shape[-1]), "non-negative counts", low=0)

    def emission_factors(self, params) -> Any:
        return None

    def log_emission(self, params, factors, X) -> jax.Array:
        rates = params.rates[None, :, :]
        x = X[:, None, :]
        return jnp.sum(xlogy(x, rates) - rates - gammaln(x + 1.0), axis=-1)

    def emission_statistics(self, params, X, gamma) -> tuple[jax.Array, jax.Array]:
        return jnp.sum(gamma, axis=0), gamma.T @ X

    def m_step_emission(self, stats, params) -> dict:
        counts, sums = stats
        visited = occupied(counts)
        rates = jnp.maximum(sums / jnp.where(visited, counts, 1.0)[:, None], jnp.asarray(self.min_rate, sums.dtype))
        return {"rates": jnp.where(visited[:, None], rates, params.rates)}

    def emission_log_prior(self, params) -> jax.Array:
        return jnp.zeros((), params.rates.dtype)

    def init_emission(self, key, X, row_weight, method) -> dict:
        """Cluster means of a jaxem.init method, 10% mixed with the overall mean."""
        resp = initial_resp(key, X, row_weight, self.n_states, method)
        counts = jnp.sum(resp, axis=0)
        mean = row_weight @ X / jnp.sum(row_weight)
        cluster = jnp.where(counts[:, None] > 0, resp.T @ X / jnp.where(counts > 0, counts, 1.0)[:, None], mean)
        rates = jnp.maximum(0.9 * cluster + 0.1 * mean, jnp.asarray(self.min_rate, X.dtype))
        return {"rates": rates}

    def emission_from_dict(self, values: dict, n_features: int, dtype: Any) -> dict:
        rates = checks.arrays_from_dict(values, {"rates": (self.n_states, n_features)})["rates"]
        if rates.min() <= 0:
            raise ValueError("init rates must be positive.")
        return {"rates": jnp.asarray(rates, dtype)}

    def emission_constraints(self) -> dict:
        return {"rates": Interval(self.min_rate)}  # the M-step's floor (jaxem.constraints)

    def n_emission_parameters(self, params) -> dict:
        return {"rates": params.rates.size}

    def sample_emission(self, key, params, states) -> jax.Array:
        rates = params.rates[states]
        return jax.random.poisson(key, rates).astype(rates.dtype)
