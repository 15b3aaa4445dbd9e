"""Factor analysis, PPCA and mixtures of factor analyzers against independent references.

References: Tipping & Bishop's closed-form PPCA optimum (an eigendecomposition), scikit-learn's
FactorAnalysis (an SVD iteration, not EM), and a textbook numpy EM for mixtures of factor
analyzers written below from Ghahramani & Hinton (1996), row by row with scipy densities.
Loadings are compared through W W^T (the likelihood does not see a rotation of the factors)
unless both sides fix the same orientation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.decomposition import FactorAnalysis as SklearnFactorAnalysis

import jaxem
from jaxem.protocol import check_model

from mixture_checks import as_init, assert_monotone, assert_trees_close


def factor_rows(seed, n, n_features, n_factors, offset=0.0, loading_scale=1.0, isotropic=False):
    """Rows from a factor model with known loadings and noise (noise in [0.2, 1))."""
    rng = np.random.default_rng(seed)
    loadings = loading_scale * rng.normal(size=(n_features, n_factors))
    noise = np.full(n_features, 0.5) if isotropic else rng.uniform(0.2, 1.0, size=n_features)
    latents = rng.normal(size=(n, n_factors))
    return latents @ loadings.T + rng.normal(size=(n, n_features)) * np.sqrt(noise) + offset


def mixture_rows(seed, n, n_features, n_factors, n_components=3):
    """Rows from n_components factor analyzers with well separated means."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_components):
        loadings = rng.normal(size=(n_features, n_factors))
        size = n // n_components
        parts.append(rng.normal(size=(size, n_factors)) @ loadings.T + 0.5 * rng.normal(size=(size, n_features)) + 5.0 * k)
    return np.concatenate(parts)


def start(model, X, seed=0, sample_weight=None):
    X = jnp.asarray(X)
    w = jnp.ones(X.shape[0]) if sample_weight is None else jnp.asarray(sample_weight, X.dtype)
    return jax.jit(model.init_params, static_argnums=(3, 4))(jax.random.key(seed), X, w, "kmeans++", None)


# --- PPCA: the closed-form optimum -------------------------------------------------------------
def test_ppca_em_reaches_tipping_bishop_closed_form():
    n_features, q = 6, 2
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(n_features, n_features)))[0]
    X = (rng.normal(size=(500, n_features)) * np.array([3.0, 2.0, 1.0, 0.9, 0.8, 0.7])) @ axes.T + 1.0
    model = jaxem.PPCA(q)
    res = jaxem.fit(model, X, key=jax.random.key(0), max_iter=5000, tol=1e-13, criterion="params")
    assert bool(res.converged)
    assert_monotone(res)

    centred = X - X.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(X))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    sigma2 = eigenvalues[q:].mean()
    loadings = eigenvectors[:, :q] * np.sqrt(eigenvalues[:q] - sigma2)
    np.testing.assert_allclose(res.params.noise_variance, sigma2, rtol=1e-8)
    np.testing.assert_allclose(model.covariance(res.params), loadings @ loadings.T + sigma2 * np.eye(n_features), rtol=0, atol=1e-8)
    np.testing.assert_allclose(res.params.mean, X.mean(axis=0), rtol=0, atol=1e-12)
    # The canonical orientation (W^T W diagonal, decreasing) is R = I up to column signs.
    signs = np.sign(np.sum(np.asarray(res.params.loadings) * loadings, axis=0))
    np.testing.assert_allclose(res.params.loadings, loadings * signs, rtol=0, atol=1e-7)
    # The optimum's log-likelihood by Tipping & Bishop's formula (their eq. 4 at the optimum).
    expected = -0.5 * (n_features * np.log(2 * np.pi) + np.sum(np.log(eigenvalues[:q]))
                       + (n_features - q) * np.log(sigma2) + n_features)
    np.testing.assert_allclose(res.log_likelihood, expected, rtol=1e-12)


# --- factor analysis: scikit-learn's fit --------------------------------------------------------
def test_factor_analysis_matches_sklearn():
    X = factor_rows(1, 600, 7, 2, offset=2.0)
    sk = SklearnFactorAnalysis(2, svd_method="lapack", tol=1e-13, max_iter=100_000).fit(X)
    model = jaxem.FactorAnalysis(2)
    # EM for FA converges slowly; SQUAREM gets there in a few hundred E-steps.
    res = jaxem.fit(model, X, key=jax.random.key(0), max_iter=20_000, tol=1e-12,
                    criterion="params", accelerate="squarem")
    assert bool(res.converged)
    assert_monotone(res)
    np.testing.assert_allclose(res.log_likelihood, sk.score(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.score(res.params, X), sk.score(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.score_samples(res.params, X), sk.score_samples(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.covariance(res.params), sk.get_covariance(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.params.noise_variances, sk.noise_variance_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.params.mean, sk.mean_, rtol=0, atol=1e-12)
    # scikit-learn's components_ is (q, D) in the same orientation (W Psi^-1 W^T diagonal).
    signs = np.sign(np.sum(np.asarray(res.params.loadings) * sk.components_.T, axis=0))
    np.testing.assert_allclose(res.params.loadings * signs, sk.components_.T, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.transform(res.params, X) * signs, sk.transform(X), rtol=0, atol=1e-5)


def test_densities_sampling_and_model_selection_by_hand():
    X = factor_rows(2, 300, 5, 2)
    model = jaxem.FactorAnalysis(2)
    params = start(model, X, seed=3)
    cov = params.loadings @ params.loadings.T + np.diag(params.noise_variances)
    log_density = multivariate_normal(params.mean, cov).logpdf(X)
    np.testing.assert_allclose(model.score_samples(params, X), log_density, rtol=1e-12)
    stats, log_lik = model.e_step(params, jnp.asarray(X), jnp.ones(len(X)))
    np.testing.assert_allclose(log_lik, log_density.sum(), rtol=1e-12)
    # Posterior mean of the latents: Cov(z, x) Cov(x)^-1 (x - mean).
    np.testing.assert_allclose(model.transform(params, X), (X - params.mean) @ np.linalg.solve(cov, params.loadings), atol=1e-12)
    n = len(X)
    assert model.n_parameters(5) == 5 * 2 + 2 * 5 - 1
    assert jaxem.PPCA(2).n_parameters(5) == 5 * 2 + 1 + 5 - 1
    assert jaxem.PPCA(3).n_parameters(10) == 10 * 3 + 1 + 10 - 3
    np.testing.assert_allclose(model.bic(params, X), -2 * log_density.sum() + 19 * np.log(n), rtol=1e-12)
    np.testing.assert_allclose(model.aic(params, X), -2 * log_density.sum() + 2 * 19, rtol=1e-12)

    drawn, latents = model.sample(jax.random.key(0), params, 200_000)
    assert drawn.shape == (200_000, 5) and latents.shape == (200_000, 2)
    np.testing.assert_allclose(np.cov(np.asarray(drawn).T), cov, atol=0.02 * np.abs(cov).max())
    np.testing.assert_allclose(np.mean(np.asarray(drawn), axis=0), params.mean, atol=0.02)

    ppca = jaxem.PPCA(2)
    p = start(ppca, X)
    assert p.noise_variance.shape == ()
    np.testing.assert_allclose(
        ppca.score_samples(p, X),
        multivariate_normal(p.mean, p.loadings @ p.loadings.T + p.noise_variance * np.eye(5)).logpdf(X), rtol=1e-12)


def test_log_likelihood_accurate_near_a_heywood_case():
    # A noise variance near 0 makes I + W^T Psi^-1 W ill-conditioned (condition ~1e10 here);
    # away from the canonical orientation (where accelerators' iterates are) a Cholesky
    # factorisation of it put the log-likelihood 5e-7 per sample off (the QR form: 1e-13).
    # scipy factorises Sigma itself.
    X = factor_rows(13, 300, 5, 2)
    rng = np.random.default_rng(0)
    noise = np.array([0.5, 1e-10, 0.3, 0.8, 0.4])
    loadings = rng.normal(size=(5, 2)) @ np.linalg.qr(rng.normal(size=(2, 2)))[0]
    params = jaxem.FactorAnalysisParams(jnp.asarray(X.mean(axis=0)), jnp.asarray(loadings), jnp.asarray(noise))
    model = jaxem.FactorAnalysis(2, min_noise=1e-12)
    expected = multivariate_normal(X.mean(axis=0), np.asarray(model.covariance(params))).logpdf(X)
    _, log_lik = model.e_step(params, jnp.asarray(X), jnp.ones(len(X)))
    np.testing.assert_allclose(log_lik / len(X), expected.mean(), rtol=0, atol=1e-11)
    np.testing.assert_allclose(model.score_samples(params, X), expected, rtol=0, atol=1e-10)


def test_canonical_orientation_and_starts():
    X = factor_rows(3, 200, 6, 3)
    model = jaxem.FactorAnalysis(3)
    p = start(model, X, seed=1)
    scaled = p.loadings / np.sqrt(p.noise_variances)[:, None]
    gram = np.asarray(scaled.T @ scaled)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-10)
    assert np.all(np.diff(np.diag(gram)) <= 0)
    largest = np.asarray(p.loadings)[np.argmax(np.abs(p.loadings), axis=0), np.arange(3)]
    assert np.all(largest > 0)
    np.testing.assert_allclose(p.mean, X.mean(axis=0), rtol=1e-12)
    # Every init method gives the same start; another key another one.
    w = jnp.ones(len(X))
    start_by = lambda method: jax.jit(model.init_params, static_argnums=(3, 4))(jax.random.key(1), jnp.asarray(X), w, method, None)  # noqa: E731
    for method in ("random", "random_from_data"):
        assert_trees_close(start_by(method), p, rtol=1e-13)
    assert not np.allclose(start(model, X, seed=2).loadings, p.loadings)
    # A user start is rotated to the same orientation without changing W W^T.
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    given = as_init(p)
    given["loadings"] = np.asarray(p.loadings) @ rotation
    rotated = model.start_params(given, jnp.asarray(X))
    assert_trees_close(rotated, p, rtol=1e-9, atol=1e-12)


def test_bad_options_and_starts_raise():
    X = factor_rows(4, 50, 4, 2)
    with pytest.raises(ValueError, match="n_components < n_features"):
        jaxem.fit(jaxem.PPCA(4), X, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_factors=5"):
        jaxem.fit(jaxem.FactorAnalysis(5), X, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_factors=5"):
        jaxem.fit(jaxem.MixtureOfFactorAnalyzers(2, 5), X, key=jax.random.key(0))
    with pytest.raises(ValueError, match="noise_type"):
        jaxem.MixtureOfFactorAnalyzers(2, 1, noise_type="tied")
    with pytest.raises(ValueError, match="n_factors"):
        jaxem.FactorAnalysis(0)
    good = {"mean": np.zeros(4), "loadings": np.ones((4, 2)), "noise_variances": np.ones(4)}
    with pytest.raises(ValueError, match="positive"):
        jaxem.fit(jaxem.FactorAnalysis(2), X, key=jax.random.key(0), init={**good, "noise_variances": -np.ones(4)})
    with pytest.raises(ValueError, match="shape"):
        jaxem.fit(jaxem.FactorAnalysis(2), X, key=jax.random.key(0), init={**good, "loadings": np.ones((2, 4))})
    with pytest.raises(ValueError, match="missing"):
        jaxem.fit(jaxem.PPCA(2), X, key=jax.random.key(0), init=good)
    for model in (jaxem.FactorAnalysis(2), jaxem.PPCA(2), jaxem.MixtureOfFactorAnalyzers(2, 1)):
        check_model(model)


# --- mixtures of factor analyzers ---------------------------------------------------------------
def test_one_component_mixture_equals_factor_analysis():
    X = factor_rows(5, 400, 6, 2, offset=3.0)
    fa, mfa = jaxem.FactorAnalysis(2), jaxem.MixtureOfFactorAnalyzers(1, 2)
    # The built-in starts agree given the same key (both draw the loadings from one subkey).
    fa_start, mfa_start = start(fa, X, seed=4), start(mfa, X, seed=4)
    np.testing.assert_allclose(mfa_start.loadings[0], fa_start.loadings, rtol=1e-12)
    np.testing.assert_allclose(mfa_start.noise_variances, fa_start.noise_variances, rtol=1e-12)
    init = as_init(fa_start)
    mfa_init = {"weights": np.ones(1), "means": init["mean"][None], "loadings": init["loadings"][None],
                "noise_variances": init["noise_variances"]}
    options = dict(key=jax.random.key(0), max_iter=60, tol=0.0)
    a = jaxem.fit(fa, X, init=init, **options)
    b = jaxem.fit(mfa, X, init=mfa_init, **options)
    np.testing.assert_allclose(b.params.means[0], a.params.mean, rtol=1e-10)
    np.testing.assert_allclose(b.params.loadings[0], a.params.loadings, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b.params.noise_variances, a.params.noise_variances, rtol=1e-10)
    np.testing.assert_allclose(b.trace, a.trace, rtol=1e-10)
    np.testing.assert_allclose(b.log_likelihood, a.log_likelihood, rtol=1e-12)
    assert_monotone(a)


def textbook_mfa_em(X, params, n_iter, shared):
    """Ghahramani & Hinton (1996) EM, row by row: responsibilities h_nj from scipy densities,
    E[z | x, j] = beta_j (x - mu_j), E[z z^T | x, j] = I - beta_j L_j + beta_j (x - mu_j)
    (x - mu_j)^T beta_j^T with beta_j = L_j^T (L_j L_j^T + Psi)^-1, then the augmented
    regression [L_j, mu_j] = (sum_n h x E[z~]^T)(sum_n h E[z~ z~^T])^-1 and
    Psi = diag(sum_nj h (x - [L_j, mu_j] E[z~]) x^T) / N (per component: / sum_n h_nj)."""
    weights, means, loadings, noise = (np.array(p, dtype=float) for p in params)
    n, d = X.shape
    k, _, q = loadings.shape
    log_liks = []
    for _ in range(n_iter):
        psis = [noise if shared else noise[j] for j in range(k)]
        covs = [loadings[j] @ loadings[j].T + np.diag(psis[j]) for j in range(k)]
        log_h = np.stack([np.log(weights[j]) + multivariate_normal(means[j], covs[j]).logpdf(X) for j in range(k)], axis=1)
        row_log_lik = logsumexp(log_h, axis=1)
        log_liks.append(row_log_lik.mean())
        h = np.exp(log_h - row_log_lik[:, None])
        new_means, new_loadings, residuals = np.zeros_like(means), np.zeros_like(loadings), np.zeros((k, d))
        for j in range(k):
            beta = loadings[j].T @ np.linalg.inv(covs[j])
            ez = (X - means[j]) @ beta.T
            ez_tilde = np.hstack([ez, np.ones((n, 1))])
            second = np.zeros((q + 1, q + 1))
            for i in range(n):
                ezz = np.eye(q) - beta @ loadings[j] + np.outer(ez[i], ez[i])
                block = np.block([[ezz, ez[i][:, None]], [ez[i][None, :], np.ones((1, 1))]])
                second += h[i, j] * block
            cross = (h[:, j, None] * X).T @ ez_tilde
            augmented = cross @ np.linalg.inv(second)
            new_loadings[j], new_means[j] = augmented[:, :q], augmented[:, q]
            residuals[j] = np.diag((h[:, j, None] * (X - ez_tilde @ augmented.T)).T @ X)
        counts = h.sum(axis=0)
        noise = residuals.sum(axis=0) / n if shared else residuals / counts[:, None]
        weights, means, loadings = counts / n, new_means, new_loadings
    return (weights, means, loadings, noise), np.array(log_liks)


@pytest.mark.parametrize("noise_type", ["shared", "per_component"])
def test_mixture_matches_textbook_em(noise_type):
    X = mixture_rows(6, 240, 4, 2)
    model = jaxem.MixtureOfFactorAnalyzers(3, 2, noise_type=noise_type)
    init = start(model, X, seed=0)
    n_iter = 12
    res = jaxem.fit(model, X, key=jax.random.key(0), init=as_init(init), max_iter=n_iter, tol=0.0)
    (weights, means, loadings, noise), log_liks = textbook_mfa_em(X, init, n_iter, noise_type == "shared")
    np.testing.assert_allclose(res.trace, log_liks, rtol=1e-10)
    np.testing.assert_allclose(res.params.weights, weights, rtol=1e-8)
    np.testing.assert_allclose(res.params.means, means, rtol=1e-8, atol=1e-8)
    gram = lambda w: np.einsum("kdq,keq->kde", w, w)  # noqa: E731
    np.testing.assert_allclose(gram(np.asarray(res.params.loadings)), gram(loadings), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.params.noise_variances, noise, rtol=1e-8)
    assert_monotone(res)
    # Densities, predictions and the parameter count by hand.
    params = res.params
    covs = np.asarray(model.covariances(params))
    log_joint = np.stack([np.log(params.weights[j]) + multivariate_normal(params.means[j], covs[j]).logpdf(X)
                          for j in range(3)], axis=1)
    np.testing.assert_allclose(model.score_samples(params, X), logsumexp(log_joint, axis=1), rtol=1e-12)
    np.testing.assert_allclose(model.predict_proba(params, X), np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True)), atol=1e-12)
    n_noise = 4 if noise_type == "shared" else 12
    assert model.n_parameters(4) == 2 + 12 + 3 * (8 - 1) + n_noise
    drawn, labels = model.sample(jax.random.key(1), params, 1000)
    assert drawn.shape == (1000, 4) and labels.shape == (1000,)


def test_mixture_restarts_and_squarem_reach_the_clusters():
    X = mixture_rows(7, 600, 5, 1)
    model = jaxem.MixtureOfFactorAnalyzers(3, 1)
    res = jaxem.fit(model, X, key=jax.random.key(0), n_restarts=4, max_iter=1000, tol=1e-10, accelerate="squarem")
    assert res.restarts.log_likelihood.shape == (4,)
    assert int(res.best_restart) == int(np.argmax(res.restarts.log_likelihood))
    assert int(np.sum(res.restarts.n_decreases)) == 0
    assert bool(res.converged)
    np.testing.assert_allclose(np.sort(np.asarray(res.params.weights)), np.full(3, 1 / 3), atol=1e-6)
    labels = np.asarray(model.predict(res.params, X))
    assert all(len(set(labels[i * 200:(i + 1) * 200])) == 1 for i in range(3))


# --- engine properties: weights, chunks, monotone traces, restarts, gradients --------------------
def fitted_models():
    return [
        (jaxem.FactorAnalysis(2), factor_rows(8, 90, 5, 2, offset=1.0)),
        (jaxem.PPCA(2), factor_rows(9, 90, 5, 2, isotropic=True)),
        (jaxem.MixtureOfFactorAnalyzers(2, 1, noise_type="per_component"), mixture_rows(10, 90, 4, 1, n_components=2)),
    ]


def test_slow_factor_analysis_is_monotone_and_restarts_run():
    # Weak factors: a large fraction of missing information, where EM for FA crawls.
    X = factor_rows(11, 400, 8, 3, loading_scale=0.4)
    model = jaxem.FactorAnalysis(3)
    em = jaxem.fit(model, X, key=jax.random.key(1), n_restarts=3, max_iter=3000, tol=1e-10)
    fast = jaxem.fit(model, X, key=jax.random.key(1), n_restarts=3, max_iter=3000, tol=1e-10, accelerate="squarem")
    for res in (em, fast):
        assert res.restarts.log_likelihood.shape == (3,)
        assert int(np.sum(res.restarts.n_decreases)) == 0
        assert int(res.best_restart) == int(np.argmax(res.restarts.log_likelihood))
        assert_monotone(res)
    assert int(fast.n_evals) < int(em.n_evals)
    np.testing.assert_allclose(fast.log_likelihood, em.log_likelihood, atol=1e-6)


def test_float32_far_from_the_origin():
    # Statistics centred on the current mean keep float32 accurate at 1e4 from the origin,
    # where the data's own float32 spacing is 1e-3. The reference is the float64 fit of the
    # same float32-rounded rows (the rounding alone moves the log-likelihood by ~2e-6 relative).
    X = factor_rows(12, 2000, 6, 2, offset=1e4).astype(np.float32)
    model = jaxem.FactorAnalysis(2)
    reference = jaxem.fit(model, X.astype(np.float64), key=jax.random.key(0), max_iter=60, tol=0.0)
    single = jaxem.fit(model, X, key=jax.random.key(0), max_iter=60, tol=0.0)
    assert single.params.loadings.dtype == jnp.float32
    np.testing.assert_allclose(single.log_likelihood, reference.log_likelihood, rtol=1e-6)
    np.testing.assert_allclose(model.covariance(single.params), model.covariance(reference.params), atol=1e-3)
    assert np.all(np.asarray(single.params.noise_variances) > 0.1)


@pytest.mark.parametrize("index", [0, 2])
def test_implicit_gradient_matches_finite_difference(index):
    model, X = fitted_models()[index]
    X = jnp.asarray(X)
    init = as_init(start(model, X))
    rng = np.random.default_rng(3)
    noise_weights = jnp.asarray(rng.normal(size=np.shape(init["noise_variances"])))
    direction = jnp.asarray(rng.normal(size=X.shape))

    def loss(X):
        res = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=20_000, tol=1e-13, criterion="params")
        # The log-likelihood, and params-dependent terms that exercise the adjoint solve.
        return res.log_likelihood + jnp.sum(noise_weights * res.params.noise_variances) + 0.1 * jnp.sum(res.params.loadings**2)

    value, grad = jax.jit(jax.value_and_grad(loss))(X)
    assert np.all(np.isfinite(np.asarray(grad)))
    h = 1e-5
    at = jax.jit(loss)
    numeric = (at(X + h * direction) - at(X - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(grad * direction), numeric, rtol=1e-6)
    np.testing.assert_allclose(at(X), value, rtol=1e-12)
