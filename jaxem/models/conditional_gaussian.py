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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import parallel, units
from jaxem.models.cholesky import inverse_cholesky_transposed
from jaxem.models.gaussian_mixture import _extended_triangle, _moments, _symmetric_index
from jaxem.models.mixture import weighted_posterior
from jaxem.sizes import MISSING_UNROLL_FEATURES


class PartialRows(NamedTuple):
    """Rows with missing entries, all arrays with a leading row axis.

    values: (n, D) the data, missing entries replaced by their column's observed mean.
    observed: (n, D) 1.0 where observed, 0.0 where missing.
    missing_index: (n, W) int32 columns missing in each row, padded with 0.
    missing_valid: (n, W) bool, False on padding slots.
    pattern: (n,) int32 the row's entry in a `MissingPatterns` table (0 when none is used).
    """

    values: jax.Array
    observed: jax.Array
    missing_index: jax.Array
    missing_valid: jax.Array
    pattern: jax.Array


class MissingPatterns(NamedTuple):
    """Distinct sets of missing columns, which the per-row factorisations depend on alone:
    slots (P, W) int32 the columns, padded with 0; valid (P, W) bool."""

    slots: Any
    valid: Any


class BlockInverses(NamedTuple):
    """Per pattern and component: covariance (P, K, W, W) = P_mm^-1, the covariance of the
    missing block given the observed entries (zero on padding slots); log_det (P, K) log|P_mm|."""

    covariance: jax.Array
    log_det: jax.Array


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
    return PartialRows(filled, observed, jnp.where(valid, slots, 0), valid, jnp.zeros(values.shape[0], jnp.int32))


class GaussianComponents(NamedTuple):
    """K Gaussians in the form the missing-value E-step uses, computed once per E-step.

    log_weights: (K,); means: (K, D); precisions: (K, D, D); log_dets: (K,) log|Sigma_k|.
    """

    log_weights: jax.Array
    means: jax.Array
    precisions: jax.Array
    log_dets: jax.Array


class ConditionalMoments(NamedTuple):
    """deviation (n, K, D): x_hat - mu_k per row and component; blocks: the BlockInverses
    of the patterns (of every row when each row is its own pattern)."""

    deviation: jax.Array
    blocks: BlockInverses


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


def own_patterns(rows: PartialRows) -> MissingPatterns:
    """Every row its own pattern (P = n), for rows whose patterns are not tabulated."""
    return MissingPatterns(rows.missing_index, rows.missing_valid)


def block_inverses(components: GaussianComponents, patterns: MissingPatterns) -> BlockInverses:
    """P_mm^-1 and log|P_mm| of every pattern and component, P = components.precisions."""
    index, valid = jnp.asarray(patterns.slots), jnp.asarray(patterns.valid)
    block = jnp.moveaxis(components.precisions[:, index[:, :, None], index[:, None, :]], 0, 1)  # (P, K, W, W)
    both_valid = (valid[:, :, None] & valid[:, None, :])[:, None]
    block = jnp.where(both_valid, block, jnp.eye(index.shape[1], dtype=block.dtype))
    inverse_chol_t = inverse_cholesky_transposed(block)  # P_mm^-1 = M M^T
    covariance = _slot_products(inverse_chol_t, jnp.swapaxes(inverse_chol_t, -1, -2))
    log_det = -2.0 * jnp.sum(jnp.log(jnp.diagonal(inverse_chol_t, axis1=-2, axis2=-1)), axis=-1)
    return BlockInverses(jnp.where(both_valid, covariance, 0.0), log_det)


def observed_log_joint(
    components: GaussianComponents, rows: PartialRows, patterns: MissingPatterns | None = None
) -> tuple[jax.Array, ConditionalMoments]:
    """log p(x_o, z=k): (n, K), and the conditional moments of the missing entries.

    patterns: the table rows.pattern indexes (the blocks are then factorised once per
    pattern, not per row), or None: every row its own pattern.
    """
    blocks = block_inverses(components, own_patterns(rows) if patterns is None else patterns)
    covariance, log_det_mm = blocks if patterns is None else (blocks.covariance[rows.pattern], blocks.log_det[rows.pattern])
    observed = rows.observed[:, None, :]
    centred = (rows.values[:, None, :] - components.means[None]) * observed  # y, zero on m
    gradient = _precision_products(components.precisions, centred)  # P y
    valid = rows.missing_valid
    gradient_m = jnp.take_along_axis(gradient, rows.missing_index[:, None, :], axis=2) * valid[:, None, :]
    solved = jnp.einsum("nkwv,nkv->nkw", covariance, gradient_m)  # P_mm^-1 (P y)_m
    maha = jnp.sum(centred * gradient, axis=-1) - jnp.sum(gradient_m * solved, axis=-1)
    log_det_oo = components.log_dets[None, :] + log_det_mm
    n_observed = jnp.sum(rows.observed, axis=1)[:, None]
    log_joint = components.log_weights[None, :] - 0.5 * (n_observed * math.log(2 * math.pi) + log_det_oo + maha)
    deviation = centred - _scatter_slots(solved, scatter_matrix(rows))
    return log_joint, ConditionalMoments(deviation, blocks)


def _precision_products(precisions: jax.Array, centred: jax.Array) -> jax.Array:
    """P_k y_nk: precisions (K, D, D), centred (n, K, D) -> (n, K, D)."""
    n_features = centred.shape[-1]
    if n_features > MISSING_UNROLL_FEATURES:
        return jnp.einsum("kde,nke->nkd", precisions, centred)
    return sum(precisions[None, :, :, e] * centred[:, :, None, e] for e in range(n_features))


def _scatter_slots(solved: jax.Array, scatter: jax.Array) -> jax.Array:
    """solved (n, K, W) placed on the missing columns by scatter (n, W, D): (n, K, D)."""
    width = solved.shape[-1]
    if scatter.shape[-1] > MISSING_UNROLL_FEATURES:
        return jnp.einsum("nkw,nwd->nkd", solved, scatter)
    return sum(solved[..., w, None] * scatter[:, None, w, :] for w in range(width))


def expected_moments(
    moments: ConditionalMoments, rows: PartialRows, resp: jax.Array, patterns: MissingPatterns | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(counts (K,), centred_sums (K, D), centred_squares (K, D, D)) about each component's
    mean, from weighted responsibilities resp: (n, K); patterns as in `observed_log_joint`.

    The conditional covariances depend on the pattern alone, so their weighted sum is
    taken per pattern: sum_p (sum_{n in p} r_nk) C_pk, scattered onto the missing columns.
    """
    counts = jnp.sum(resp, axis=0)
    sums = jnp.einsum("nk,nkd->kd", resp, moments.deviation)
    squares = jnp.einsum("nkd,nke->kde", resp[..., None] * moments.deviation, moments.deviation)
    if patterns is None:
        patterns, pattern_resp = own_patterns(rows), resp
    else:
        pattern_resp = jax.ops.segment_sum(resp, rows.pattern, num_segments=len(patterns.slots))
    return counts, sums, squares + embedded_within(moments.blocks.covariance, pattern_resp, patterns, squares.shape[-1])


def embedded_within(
    covariance: jax.Array, pattern_resp: jax.Array, patterns: MissingPatterns, n_features: int
) -> jax.Array:
    """sum_p r_pk C_pk scattered onto each pattern's missing block: (K, D, D), from the
    BlockInverses covariance C (P, K, W, W) (zero on padding slots) and pattern_resp (P, K)."""
    return embedded_blocks(pattern_resp[..., None, None] * covariance, patterns, n_features)


def embedded_blocks(blocks: jax.Array, patterns: MissingPatterns, n_features: int) -> jax.Array:
    """sum_p E_p^T B_pk E_p: (K, D, D), each pattern's (W, W) block B_pk (P, K, W, W) (zero
    on padding slots) scattered onto its missing columns."""
    n_components = blocks.shape[1]
    slots = jnp.asarray(patterns.slots)
    flat = (slots[:, :, None] * n_features + slots[:, None, :]).reshape(-1)  # (P W W,)
    weighted = jnp.moveaxis(blocks, 1, 0).reshape(n_components, -1)
    within = jnp.zeros((n_components, n_features * n_features), blocks.dtype).at[:, flat].add(weighted)
    return within.reshape(n_components, n_features, n_features)


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
    within = jnp.einsum("nwd,nkwv,nve->nkde", scatter, moments.blocks.covariance, scatter)
    spread = filled - mean[:, None, :]
    covariance = jnp.einsum("nk,nkde->nde", resp, within + spread[..., :, None] * spread[..., None, :])
    missing = 1.0 - rows.observed
    covariance = covariance * missing[:, :, None] * missing[:, None, :]
    return mean, covariance


# --- incomplete rows in blocks of one pattern: the E-step as GEMMs ---------------------------------
class PatternBlocks(NamedTuple):
    """Incomplete rows grouped into blocks of B rows that share one pattern.

    features: (n_blocks, n_phi, B) the upper triangle of e e^T, e = [y; 1], y = x - shift,
      in np.triu_indices order (missing entries at their column's mean: their coefficients
      are zero); shift: (D,); pattern: (n_blocks,) int32 index into the MissingPatterns.
    """

    features: jax.Array
    shift: jax.Array
    pattern: jax.Array


class PatternTerms(NamedTuple):
    """Per pattern p and component k (`pattern_terms`): coefficients (P, n_phi, K) of
    log p(x_o, z=k) in the features; gain (P, K, W, D) = C P_m. with C = P_mm^-1 (zero on
    padding slots) and P_m. the precision's rows on the missing columns, so that
    x_hat - mu_k = H (y - m_k) with H = (I - E^T gain) O, m_k = mu_k - shift, E the (W, D)
    one-hot slots and O the observed indicator; blocks: the BlockInverses (C, log|P_mm|)."""

    coefficients: jax.Array
    gain: jax.Array
    blocks: BlockInverses


def pattern_blocks(values: jax.Array, pattern: jax.Array, block_size: int) -> PatternBlocks:
    """PatternBlocks of rows values (n, D) (missing entries filled), n a multiple of
    block_size, consecutive blocks of one pattern each (pattern: (n,) per row)."""
    n_rows, n_features = values.shape
    shift = jnp.mean(values, axis=0)
    extended = jnp.concatenate([values - shift, jnp.ones_like(values[:, :1])], axis=1)
    extended = jnp.swapaxes(extended.reshape(n_rows // block_size, block_size, n_features + 1), 1, 2)
    rows, cols = _extended_triangle(n_features)
    return PatternBlocks(extended[:, rows, :] * extended[:, cols, :], shift, pattern[::block_size])


def pattern_terms(components: GaussianComponents, patterns: MissingPatterns, shift: jax.Array) -> PatternTerms:
    """Every pattern's log-density coefficients and conditional-mean gain (see PatternTerms),
    in low rank: Sigma_oo^-1 embedded in D x D is Q = O (P - P_m.^T C P_m.) O, so each
    pattern costs O(K D^2 W) (static gathers of the W missing rows of P), not O(K D^3)."""
    blocks = block_inverses(components, patterns)
    rows_m = jnp.moveaxis(components.precisions[:, np.asarray(patterns.slots), :], 0, 1)  # P_m.: (P, K, W, D)
    gain = _slot_products(blocks.covariance, rows_m)  # C P_m.
    observed = _observed_indicator(patterns, components.means.shape[1]).astype(gain.dtype)
    low_rank = _slot_products(jnp.swapaxes(rows_m, -1, -2), gain)  # P_m.^T C P_m.: (P, K, D, D)
    both = observed[:, None, :, None] * observed[:, None, None, :]
    quadratic = both * (components.precisions[None] - low_rank)  # Q: (P, K, D, D)
    centres = components.means - shift  # m: (K, D)
    linear = jnp.einsum("pkde,ke->pkd", quadratic, centres)
    log_det_oo = components.log_dets[None, :] + blocks.log_det
    n_observed = jnp.sum(observed, axis=1)[:, None]
    constant = components.log_weights[None, :] - 0.5 * (
        n_observed * math.log(2 * math.pi) + log_det_oo + jnp.sum(linear * centres[None], axis=-1)
    )
    coefficients = jnp.swapaxes(_triangle_coefficients(quadratic, linear, constant), 1, 2)
    return PatternTerms(coefficients, gain, blocks)


def _triangle_coefficients(quadratic: jax.Array, linear: jax.Array, constant: jax.Array) -> jax.Array:
    """(..., n_phi) coefficients of e^T A e, A = [[-Q/2, l/2], [l^T/2, c]], in the features'
    triangle order (`_extended_triangle`), from Q (..., D, D), l (..., D), c (...): each
    feature holds a product e_i e_j once, so off-diagonal coefficients count twice."""
    top = jnp.concatenate([-0.5 * quadratic, 0.5 * linear[..., None]], axis=-1)
    bottom = jnp.concatenate([0.5 * linear, constant[..., None]], axis=-1)[..., None, :]
    matrix = jnp.concatenate([top, bottom], axis=-2)  # (..., D + 1, D + 1)
    rows, cols = _extended_triangle(linear.shape[-1])
    return np.where(rows == cols, 1.0, 2.0).astype(matrix.dtype) * matrix[..., rows, cols]


def _observed_indicator(patterns: MissingPatterns, n_features: int) -> np.ndarray:
    """(P, D) bool: the columns each pattern observes."""
    return ~np.any(_one_hot_slots(patterns, n_features, bool), axis=1)


def _one_hot_slots(patterns: MissingPatterns, n_features: int, dtype: Any) -> np.ndarray:
    """(P, W, D) E with E[p, w, slots[p, w]] = 1 on valid slots: v @ E scatters a (W,)
    vector onto pattern p's missing columns."""
    one_hot = np.arange(n_features) == np.asarray(patterns.slots)[..., None]
    return (one_hot & np.asarray(patterns.valid)[..., None]).astype(dtype)


def _slot_products(left: jax.Array, right: jax.Array) -> jax.Array:
    """left (..., A, W) @ right (..., W, B) for a short W: sums of W broadcast products
    (XLA:CPU runs a batch of tiny matrix products as one call each)."""
    width = left.shape[-1]
    if width > MISSING_UNROLL_FEATURES:
        return left @ right
    return sum(left[..., :, w, None] * right[..., w, None, :] for w in range(width))


def blocked_e_step(
    components: GaussianComponents, blocks: PatternBlocks, weights: jax.Array, patterns: MissingPatterns
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """((counts (K,), centred_sums (K, D), centred_squares (K, D, D)) about the means, the
    weighted summed observed-data log-likelihood) of rows in PatternBlocks, weights
    (n_blocks, B): two batched GEMMs over blocks, then each pattern's raw moments of y
    mapped to the expected moments of x (`PatternTerms`, `_pattern_moments`)."""
    terms = pattern_terms(components, patterns, blocks.shift)
    # Both batched GEMMs contract a major axis of one operand with a minor axis of the other.
    # XLA:CPU ran the moments 7x slower contracting both operands' minor axes (the features'
    # row axis with resp's) and the log-density 1.5x slower contracting both major axes (240
    # blocks of 256 rows, D = 16, K = 8, float32: 37 and 7.0 ms against 5 and 4.6).
    coefficients = jnp.swapaxes(terms.coefficients, 1, 2)[blocks.pattern]  # (n_blocks, K, n_phi)
    log_joint_t = jnp.einsum("bkq,bqn->bkn", coefficients, blocks.features)
    resp_t, log_lik = weighted_posterior(log_joint_t, weights, axis=1)
    raw = jnp.einsum("bqn,bnk->bqk", blocks.features, jnp.swapaxes(resp_t, 1, 2))
    raw = jax.ops.segment_sum(raw, blocks.pattern, num_segments=len(patterns.slots))
    raw = jnp.swapaxes(raw, 1, 2)  # (P, K, n_phi)
    moments = raw[..., _symmetric_index(components.means.shape[1])]  # (P, K, D + 1, D + 1): sum r e e^T
    counts, first, second = moments[..., -1, -1], moments[..., :-1, -1], moments[..., :-1, :-1]
    centres = (components.means - blocks.shift)[None]
    about = first - counts[..., None] * centres  # sum r (y - m)
    cross = first[..., :, None] * centres[..., None, :]
    scatter = second - cross - jnp.swapaxes(cross, -1, -2) + counts[..., None, None] * centres[..., :, None] * centres[..., None, :]
    sums, squares = _pattern_moments(terms, patterns, counts, about, scatter)
    return (jnp.sum(counts, axis=0), sums, squares), log_lik


def _pattern_moments(
    terms: PatternTerms, patterns: MissingPatterns, counts: jax.Array, about: jax.Array, scatter: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(sum_p H a, sum_p H S H^T + counts C embedded): (K, D), (K, D, D), from each pattern's
    counts (P, K), about a = sum r (y - m) (P, K, D) and scatter S = sum r (y - m)(y - m)^T
    (P, K, D, D), H = (I - E^T G) O with G the gain.

    In low rank, with S' = O S O, V = G S' and Y = V G^T + counts C (W x W):
    H S H^T + counts E^T C E = S' - E^T V - V^T E + E^T Y E = S' - (M + M^T),
    M = E^T (V - Y E / 2); the sums over patterns of E^T (...) are one GEMM over (p, w).
    """
    n_features = about.shape[-1]
    one_hot = _one_hot_slots(patterns, n_features, about.dtype)  # E: (P, W, D)
    observed = _observed_indicator(patterns, n_features).astype(about.dtype)
    about = about * observed[:, None, :]
    scatter = scatter * observed[:, None, :, None] * observed[:, None, None, :]
    gain = terms.gain
    sums = jnp.sum(about, axis=0) - jnp.einsum("pwd,pkw->kd", one_hot, jnp.einsum("pkwd,pkd->pkw", gain, about))
    shaped = jnp.einsum("pkwd,pkde->pkwe", gain, scatter)  # V
    inner = _slot_products(shaped, jnp.swapaxes(gain, -1, -2)) + counts[..., None, None] * terms.blocks.covariance  # Y
    half = shaped - 0.5 * _slot_products(inner, one_hot[:, None])  # V - Y E / 2
    embedded = jnp.einsum("pwd,pkwe->kde", one_hot, half)  # M
    squares = jnp.sum(scatter, axis=0) - embedded - jnp.swapaxes(embedded, -1, -2)
    return sums, squares


# --- blocks of patterns with few rows: shared GEMMs and rank-W corrections per pattern ------------
# blocked_e_step works O(K D^2) per pattern (its coefficients and moment maps), which patterns
# of few rows do not amortise; this E-step works O(K W D) per pattern and O(K W D) more per
# row (jaxem.missing.choose_blocks picks between them).
class LowRankBlocks(NamedTuple):
    """Incomplete rows grouped into blocks of B rows that share one pattern, their missing
    entries filled (at their column's observed mean; the E-step corrects for the fill).

    features: (n_phi, n) feature-major, n = n_blocks B: the upper triangle of e e^T of
      each row, e = [y; 1], y = x - shift, in np.triu_indices order (as a complete-data
      GaussianMixture's); extended: (n_blocks, D + 1, B) e of each block's rows;
      shift: (D,); pattern: (n_blocks,) int32 index into the MissingPatterns.
    """

    features: jax.Array
    extended: jax.Array
    shift: jax.Array
    pattern: jax.Array


def low_rank_blocks(values: jax.Array, pattern: jax.Array, block_size: int) -> LowRankBlocks:
    """LowRankBlocks of rows values (n, D) (missing entries filled), n a multiple of
    block_size, consecutive blocks of one pattern each (pattern: (n,) per row)."""
    n_rows, n_features = values.shape
    shift = jnp.mean(values, axis=0)
    extended = jnp.concatenate([values - shift, jnp.ones_like(values[:, :1])], axis=1)  # (n, D + 1)
    rows, cols = _extended_triangle(n_features)
    features = (extended[:, rows] * extended[:, cols]).T
    blocked = jnp.swapaxes(extended.reshape(n_rows // block_size, block_size, n_features + 1), 1, 2)
    return LowRankBlocks(features, blocked, shift, pattern[::block_size])


def full_coefficients(components: GaussianComponents, centres: jax.Array, linear: jax.Array) -> jax.Array:
    """(K, n_phi) coefficients of log N(x; mu_k, Sigma_k) + log w_k in the features of
    `LowRankBlocks` (centred on shift): e^T A e with A = [[-P/2, P m/2], [m^T P/2, c]],
    given centres m = mu - shift (K, D) and linear = P m (K, D) (`_triangle_coefficients`)."""
    n_features = centres.shape[1]
    constant = components.log_weights - 0.5 * (
        n_features * math.log(2 * math.pi) + components.log_dets + jnp.sum(linear * centres, axis=-1)
    )
    return _triangle_coefficients(components.precisions, linear, constant)


def _missing_gradients(components: GaussianComponents, patterns: MissingPatterns, linear: jax.Array) -> jax.Array:
    """(P, K W, D + 1): per pattern and component the rows of [P, -P m] on the missing
    columns, given linear = P m (K, D), so that with e = [y; 1] the product is
    g = (P (y - m))_m, m = mu - shift. (Padding slots repeat column 0: their g is
    multiplied only by C's zero rows and columns there.)"""
    slots = np.asarray(patterns.slots)
    rows = jnp.concatenate([components.precisions[:, slots, :], -linear[:, slots][..., None]], axis=-1)  # (K, P, W, D + 1)
    return jnp.moveaxis(rows, 0, 1).reshape(len(slots), -1, rows.shape[-1])


def low_rank_e_step(
    components: GaussianComponents, blocks: LowRankBlocks, weights: jax.Array, patterns: MissingPatterns
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """((counts (K,), centred_sums (K, D), centred_squares (K, D, D)) about the means, the
    weighted summed observed-data log-likelihood) of rows in LowRankBlocks, weights
    (n_blocks, B): `blocked_e_step` for patterns of few rows.

    With the missing entries filled (x_f), as in `width_e_step`:
      log p(x_o, z=k) = log N(x_f; mu_k, Sigma_k) + (W log 2 pi - log|P_mm| + g^T s) / 2,
      x_hat - mu = y - m - E^T s,  g = (P (y - m))_m,  s = C g,  C = P_mm^-1,
    with y = x_f - shift, m = mu - shift and E the (W, D) one-hot missing columns. The first
    term and the raw moments of y are the complete-data E-step's two GEMMs against the
    features, shared by every pattern; what depends on the pattern has rank W: g (a small
    GEMM per block against the W rows of [P, -P m]) and the moments' corrections,
      sum r (x_hat - mu)(x_hat - mu)^T = sum r (y - m)(y - m)^T - (M + M^T)
                                         + E^T (sum r s s^T + (sum r) C) E,
      M = sum r (y - m) s^T E,
    whose sum r y s^T per block is one more small GEMM, summed per pattern. So a pattern
    costs O(K W D) per iteration, a row O(K (n_phi + W D)).
    """
    n_blocks, n_extended, block_size = blocks.extended.shape
    n_features = n_extended - 1
    slots = np.asarray(patterns.slots)
    n_patterns, width = slots.shape
    n_components = components.means.shape[0]
    inverses = block_inverses(components, patterns)
    centres = components.means - blocks.shift  # m: (K, D)
    linear = jnp.einsum("kde,ke->kd", components.precisions, centres)  # P m

    log_full = full_coefficients(components, centres, linear) @ blocks.features  # (K, n)
    log_full = jnp.swapaxes(log_full.reshape(n_components, n_blocks, block_size), 0, 1)
    gradient_rows = _missing_gradients(components, patterns, linear)[blocks.pattern]  # (n_blocks, K W, D + 1)
    gradient = jnp.einsum("bje,ben->bjn", gradient_rows, blocks.extended).reshape(n_blocks, n_components, width, block_size)
    solved = _slot_products(inverses.covariance[blocks.pattern], gradient)  # s: (n_blocks, K, W, B)
    n_missing = np.sum(np.asarray(patterns.valid), axis=1)[:, None].astype(centres.dtype)  # (P, 1), not float64
    correction = 0.5 * (n_missing * math.log(2 * math.pi) - inverses.log_det)  # (P, K)
    log_joint = log_full + correction[blocks.pattern][..., None] + 0.5 * sum(gradient[:, :, w] * solved[:, :, w] for w in range(width))
    resp, log_lik = weighted_posterior(log_joint, weights, axis=1)  # (n_blocks, K, B)

    raw = _moments(jnp.swapaxes(resp, 0, 1).reshape(n_components, -1), blocks.features)  # (K, n_phi)
    moments = raw[:, _symmetric_index(n_features)]  # sum r e e^T: (K, D + 1, D + 1)
    counts, first, second = moments[:, -1, -1], moments[:, :-1, -1], moments[:, :-1, :-1]
    about = first - counts[:, None] * centres  # sum r (y - m)
    cross = about[:, :, None] * centres[:, None, :]
    scatter = second - cross - jnp.swapaxes(cross, -1, -2) - counts[:, None, None] * centres[:, :, None] * centres[:, None, :]

    weighted = resp[:, :, None, :] * solved  # r s: (n_blocks, K, W, B)
    # sum r e s^T per block, contracting B (minor in extended, major in the transposed r s).
    outer = jnp.einsum("ben,bnj->bej", blocks.extended, jnp.swapaxes(weighted.reshape(n_blocks, -1, block_size), 1, 2))
    outer = jax.ops.segment_sum(outer, blocks.pattern, num_segments=n_patterns).reshape(n_patterns, n_extended, n_components, width)
    one_hot = _one_hot_slots(patterns, n_features, centres.dtype)  # E: (P, W, D)
    shifts = jnp.einsum("pkw,pwd->kd", outer[:, -1], one_hot)  # sum r E^T s
    mixed = jnp.einsum("pekw,pwd->ked", outer[:, :-1], one_hot) - centres[:, :, None] * shifts[:, None, :]  # M
    spread = jnp.einsum("bkwn,bkvn->bkwv", weighted, solved)  # sum r s s^T per block
    pattern_resp = jax.ops.segment_sum(jnp.sum(resp, axis=-1), blocks.pattern, num_segments=n_patterns)  # (P, K)
    within = jax.ops.segment_sum(spread, blocks.pattern, num_segments=n_patterns) + pattern_resp[..., None, None] * inverses.covariance
    squares = scatter - mixed - jnp.swapaxes(mixed, -1, -2) + embedded_blocks(within, patterns, n_features)
    return (counts, about - shifts, squares), log_lik


# --- incomplete rows of one width: per row, one GEMM and W x W work -------------------------------
def width_e_step(
    components: GaussianComponents, rows: PartialRows, weights: jax.Array, patterns: MissingPatterns,
    chunk_rows: int | None = None,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """((counts (K,), centred_sums (K, D), centred_squares (K, D, D)) about the means, the
    weighted summed observed-data log-likelihood) of rows that each miss exactly W entries:
    rows.pattern indexes patterns (P, W), no padding slots; weights (n,).

    With the missing entries filled (x_f, rows.values), the full quadratic q = y^T P y,
    y = x_f - mu, minimised over the missing coordinates is the observed one, so
    log p(x_o, z=k) = log N(x_f; mu_k, Sigma_k) + (W log 2 pi - log|P_mm| + g^T C g) / 2
    with g = (P y)_m and C = P_mm^-1, and x_hat - mu = y - E^T C g. Per row that is one
    GEMM (P y for every component) and O(K (D + W^2)) more; only the W x W blocks are
    factorised, once per pattern. Component-major layout: the moments are batched GEMMs.

    chunk_rows: when n is larger, the rows run in consecutive chunks of at most this many,
    one at a time (a loop; each holds a few (K, chunk, D) arrays), the table factorised once.
    """
    shift = jnp.mean(components.means, axis=0)  # against cancellation when data sit far from 0
    blocks = block_inverses(components, patterns)

    def chunk_moments(rows, weights):
        return _width_row_moments(components, blocks, shift, rows, weights)

    n_rows = rows.values.shape[0]
    if chunk_rows is None or n_rows <= chunk_rows:
        gram, pattern_resp, log_lik = chunk_moments(rows, weights)
    else:
        chunk = -(-n_rows // -(-n_rows // chunk_rows))  # as even as the count allows
        split = (units.split_chunks(rows, chunk, "edge"), units.split_chunks(weights, chunk, "zero"))
        gram, pattern_resp, log_lik = parallel.sum_over_chunks(chunk_moments, split, unroll=1)
    within = embedded_within(blocks.covariance, pattern_resp, patterns, rows.values.shape[1])
    return (gram[:, -1, -1], gram[:, -1, :-1], gram[:, :-1, :-1] + within), log_lik


def _width_row_moments(
    components: GaussianComponents, blocks: BlockInverses, shift: jax.Array, rows: PartialRows, weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`width_e_step`'s sums over rows: (sum_n r [x_hat - mu, 1] [x_hat - mu, 1]^T (K, D + 1,
    D + 1), the responsibilities summed per pattern (P, K), the weighted log-likelihood)."""
    y = rows.values - shift
    centres = components.means - shift  # (K, D)
    covariance = jnp.swapaxes(blocks.covariance, 0, 1)[:, rows.pattern]  # C: (K, n, W, W)
    log_det_mm = blocks.log_det.T[:, rows.pattern]  # (K, n)
    linear = jnp.einsum("kde,ke->kd", components.precisions, centres)
    centred = y[None] - centres[:, None]  # (K, n, D)
    gradient = jnp.einsum("ne,kde->knd", y, components.precisions) - linear[:, None]  # P y
    gradient_m = jnp.take_along_axis(gradient, rows.missing_index[None], axis=2)  # g: (K, n, W)
    solved = sum(covariance[..., w] * gradient_m[..., w, None] for w in range(gradient_m.shape[-1]))  # C g
    n_features, width = y.shape[1], gradient_m.shape[-1]
    log_joint_t = components.log_weights[:, None] - 0.5 * (
        (n_features - width) * math.log(2 * math.pi) + components.log_dets[:, None] + log_det_mm
        + _inner(centred, gradient) - _inner(gradient_m, solved)
    )
    resp_t, log_lik = weighted_posterior(log_joint_t, weights, axis=0)
    one_hot = scatter_matrix(rows)  # (n, W, D)
    deviation = centred - sum(solved[..., w, None] * one_hot[None, :, w] for w in range(width))  # x_hat - mu
    # One batched GEMM, sum_n r [x_hat - mu, 1] [x_hat - mu, 1]^T per component, holds the
    # squares, the sums and the counts.
    extended = jnp.concatenate([deviation, jnp.ones_like(deviation[..., :1])], axis=-1)
    gram = jnp.einsum("knd,kne->kde", resp_t[..., None] * extended, extended)  # (K, D + 1, D + 1)
    pattern_resp = jax.ops.segment_sum(resp_t.T, rows.pattern, num_segments=blocks.log_det.shape[0])
    return gram, pattern_resp, log_lik


def _inner(left: jax.Array, right: jax.Array) -> jax.Array:
    """sum(left * right, axis=-1), in float32 as a sum of slices for a short last axis:
    XLA:CPU (jaxlib 0.10) turns a float32 multiply-reduce over a short minor axis into a
    YNNPACK fusion that ran 7x slower with a leading restart axis (vmap) than without. In
    float64 (no such fusion) the slices were slower than the reduction (D = 16 fit, 72 ->
    103 ms per iteration)."""
    if left.shape[-1] > MISSING_UNROLL_FEATURES or left.dtype != jnp.float32:
        return jnp.sum(left * right, axis=-1)
    return sum(left[..., i] * right[..., i] for i in range(left.shape[-1]))


# --- components with diagonal covariances: no patterns needed --------------------------------------
class ObservedFeatures(NamedTuple):
    """Incomplete rows for diagonal components: features (3 D, n) feature-major
    [o y^2; o y; o] with y = x - shift and o the observed indicator; shift (D,)."""

    features: jax.Array
    shift: jax.Array


def observed_features(rows: PartialRows) -> ObservedFeatures:
    shift = jnp.mean(rows.values, axis=0)
    observed = rows.observed
    centred = (rows.values - shift) * observed
    return ObservedFeatures(jnp.concatenate([(centred * centred).T, centred.T, observed.T]), shift)


def diagonal_e_step(
    log_weights: jax.Array, means: jax.Array, variances: jax.Array, data: ObservedFeatures, weights: jax.Array
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], jax.Array]:
    """As `blocked_e_step` for components with diagonal covariances, variances (K, D): the
    missing coordinates are independent of the observed ones given the component (x_hat_m =
    mu_m, C = diag(variances_m)), so log p(x_o, z=k) and every expected moment are linear
    in the features: one GEMM each way, as for complete rows. centred_squares comes back
    diagonal (K, D, D), all a diagonal model's M-step reads."""
    centres = means - data.shift
    inverse = 1.0 / variances
    constant = -0.5 * (jnp.log(2 * math.pi * variances) + centres * centres * inverse)
    coefficients = jnp.concatenate([-0.5 * inverse, centres * inverse, constant], axis=1)  # (K, 3 D)
    log_joint_t = coefficients @ data.features + log_weights[:, None]
    resp_t, log_lik = weighted_posterior(log_joint_t, weights, axis=0)
    squares_o, sums_o, counts_o = jnp.split(resp_t @ data.features.T, 3, axis=1)  # (K, D) each
    counts = jnp.sum(resp_t, axis=1)
    sums = sums_o - centres * counts_o
    squares = squares_o - 2.0 * centres * sums_o + centres * centres * counts_o + variances * (counts[:, None] - counts_o)
    return (counts, sums, squares[..., None] * jnp.eye(means.shape[1], dtype=squares.dtype)), log_lik
