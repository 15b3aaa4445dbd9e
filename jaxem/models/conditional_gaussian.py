"""Gaussian components observed on a subset of coordinates: the E-step over missing entries.

For a component N(mu, Sigma) with precision P = Sigma^-1 and a row whose coordinates split
into observed o and missing m (Little & Rubin 2002, ch. 11; Ghahramani & Jordan 1994):

  x_m | x_o  ~  N(mu_m - P_mm^-1 (P y)_m,  P_mm^-1),   y = (x - mu) with y_m = 0,
  log p(x_o) = -(|o| log 2 pi + log|Sigma_oo| + y^T P y - (P y)_m^T P_mm^-1 (P y)_m) / 2,
  log|Sigma_oo| = log|Sigma| + log|P_mm|,

so only the |m| x |m| block P_mm is factorised per row, never the |o| x |o| block Sigma_oo.
The quadratic is the full quadratic minimised over the missing coordinates (its minimiser
is the conditional mean). Rows carry their missing columns as `width` indices padded with
invalid slots (`missing_index`, `missing_valid`); padded slots get an identity block, which
adds nothing to any result.

The statistics are the expected complete-data moments, per component and centred on its
mean: sum r (x_hat - mu), sum r [(x_hat - mu)(x_hat - mu)^T + C] with x_hat the conditional
mean (x on observed coordinates) and C the conditional covariance (zero outside the missing
block). Plugged into a model's closed-form M-step in place of the complete-data moments
they give the EM step with the missing entries as latent variables.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxem.models.cholesky import inverse_cholesky_transposed


class PartialRows(NamedTuple):
    """Rows with missing entries, all arrays with a leading row axis.

    values: (n, D) the data, missing entries replaced by their column's observed mean.
    observed: (n, D) 1.0 where observed, 0.0 where missing.
    missing_index: (n, W) int32 columns missing in each row, padded with 0.
    missing_valid: (n, W) bool, False on padding slots.
    """

    values: jax.Array
    observed: jax.Array
    missing_index: jax.Array
    missing_valid: jax.Array


def partial_rows(values: jax.Array, width: int) -> PartialRows:
    """PartialRows of rows values (n, D) with NaN where missing and at most `width` missing
    entries per row (unchecked; jaxem.missing.partial_rows validates user data)."""
    missing = jnp.isnan(values)
    observed = (~missing).astype(values.dtype)
    safe = jnp.where(missing, 0.0, values)
    column_means = jnp.sum(safe, axis=0) / jnp.maximum(jnp.sum(observed, axis=0), 1.0)
    # Missing columns first (stable), so the first `width` slots hold all of them.
    slots = jnp.argsort(~missing, axis=1, stable=True)[:, :width].astype(jnp.int32)
    valid = jnp.take_along_axis(missing, slots, axis=1)
    filled = jnp.where(missing, column_means, safe)
    return PartialRows(filled, observed, jnp.where(valid, slots, 0), valid)


class GaussianComponents(NamedTuple):
    """K Gaussians in the form the missing-value E-step uses, computed once per E-step.

    log_weights: (K,); means: (K, D); precisions: (K, D, D); log_dets: (K,) log|Sigma_k|.
    """

    log_weights: jax.Array
    means: jax.Array
    precisions: jax.Array
    log_dets: jax.Array


class ConditionalMoments(NamedTuple):
    """Per row and component: deviation (n, K, D) x_hat - mu_k; covariance (n, K, W, W) of
    the missing block given the observed entries (zero on padding slots)."""

    deviation: jax.Array
    covariance: jax.Array


def gaussian_components(log_weights: jax.Array, means: jax.Array, covariances: jax.Array) -> GaussianComponents:
    """Precisions and log-determinants of covariances (K, D, D)."""
    inverse_chol_t = inverse_cholesky_transposed(covariances)  # (L^-1)^T, Sigma = L L^T
    precisions = inverse_chol_t @ jnp.swapaxes(inverse_chol_t, -1, -2)
    log_dets = -2.0 * jnp.sum(jnp.log(jnp.diagonal(inverse_chol_t, axis1=-2, axis2=-1)), axis=-1)
    return GaussianComponents(log_weights, means, precisions, log_dets)


def scatter_matrix(rows: PartialRows) -> jax.Array:
    """(n, W, D) one-hot rows E with E[n, w, missing_index[n, w]] = 1 on valid slots, so
    that v @ E scatters a (W,) vector onto the missing columns."""
    n_features = rows.values.shape[1]
    one_hot = jax.nn.one_hot(rows.missing_index, n_features, dtype=rows.values.dtype)
    return one_hot * rows.missing_valid[..., None]


def observed_log_joint(components: GaussianComponents, rows: PartialRows) -> tuple[jax.Array, ConditionalMoments]:
    """log p(x_o, z=k): (n, K), and the conditional moments of the missing entries."""
    observed = rows.observed[:, None, :]
    centred = (rows.values[:, None, :] - components.means[None]) * observed  # y, zero on m
    gradient = jnp.einsum("kde,nke->nkd", components.precisions, centred)  # P y
    valid = rows.missing_valid
    gradient_m = jnp.take_along_axis(gradient, rows.missing_index[:, None, :], axis=2) * valid[:, None, :]
    index = rows.missing_index
    block = components.precisions[:, index[:, :, None], index[:, None, :]]  # (K, n, W, W)
    block = jnp.moveaxis(block, 0, 1)
    both_valid = (valid[:, :, None] & valid[:, None, :])[:, None]  # (n, 1, W, W)
    eye = jnp.eye(index.shape[1], dtype=block.dtype)
    block = jnp.where(both_valid, block, eye)
    inverse_chol_t = inverse_cholesky_transposed(block)  # P_mm^-1 = M M^T
    covariance = inverse_chol_t @ jnp.swapaxes(inverse_chol_t, -1, -2)
    solved = jnp.einsum("nkwv,nkv->nkw", covariance, gradient_m)  # P_mm^-1 (P y)_m
    maha = jnp.sum(centred * gradient, axis=-1) - jnp.sum(gradient_m * solved, axis=-1)
    log_det_mm = -2.0 * jnp.sum(jnp.log(jnp.diagonal(inverse_chol_t, axis1=-2, axis2=-1)), axis=-1)
    log_det_oo = components.log_dets[None, :] + log_det_mm
    n_observed = jnp.sum(rows.observed, axis=1)[:, None]
    log_joint = components.log_weights[None, :] - 0.5 * (n_observed * math.log(2 * math.pi) + log_det_oo + maha)
    deviation = centred - jnp.einsum("nkw,nwd->nkd", solved, scatter_matrix(rows))
    return log_joint, ConditionalMoments(deviation, jnp.where(both_valid, covariance, 0.0))


def expected_moments(
    moments: ConditionalMoments, rows: PartialRows, resp: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(counts (K,), centred_sums (K, D), centred_squares (K, D, D)) about each component's
    mean, from weighted responsibilities resp: (n, K)."""
    counts = jnp.sum(resp, axis=0)
    sums = jnp.einsum("nk,nkd->kd", resp, moments.deviation)
    squares = jnp.einsum("nkd,nke->kde", resp[..., None] * moments.deviation, moments.deviation)
    scatter = scatter_matrix(rows)
    weighted_cov = resp[..., None, None] * moments.covariance  # (n, K, W, W)
    squares = squares + jnp.einsum("nwd,nkwv,nve->kde", scatter, weighted_cov, scatter)
    return counts, sums, squares


def conditional_mean_and_covariance(
    components: GaussianComponents, rows: PartialRows, resp: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """E[x | x_o] (n, D) and Cov[x | x_o] (n, D, D) (zero rows and columns for observed
    coordinates) under the mixture, the component of each row having probabilities resp
    (n, K); None: the posterior p(z=k | x_o) of the mixture with components.log_weights."""
    log_joint, moments = observed_log_joint(components, rows)
    if resp is None:
        resp = jax.nn.softmax(log_joint, axis=1)
    filled = components.means[None] + moments.deviation  # (n, K, D)
    mean = jnp.einsum("nk,nkd->nd", resp, filled)
    scatter = scatter_matrix(rows)
    within = jnp.einsum("nwd,nkwv,nve->nkde", scatter, moments.covariance, scatter)
    spread = filled - mean[:, None, :]
    covariance = jnp.einsum("nk,nkde->nde", resp, within + spread[..., :, None] * spread[..., None, :])
    missing = 1.0 - rows.observed
    covariance = covariance * missing[:, :, None] * missing[:, None, :]
    return mean, covariance
