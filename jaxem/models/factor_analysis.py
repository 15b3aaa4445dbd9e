"""Factor analysis and probabilistic PCA: a continuous latent variable per row, fitted by EM.

The model (Rubin & Thayer 1982; Tipping & Bishop 1999): a latent z ~ N(0, I_q) per row and

    x = mean + W z + e,   e ~ N(0, Psi),   so   x ~ N(mean, W W^T + Psi),

with W the (D, q) loadings ("loadings" here is (n_features, n_factors); scikit-learn's
`components_` is its transpose, (q, D)) and Psi diagonal: one noise variance per feature
for factor analysis, one shared sigma^2 for PPCA (Psi = sigma^2 I).

E-step. The posterior z | x is Gaussian with covariance G = (I + W^T Psi^-1 W)^-1, shared by
all rows, and mean beta (x - mean) with beta = G W^T Psi^-1. Every expectation the M-step
needs is linear in the weighted moments of the rows, so the additive statistics are
  counts n = sum w, centred_sums s = sum w (x - c), centred_squares S = sum w (x - c)(x - c)^T,
centred on the mean c of the params they are computed at. The rows are centred once per
fit on their unweighted mean (`precompute`), each E-step takes their weighted moments by
one GEMM (O(N D^2) whatever q, and independent of the params) and re-centres them on c
exactly, as jaxem.models.gaussian_mixture does: float32 data far from the origin keeps
accurate second moments, and chunks add up. The summed log-likelihood comes from the same
statistics, in O(D^3) per E-step and no pass over the rows:
  sum_n w_n log p(x_n) = -(n D log 2 pi + n log|Sigma| + tr(Sigma^-1 S)) / 2,
with log|Sigma| = log|Psi| + log|I + W^T Psi^-1 W| (matrix determinant lemma, from a QR
factorisation, `posterior_terms`) and the quadratic in its variational form
y^T Sigma^-1 y = min_z (y - W z)^T Psi^-1 (y - W z) + z^T z, attained at z = beta y, so
tr(Sigma^-1 S) = tr(Psi^-1 R S R^T) + tr(beta S beta^T) with R = I - W beta
(`log_likelihood_from_moments`). The Woodbury form tr(Psi^-1 S) - tr(beta S Psi^-1 W) is
cheaper (O(D^2 q)) but first order in the rounding of beta, whose conditioning grows as
1 / min(Psi): as a noise variance nears 0 (a Heywood case, where EM is slowest) it was
1e-7 per sample off in float64 (measured), enough for false decreases of the trace; the
variational form is second order in it and stays at ~1e-13.

M-step (closed form). The mean is profiled: its maximiser for any loadings and noise is the
weighted mean x_bar = c + s / n, and the sample covariance about it is C = S / n - d d^T
(d = s / n, a small correction near convergence). With beta at the previous (W, Psi),
  W_new = C beta^T (G + beta C beta^T)^-1,      Psi_new = diag(C - W_new beta C)
(Rubin & Thayer 1982), floored at `min_noise`; for PPCA sigma^2_new = the mean of that
diagonal (the EM algorithm of Tipping & Bishop 1999). Setting the mean first and then taking the EM
step for (W, Psi) at the new mean raises the likelihood at both stages, so the trace is
monotone. The floor is the exact maximiser of Q over Psi_d >= min_noise (Q is unimodal in
each Psi_d), so it keeps monotonicity.

Orientation of the loadings. The likelihood depends on W only through W W^T, so W R fits
as well as W for any rotation R, and the EM map commutes with rotations. Left alone, the
fixed points would form a manifold on which I - dT/dtheta is singular, which the implicit
gradient (jaxem.implicit) cannot solve. Every M-step (and every start) therefore rotates
W to the canonical orientation of maximum-likelihood factor analysis (Lawley & Maxwell
1971): W^T Psi^-1 W diagonal with decreasing entries, each column's largest-magnitude
entry positive (the orientation of scikit-learn's components_, up to column signs). That
changes neither the likelihood nor the next iterate's W W^T, so the sequence of fitted
covariances is that of plain EM; for PPCA at the optimum the columns of W are the
principal axes, W = U_q (Lambda_q - sigma^2 I)^(1/2) (Tipping & Bishop 1999). It needs
distinct diagonal entries to be unique (generic for real data); with (nearly) equal ones
the orientation, and a gradient through the loadings themselves, is ill-determined, while
rotation-invariant results (W W^T, the likelihood, noise variances) are not affected.

Accelerators. SQUAREM and quasi-Newton move the noise variances in the coordinates
log(Psi_d - min_noise) (`param_constraints`: Interval(min_noise)), so they stay in the
floor's feasible set, as plain EM does. With "positive" (log Psi_d), in a Heywood case
whose optimum has a noise variance below min_noise, quasi-Newton's L-BFGS phase went below
the floor and the next EM step's floor then lowered the objective (5e-9 per sample, one
counted decrease).

Starts. `init` "kmeans++", "random" and "random_from_data" all give the same start, random
given the key: the weighted mean, noise variances half the weighted variance of each
feature, and loadings with independent N(0, var_d / (2 q)) entries in row d (so that
W W^T + Psi has about the data's variances on its diagonal), then rotated as above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular

from jaxem import validation
from jaxem.constraints import Interval
from jaxem.models import checks
from jaxem.protocol import Model
from jaxem.pytrees import register_model


class FactorAnalysisParams(NamedTuple):
    """mean: (D,); loadings: (D, q), column j the loadings of factor j (the transpose of
    scikit-learn's components_); noise_variances: (D,) the diagonal of Psi."""

    mean: jax.Array
    loadings: jax.Array
    noise_variances: jax.Array


class PPCAParams(NamedTuple):
    """mean: (D,); loadings: (D, q) (the transpose of scikit-learn's components_);
    noise_variance: () the isotropic sigma^2."""

    mean: jax.Array
    loadings: jax.Array
    noise_variance: jax.Array


class FactorAnalysisStats(NamedTuple):
    """Additive statistics centred on the mean c of the params they were computed at:
    counts () sum w; centred_sums (D,) sum w (x - c); centred_squares (D, D)
    sum w (x - c)(x - c)^T."""

    counts: jax.Array
    centred_sums: jax.Array
    centred_squares: jax.Array


class FactorTerms(NamedTuple):
    """What an E-step needs of (W, Psi), computed once per E-step (`e_step_params`).

    params: the params; projection: (D, q) beta^T = Psi^-1 W G, so E[z | x] =
    (x - mean) @ projection; posterior_cov: (q, q) G = (I + W^T Psi^-1 W)^-1;
    log_det: () log|W W^T + Psi|; residual_map: (D, D) I - W beta, which maps a centred row
    to its residual y - W E[z | y].
    """

    params: Any
    projection: jax.Array
    posterior_cov: jax.Array
    log_det: jax.Array
    residual_map: jax.Array


class ShiftedRows(NamedTuple):
    """The fixed per-fit form of the data (`precompute`): centred (n, D) the rows less shift,
    shift (D,) the unweighted mean of all rows (for chunks: (n_chunks, chunk_size, D) and
    (n_chunks, D) with equal rows)."""

    centred: jax.Array
    shift: jax.Array


# --- shared linear algebra (also used by jaxem.models.mixture_of_factor_analyzers) ----------
def posterior_terms(loadings: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(projection beta^T (D, q), posterior covariance G (q, q), log|W W^T + Psi|) for
    loadings W (D, q) and the noise diagonal Psi (D,).

    From the QR factorisation [Psi^-1/2 W; I_q] = Q R, so that R^T R = I + W^T Psi^-1 W:
    G = R^-1 R^-T, beta^T = Psi^-1/2 Q_1 R^-T (Q_1 the first D rows of Q) and log|Sigma| =
    log|Psi| + 2 log|det R|. A Cholesky factorisation of I + W^T Psi^-1 W, whose condition
    number grows as 1 / min(Psi) in a Heywood case, gave log|Sigma| 8e-10 off there (in
    float64, away from the canonical orientation where that matrix is diagonal; measured
    against exact rational arithmetic), the QR form 7e-14; the error showed as false
    decreases of quasi-Newton traces.
    """
    n_factors = loadings.shape[-1]
    eye = jnp.eye(n_factors, dtype=loadings.dtype)
    root = jnp.sqrt(noise)
    q, r = jnp.linalg.qr(jnp.concatenate([loadings / root[:, None], eye], axis=0))
    r_inv = solve_triangular(r, eye, lower=False)
    posterior_cov = r_inv @ r_inv.T
    projection = (q[: loadings.shape[0]] / root[:, None]) @ r_inv.T
    log_det = jnp.sum(jnp.log(noise)) + 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(r))))
    return projection, posterior_cov, log_det


def row_log_density(centred: jax.Array, loadings: jax.Array, noise: jax.Array, projection: jax.Array,
                    log_det: jax.Array) -> jax.Array:
    """log N(x | mean, W W^T + Psi) for rows centred on the mean: (..., D) -> (...).

    The quadratic form as a sum of non-negative terms, y^T Sigma^-1 y =
    ||Psi^-1/2 (y - W m)||^2 + ||m||^2 with m = E[z | y] (the minimum over z of the
    complete-data quadratic), rather than a difference of two large terms.
    """
    n_features = centred.shape[-1]
    latent = centred @ projection
    residual = centred - latent @ loadings.T
    quadratic = jnp.sum(residual * residual / noise, axis=-1) + jnp.sum(latent * latent, axis=-1)
    return -0.5 * (n_features * math.log(2 * math.pi) + log_det + quadratic)


def canonical_loadings(loadings: jax.Array, noise: jax.Array) -> jax.Array:
    """W R with R orthogonal such that (W R)^T Psi^-1 (W R) is diagonal, decreasing, and each
    column's largest-magnitude entry is positive (module docstring). loadings (D, q), noise (D,).
    """
    scaled = loadings / jnp.sqrt(noise)[:, None]
    _, vectors = jnp.linalg.eigh(scaled.T @ scaled)
    rotated = loadings @ vectors[:, ::-1]
    largest = jnp.argmax(jnp.abs(rotated), axis=0)
    signs = jnp.sign(jnp.take_along_axis(rotated, largest[None, :], axis=0))
    return rotated * jnp.where(signs == 0, 1.0, signs)


def factor_update(second_moment: jax.Array, mean_offset: jax.Array | None, loadings: jax.Array,
                  noise: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EM update of loadings (and mean) from per-unit moments about the previous mean.

    Args:
      second_moment: (D, D) E_w[y y^T] with y = x - (previous mean), per unit of weight.
      mean_offset: (D,) E_w[y], or None when the mean is profiled (second_moment is then the
        covariance about the new mean and the offset is not estimated).
      loadings, noise: the previous W (D, q) and Psi diagonal (D,).
    Returns:
      (new loadings (D, q), offset of the new mean from the previous one (D,) (zeros when
      profiled), residual variances diag E_w[(y - W z - offset)(...)^T] (D,), unfloored).
    With an offset this is the joint update of (W, mean) of Ghahramani & Hinton (1996) from
    the augmented latent [z, 1]; without, Rubin & Thayer's (1982) update at a known mean.
    """
    projection, posterior_cov, _ = posterior_terms(loadings, noise)
    cross = second_moment @ projection  # E[y E[z|y]^T] = C beta^T: (D, q)
    latent_second = posterior_cov + projection.T @ cross  # E[E[z z^T | y]]: (q, q)
    if mean_offset is not None:
        latent_mean = projection.T @ mean_offset  # E[E[z | y]]: (q,)
        cross = jnp.concatenate([cross, mean_offset[:, None]], axis=1)
        latent_second = jnp.concatenate(
            [
                jnp.concatenate([latent_second, latent_mean[:, None]], axis=1),
                jnp.concatenate([latent_mean, jnp.ones((1,), latent_mean.dtype)])[None, :],
            ],
            axis=0,
        )
    latent_second = 0.5 * (latent_second + latent_second.T)
    chol = jnp.linalg.cholesky(latent_second)
    solved = cho_solve((chol, True), cross.T).T  # cross @ latent_second^-1: (D, q [+ 1])
    residual = jnp.diagonal(second_moment) - jnp.sum(solved * cross, axis=1)
    n_factors = loadings.shape[-1]
    offset = solved[:, n_factors] if mean_offset is not None else jnp.zeros_like(noise)
    return solved[:, :n_factors], offset, residual


def log_likelihood_from_moments(stats: FactorAnalysisStats, terms: FactorTerms, noise: jax.Array) -> jax.Array:
    """sum_n w_n log N(x_n | c, W W^T + Psi) from the statistics about c (module docstring).

    tr(Sigma^-1 S) = tr(Psi^-1 R S R^T) + tr(beta S beta^T) with R = I - W beta, the
    variational form of the quadratic summed over rows, with R formed explicitly: O(D^3).
    """
    squares = stats.centred_squares
    n_features = noise.shape[0]
    residual = terms.residual_map
    latent = terms.projection.T @ squares @ terms.projection
    trace = jnp.sum(jnp.sum((residual @ squares) * residual, axis=1) / noise) + jnp.trace(latent)
    return -0.5 * (stats.counts * (n_features * math.log(2 * math.pi) + terms.log_det) + trace)


def noise_floor(min_noise: Any, dtype: Any) -> jax.Array:
    return jnp.asarray(min_noise, dtype)


class FactorModel(Model):
    """The protocol for one linear-Gaussian factor model (FactorAnalysis, PPCA), with
    prediction (`transform`, `score_samples`), sampling and model selection.

    Subclasses set `isotropic` (one noise variance for all features) and `n_latent`.
    """

    additive_statistics = True
    isotropic = False  # one noise variance shared by all features (PPCA)
    noise_name = "noise_variances"  # the params field of the noise

    @property
    def n_latent(self) -> int:
        raise NotImplementedError

    # --- params layout -----------------------------------------------------------------------
    def _noise_vector(self, params: Any, n_features: int) -> jax.Array:
        """The diagonal of Psi: (D,)."""
        noise = params[2]
        return jnp.broadcast_to(noise, (n_features,)) if self.isotropic else noise

    def _make_params(self, mean, loadings, noise):
        raise NotImplementedError

    def _with_canonical_loadings(self, params: Any) -> Any:
        noise = self._noise_vector(params, params.mean.shape[0])
        return params._replace(loadings=canonical_loadings(params.loadings, noise))

    # --- jaxem.protocol.Model -----------------------------------------------------------------
    def as_data(self, X: Any) -> jax.Array:
        """Rows: a finite (n_samples, n_features) float array, n_features >= the latent
        dimension (PPCA: greater than it)."""
        X = validation.as_data(X)
        self.check_data(X)
        return X

    def check_data(self, X: jax.Array) -> None:
        n_features = X.shape[1]
        if self.isotropic and self.n_latent >= n_features:
            raise ValueError(
                f"PPCA needs n_components < n_features; got n_components={self.n_latent} for "
                f"{n_features} features (the noise variance is the mean of the discarded eigenvalues)."
            )
        if self.n_latent > n_features:
            raise ValueError(f"n_factors={self.n_latent} must be <= n_features={n_features}.")

    def start_params(self, values: dict, data: jax.Array) -> Any:
        """Params from a dict of mean (D,), loadings (D, q) and noise variances (FA:
        noise_variances (D,); PPCA: noise_variance, a scalar), all > 0; the loadings are
        rotated to the canonical orientation (module docstring), which leaves the model
        unchanged."""
        n_features, q = data.shape[1], self.n_latent
        noise_name = self.noise_name
        shapes = {"mean": (n_features,), "loadings": (n_features, q), noise_name: () if self.isotropic else (n_features,)}
        arrays = checks.arrays_from_dict(values, shapes)
        if np.any(arrays[noise_name] <= 0):
            raise ValueError(f"init {noise_name} must be positive.")
        params = self._make_params(*(jnp.asarray(arrays[name], data.dtype) for name in shapes))
        return self._with_canonical_loadings(params)

    def init_params(
        self, key: jax.Array, X: jax.Array, sample_weight: jax.Array, method: str | None, chunk_size: int | None = None
    ) -> Any:
        """A random start given the key (the same for every `method`, module docstring)."""
        _, loadings_key = jax.random.split(key)
        n_features, q = X.shape[1], self.n_latent
        total = jnp.sum(sample_weight)
        mean = (sample_weight @ X) / total
        variances = (sample_weight @ (X - mean) ** 2) / total
        floor = noise_floor(self.min_noise, X.dtype)
        scale = jnp.maximum(variances, floor)
        loadings = jax.random.normal(loadings_key, (n_features, q), X.dtype) * jnp.sqrt(scale / (2 * q))[:, None]
        noise = jnp.maximum(0.5 * (jnp.mean(scale) if self.isotropic else scale), floor)
        return self._with_canonical_loadings(self._make_params(mean, loadings, noise))

    def precompute(self, X: jax.Array) -> ShiftedRows:
        """The rows centred once per fit on their mean (module docstring)."""
        shift = jnp.mean(X, axis=0)
        return ShiftedRows(X - shift, shift)

    def precompute_chunks(self, chunks: jax.Array) -> ShiftedRows:
        """Every chunk's rows centred on one shift, the mean of all rows (padding included,
        which only moves the centre)."""
        shift = jnp.mean(chunks, axis=(0, 1))
        return ShiftedRows(chunks - shift, jnp.broadcast_to(shift, (chunks.shape[0], shift.shape[0])))

    def init_m_state(self, params: Any) -> Any:
        return ()

    def param_constraints(self, params: Any = None) -> Any:
        """Constraint names per params leaf (jaxem.constraints); noise variances >=
        min_noise, the M-step's floor, so that accelerators stay where EM can go."""
        return self._make_params("real", "real", Interval(self.min_noise))

    def e_step_params(self, params: Any) -> FactorTerms:
        """Params with the posterior's projection, covariance and log|Sigma| (one QR
        factorisation of a (D + q, q) matrix) and the residual map, once per E-step."""
        if isinstance(params, FactorTerms):
            return params
        noise = self._noise_vector(params, params.mean.shape[0])
        projection, posterior_cov, log_det = posterior_terms(params.loadings, noise)
        residual_map = jnp.eye(noise.shape[0], dtype=noise.dtype) - params.loadings @ projection.T
        return FactorTerms(params, projection, posterior_cov, log_det, residual_map)

    def e_step(
        self, params: Any, data: jax.Array | ShiftedRows, sample_weight: jax.Array
    ) -> tuple[FactorAnalysisStats, jax.Array]:
        """Moments of the rows (one GEMM, independent of params), re-centred on params.mean,
        and the weighted summed log-likelihood from them (module docstring). data: rows, or
        `precompute` of rows; params may come from `e_step_params`."""
        rows = data if isinstance(data, ShiftedRows) else self.precompute(data)
        terms = self.e_step_params(params)
        params = terms.params
        weighted = rows.centred * sample_weight[:, None]
        counts = jnp.sum(sample_weight)
        sums = jnp.sum(weighted, axis=0)
        # sum w (y - c)(y - c)^T = sum w y y^T - s c^T - c s^T - n c c^T, s = sum w (y - c):
        # exact, so the statistics about params.mean stay additive over chunks.
        centre = params.mean - rows.shift
        centred_sums = sums - counts * centre
        cross = centred_sums[:, None] * centre[None, :]
        squares = weighted.T @ rows.centred - cross - cross.T - counts * centre[:, None] * centre[None, :]
        stats = FactorAnalysisStats(counts, centred_sums, squares)
        noise = self._noise_vector(params, centre.shape[0])
        return stats, log_likelihood_from_moments(stats, terms, noise)

    def log_prior(self, params: Any) -> jax.Array:
        return jnp.zeros((), params.mean.dtype)

    def maximize(self, stats: FactorAnalysisStats, params: Any, m_state: Any, data: Any, sample_weight: jax.Array):
        return self.m_step(stats, params), m_state

    # --- M-step -------------------------------------------------------------------------------
    def m_step(self, stats: FactorAnalysisStats, params: Any) -> Any:
        """Closed-form EM update (module docstring): profiled mean, then Rubin & Thayer's
        (PPCA: Tipping & Bishop's) update of loadings and noise, then the canonical rotation."""
        counts = stats.counts
        offset = stats.centred_sums / counts
        covariance = stats.centred_squares / counts - offset[:, None] * offset[None, :]
        covariance = 0.5 * (covariance + covariance.T)
        n_features = offset.shape[0]
        noise = self._noise_vector(params, n_features)
        loadings, _, residual = factor_update(covariance, None, params.loadings, noise)
        floor = noise_floor(self.min_noise, offset.dtype)
        new_noise = jnp.maximum(jnp.mean(residual) if self.isotropic else residual, floor)
        new = self._make_params(params.mean + offset, loadings, new_noise)
        return self._with_canonical_loadings(new)

    # --- missing values (jaxem.missing) -----------------------------------------------------------
    def gaussian_components(self, params: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The marginal N(mean, W W^T + Psi) as one component: log weight (1,), mean (1, D),
        covariance (1, D, D)."""
        return jnp.zeros((1,), params.mean.dtype), params.mean[None], self.covariance(params)[None]

    def statistics_from_moments(
        self, counts: jax.Array, centred_sums: jax.Array, centred_squares: jax.Array
    ) -> FactorAnalysisStats:
        """Statistics from the moments of `gaussian_components`' one component."""
        return FactorAnalysisStats(counts[0], centred_sums[0], centred_squares[0])

    def impute(self, params: Any, X: Any) -> tuple[jax.Array, jax.Array]:
        """(X with NaN entries replaced by E[x_m | x_o] (n, D), Cov[x | x_o] (n, D, D)); see
        jaxem.missing.impute."""
        from jaxem.missing import impute

        return impute(self, params, X)

    # --- prediction ---------------------------------------------------------------------------
    def covariance(self, params: Any) -> jax.Array:
        """The model covariance W W^T + Psi: (D, D) (scikit-learn's get_covariance())."""
        n_features = params.mean.shape[0]
        return params.loadings @ params.loadings.T + jnp.diag(self._noise_vector(params, n_features))

    def transform(self, params: Any, X: Any) -> jax.Array:
        """Posterior means of the latents E[z | x] = G W^T Psi^-1 (x - mean): (n_samples, q)."""
        X = validation.as_data(X)
        terms = self.e_step_params(params)
        return (X - params.mean) @ terms.projection

    def score_samples(self, params: Any, X: Any) -> jax.Array:
        """log N(x | mean, W W^T + Psi) per sample: (n_samples,)."""
        X = validation.as_data(X)
        terms = self.e_step_params(params)
        noise = self._noise_vector(params, X.shape[1])
        return row_log_density(X - params.mean, params.loadings, noise, terms.projection, terms.log_det)

    def score(self, params: Any, X: Any) -> jax.Array:
        """Mean per-sample log-likelihood, a scalar."""
        return jnp.mean(self.score_samples(params, X))

    def bic(self, params: Any, X: Any) -> jax.Array:
        """Bayesian information criterion, -2 log L + p log n (lower is better)."""
        X = validation.as_data(X)
        n = X.shape[0]
        return -2.0 * self.score(params, X) * n + self.n_parameters(X.shape[1]) * math.log(n)

    def aic(self, params: Any, X: Any) -> jax.Array:
        """Akaike information criterion, -2 log L + 2 p (lower is better)."""
        X = validation.as_data(X)
        return -2.0 * self.score(params, X) * X.shape[0] + 2.0 * self.n_parameters(X.shape[1])

    def sample(self, key: jax.Array, params: Any, n_samples: int) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples rows. Returns (X (n_samples, D), latents z (n_samples, q))."""
        latent_key, noise_key = jax.random.split(key)
        n_features, q = params.loadings.shape
        dtype = params.mean.dtype
        latents = jax.random.normal(latent_key, (n_samples, q), dtype)
        noise = jax.random.normal(noise_key, (n_samples, n_features), dtype)
        scale = jnp.sqrt(self._noise_vector(params, n_features))
        return params.mean + latents @ params.loadings.T + noise * scale, latents


@register_model
@dataclasses.dataclass(frozen=True)
class FactorAnalysis(FactorModel):
    """Factor analysis, x = mean + W z + e with z ~ N(0, I_q), e ~ N(0, diag(noise_variances)),
    by EM (Rubin & Thayer 1982); params `FactorAnalysisParams` (loadings (D, q)).

    Args:
      n_factors: latent dimension q (1 <= q <= n_features).
      min_noise: floor >= 0 on every fitted noise variance (a pytree leaf), in the data's
        squared units; the default 1e-6 keeps Heywood cases (a feature explained entirely
        by the factors) finite.
    """

    n_factors: int = dataclasses.field(metadata=dict(static=True))
    min_noise: Any = 1e-6

    isotropic = False

    def __post_init__(self):
        validation.check_positive_int(self.n_factors, "n_factors")
        checks.check_hyperparameter(self.min_noise, "min_noise")

    @property
    def n_latent(self) -> int:
        return self.n_factors

    def _make_params(self, mean, loadings, noise):
        return FactorAnalysisParams(mean, loadings, noise)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: D means, D q loadings and D noise variances, less the q(q-1)/2
        of a rotation of the factors (the usual count, e.g. McNicholas & Murphy 2008, Table 1)."""
        d, q = n_features, self.n_factors
        return d * q + 2 * d - q * (q - 1) // 2


@register_model
@dataclasses.dataclass(frozen=True)
class PPCA(FactorModel):
    """Probabilistic PCA (Tipping & Bishop 1999), factor analysis with one noise variance:
    x = mean + W z + e, e ~ N(0, noise_variance I); params `PPCAParams` (loadings (D, q)).

    Args:
      n_components: latent dimension q (1 <= q < n_features).
      min_noise: floor >= 0 on the fitted noise variance (a pytree leaf).
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    min_noise: Any = 1e-6

    isotropic = True
    noise_name = "noise_variance"

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        checks.check_hyperparameter(self.min_noise, "min_noise")

    @property
    def n_latent(self) -> int:
        return self.n_components

    def _make_params(self, mean, loadings, noise):
        return PPCAParams(mean, loadings, noise)

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: D means, D q loadings less the q(q-1)/2 of a rotation, and one
        noise variance (Tipping & Bishop 1999; McNicholas & Murphy 2008, Table 1)."""
        d, q = n_features, self.n_components
        return d * q + 1 + d - q * (q - 1) // 2
