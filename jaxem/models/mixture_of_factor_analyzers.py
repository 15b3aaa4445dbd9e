"""Mixture of factor analyzers (Ghahramani & Hinton 1996), by EM.

Component k: x = means[k] + loadings[k] z + e with z ~ N(0, I_q) and e ~ N(0, Psi), so
p(x | k) = N(x | means[k], W_k W_k^T + Psi). Psi is diagonal and shared by all components
as in the paper (`noise_type="shared"`), or one per component (`"per_component"`,
McLachlan & Peel 2000). Loadings are (K, D, q), one (D, q) matrix per component, in the
orientation of jaxem.models.factor_analysis (the transpose of scikit-learn's components_).

E-step. Responsibilities from the component densities, each evaluated as in
jaxem.models.factor_analysis (matrix determinant lemma for log|Sigma_k|, the quadratic form
as ||Psi^-1/2 (y - W_k m)||^2 + ||m||^2 with m = E[z | y, k], O(N K D q)); the additive
statistics are the responsibility-weighted moments of the rows about each component's
current mean c_k: counts n_k = sum r, centred_sums s_k = sum r (x - c_k), centred_squares
S_k = sum r (x - c_k)(x - c_k)^T (O(N K D^2), chunks add up).

M-step (closed form, Ghahramani & Hinton 1996). The loadings and mean of component k are
estimated jointly from the augmented latent [z, 1]: with beta_k = G_k W_k^T Psi_k^-1 at the
previous params, y = x - c_k and E_k the responsibility-weighted average,
  [W_k, m_k] = [E_k[y (beta y)^T], E_k[y]] A_k^-1,
  A_k = [[G_k + beta E_k[y y^T] beta^T, beta E_k[y]], [(beta E_k[y])^T, 1]],
the new mean is c_k + m_k, and the noise is the responsibility-weighted diagonal of the
residual second moment, diag(E_k[y y^T] - [W_k, m_k] [E_k[y (beta y)^T], E_k[y]]^T),
averaged over components with weights n_k (shared) or per component, floored at
`min_noise`; weights n_k / n. Every quantity is a function of (n_k, s_k, S_k), so the update
is exact EM (monotone). Each component's loadings are then rotated to the canonical
orientation of jaxem.models.factor_analysis (W_k^T Psi_k^-1 W_k diagonal and decreasing),
which leaves the model and the next iterate's W_k W_k^T unchanged and makes the fixed
point isolated (needed by implicit gradients).

With one component and a start at the weighted mean (every built-in start), a fit equals
jaxem.FactorAnalysis's: the augmented update then leaves the mean in place and reduces to
Rubin & Thayer's.

Numerics as the other mixtures: n_k gets 10 eps added, so a component that loses all its
points keeps its mean, gets zero loadings and a weight near zero — finite, never NaN.

Missing values (`jaxem.fit(..., missing="em")`, jaxem.missing). A row with NaN entries
conditions every component on its observed coordinates (Sigma_k restricted to them) for
its responsibilities and log-likelihood, and contributes the expected moments of x given
x_o and k about c_k (conditional means in place of the missing entries, plus their
conditional covariance to S_k). The M-step above is linear in the moments of x
(E[z | x, k] = beta_k (x - c_k)), so it is unchanged and the iteration is exact EM with
x_m and z both latent; the objective is the observed-data log-likelihood.

Starts. Responsibilities from `init` (jaxem.init: "kmeans++", "random",
"random_from_data"), then the responsibility-weighted means, noise variances half the pooled
within-component variance of each feature (per component: the same for every component),
and random loadings N(0, v_d / (2 q)) in row d (v the pooled variance), rotated as above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import init as init_lib
from jaxem import validation
from jaxem.constraints import Interval
from jaxem.models import checks
from jaxem.models.factor_analysis import canonical_loadings, factor_update, posterior_terms, row_log_density
from jaxem.models.mixture import MixtureModel, weighted_posterior
from jaxem.pytrees import register_model

NOISE_TYPES = ("shared", "per_component")


class MixtureOfFactorAnalyzersParams(NamedTuple):
    """weights: (K,); means: (K, D); loadings: (K, D, q); noise_variances: (D,) shared or
    (K, D) per component."""

    weights: jax.Array
    means: jax.Array
    loadings: jax.Array
    noise_variances: jax.Array


class MixtureOfFactorAnalyzersStats(NamedTuple):
    """Additive statistics centred on the component means c_k of the params they were
    computed at: counts (K,) sum r; centred_sums (K, D) sum r (x - c_k); centred_squares
    (K, D, D) sum r (x - c_k)(x - c_k)^T."""

    counts: jax.Array
    centred_sums: jax.Array
    centred_squares: jax.Array


class ComponentTerms(NamedTuple):
    """Per-component E-step terms, computed once per E-step (`e_step_params`): noise (K, D)
    the Psi_k diagonals; projection (K, D, q) Psi_k^-1 W_k G_k; log_det (K,) log|Sigma_k|."""

    params: MixtureOfFactorAnalyzersParams
    noise: jax.Array
    projection: jax.Array
    log_det: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class MixtureOfFactorAnalyzers(MixtureModel):
    """Mixture of K factor analyzers with q factors each (Ghahramani & Hinton 1996).

    Args:
      n_components: number of components K.
      n_factors: latent dimension q of every component (1 <= q <= n_features).
      noise_type: "shared" (one diagonal Psi for all components, as in the paper) or
        "per_component" (one diagonal Psi_k each).
      min_noise: floor >= 0 on every fitted noise variance (a pytree leaf).
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    n_factors: int = dataclasses.field(metadata=dict(static=True))
    noise_type: str = dataclasses.field(default="shared", metadata=dict(static=True))
    min_noise: Any = 1e-6

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        validation.check_positive_int(self.n_factors, "n_factors")
        validation.check_choice(self.noise_type, "noise_type", NOISE_TYPES)
        checks.check_hyperparameter(self.min_noise, "min_noise")

    def check_data(self, X: jax.Array) -> None:
        super().check_data(X)
        if self.n_factors > X.shape[1]:
            raise ValueError(f"n_factors={self.n_factors} must be <= n_features={X.shape[1]}.")

    # --- densities --------------------------------------------------------------------------
    def _noise(self, params: MixtureOfFactorAnalyzersParams) -> jax.Array:
        """Psi_k diagonals: (K, D)."""
        return jnp.broadcast_to(params.noise_variances, params.means.shape)

    def e_step_params(self, params) -> ComponentTerms:
        """Params with every component's projection and log|Sigma_k| (one QR factorisation
        each, jaxem.models.factor_analysis.posterior_terms), computed once per E-step."""
        if isinstance(params, ComponentTerms):
            return params
        noise = self._noise(params)
        projection, _, log_det = jax.vmap(posterior_terms)(params.loadings, noise)
        return ComponentTerms(params, noise, projection, log_det)

    def _log_prob_t(self, terms: ComponentTerms, centred: jax.Array) -> jax.Array:
        """log N(x | means[k], Sigma_k), component-major: centred (K, n, D) -> (K, n)."""
        return jax.vmap(row_log_density)(
            centred, terms.params.loadings, terms.noise, terms.projection, terms.log_det
        )

    def component_log_prob(self, params, X: jax.Array) -> jax.Array:
        """log p(x | z=k): (n_samples, n_components)."""
        terms = self.e_step_params(params)
        centred = X[None, :, :] - terms.params.means[:, None, :]
        return self._log_prob_t(terms, centred).T

    def log_joint(self, params, X: jax.Array) -> jax.Array:
        terms = self.e_step_params(params)
        return self.component_log_prob(terms, X) + self.log_weights(terms.params)[None, :]

    def e_step(self, params, X: jax.Array, sample_weight: jax.Array):
        """Responsibilities and their weighted moments about each component's mean, from one
        set of centred rows (K, n, D); the weighted summed log-likelihood."""
        terms = self.e_step_params(params)
        centred = X[None, :, :] - terms.params.means[:, None, :]
        log_joint_t = self._log_prob_t(terms, centred) + self.log_weights(terms.params)[:, None]
        resp_t, log_lik = weighted_posterior(log_joint_t, sample_weight, axis=0)
        return _moments(resp_t, centred), log_lik

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(self, params, X: jax.Array, resp: jax.Array) -> MixtureOfFactorAnalyzersStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        means = self.e_step_params(params).params.means
        return _moments(resp.T, X[None, :, :] - means[:, None, :])

    def m_step(self, stats: MixtureOfFactorAnalyzersStats, params) -> MixtureOfFactorAnalyzersParams:
        """Ghahramani & Hinton's closed-form update (module docstring)."""
        dtype = stats.centred_sums.dtype
        counts = stats.counts + 10 * jnp.finfo(dtype).eps
        offsets = stats.centred_sums / counts[:, None]
        second = stats.centred_squares / counts[:, None, None]
        second = 0.5 * (second + jnp.swapaxes(second, -1, -2))
        loadings, shifts, residual = jax.vmap(factor_update)(second, offsets, params.loadings, self._noise(params))
        if self.noise_type == "shared":
            noise = jnp.sum(counts[:, None] * residual, axis=0) / jnp.sum(counts)
        else:
            noise = residual
        noise = jnp.maximum(noise, jnp.asarray(self.min_noise, dtype))
        new = MixtureOfFactorAnalyzersParams(counts / jnp.sum(counts), params.means + shifts, loadings, noise)
        return self._with_canonical_loadings(new)

    def _with_canonical_loadings(self, params: MixtureOfFactorAnalyzersParams) -> MixtureOfFactorAnalyzersParams:
        return params._replace(loadings=jax.vmap(canonical_loadings)(params.loadings, self._noise(params)))

    # --- missing values (jaxem.missing) -------------------------------------------------------
    def gaussian_components(self, params) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(log weights (K,), means (K, D), covariances W_k W_k^T + Psi_k (K, D, D)): the
        E-step of a row with missing entries conditions each component on its observed
        coordinates (jaxem.missing)."""
        params = params.params if isinstance(params, ComponentTerms) else params
        return self.log_weights(params), params.means, self.covariances(params)

    def statistics_from_moments(
        self, counts: jax.Array, centred_sums: jax.Array, centred_squares: jax.Array
    ) -> MixtureOfFactorAnalyzersStats:
        """Statistics from expected moments about the component means (K,), (K, D), (K, D, D).
        The M-step is linear in the moments of x (E[z | x, k] = beta_k (x - c_k)), so with
        the missing entries' expected moments it is the exact EM step with x_m and z latent."""
        return MixtureOfFactorAnalyzersStats(counts, centred_sums, centred_squares)

    def impute(self, params, X: Any) -> tuple[jax.Array, jax.Array]:
        """(X with NaN entries replaced by E[x_m | x_o] (n, D), Cov[x | x_o] (n, D, D)); see
        jaxem.missing.impute."""
        from jaxem.missing import impute

        return impute(self, params, X)

    # --- initialisation -----------------------------------------------------------------------
    def init_params_among(self, key, X, sample_weight, method, chunk_size, active):
        """Responsibilities from `method` (restricted to `active` components, or all when
        None), then `params_from_resp` with random loadings (module docstring)."""
        resp_key, loadings_key = jax.random.split(key)
        resp_t = init_lib.initial_responsibilities(resp_key, X, sample_weight, self.n_components, method, active)
        return self._params_from_resp_t(X, resp_t * sample_weight[None, :], loadings_key)

    def params_from_resp(self, X: jax.Array, resp: jax.Array, key: jax.Array | None = None):
        """Starting params from weighted responsibilities (n_samples, K); key draws the
        loadings (jax.random.key(0) when None)."""
        return self._params_from_resp_t(X, resp.T, jax.random.key(0) if key is None else key)

    def _params_from_resp_t(self, X: jax.Array, resp_t: jax.Array, key: jax.Array):
        n_features, q = X.shape[1], self.n_factors
        dtype = X.dtype
        counts = jnp.sum(resp_t, axis=1) + 10 * jnp.finfo(dtype).eps
        means = (resp_t @ X) / counts[:, None]
        variances = jnp.einsum("kn,knd->kd", resp_t, (X[None, :, :] - means[:, None, :]) ** 2) / counts[:, None]
        pooled = counts @ variances / jnp.sum(counts)
        floor = jnp.asarray(self.min_noise, dtype)
        scale = jnp.maximum(pooled, floor)
        loadings = jax.random.normal(key, (self.n_components, n_features, q), dtype) * jnp.sqrt(scale / (2 * q))[None, :, None]
        noise = jnp.maximum(0.5 * scale, floor)
        if self.noise_type == "per_component":
            noise = jnp.broadcast_to(noise, (self.n_components, n_features))
        params = MixtureOfFactorAnalyzersParams(counts / jnp.sum(counts), means, loadings, noise)
        return self._with_canonical_loadings(params)

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> MixtureOfFactorAnalyzersParams:
        """Validated params from a dict with keys weights (K,), means (K, D), loadings
        (K, D, q) and noise_variances ((D,) shared or (K, D) per component, > 0); loadings
        are rotated to the canonical orientation (the model is unchanged)."""
        k, d, q = self.n_components, n_features, self.n_factors
        expected = {
            "weights": (k,),
            "means": (k, d),
            "loadings": (k, d, q),
            "noise_variances": (d,) if self.noise_type == "shared" else (k, d),
        }
        arrays = checks.arrays_from_dict(values, expected)
        checks.check_probabilities(arrays["weights"], "weights")
        if np.any(arrays["noise_variances"] <= 0):
            raise ValueError("init noise_variances must be positive.")
        params = MixtureOfFactorAnalyzersParams(*(jnp.asarray(arrays[name], dtype) for name in expected))
        return self._with_canonical_loadings(params)

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> MixtureOfFactorAnalyzersParams:
        """Constraint names per params leaf (jaxem.constraints); noise variances >=
        min_noise, the M-step's floor, so that accelerators stay where EM can go."""
        return MixtureOfFactorAnalyzersParams("simplex", "real", "real", Interval(self.min_noise))

    def covariances(self, params) -> jax.Array:
        """Component covariances W_k W_k^T + Psi_k: (K, D, D)."""
        noise = self._noise(params)
        return params.loadings @ jnp.swapaxes(params.loadings, -1, -2) + jax.vmap(jnp.diag)(noise)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights, K D means, K (D q - q(q-1)/2) loadings (each up
        to a rotation) and D (shared) or K D noise variances (McLachlan & Peel 2000;
        McNicholas & Murphy 2008, Table 1)."""
        k, d, q = self.n_components, n_features, self.n_factors
        noise = d if self.noise_type == "shared" else k * d
        return (k - 1) + k * d + k * (d * q - q * (q - 1) // 2) + noise

    def sample(self, key: jax.Array, params, n_samples: int) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D), labels (n_samples,))."""
        label_key, latent_key, noise_key = jax.random.split(key, 3)
        labels = self.sample_labels(label_key, params, n_samples)
        n_features, q = params.loadings.shape[1:]
        dtype = params.means.dtype
        latents = jax.random.normal(latent_key, (n_samples, q), dtype)
        noise = jax.random.normal(noise_key, (n_samples, n_features), dtype) * jnp.sqrt(self._noise(params)[labels])
        X = params.means[labels] + jnp.einsum("ndq,nq->nd", params.loadings[labels], latents) + noise
        return X, labels


def _moments(resp_t: jax.Array, centred: jax.Array) -> MixtureOfFactorAnalyzersStats:
    """Statistics from weighted responsibilities (K, n) and rows centred on each component's
    mean (K, n, D)."""
    weighted = resp_t[:, :, None] * centred
    return MixtureOfFactorAnalyzersStats(
        jnp.sum(resp_t, axis=1),
        jnp.sum(weighted, axis=1),
        jnp.einsum("knd,kne->kde", weighted, centred),
    )
