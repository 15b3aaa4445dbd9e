"""Gaussian mixture: params, E-step statistics, closed-form M-step, sampling.

Numerics, matching scikit-learn's GaussianMixture update for update:
  * log densities for prediction use the precision Cholesky factor U (precision P = U U^T),
    so that (x - mu)^T P (x - mu) = ||(x - mu) U||^2;
  * the E-step of a fit runs as two GEMMs against fixed features of the data (`precompute`):
    with y = x - shift (the shift being the data mean) and e = [y, 1], the features phi(x)
    are the upper triangle of e e^T for full and tied covariances, [y^2, y, 1] for diag and
    spherical. The expanded quadratic form y^T P y - 2 m^T P y + m^T P m (m = mu - shift)
    makes log p(x, z=k) = phi(x) . w_k, so log_joint = phi @ W with W: (n_phi, K), and the
    raw moments of y weighted by the responsibilities are resp^T @ phi. Restarts vmapped
    over params batch into the same GEMMs. Centring the features on the data mean keeps the
    expansion's cancellation at the scale of the data's spread, not its distance from the
    origin (float32). The features are stored feature-major, (n_phi, n_samples), and the
    E-step keeps samples on the minor axis throughout (log_joint^T = W^T phi, softmax over
    components, moments = resp^T phi^T): with restarts batched in, the softmax vectorises
    over samples and no (n, R K) intermediate is transposed (faster on CPU than the
    sample-major layout; README "Performance"). A chunked
    fit keeps only the rows (`ChunkedRows`) and each chunk's E-step centres and expands its
    own features, which costs less than reading them back from a stored array and holds no
    data-sized array besides the rows;
  * second moments are centred on the previous means c_k: the statistics are
    n_k = sum r, s_k = sum r (x - c_k), S_k = sum r (x - c_k)(x - c_k)^T, which stay additive
    over data points, and the M-step forms Sigma_k = S_k / n_k - d d^T with d = s_k / n_k,
    a small correction near convergence. There is no E[x^2] - mu^2 cancellation, so data
    far from the origin in float32 keeps positive, accurate variances;
  * n_k gets 10 * eps added as in scikit-learn, and reg_covar is added to the diagonal of
    every estimated covariance. A component that loses all its points therefore keeps its
    previous mean, a covariance of about reg_covar * I and a weight near zero: it stays
    finite (never NaN) and is visible as a near-zero weight.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import parallel, units, validation
from jaxem.models import checks
from jaxem.models.cholesky import inverse_cholesky_transposed
from jaxem.models.mixture import MixtureModel, weighted_posterior
from jaxem.pytrees import register_model
from jaxem.sizes import PAIRWISE_MAX_FEATURES, UNROLL_COMPONENTS

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class GaussianMixtureParams(NamedTuple):
    """Gaussian mixture parameters, in scikit-learn's shapes.

    weights: (K,); means: (K, D); covariances: full (K, D, D), tied (D, D), diag (K, D),
    spherical (K,).
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array


class GaussianFeatures(NamedTuple):
    """Fixed per-fit features of the data, which the E-step multiplies (see module docstring).

    features: (n_phi, n_samples), feature-major: with y = x - shift and e = [y, 1], the
      upper triangle of e e^T in np.triu_indices order for full and tied covariances
      (n_phi = (D + 1) (D + 2) / 2), rows [y^2, y, 1] otherwise (n_phi = 2 D + 1).
    shift: (D,) the data mean the features are centred on.
    """

    features: jax.Array
    shift: jax.Array


class ChunkedRows(NamedTuple):
    """A chunked fit's data as given, with the shift every chunk's E-step centres it on when
    it expands the chunk's features (`GaussianMixture.precompute_chunks`).

    rows: (n_samples, D) ((n_chunks, chunk_size, D) for all chunks); shift: (D,)
      ((n_chunks, D) for all chunks, equal rows).
    """

    rows: jax.Array
    shift: jax.Array


class GaussianMixtureStats(NamedTuple):
    """Additive statistics, centred on the means of the params they were computed at.

    counts: (K,) sum of r; centred_sums: (K, D) sum of r (x - c_k); centred_squares:
    full (K, D, D), tied (D, D) summed over k, diag (K, D), spherical (K,) summed over D.
    """

    counts: jax.Array
    centred_sums: jax.Array
    centred_squares: jax.Array


class GaussianFactors(NamedTuple):
    """Params with their precision Cholesky factors, computed once per E-step (`e_step_params`)."""

    params: GaussianMixtureParams
    precisions_cholesky: jax.Array


def _symmetric_index(n_features: int) -> np.ndarray:
    """(D + 1, D + 1) positions in the `_extended_triangle` order of each entry of the
    symmetric matrix, so that triangle[..., index] rebuilds the full matrix."""
    rows, cols = _extended_triangle(n_features)
    index = np.zeros((n_features + 1, n_features + 1), np.int32)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows))
    return index


def _moments(resp_t: jax.Array, features: jax.Array) -> jax.Array:
    """resp_t @ features.T, (K, n) x (n_phi, n) -> (K, n_phi).

    Up to UNROLL_COMPONENTS components as one matrix-vector product per component: XLA:CPU
    runs a small GEMM contracting both operands' minor axes slowly (jaxem.sizes). Vmapped
    restarts sharing the features turn each product back into a GEMM.
    """
    if resp_t.shape[0] > UNROLL_COMPONENTS:
        return resp_t @ features.T
    return jnp.stack([features @ row for row in resp_t])


def _extend(X: jax.Array, shift: jax.Array) -> jax.Array:
    """Rows X: (..., n, D) centred on shift (D,), feature-major with a row of ones appended:
    [y; 1], (..., D + 1, n)."""
    centred = jnp.swapaxes(X - shift, -1, -2)
    return jnp.concatenate([centred, jnp.ones_like(centred[..., :1, :])], axis=-2)


def _extended_triangle(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle of the (D + 1, D + 1) matrix
    [y, 1] [y, 1]^T, in np.triu_indices (row-major) order: the full-covariance features."""
    return np.triu_indices(n_features + 1)


@register_model
@dataclasses.dataclass(frozen=True)
class GaussianMixture(MixtureModel):
    """Gaussian mixture model with full, tied, diagonal or spherical covariances.

    Args:
      n_components: number of mixture components K.
      covariance_type: "full", "tied", "diag" or "spherical".
      reg_covar: non-negative number added to the diagonal of every covariance; it is a
        pytree leaf, so gradients with respect to it can be taken.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    covariance_type: str = dataclasses.field(default="full", metadata=dict(static=True))
    reg_covar: Any = 1e-6

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        validation.check_choice(self.covariance_type, "covariance_type", COVARIANCE_TYPES)
        if isinstance(self.reg_covar, (int, float)):
            validation.check_non_negative(self.reg_covar, "reg_covar")

    # --- densities --------------------------------------------------------------------------
    def precisions_cholesky(self, params: GaussianMixtureParams) -> jax.Array:
        """Precision Cholesky factors, scikit-learn's `precisions_cholesky_` and shapes."""
        cov = params.covariances
        if self.covariance_type in ("full", "tied"):
            return inverse_cholesky_transposed(cov)
        return jax.lax.rsqrt(cov)

    def component_log_prob(self, params: GaussianMixtureParams, X: jax.Array) -> jax.Array:
        """log N(x | mu_k, Sigma_k): (n_samples, n_components), from differences (exact)."""
        n_features = X.shape[1]
        prec_chol = self.precisions_cholesky(params)
        diff = X[:, None, :] - params.means[None, :, :]
        if self.covariance_type == "full":
            y = jnp.einsum("nkd,kde->nke", diff, prec_chol)
            maha = jnp.sum(y * y, axis=-1)
            log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
        elif self.covariance_type == "tied":
            y = diff @ prec_chol
            maha = jnp.sum(y * y, axis=-1)
            log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol)))
        elif self.covariance_type == "diag":
            maha = jnp.sum((diff * prec_chol[None]) ** 2, axis=-1)
            log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
        else:
            maha = jnp.sum(diff * diff, axis=-1) * (prec_chol**2)[None]
            log_det = n_features * jnp.log(prec_chol)
        return -0.5 * (n_features * math.log(2 * math.pi) + maha) + log_det

    # --- the E-step as GEMMs against fixed features ------------------------------------------
    def precompute(self, X: jax.Array) -> GaussianFeatures:
        """Features phi(x) of X: (n_samples, D), centred on the mean of X (module docstring)."""
        shift = jnp.mean(X, axis=0)
        return GaussianFeatures(self._features(X, shift), shift)

    def precompute_chunks(self, chunks: jax.Array) -> ChunkedRows:
        """The rows of every chunk, chunks: (n_chunks, chunk_size, D), with one shift (the
        mean of all rows; padding rows included, which only moves the centre): rows as
        given, shift (n_chunks, D) with equal rows.

        Each chunk's E-step centres and expands its rows into features (`_as_features`)
        rather than reading them from a stored (n_chunks, n_phi, chunk_size) array: a scan's
        slice of a stored chunk is a copy that costs more than the products that make it.
        Nor are centred rows stored: a data-sized array besides the data itself (and, kept
        by the EM loop and the final objective both, two of them) for a transpose that costs
        ~1/K of the E-step's products.
        """
        shift = jnp.mean(chunks, axis=(0, 1))
        return ChunkedRows(chunks, jnp.broadcast_to(shift, (chunks.shape[0], shift.shape[0])))

    def _features(self, X: jax.Array, shift: jax.Array) -> jax.Array:
        """Feature-major phi of rows X: (..., n, D) centred on shift (D,): (..., n_phi, n)."""
        return self._expand(_extend(X, shift))

    def _expand(self, extended: jax.Array) -> jax.Array:
        """Features (..., n_phi, n) from extended rows [y; 1]: (..., D + 1, n)."""
        n_features = extended.shape[-2] - 1
        if self.covariance_type in ("diag", "spherical"):
            centred = extended[..., :-1, :]
            return jnp.concatenate([centred * centred, centred, extended[..., -1:, :]], axis=-2)
        # The upper triangle of [y, 1] [y, 1]^T, one product of two rows of [y, 1] per feature.
        if n_features > PAIRWISE_MAX_FEATURES:
            # Many features: both factors gathered by constant row indices, which XLA:CPU
            # fuses with the product into one pass writing each feature once.
            first, second = _extended_triangle(n_features)
            return extended[..., first, :] * extended[..., second, :]
        # Few features: one product per pair of rows. A row broadcast against a block
        # transposes to a short-axis reduction in the data's gradient, which XLA:CPU runs
        # slowly (see jaxem.sizes); pairs transpose to adds.
        rows = [extended[..., i : i + 1, :] for i in range(n_features + 1)]
        return jnp.concatenate([rows[i] * rows[j] for i in range(len(rows)) for j in range(i, len(rows))], axis=-2)

    def _as_features(self, X: jax.Array | GaussianFeatures | ChunkedRows) -> GaussianFeatures:
        if isinstance(X, ChunkedRows):
            return GaussianFeatures(self._features(X.rows, X.shift), X.shift)
        return X if isinstance(X, GaussianFeatures) else self.precompute(X)

    def e_step_params(self, params: GaussianMixtureParams | GaussianFactors) -> GaussianFactors:
        """Params with their precision Cholesky factors (the E-step's only factorisations)."""
        if isinstance(params, GaussianFactors):
            return params
        return GaussianFactors(params, self.precisions_cholesky(params))

    def e_step(
        self,
        params: GaussianMixtureParams | GaussianFactors,
        X: jax.Array | GaussianFeatures,
        sample_weight: jax.Array,
    ) -> tuple[GaussianMixtureStats, jax.Array]:
        """Additive statistics and the weighted summed log-likelihood, as MixtureModel.e_step,
        by two GEMMs against `precompute(X)` features (X may already be features, params may
        come from `e_step_params`)."""
        features = self._as_features(X)
        factors = self.e_step_params(params)
        params = factors.params
        coefficients = self._log_joint_coefficients(params, features.shift, factors.precisions_cholesky)
        log_joint_t = coefficients.T @ features.features
        resp_t, log_lik = weighted_posterior(log_joint_t, sample_weight, axis=0)
        return self._statistics_from_resp_t(params, features, resp_t), log_lik

    def log_joint(
        self, params: GaussianMixtureParams, X: jax.Array | GaussianFeatures | ChunkedRows
    ) -> jax.Array:
        """log p(x, z=k): (n_samples, K); one GEMM when X is `precompute` features (or
        `ChunkedRows` of one chunk)."""
        if isinstance(X, (GaussianFeatures, ChunkedRows)):
            features = self._as_features(X)
            return (self._log_joint_coefficients(params, features.shift).T @ features.features).T
        return super().log_joint(params, X)

    def _log_joint_coefficients(
        self, params: GaussianMixtureParams, shift: jax.Array, prec_chol: jax.Array | None = None
    ) -> jax.Array:
        """W: (n_phi, K) with phi(x) @ W = log p(x, z=k), in the frame centred on shift;
        prec_chol: `precisions_cholesky(params)` when already known."""
        means = params.means - shift
        n_components, n_features = means.shape
        if prec_chol is None:
            prec_chol = self.precisions_cholesky(params)
        if self.covariance_type in ("full", "tied"):
            prec_chol = jnp.broadcast_to(prec_chol, (n_components, n_features, n_features))
            whitened_means = jnp.einsum("kd,kde->ke", means, prec_chol)
            precisions = prec_chol @ jnp.swapaxes(prec_chol, -1, -2)
            linear = jnp.einsum("kde,ke->kd", prec_chol, whitened_means)
            log_det = jnp.sum(jnp.log(jnp.diagonal(prec_chol, axis1=-2, axis2=-1)), axis=-1)
            constant = self._log_joint_constant(params, log_det, whitened_means)
            # log p(x, z=k) = e^T A_k e with e = [y, 1] and the symmetric
            # A_k = [[-P/2, l/2], [l^T/2, constant]]; features hold each product e_i e_j once,
            # so off-diagonal coefficients count twice.
            coefficients = jnp.concatenate(
                [
                    jnp.concatenate([-0.5 * precisions, 0.5 * linear[:, :, None]], axis=2),
                    jnp.concatenate([0.5 * linear, constant[:, None]], axis=1)[:, None, :],
                ],
                axis=1,
            )
            rows, cols = _extended_triangle(n_features)
            twice_off_diagonal = np.where(rows == cols, 1.0, 2.0).astype(means.dtype)
            return (twice_off_diagonal * coefficients[:, rows, cols]).T
        else:
            if self.covariance_type == "spherical":
                prec_chol = prec_chol[:, None]
            prec_chol = jnp.broadcast_to(prec_chol, (n_components, n_features))
            whitened_means = means * prec_chol
            quadratic = -0.5 * prec_chol**2
            linear = prec_chol * whitened_means
            log_det = jnp.sum(jnp.log(prec_chol), axis=-1)
        constant = self._log_joint_constant(params, log_det, whitened_means)
        return jnp.concatenate([quadratic, linear, constant[:, None]], axis=1).T

    def _log_joint_constant(self, params: GaussianMixtureParams, log_det: jax.Array, whitened_means: jax.Array) -> jax.Array:
        """log w_k + log|U_k| - (D log 2 pi + |m_k U_k|^2) / 2: (K,)."""
        n_features = whitened_means.shape[1]
        return (
            self.log_weights(params)
            + log_det
            - 0.5 * (n_features * math.log(2 * math.pi) + jnp.sum(whitened_means**2, axis=-1))
        )

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: GaussianMixtureParams, X: jax.Array | GaussianFeatures, resp: jax.Array
    ) -> GaussianMixtureStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K).

        One GEMM resp^T @ phi gives the moments of y = x - shift; they are re-centred on
        params.means exactly (a linear map, so the statistics stay additive).
        """
        return self._statistics_from_resp_t(params, self._as_features(X), resp.T)

    def _statistics_from_resp_t(
        self, params: GaussianMixtureParams, features: GaussianFeatures, resp_t: jax.Array
    ) -> GaussianMixtureStats:
        """Statistics from transposed responsibilities resp_t: (K, n_samples), one GEMM, or
        for few components one matrix-vector product per component."""
        moments = _moments(resp_t, features.features)
        return self._centre_moments(moments, params.means - features.shift)

    def _centre_moments(self, moments: jax.Array, centres: jax.Array) -> GaussianMixtureStats:
        """Statistics about centres c: (K, D) from moments (K, n_phi) of y in phi's layout."""
        n_features = centres.shape[1]
        if self.covariance_type in ("full", "tied"):
            # The symmetric (D + 1, D + 1) moment matrix, each entry read from its triangle
            # position: one gather with constant indices (two scatters measured slower).
            extended = moments[:, _symmetric_index(n_features)]
            second, sums, counts = extended[:, :-1, :-1], extended[:, :-1, -1], extended[:, -1, -1]
        else:
            quadratic, sums, counts = moments[:, :n_features], moments[:, n_features:-1], moments[:, -1]
        centred_sums = sums - counts[:, None] * centres
        if self.covariance_type in ("full", "tied"):
            # sum r (y - c)(y - c)^T = sum r y y^T - s c^T - c s^T - n c c^T, s = sum r (y - c).
            cross = centred_sums[:, :, None] * centres[:, None, :]
            squares = (
                second
                - cross
                - jnp.swapaxes(cross, -1, -2)
                - counts[:, None, None] * centres[:, :, None] * centres[:, None, :]
            )
            if self.covariance_type == "tied":
                squares = jnp.sum(squares, axis=0)
        else:
            squares = quadratic - 2 * centres * centred_sums - counts[:, None] * centres**2
            if self.covariance_type == "spherical":
                squares = jnp.sum(squares, axis=1)
        return GaussianMixtureStats(counts, centred_sums, squares)

    def m_step(
        self, stats: GaussianMixtureStats, params: GaussianMixtureParams
    ) -> GaussianMixtureParams:
        """Closed-form maximiser of Q given statistics centred on params.means."""
        dtype = stats.centred_sums.dtype
        counts = stats.counts + 10 * jnp.finfo(dtype).eps
        offsets = stats.centred_sums / counts[:, None]
        means = params.means + offsets
        n_features = means.shape[1]
        reg = jnp.asarray(self.reg_covar, dtype)
        if self.covariance_type == "full":
            cov = stats.centred_squares / counts[:, None, None]
            cov = cov - offsets[:, :, None] * offsets[:, None, :]
            cov = cov + reg * jnp.eye(n_features, dtype=dtype)
        elif self.covariance_type == "tied":
            outer = jnp.einsum("k,kd,ke->de", counts, offsets, offsets)
            cov = (stats.centred_squares - outer) / jnp.sum(counts)
            cov = cov + reg * jnp.eye(n_features, dtype=dtype)
        elif self.covariance_type == "diag":
            cov = stats.centred_squares / counts[:, None] - offsets**2 + reg
        else:
            per_feature = stats.centred_squares / counts - jnp.sum(offsets**2, axis=1)
            cov = per_feature / n_features + reg
        weights = counts / jnp.sum(counts)
        return GaussianMixtureParams(weights, means, cov)

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> GaussianMixtureParams:
        """One M-step from weighted responsibilities (n_samples, K), centred on the data mean."""
        return self.params_from_resp_t(X, resp.T)

    def params_from_resp_t(
        self, X: jax.Array, resp_t: jax.Array, chunk_size: int | None = None
    ) -> GaussianMixtureParams:
        """One M-step from weighted responsibilities (K, n_samples), centred on the data
        mean; one GEMM in the layout of the E-step's (no transposed operand).

        With chunk_size below n_samples the data is chunked by `parallel.precompute`, as
        `parallel.prepare` chunks the EM loop's, so that XLA computes it once for both, and
        the moments are summed over chunks as the E-step sums them (one batched GEMM over
        all chunks runs on one core of XLA:CPU).
        """
        data = parallel.precompute(self, X, chunk_size)
        if not parallel.is_chunked(X.shape[0], chunk_size):
            moments, shift = _moments(resp_t, data.features), data.shift
        else:
            resp_chunks = units.split_chunks(resp_t.T, chunk_size, "zero")  # (n_chunks, chunk, K)
            moments = parallel.sum_over_chunks(
                lambda resp, rows: _moments(resp.T, self._as_features(rows).features), (resp_chunks, data)
            )
            shift = data.shift[0]
        centres = jnp.broadcast_to(shift, (self.n_components, X.shape[1]))
        reference = GaussianMixtureParams(None, centres, None)
        return self.m_step(self._centre_moments(moments, centres - shift), reference)

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> GaussianMixtureParams:
        """Validated params from a dict with keys weights, means, covariances (sklearn shapes)."""
        k, d = self.n_components, n_features
        expected = {
            "weights": (k,),
            "means": (k, d),
            "covariances": {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
                self.covariance_type
            ],
        }
        arrays = checks.arrays_from_dict(values, expected)
        checks.check_probabilities(arrays["weights"], "weights")
        self._check_covariances(arrays["covariances"])
        return GaussianMixtureParams(*(jnp.asarray(arrays[n], dtype) for n in expected))

    def _check_covariances(self, cov: np.ndarray) -> None:
        if self.covariance_type in ("full", "tied"):
            sym = np.allclose(cov, np.swapaxes(cov, -1, -2))
            if not sym or np.any(np.linalg.eigvalsh(cov) <= 0):
                raise ValueError("init covariances must be symmetric positive definite.")
        elif np.any(cov <= 0):
            raise ValueError("init covariances must be positive.")

    # --- missing values (jaxem.missing) -----------------------------------------------------------
    def gaussian_components(self, params: GaussianMixtureParams) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(log weights (K,), means (K, D), covariances (K, D, D)) of the components."""
        n_components, n_features = params.means.shape
        cov = params.covariances
        eye = jnp.eye(n_features, dtype=cov.dtype)
        if self.covariance_type == "tied":
            cov = jnp.broadcast_to(cov, (n_components, n_features, n_features))
        elif self.covariance_type == "diag":
            cov = cov[:, :, None] * eye
        elif self.covariance_type == "spherical":
            cov = cov[:, None, None] * eye
        return self.log_weights(params), params.means, cov

    @property
    def diagonal_covariances(self) -> bool:
        """Diagonal (or spherical) covariances: jaxem.missing needs no missingness patterns."""
        return self.covariance_type in ("diag", "spherical")

    def statistics_from_moments(
        self, counts: jax.Array, centred_sums: jax.Array, centred_squares: jax.Array
    ) -> GaussianMixtureStats:
        """Statistics from full moments about the means, centred_squares (K, D, D)."""
        if self.covariance_type == "tied":
            centred_squares = jnp.sum(centred_squares, axis=0)
        elif self.covariance_type == "diag":
            centred_squares = jnp.diagonal(centred_squares, axis1=-2, axis2=-1)
        elif self.covariance_type == "spherical":
            centred_squares = jnp.trace(centred_squares, axis1=-2, axis2=-1)
        return GaussianMixtureStats(counts, centred_sums, centred_squares)

    def impute(self, params: GaussianMixtureParams, X: Any) -> tuple[jax.Array, jax.Array]:
        """(X with NaN entries replaced by E[x_m | x_o] (n, D), Cov[x | x_o] (n, D, D)); see
        jaxem.missing.impute."""
        from jaxem.missing import impute

        return impute(self, params, X)

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> GaussianMixtureParams:
        """Constraint names per params leaf (see jaxem.constraints); params are not needed."""
        cov = "positive_definite" if self.covariance_type in ("full", "tied") else "positive"
        return GaussianMixtureParams("simplex", "real", cov)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights, K * D means, and the covariance entries."""
        k, d = self.n_components, n_features
        cov = {"full": k * d * (d + 1) // 2, "tied": d * (d + 1) // 2, "diag": k * d, "spherical": k}
        return cov[self.covariance_type] + k * d + k - 1

    def sample(
        self, key: jax.Array, params: GaussianMixtureParams, n_samples: int
    ) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D), labels (n_samples,))."""
        label_key, noise_key = jax.random.split(key)
        labels = self.sample_labels(label_key, params, n_samples)
        noise = jax.random.normal(noise_key, (n_samples, params.means.shape[1]), params.means.dtype)
        cov = params.covariances
        if self.covariance_type == "full":
            scaled = jnp.einsum("nde,ne->nd", jnp.linalg.cholesky(cov)[labels], noise)
        elif self.covariance_type == "tied":
            scaled = noise @ jnp.linalg.cholesky(cov).T
        elif self.covariance_type == "diag":
            scaled = noise * jnp.sqrt(cov[labels])
        else:
            scaled = noise * jnp.sqrt(cov[labels])[:, None]
        return params.means[labels] + scaled, labels
