"""Multivariate Student-t mixture, robust to outliers: EM of Peel & McLachlan (2000).

Each component is t_nu(mu, Sigma), a Gaussian scale mixture x | u ~ N(mu, Sigma / u),
u ~ Gamma(nu / 2, rate nu / 2). Treating both the component z and the scale u as latent,
the E-step gives responsibilities r_nk and expected precision weights
u_nk = (nu_k + D) / (nu_k + delta_nk), delta_nk the Mahalanobis distance, and Q separates
into (weights), (means, covariances) and (dofs) parts, each maximised in closed form or by
a one-dimensional root:
  mu_k     = sum r u x / sum r u
  Sigma_k  = sum r u (x - mu_k)(x - mu_k)^T / sum r          (+ reg_covar I)
  nu_k     solves  log(nu/2) - psi(nu/2) + 1 + c_k = 0, with
           c_k = sum r (log u - u) / sum r + psi((nu_old + D)/2) - log((nu_old + D)/2),
solved by DOF_BISECTION_STEPS bisection steps on log nu inside [min_dof, max_dof]. The
left-hand side decreases in nu (Q is concave in nu), so the bracketed root is the exact
maximiser over the bracket and EM stays monotone. (Peel & McLachlan present this as ECM;
because Q separates, the conditional maximisations here are a full M-step.)

Statistics stay additive: sums of r, r u, r u (x - c_k), r u (x - c_k)(x - c_k)^T and
r (log u - u), with second moments centred on the previous means c_k as in
GaussianMixture (no E[x^2] - mu^2 cancellation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, digamma, gammaln

from jaxem import validation
from jaxem.constraints import Interval
from jaxem.models import checks
from jaxem.models.cholesky import inverse_cholesky_transposed
from jaxem.models.mixture import MixtureModel, weighted_posterior
from jaxem.pytrees import register_model

DOF_BISECTION_STEPS = 64


class StudentTMixtureParams(NamedTuple):
    """weights: (K,); means: (K, D) locations; covariances: (K, D, D) scale matrices Sigma
    (the covariance of component k is nu_k / (nu_k - 2) Sigma_k when nu_k > 2);
    dofs: (K,) degrees of freedom nu_k."""

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    dofs: jax.Array


class StudentTMixtureStats(NamedTuple):
    """Additive statistics centred on the means c_k of the params they were computed at.

    counts: (K,) sum r; scale_weights: (K,) sum r u; centred_sums: (K, D) sum r u (x - c_k);
    centred_squares: (K, D, D) sum r u (x - c_k)(x - c_k)^T; log_u_minus_u: (K,)
    sum r (log u - u).
    """

    counts: jax.Array
    scale_weights: jax.Array
    centred_sums: jax.Array
    centred_squares: jax.Array
    log_u_minus_u: jax.Array


class StudentTFactors(NamedTuple):
    """Params with their precision Cholesky factors U_k = L_k^-T (K, D, D), Sigma_k = L_k L_k^T:
    the E-step's only factorisations, made once per E-step (`StudentTMixture.e_step_params`)."""

    params: StudentTMixtureParams
    precisions_cholesky: jax.Array


def mahalanobis_and_log_det(means: jax.Array, covariances: jax.Array, X: jax.Array):
    """delta_nk = (x_n - mu_k)^T Sigma_k^{-1} (x_n - mu_k): (n, K), and log|Sigma_k|: (K,)."""
    return mahalanobis_from_factors(means, inverse_cholesky_transposed(covariances), X)


def mahalanobis_from_factors(means: jax.Array, prec_chol: jax.Array, X: jax.Array):
    """`mahalanobis_and_log_det` from the precision Cholesky factors prec_chol (K, D, D).

    One matrix product with the factors, as GaussianMixture does, rather than a triangular
    solve with the (K, D, n) data as its right-hand side: jaxlib 0.10's LAPACK triangular
    solve splits such a solve over XLA's intra-op thread pool and waits on it from a pool
    thread, and two such solves running at once (the E-step's log-densities and precision
    weights, as it then was) deadlocked a 2-core CPU: a float32 fit with K = 4, D = 8,
    n = 20000 hung in 9 runs of 10."""
    diff = X[None, :, :] - means[:, None, :]  # (K, n, D)
    solved = diff @ prec_chol  # (K, n, D): rows (L_k^-1 (x_n - mu_k))^T
    maha = jnp.sum(solved * solved, axis=-1).T
    log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
    return maha, log_det


# Degrees of freedom up to which float64 densities take log Gamma((nu + D)/2) - log Gamma(nu/2)
# as a difference of gammaln (error at most 1.3e-11 for D <= 16) rather than through
# jax.scipy.special.betaln, which is off by up to 1.3e-6 below nu = 1000 and by about 1e-10
# relatively above 1e4 (against scipy, D = 1..16); the difference's error grows as
# eps * nu log(nu) (1e-9 at nu = 1e6).
GAMMALN_DIFFERENCE_MAX_DOF = 1e4


def log_gamma_ratio_of_half(nu: jax.Array, half_d: float) -> jax.Array:
    """log Gamma(nu/2 + half_d) - log Gamma(nu/2), elementwise. float64: a gammaln
    difference up to GAMMALN_DIFFERENCE_MAX_DOF, betaln above; float32: betaln throughout
    (the difference's error, 2e-5 up to nu = 100, exceeds betaln's 5e-6 there)."""
    via_betaln = gammaln(half_d) - betaln(0.5 * nu, half_d)
    if nu.dtype != jnp.float64:
        return via_betaln
    moderate = nu <= GAMMALN_DIFFERENCE_MAX_DOF
    safe_nu = jnp.where(moderate, nu, 1.0)  # no huge arguments in the unused branch
    return jnp.where(moderate, gammaln(0.5 * safe_nu + half_d) - gammaln(0.5 * safe_nu), via_betaln)


def _log_density(nu: jax.Array, maha: jax.Array, log_det: jax.Array, n_features: int) -> jax.Array:
    """log t_nu_k(x_n | mu_k, Sigma_k): (n, K) from dofs nu (K,), Mahalanobis distances
    maha (n, K) and log|Sigma_k| log_det (K,)."""
    half_d = 0.5 * n_features
    log_norm = log_gamma_ratio_of_half(nu, half_d) - half_d * jnp.log(math.pi * nu) - 0.5 * log_det
    return log_norm[None, :] - 0.5 * (nu + n_features)[None, :] * jnp.log1p(maha / nu[None, :])


def _precision_weights(nu: jax.Array, maha: jax.Array, n_features: int) -> jax.Array:
    """E[u | x_n, z=k] = (nu_k + D) / (nu_k + delta_nk): (n, K)."""
    return (nu[None, :] + n_features) / (nu[None, :] + maha)


@register_model
@dataclasses.dataclass(frozen=True)
class StudentTMixture(MixtureModel):
    """Mixture of multivariate Student-t distributions with full scale matrices.

    Data: X (n_samples, D) real numbers.

    Args:
      n_components: number of mixture components K.
      learn_dof: estimate every component's degrees of freedom (True) or keep them at
        their starting values (False; then they are not counted by n_parameters).
      dof: starting degrees of freedom of every component for the kmeans++/random starts.
      min_dof, max_dof: bracket of the dof update; a component whose data look Gaussian
        goes to max_dof.
      reg_covar: non-negative number added to the diagonal of every scale matrix.
    dof, min_dof, max_dof and reg_covar are pytree leaves.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    learn_dof: bool = dataclasses.field(default=True, metadata=dict(static=True))
    dof: Any = 10.0
    min_dof: Any = 0.1
    max_dof: Any = 1000.0
    reg_covar: Any = 1e-6

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        if not isinstance(self.learn_dof, bool):
            raise ValueError(f"learn_dof must be True or False, got {self.learn_dof!r}.")
        for name in ("dof", "min_dof", "max_dof"):
            checks.check_hyperparameter(getattr(self, name), name, positive=True)
        checks.check_hyperparameter(self.reg_covar, "reg_covar")
        bounds = (self.min_dof, self.max_dof)
        if all(isinstance(b, (int, float)) for b in bounds) and self.min_dof >= self.max_dof:
            raise ValueError(f"min_dof must be < max_dof, got {bounds}.")

    # --- densities --------------------------------------------------------------------------
    def component_log_prob(self, params: StudentTMixtureParams, X: jax.Array) -> jax.Array:
        """log t_nu_k(x | mu_k, Sigma_k): (n_samples, n_components)."""
        maha, log_det = mahalanobis_and_log_det(params.means, params.covariances, X)
        return _log_density(params.dofs, maha, log_det, X.shape[1])

    def expected_precision_weights(self, params: StudentTMixtureParams, X: jax.Array) -> jax.Array:
        """E[u | x, z=k] = (nu_k + D) / (nu_k + delta_nk): (n_samples, n_components)."""
        maha, _ = mahalanobis_and_log_det(params.means, params.covariances, X)
        return _precision_weights(params.dofs, maha, X.shape[1])

    # --- E-step -------------------------------------------------------------------------------
    def e_step_params(self, params: StudentTMixtureParams | StudentTFactors) -> StudentTFactors:
        """Params with their precision Cholesky factors, once per E-step rather than in every
        chunk's E-step (where LAPACK calls of chunks run side by side; see
        jaxem.parallel.e_step_prepared)."""
        if isinstance(params, StudentTFactors):
            return params
        return StudentTFactors(params, inverse_cholesky_transposed(params.covariances))

    def e_step(
        self, params: StudentTMixtureParams | StudentTFactors, X: jax.Array, sample_weight: jax.Array
    ) -> tuple[StudentTMixtureStats, jax.Array]:
        """MixtureModel.e_step with the Mahalanobis distances computed once for both the
        log-densities and the precision weights (params may come from `e_step_params`)."""
        factors = self.e_step_params(params)
        params = factors.params
        n_features = X.shape[1]
        maha, log_det = mahalanobis_from_factors(params.means, factors.precisions_cholesky, X)
        log_joint = _log_density(params.dofs, maha, log_det, n_features) + self.log_weights(params)[None, :]
        resp, log_lik = weighted_posterior(log_joint, sample_weight, axis=1)
        u = _precision_weights(params.dofs, maha, n_features)
        return self._centred_statistics(X, resp, u, params.means), log_lik

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: StudentTMixtureParams, X: jax.Array, resp: jax.Array
    ) -> StudentTMixtureStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        u = self.expected_precision_weights(params, X)
        return self._centred_statistics(X, resp, u, params.means)

    def _centred_statistics(
        self, X: jax.Array, resp: jax.Array, u: jax.Array, centres: jax.Array
    ) -> StudentTMixtureStats:
        ru = resp * u
        diff = X[:, None, :] - centres[None, :, :]
        weighted = ru[:, :, None] * diff
        return StudentTMixtureStats(
            counts=jnp.sum(resp, axis=0),
            scale_weights=jnp.sum(ru, axis=0),
            centred_sums=jnp.sum(weighted, axis=0),
            centred_squares=jnp.einsum("nkd,nke->kde", weighted, diff),
            log_u_minus_u=jnp.sum(resp * (jnp.log(u) - u), axis=0),
        )

    def m_step(
        self, stats: StudentTMixtureStats, params: StudentTMixtureParams
    ) -> StudentTMixtureParams:
        """Closed-form weights, means and scales; bisection for the dofs (if learned)."""
        weights, means, covariances = self._location_scale(stats, params.means)
        dofs = self.update_dofs(stats, params.dofs, means.shape[1]) if self.learn_dof else params.dofs
        return StudentTMixtureParams(weights, means, covariances, dofs)

    def _location_scale(self, stats: StudentTMixtureStats, centres: jax.Array):
        dtype = stats.centred_sums.dtype
        tiny = 10 * jnp.finfo(dtype).eps
        counts = stats.counts + tiny
        scale_weights = stats.scale_weights + tiny
        offsets = stats.centred_sums / scale_weights[:, None]
        outer = scale_weights[:, None, None] * offsets[:, :, None] * offsets[:, None, :]
        eye = jnp.eye(centres.shape[1], dtype=dtype)
        covariances = (stats.centred_squares - outer) / counts[:, None, None]
        covariances = covariances + jnp.asarray(self.reg_covar, dtype) * eye
        return counts / jnp.sum(counts), centres + offsets, covariances

    def update_dofs(self, stats: StudentTMixtureStats, dofs: jax.Array, n_features: int) -> jax.Array:
        """Root in [min_dof, max_dof] of the dof equation (module docstring): (K,)."""
        dtype = stats.counts.dtype
        half_old = 0.5 * (dofs + n_features)
        constant = (
            1.0
            + stats.log_u_minus_u / (stats.counts + 10 * jnp.finfo(dtype).eps)
            + digamma(half_old)
            - jnp.log(half_old)
        )

        def equation(log_nu):  # decreasing in log_nu
            half_nu = 0.5 * jnp.exp(log_nu)
            return jnp.log(half_nu) - digamma(half_nu) + constant

        def bisect(_, bracket):
            low, high = bracket
            mid = 0.5 * (low + high)
            above = equation(mid) > 0  # root lies above mid
            return jnp.where(above, mid, low), jnp.where(above, high, mid)

        low = jnp.full_like(dofs, jnp.log(jnp.asarray(self.min_dof, dtype)))
        high = jnp.full_like(dofs, jnp.log(jnp.asarray(self.max_dof, dtype)))
        low, high = jax.lax.fori_loop(0, DOF_BISECTION_STEPS, bisect, (low, high))
        return jnp.exp(0.5 * (low + high))

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> StudentTMixtureParams:
        """Gaussian-like M-step (u = 1) from weighted responsibilities; dofs set to `dof`."""
        centre = jnp.sum(jnp.sum(resp, axis=1)[:, None] * X, axis=0) / jnp.sum(resp)
        centres = jnp.broadcast_to(centre, (self.n_components, X.shape[1]))
        stats = self._centred_statistics(X, resp, jnp.ones_like(resp), centres)
        weights, means, covariances = self._location_scale(stats, centres)
        dofs = jnp.full((self.n_components,), self.dof, X.dtype)
        return StudentTMixtureParams(weights, means, covariances, dofs)

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> StudentTMixtureParams:
        """Validated params from a dict with keys weights, means, covariances, dofs."""
        k, d = self.n_components, n_features
        shapes = {"weights": (k,), "means": (k, d), "covariances": (k, d, d), "dofs": (k,)}
        arrays = checks.arrays_from_dict(values, shapes)
        checks.check_probabilities(arrays["weights"], "weights")
        cov = arrays["covariances"]
        if not np.allclose(cov, np.swapaxes(cov, -1, -2)) or np.any(np.linalg.eigvalsh(cov) <= 0):
            raise ValueError("init covariances must be symmetric positive definite.")
        if np.any(arrays["dofs"] <= 0):
            raise ValueError("init dofs must be positive.")
        return StudentTMixtureParams(*(jnp.asarray(arrays[n], dtype) for n in shapes))

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> StudentTMixtureParams:
        """Constraint names per params leaf (see jaxem.constraints).

        Learned dofs lie in [min_dof, max_dof], where the M-step's bisection keeps them;
        declared as an interval (on log nu), SQUAREM's extrapolation and L-BFGS stay
        inside it too, instead of pushing a component whose data look Gaussian past
        max_dof (where an EM step lowers the likelihood) or to 1e12.
        """
        dofs = Interval(self.min_dof, self.max_dof, log=True) if self.learn_dof else "positive"
        return StudentTMixtureParams("simplex", "real", "positive_definite", dofs)

    def n_parameters(self, n_features: int) -> int:
        """K - 1 weights, K * D means, K * D (D + 1) / 2 scale entries, K dofs if learned."""
        k, d = self.n_components, n_features
        dofs = k if self.learn_dof else 0
        return k * d * (d + 1) // 2 + k * d + k - 1 + dofs

    def sample(
        self, key: jax.Array, params: StudentTMixtureParams, n_samples: int
    ) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D), labels (n_samples,))."""
        label_key, noise_key, scale_key = jax.random.split(key, 3)
        labels = self.sample_labels(label_key, params, n_samples)
        dtype = params.means.dtype
        noise = jax.random.normal(noise_key, (n_samples, params.means.shape[1]), dtype)
        half_nu = 0.5 * params.dofs[labels]
        u = jax.random.gamma(scale_key, half_nu, dtype=dtype) / half_nu
        scaled = jnp.einsum("nde,ne->nd", jnp.linalg.cholesky(params.covariances)[labels], noise)
        return params.means[labels] + scaled / jnp.sqrt(u)[:, None], labels
