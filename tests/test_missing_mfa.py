"""Mixture of factor analyzers with missing values (jaxem.fit(..., missing="em")) against an
independent numpy EM.

The reference is Ghahramani & Hinton's EM (1996) with the missing entries as latent
variables besides z and the component, written row by row with raw (uncentred) moments:
per row and component, the observed block of W_k W_k^T + Psi_k is inverted directly, the
missing entries' conditional mean and covariance come from the regression of x_m on x_o,
and the augmented latent [z, 1] gives [W_k, mu_k] and Psi by the paper's formulas with
E[x x^T | x_o, k] in place of x x^T. jaxem instead plugs centred expected moments into its
complete-data M-step (jaxem.missing), so agreement tests that seam.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem

N_ROWS, N_FEATURES, N_COMPONENTS, N_FACTORS = 60, 4, 2, 2


def _data(missing_fraction=0.2, seed=0):
    rng = np.random.RandomState(seed)
    half = N_ROWS // 2
    loadings = rng.randn(N_FEATURES, N_FACTORS)
    X = np.concatenate([
        rng.randn(half, N_FACTORS) @ loadings.T + 0.5 * rng.randn(half, N_FEATURES),
        rng.randn(N_ROWS - half, N_FACTORS) @ loadings[::-1].T + 0.5 * rng.randn(N_ROWS - half, N_FEATURES) + 3,
    ])
    holes = X.copy()
    holes[rng.rand(*X.shape) < missing_fraction] = np.nan
    empty = np.isnan(holes).all(axis=1)
    holes[empty, 0] = X[empty, 0]
    return X, holes


def _start(noise_type):
    noise = np.array([0.5, 0.6, 0.7, 0.8])
    return {
        "weights": np.array([0.45, 0.55]),
        "means": np.array([[0.2, 0.0, -0.1, 0.3], [2.5, 3.0, 2.8, 3.2]]),
        "loadings": np.array([[[1.0, 0.1], [0.5, -0.4], [0.2, 0.8], [-0.3, 0.2]],
                              [[0.6, 0.3], [-0.2, 0.9], [0.7, 0.0], [0.1, -0.5]]]),
        "noise_variances": noise if noise_type == "shared" else np.stack([noise, noise[::-1]]),
    }


def _conditional(x, mean, cov):
    """(log p(x_o), E[x | x_o], Cov[x | x_o]) for one row and one Gaussian."""
    o, m = ~np.isnan(x), np.isnan(x)
    diff = x[o] - mean[o]
    cov_oo = cov[np.ix_(o, o)]
    log_p = -0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(cov_oo)[1] + diff @ np.linalg.solve(cov_oo, diff))
    x_hat, c = x.copy(), np.zeros((len(x), len(x)))
    if m.any():
        regression = cov[np.ix_(m, o)] @ np.linalg.inv(cov_oo)
        x_hat[m] = mean[m] + regression @ diff
        c[np.ix_(m, m)] = cov[np.ix_(m, m)] - regression @ cov[np.ix_(o, m)]
    return log_p, x_hat, c


def _reference_mfa(X, start, noise_type, n_iter):
    """n_iter EM iterations; returns (weights, means, loadings, noise (K, D), trace of the
    mean observed-data log-likelihood entering each iteration)."""
    n, d = X.shape
    k, q = N_COMPONENTS, N_FACTORS
    w, mu, W = start["weights"], start["means"], start["loadings"]
    psi = np.broadcast_to(start["noise_variances"], (k, d))
    trace = []
    for _ in range(n_iter):
        covs = [W[j] @ W[j].T + np.diag(psi[j]) for j in range(k)]
        betas = [W[j].T @ np.linalg.inv(covs[j]) for j in range(k)]
        A = np.zeros((k, d, q + 1))  # sum r E[x [z, 1]^T]
        B = np.zeros((k, q + 1, q + 1))  # sum r E[[z, 1] [z, 1]^T]
        Sxx = np.zeros((k, d, d))  # sum r E[x x^T]
        counts, total = np.zeros(k), 0.0
        for x in X:
            parts = [_conditional(x, mu[j], covs[j]) for j in range(k)]
            log_joint = np.log(w) + np.array([part[0] for part in parts])
            log_p = np.logaddexp.reduce(log_joint)
            total += log_p
            for j, (_, x_hat, c) in enumerate(parts):
                r = np.exp(log_joint[j] - log_p)
                beta = betas[j]
                Exx = np.outer(x_hat, x_hat) + c
                Eyy = Exx - np.outer(x_hat, mu[j]) - np.outer(mu[j], x_hat) + np.outer(mu[j], mu[j])
                Ez = beta @ (x_hat - mu[j])
                Exz = (Exx - np.outer(x_hat, mu[j])) @ beta.T
                Ezz = np.eye(q) - beta @ W[j] + beta @ Eyy @ beta.T
                A[j] += r * np.hstack([Exz, x_hat[:, None]])
                B[j] += r * np.block([[Ezz, Ez[:, None]], [Ez[None, :], np.ones((1, 1))]])
                Sxx[j] += r * Exx
                counts[j] += r
        trace.append(total / n)
        augmented = [A[j] @ np.linalg.inv(B[j]) for j in range(k)]
        W = np.stack([a[:, :q] for a in augmented])
        mu = np.stack([a[:, q] for a in augmented])
        residual = np.stack([np.diag(Sxx[j] - augmented[j] @ A[j].T) for j in range(k)])
        if noise_type == "shared":
            psi = np.broadcast_to(residual.sum(axis=0) / n, (k, d))
        else:
            psi = residual / counts[:, None]
        w = counts / n
    return w, mu, W, psi, np.array(trace)


def _fit(model, X, **kwargs):
    options = dict(key=jax.random.PRNGKey(0), missing="em", tol=0.0, diff=None)
    options.update(kwargs)
    return jaxem.fit(model, X, **options)


@pytest.mark.parametrize("noise_type", ["shared", "per_component"])
def test_matches_the_numpy_reference_from_the_same_start(noise_type):
    _, holes = _data()
    start = _start(noise_type)
    model = jaxem.MixtureOfFactorAnalyzers(N_COMPONENTS, N_FACTORS, noise_type=noise_type)
    result = _fit(model, holes, init=start, max_iter=5)
    w, mu, W, psi, trace = _reference_mfa(holes, start, noise_type, 5)
    params = result.params
    np.testing.assert_allclose(params.weights, w, rtol=1e-9)
    np.testing.assert_allclose(params.means, mu, rtol=1e-9)
    np.testing.assert_allclose(params.loadings @ np.swapaxes(params.loadings, 1, 2), W @ np.swapaxes(W, 1, 2), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.broadcast_to(params.noise_variances, psi.shape), psi, rtol=1e-9)
    np.testing.assert_allclose(result.trace, trace, rtol=1e-11)
    assert np.all(np.diff(trace) > 0)

    # impute: the posterior-weighted conditional means under the fitted components
    imputed, _ = model.impute(params, holes)
    covs = np.asarray(model.covariances(params))
    for x, got in zip(holes[:10], np.asarray(imputed)):
        parts = [_conditional(x, np.asarray(params.means[j]), covs[j]) for j in range(N_COMPONENTS)]
        log_joint = np.log(np.asarray(params.weights)) + np.array([part[0] for part in parts])
        resp = np.exp(log_joint - np.logaddexp.reduce(log_joint))
        np.testing.assert_allclose(got, sum(r * part[1] for r, part in zip(resp, parts)), rtol=1e-10)


def test_trace_never_decreases():
    """200 iterations (still climbing: EM for factor models is slow) from a k-means++ start."""
    _, holes = _data(missing_fraction=0.3)
    model = jaxem.MixtureOfFactorAnalyzers(N_COMPONENTS, N_FACTORS, noise_type="per_component")
    result = _fit(model, holes, init="kmeans++", max_iter=200)
    assert int(result.n_iter) == 200 and result.n_decreases == 0
    assert np.all(np.diff(result.trace) > 0)


def test_with_nothing_missing_it_is_the_complete_data_fit():
    """Inside jit, where every row takes the conditional E-step (here with no valid missing
    slot) instead of the model's own."""
    X, _ = _data()
    model = jaxem.MixtureOfFactorAnalyzers(N_COMPONENTS, N_FACTORS)
    start = _start("shared")
    complete = _fit(model, X, init=start, max_iter=8, missing=None)
    jitted = jax.jit(lambda data: _fit(model, data, init=start, max_iter=8))(jnp.asarray(X))
    for got, want in zip(jitted.params, complete.params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jitted.trace, complete.trace, rtol=1e-12)
