"""Gaussian mixture: parity with scikit-learn, additivity, sampling, model selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxem
from jaxem.models.gaussian_mixture import COVARIANCE_TYPES, PAIRWISE_MAX_FEATURES

RTOL = 1e-8


def blobs(seed, n=300, d=3, k=3, spread=4.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(k, size=n)
    scales = rng.uniform(0.5, 1.5, size=(k, d, d))
    noise = np.einsum("nde,ne->nd", scales[labels], rng.normal(size=(n, d)))
    return centres[labels] + noise


DATASETS = {
    "blobs3d": lambda: blobs(0),
    "blobs5d_overlap": lambda: blobs(1, n=400, d=5, k=3, spread=1.5),
    "faithful": lambda: np.loadtxt(
        jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1
    ),
}


def sklearn_start(model, params):
    """The same starting params expressed as scikit-learn's *_init arguments."""
    cov = np.asarray(params.covariances)
    if model.covariance_type in ("full", "tied"):
        precisions = np.linalg.inv(cov)
    else:
        precisions = 1.0 / cov
    return dict(
        weights_init=np.asarray(params.weights),
        means_init=np.asarray(params.means),
        precisions_init=precisions,
    )


def random_start(model, X, seed):
    key = jax.random.key(seed)
    w = jnp.ones(X.shape[0])
    return model.init_params(key, jnp.asarray(X), w, "random_from_data")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
# Seven iterations on every data set; one (the first M-step alone) on one of them: each
# max_iter compiles its own fit, and one iteration on the others added 18 s and no path.
@pytest.mark.parametrize("dataset, n_iter", [(name, 7) for name in sorted(DATASETS)] + [("faithful", 1)])
def test_matches_sklearn_after_same_iterations(covariance_type, dataset, n_iter):
    X = DATASETS[dataset]()
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type, reg_covar=1e-6)
    start = random_start(model, X, seed=n_iter)
    init = {name: np.asarray(value) for name, value in start._asdict().items()}
    res = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=n_iter, tol=0.0)

    sk = SkGaussianMixture(
        3, covariance_type=covariance_type, reg_covar=1e-6, max_iter=n_iter, tol=0.0,
        **sklearn_start(model, start),
    )
    with pytest.warns(Warning):  # sklearn warns that it did not converge
        sk.fit(X)
    assert int(res.n_iter) == n_iter == sk.n_iter_
    np.testing.assert_allclose(res.params.weights, sk.weights_, rtol=RTOL)
    np.testing.assert_allclose(res.params.means, sk.means_, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(res.params.covariances, sk.covariances_, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(res.log_likelihood, sk.score(X), rtol=RTOL)
    np.testing.assert_allclose(
        model.precisions_cholesky(res.params), sk.precisions_cholesky_, rtol=1e-7, atol=1e-10
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_predictions_and_criteria_match_sklearn(covariance_type):
    X = DATASETS["blobs3d"]()
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    res = jaxem.fit(model, X, key=jax.random.key(1), max_iter=5, tol=0.0)
    sk = SkGaussianMixture(3, covariance_type=covariance_type, max_iter=1, **sklearn_start(model, res.params))
    # Copy the fitted params into sklearn without running its EM.
    sk._initialize_parameters = lambda *a, **k: None
    sk.weights_, sk.means_, sk.covariances_ = (np.asarray(p) for p in res.params)
    sk.precisions_cholesky_ = np.asarray(model.precisions_cholesky(res.params))
    np.testing.assert_allclose(model.score_samples(res.params, X), sk.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(model.predict_proba(res.params, X), sk.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(model.predict(res.params, X), sk.predict(X))
    np.testing.assert_allclose(model.bic(res.params, X), sk.bic(X), rtol=1e-10)
    np.testing.assert_allclose(model.aic(res.params, X), sk.aic(X), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_are_additive(covariance_type):
    X = jnp.asarray(DATASETS["blobs3d"]())
    w = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, X.shape[0]))
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    params = random_start(model, X, seed=3)
    whole, ll = model.e_step(params, X, w)
    first, ll1 = model.e_step(params, X[:100], w[:100])
    second, ll2 = model.e_step(params, X[100:], w[100:])
    summed = jax.tree.map(jnp.add, first, second)
    for a, b in zip(jax.tree.leaves(summed), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ll1 + ll2, ll, rtol=1e-13)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_sample_weights_equal_repeated_rows(covariance_type):
    X = DATASETS["blobs3d"]()[:120]
    counts = np.random.default_rng(2).integers(0, 4, size=X.shape[0])
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    start = {n: np.asarray(v) for n, v in random_start(model, X, seed=5)._asdict().items()}
    weighted = jaxem.fit(model, X, key=jax.random.key(0), init=start, sample_weight=counts, max_iter=10, tol=0)
    repeated = jaxem.fit(model, np.repeat(X, counts, axis=0), key=jax.random.key(0), init=start, max_iter=10, tol=0)
    for a, b in zip(weighted.params, repeated.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, repeated.log_likelihood, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_has_the_params_moments(covariance_type):
    X = DATASETS["blobs3d"]()
    model = jaxem.GaussianMixture(2, covariance_type=covariance_type)
    params = jaxem.fit(model, X, key=jax.random.key(0), max_iter=20).params
    samples, labels = model.sample(jax.random.key(1), params, 200_000)
    assert samples.shape == (200_000, 3) and labels.shape == (200_000,)
    freq = np.bincount(np.asarray(labels), minlength=2) / labels.shape[0]
    np.testing.assert_allclose(freq, params.weights, atol=5e-3)
    for k in range(2):
        pts = np.asarray(samples)[np.asarray(labels) == k]
        np.testing.assert_allclose(pts.mean(0), params.means[k], atol=0.05)
        full = {
            "full": lambda: params.covariances[k],
            "tied": lambda: params.covariances,
            "diag": lambda: np.diag(params.covariances[k]),
            "spherical": lambda: np.eye(3) * params.covariances[k],
        }[covariance_type]()
        np.testing.assert_allclose(np.cov(pts.T), full, atol=0.15 * np.max(np.abs(full)))


def test_far_from_origin_float32_gives_positive_accurate_variances():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (500, 2)), rng.normal(6, 0.5, (500, 2))]) + 1e4
    model = jaxem.GaussianMixture(2, covariance_type="full")
    res32 = jaxem.fit(model, X.astype(np.float32), key=jax.random.key(0), n_restarts=2, max_iter=50)
    res64 = jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=50)
    assert res32.params.covariances.dtype == jnp.float32
    eig = np.linalg.eigvalsh(np.asarray(res32.params.covariances))
    assert np.all(eig > 0.1)
    order32 = np.argsort(np.asarray(res32.params.means[:, 0]))
    order64 = np.argsort(np.asarray(res64.params.means[:, 0]))
    np.testing.assert_allclose(
        res32.params.covariances[order32], res64.params.covariances[order64], rtol=2e-2, atol=2e-3
    )


def test_empty_component_stays_finite():
    X = np.random.default_rng(0).normal(size=(50, 2))
    model = jaxem.GaussianMixture(2, covariance_type="full")
    init = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1e3, 1e3]], covariances=np.stack([np.eye(2)] * 2))
    res = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=5, tol=0)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in res.params)
    assert float(res.params.weights[1]) < 1e-10
    assert bool(jnp.isfinite(res.log_likelihood))


def ten_features(seed=0):
    """(300, 10): more features than PAIRWISE_MAX_FEATURES, so features are gathered row pairs."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) + rng.normal(scale=3.0, size=10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("dataset", ["faithful", "ten_features"])
def test_feature_gemm_log_joint_equals_difference_form(covariance_type, use_jit, dataset):
    # Old Faithful (D=2) builds features pair by pair, ten features (D=10) from gathered row pairs.
    assert 2 <= PAIRWISE_MAX_FEATURES < 10
    X = jnp.asarray(DATASETS["faithful"]() if dataset == "faithful" else ten_features())
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    params = random_start(model, X, seed=4)
    log_joint = jax.jit(model.log_joint) if use_jit else model.log_joint
    from_features = log_joint(params, model.precompute(X))
    from_differences = model.component_log_prob(params, X) + jnp.log(params.weights)
    np.testing.assert_allclose(from_features, from_differences, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("chunk_size", [None, 7, 64])
@pytest.mark.parametrize("dataset", ["faithful", "ten_features"])
def test_starting_m_step_matches_sklearn_in_chunks_or_one_pass(covariance_type, chunk_size, dataset):
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    X = np.asarray(DATASETS["faithful"]() if dataset == "faithful" else ten_features())[:150]
    resp = np.random.default_rng(5).dirichlet(np.ones(3), size=len(X))  # 150 rows: 7 pads the last chunk
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type, reg_covar=1e-6)
    params = model.params_from_resp_t(jnp.asarray(X), jnp.asarray(resp.T), chunk_size)
    counts, means, covariances = _estimate_gaussian_parameters(X, resp, 1e-6, covariance_type)
    np.testing.assert_allclose(params.weights, counts / counts.sum(), rtol=1e-10)
    np.testing.assert_allclose(params.means, means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(params.covariances, covariances, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dataset", ["faithful", "ten_features"])
def test_features_and_their_gradient_equal_outer_products(dataset):
    X = jnp.asarray(DATASETS["faithful"]() if dataset == "faithful" else ten_features())
    model = jaxem.GaussianMixture(3)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(X.shape[1] + 1) * (X.shape[1] + 2) // 2))
    rows, cols = np.triu_indices(X.shape[1] + 1)

    def outer_products(X):  # the upper triangle of [x - mean, 1] [x - mean, 1]^T per row
        extended = jnp.concatenate([X - jnp.mean(X, axis=0), jnp.ones((X.shape[0], 1))], axis=1)
        return (extended[:, rows] * extended[:, cols]).T

    def loss(features_of, X):
        return jnp.sum(jnp.tanh(features_of(X)) * weights[:, None])

    features_of = lambda X: model.precompute(X).features  # noqa: E731
    np.testing.assert_allclose(features_of(X), outer_products(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        jax.grad(loss, argnums=1)(features_of, X), jax.grad(loss, argnums=1)(outer_products, X), rtol=1e-10, atol=1e-12
    )


def well_conditioned(seed, n, d, k):
    """Isotropic unit-variance clusters 3 apart, and a k-means++ start computed in float64."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=3.0, size=(k, d))[rng.integers(k, size=n)] + rng.normal(size=(n, d))
    return X, lambda model: model.init_params(jax.random.key(seed), jnp.asarray(X), jnp.ones(n), "kmeans++")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_fit_agrees_with_float64_per_sample(covariance_type):
    X, start_for = well_conditioned(7, n=400, d=6, k=3)
    model = jaxem.GaussianMixture(3, covariance_type=covariance_type)
    start = {n: np.asarray(v) for n, v in start_for(model)._asdict().items()}
    fits = {
        dtype: jaxem.fit(model, X.astype(dtype), key=jax.random.key(0), init=start, max_iter=8, tol=0)
        for dtype in (np.float32, np.float64)
    }
    np.testing.assert_allclose(fits[np.float32].trace, fits[np.float64].trace, rtol=0, atol=1e-4)
    # Per-sample log-likelihood of the float32 fit, evaluated exactly in float64.
    params32 = jaxem.GaussianMixtureParams(*(jnp.asarray(p, jnp.float64) for p in fits[np.float32].params))
    per_sample32 = model.score_samples(params32, X)
    per_sample64 = model.score_samples(fits[np.float64].params, X)
    np.testing.assert_allclose(per_sample32, per_sample64, rtol=0, atol=1e-4)


def test_float32_feature_log_densities_agree_with_float64_differences():
    X, start_for = well_conditioned(3, n=500, d=8, k=4)
    model = jaxem.GaussianMixture(4)
    params = start_for(model)
    params32 = jaxem.GaussianMixtureParams(*(p.astype(jnp.float32) for p in params))
    from_features = jax.scipy.special.logsumexp(
        model.log_joint(params32, model.precompute(jnp.asarray(X, jnp.float32))), axis=1
    )
    np.testing.assert_allclose(from_features, model.score_samples(params, X), rtol=0, atol=1e-4)
