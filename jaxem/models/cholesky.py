"""Inverse Cholesky factors of batches of symmetric positive definite matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from jaxem.sizes import SCALAR_CHOLESKY_MAX_FEATURES


def inverse_cholesky_transposed(cov: jax.Array) -> jax.Array:
    """(L^-1)^T for cov = L L^T, cov: (..., D, D), so that cov^-1 = U U^T with U the result
    (scikit-learn's precisions_cholesky_ of a full covariance). Not positive definite: NaN
    entries (from the failing pivot on, or all of them for LAPACK's factorisation)."""
    if cov.shape[-1] <= SCALAR_CHOLESKY_MAX_FEATURES:
        return _scalar_inverse_cholesky_transposed(cov)
    chol = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(solve_triangular(chol, eye, lower=True), -1, -2)


def _scalar_inverse_cholesky_transposed(cov: jax.Array) -> jax.Array:
    """(L^-1)^T for cov = L L^T, cov: (..., D, D). Where cov is not positive definite the
    entries from the failing pivot on are NaN (jnp.linalg.cholesky makes all of them NaN);
    either way that component's log-density and the fit's objective become NaN.

    Scalar formulas per entry (Cholesky-Banachiewicz, then forward substitution), for few
    features (jaxem.sizes.SCALAR_CHOLESKY_MAX_FEATURES): XLA:CPU runs jnp.linalg.cholesky
    and the triangular solve as LAPACK calls, one per matrix, whose overhead dominates
    small matrices.
    """
    n = cov.shape[-1]
    chol = [[None] * n for _ in range(n)]
    for j in range(n):
        chol[j][j] = jnp.sqrt(cov[..., j, j] - sum((chol[j][k] ** 2 for k in range(j)), 0.0))
        for i in range(j + 1, n):
            chol[i][j] = (cov[..., i, j] - sum((chol[i][k] * chol[j][k] for k in range(j)), 0.0)) / chol[j][j]
    inverse = [[None] * n for _ in range(n)]  # lower triangular, inverse @ chol = I
    for i in range(n):
        inverse[i][i] = 1.0 / chol[i][i]
        for j in range(i):
            inverse[i][j] = -sum(chol[i][k] * inverse[k][j] for k in range(j, i)) * inverse[i][i]
    zero = jnp.zeros_like(cov[..., 0, 0])
    rows = [jnp.stack([inverse[j][i] if j >= i else zero for j in range(n)], axis=-1) for i in range(n)]
    return jnp.stack(rows, axis=-2)
