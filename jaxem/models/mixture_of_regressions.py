"""Mixture of linear regressions: closed-form weighted least squares M-step.

Component k says y = z^T beta_k + noise, noise ~ N(0, sigma_k^2), where z is the design
row (a leading 1 when fit_intercept). The M-step is weighted least squares per component.
As in GaussianMixture, the statistics are centred on the previous coefficients: with
residuals e_nk = y_n - z_n^T beta_old_k they are n_k = sum r, G_k = sum r z z^T,
c_k = sum r z e and q_k = sum r e^2, all additive. The M-step solves G_k delta = c_k,
beta_k = beta_old_k + delta, and sigma_k^2 = (q_k - 2 delta^T c_k + delta^T G_k delta) / n_k,
which near convergence subtracts a small correction instead of cancelling sum r y^2
against sum r (z^T beta)^2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import validation
from jaxem.models import checks
from jaxem.models.mixture import MixtureModel
from jaxem.pytrees import register_model


class MixtureOfRegressionsParams(NamedTuple):
    """weights: (K,); coefs: (K, P) regression coefficients, coefs[:, 0] the intercepts when
    fit_intercept (P = D, else P = D - 1); variances: (K,) noise variances sigma_k^2."""

    weights: jax.Array
    coefs: jax.Array
    variances: jax.Array


class MixtureOfRegressionsStats(NamedTuple):
    """Additive statistics centred on the previous coefficients beta_old.

    counts: (K,) sum r; gram: (K, P, P) sum r z z^T; cross: (K, P) sum r z e;
    residual_squares: (K,) sum r e^2, with e = y - z^T beta_old_k.
    """

    counts: jax.Array
    gram: jax.Array
    cross: jax.Array
    residual_squares: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class MixtureOfRegressions(MixtureModel):
    """K linear regressions of one target on the same covariates, with per-component noise.

    Data convention: X (n_samples, D) holds the covariates in its first D - 1 columns and
    the target y in its LAST column, so `jaxem.fit(model, np.column_stack([x, y]))` works
    like any other model. With fit_intercept each component gets its own intercept
    (coefs[:, 0]); X may then be the target alone (an intercept-only model, which is a
    one-dimensional Gaussian mixture).

    Args:
      n_components: number of mixture components K.
      fit_intercept: prepend a column of ones to the covariates.
      reg_variance: non-negative number (a pytree leaf) added to every noise variance, so a
        component that fits its points exactly keeps a finite likelihood.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    fit_intercept: bool = dataclasses.field(default=True, metadata=dict(static=True))
    reg_variance: Any = 1e-6

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        if not isinstance(self.fit_intercept, bool):
            raise ValueError(f"fit_intercept must be True or False, got {self.fit_intercept!r}.")
        checks.check_hyperparameter(self.reg_variance, "reg_variance")

    def check_data(self, X: jax.Array) -> None:
        super().check_data(X)
        if X.shape[1] < 2 and not self.fit_intercept:
            raise ValueError(
                "X must hold covariates and the target as its last column; with "
                f"fit_intercept=False it needs at least 2 columns, got shape {X.shape}."
            )

    def n_coefs(self, n_features: int) -> int:
        """P, the number of coefficients per component, for X with n_features columns."""
        return n_features - 1 + int(self.fit_intercept)

    def design_and_target(self, X: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Split X into the design Z: (n_samples, P) and the target y: (n_samples,)."""
        covariates, target = X[:, :-1], X[:, -1]
        if self.fit_intercept:
            covariates = jnp.concatenate([jnp.ones_like(target)[:, None], covariates], axis=1)
        return covariates, target

    # --- densities --------------------------------------------------------------------------
    def residuals(self, coefs: jax.Array, X: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Design Z: (n_samples, P) and residuals y - Z beta_k: (n_samples, K)."""
        design, target = self.design_and_target(X)
        return design, target[:, None] - design @ coefs.T

    def component_log_prob(self, params: MixtureOfRegressionsParams, X: jax.Array) -> jax.Array:
        """log N(y | z^T beta_k, sigma_k^2): (n_samples, n_components)."""
        _, residuals = self.residuals(params.coefs, X)
        var = params.variances[None, :]
        return -0.5 * (jnp.log(2 * math.pi * var) + residuals**2 / var)

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: MixtureOfRegressionsParams, X: jax.Array, resp: jax.Array
    ) -> MixtureOfRegressionsStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        design, residuals = self.residuals(params.coefs, X)
        weighted = resp * residuals
        return MixtureOfRegressionsStats(
            counts=jnp.sum(resp, axis=0),
            gram=jnp.einsum("nk,np,nq->kpq", resp, design, design),
            cross=weighted.T @ design,
            residual_squares=jnp.sum(weighted * residuals, axis=0),
        )

    def m_step(
        self, stats: MixtureOfRegressionsStats, params: MixtureOfRegressionsParams
    ) -> MixtureOfRegressionsParams:
        """Weighted least squares per component from statistics centred on params.coefs.

        Ten machine epsilons on the diagonal of G_k and on n_k keep a component with no
        points at its previous coefficients with a variance of about reg_variance.
        """
        dtype = stats.cross.dtype
        tiny = 10 * jnp.finfo(dtype).eps
        eye = jnp.eye(stats.cross.shape[1], dtype=dtype)
        step = jnp.linalg.solve(stats.gram + tiny * eye, stats.cross[..., None])[..., 0]
        explained = 2.0 * jnp.sum(step * stats.cross, axis=1)
        curvature = jnp.einsum("kp,kpq,kq->k", step, stats.gram, step)
        rss = jnp.maximum(stats.residual_squares - explained + curvature, 0.0)
        counts = stats.counts + tiny
        variances = rss / counts + jnp.asarray(self.reg_variance, dtype)
        return MixtureOfRegressionsParams(counts / jnp.sum(counts), params.coefs + step, variances)

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> MixtureOfRegressionsParams:
        """Weighted least squares from responsibilities (n_samples, K).

        Two M-steps: the first from zero coefficients, the second centred on its result,
        so the variances do not come from a cancelling sum r y^2 - sum r (z^T beta)^2.
        """
        zeros = jnp.zeros((self.n_components, self.n_coefs(X.shape[1])), X.dtype)
        params = MixtureOfRegressionsParams(None, zeros, None)
        for _ in range(2):
            params = self.m_step(self.statistics(params, X, resp), params)
        return params

    def params_from_dict(
        self, values: dict, n_features: int, dtype: Any
    ) -> MixtureOfRegressionsParams:
        """Validated params from a dict with keys weights (K,), coefs (K, P), variances (K,)."""
        k = self.n_components
        shapes = {"weights": (k,), "coefs": (k, self.n_coefs(n_features)), "variances": (k,)}
        arrays = checks.arrays_from_dict(values, shapes)
        checks.check_probabilities(arrays["weights"], "weights")
        if np.any(arrays["variances"] <= 0):
            raise ValueError("init variances must be positive.")
        return MixtureOfRegressionsParams(*(jnp.asarray(arrays[n], dtype) for n in shapes))

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> MixtureOfRegressionsParams:
        """Constraint names per params leaf (see jaxem.constraints)."""
        return MixtureOfRegressionsParams("simplex", "real", "positive")

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights, K * P coefficients and K variances."""
        k = self.n_components
        return k * self.n_coefs(n_features) + 2 * k - 1

    def sample(
        self,
        key: jax.Array,
        params: MixtureOfRegressionsParams,
        n_samples: int,
        design: Any = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Draw targets for given covariates; the model says nothing about the covariates.

        Args:
          design: (n_samples, D - 1) covariates (without the intercept column).
        Returns:
          (X (n_samples, D) = [design, y], labels (n_samples,)).
        """
        dtype = params.coefs.dtype
        n_covariates = params.coefs.shape[1] - int(self.fit_intercept)
        if design is None and n_covariates > 0:
            raise ValueError(
                "MixtureOfRegressions models y given the covariates: pass "
                f"design=(n_samples, {n_covariates}) to sample."
            )
        covariates = jnp.zeros((n_samples, 0), dtype) if design is None else jnp.asarray(design, dtype)
        if covariates.shape != (n_samples, n_covariates):
            raise ValueError(
                f"design must have shape ({n_samples}, {n_covariates}), got {covariates.shape}."
            )
        label_key, noise_key = jax.random.split(key)
        labels = self.sample_labels(label_key, params, n_samples)
        placeholder = jnp.zeros((n_samples, 1), dtype)
        design_rows, _ = self.design_and_target(jnp.concatenate([covariates, placeholder], axis=1))
        mean = jnp.sum(design_rows * params.coefs[labels], axis=1)
        noise = jax.random.normal(noise_key, (n_samples,), dtype) * jnp.sqrt(params.variances[labels])
        return jnp.concatenate([covariates, (mean + noise)[:, None]], axis=1), labels
