"""Chunked E-steps: the same statistics as one pass, with the per-fit precompute per chunk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import parallel
from jaxem.models.gaussian_mixture import COVARIANCE_TYPES


def data_and_params(covariance_type, n_features=3):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(203, n_features)) + rng.integers(3, size=(203, 1)) * 4.0)
    w = jnp.asarray(rng.uniform(0.5, 2.0, X.shape[0]))
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    params = model.init_params(jax.random.key(0), X, w, "random_from_data")
    return model, params, X, w


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
# 7, 5, 3, 4 and 1 chunks: scan steps of 1, 5, 3, 2 chunks (parallel.scan_unroll) and one pass,
# compiled, and 7 chunks eager (the other sizes eager added 16 s and no path);
# 10 features: full-covariance features from gathered rows rather than row pairs.
@pytest.mark.parametrize(
    "chunk_size, use_jit, n_features",
    [(c, True, 3) for c in (29, 50, 70, 64, 203)] + [(29, False, 3), (29, True, 10), (203, True, 10)],
)
def test_chunked_e_step_equals_one_pass(covariance_type, chunk_size, use_jit, n_features):
    model, params, X, w = data_and_params(covariance_type, n_features)
    e_step = jax.jit(parallel.e_step, static_argnums=(0, 4)) if use_jit else parallel.e_step
    chunked_stats, chunked_ll = e_step(model, params, X, w, chunk_size)
    # Reference: the exact difference form of the log densities, and centred sums.
    log_joint = model.component_log_prob(params, X) + jnp.log(params.weights)
    log_norm = jax.scipy.special.logsumexp(log_joint, axis=1)
    resp = jnp.exp(log_joint - log_norm[:, None]) * w[:, None]
    diff = X[:, None, :] - params.means[None]
    np.testing.assert_allclose(chunked_ll, jnp.sum(w * log_norm), rtol=1e-12)
    np.testing.assert_allclose(chunked_stats.counts, resp.sum(0), rtol=1e-12)
    np.testing.assert_allclose(
        chunked_stats.centred_sums, jnp.einsum("nk,nkd->kd", resp, diff), rtol=1e-10, atol=1e-10
    )
    squares = {
        "full": "nk,nkd,nke->kde", "tied": "nk,nkd,nke->de", "diag": "nk,nkd,nkd->kd", "spherical": "nk,nkd,nkd->k"
    }[covariance_type]
    np.testing.assert_allclose(
        chunked_stats.centred_squares, jnp.einsum(squares, resp, diff, diff), rtol=1e-10, atol=1e-10
    )


def test_chunked_fit_equals_unchunked_fit():
    model, _, X, w = data_and_params("full")
    fits = [
        jaxem.fit(model, X, key=jax.random.key(1), n_restarts=2, max_iter=6, tol=0, sample_weight=w, chunk_size=c)
        for c in (None, 64)
    ]
    # Every restart, not just the selected one: both restarts here reach the same optimum up to
    # a relabelling, so which one is "best" is decided by rounding.
    for a, b in zip(jax.tree.leaves(fits[0].restarts.params), jax.tree.leaves(fits[1].restarts.params)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_fit_factorises_params_once_per_e_step():
    """The EM loop of a chunked fit holds one batched LAPACK triangular solve, not one per
    chunk: chunk E-steps run side by side, and concurrent batched LAPACK calls starved
    XLA:CPU's thread pool into a deadlock (jaxlib 0.10.2). 5 chunks, scanned 5 at a time;
    the program's other solves are in the final objective and the selection."""
    model, _, X, w = data_and_params("full")
    fit = lambda X, chunk_size: jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=3, chunk_size=chunk_size)
    count = lambda chunk_size: jax.jit(fit, static_argnums=1).lower(X, chunk_size).compile().as_text().count("trsm")
    assert count(41) == count(None)
