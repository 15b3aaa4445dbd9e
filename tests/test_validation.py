"""Bad inputs raise clear ValueErrors before anything is compiled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import api

X_GOOD = np.random.default_rng(0).normal(size=(20, 2))


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if jaxem.fit gets as far as the compiled program."""

    def refuse(*args, **kwargs):
        raise AssertionError("validation let bad input through to compilation")

    monkeypatch.setattr(api, "_fit", refuse)


def fit(X, **kwargs):
    model = kwargs.pop("model", jaxem.GaussianMixture(2))
    return jaxem.fit(model, X, key=jax.random.key(0), **kwargs)


def test_nan_message_gives_count_and_first_row(no_compile):
    X = X_GOOD.copy()
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"3 NaN or infinite value\(s\) in 2 row\(s\); the first is row 3"):
        fit(X)


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros(5), "must be 2-D"),
        (np.zeros((2, 3, 4)), "must be 2-D"),
        (np.zeros((0, 3)), "at least one sample"),
        (np.array([["a", "b"], ["c", "d"]]), "must hold numbers"),
        (np.array([[1, None]], dtype=object), "must hold numbers"),
    ],
)
def test_bad_data_shapes_and_dtypes(no_compile, X, message):
    with pytest.raises(ValueError, match=message):
        fit(X)


def test_more_components_than_samples(no_compile):
    with pytest.raises(ValueError, match="n_components=5 must be <= n_samples=4"):
        fit(X_GOOD[:4], model=jaxem.GaussianMixture(5))


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.ones(19), r"shape \(20,\)"),
        (-np.ones(20), "non-negative"),
        (np.zeros(20), "sums to zero"),
        (np.full(20, np.nan), "NaN"),
    ],
)
def test_bad_sample_weights(no_compile, weights, message):
    with pytest.raises(ValueError, match=message):
        fit(X_GOOD, sample_weight=weights)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_restarts=0), "n_restarts"),
        (dict(max_iter=0), "max_iter"),
        (dict(tol=-1.0), "tol"),
        (dict(criterion="elbo"), "criterion"),
        (dict(init="kmeans"), "init"),
        (dict(init={"weights": [0.5, 0.5]}), "missing"),
        (dict(init=dict(weights=[0.5, 0.5], means=np.zeros((2, 2)), covariances=np.zeros((2, 2, 2)))), "positive definite"),
        (dict(init=dict(weights=[0.2, 0.5], means=np.zeros((2, 2)), covariances=np.stack([np.eye(2)] * 2))), "sum to 1"),
        (dict(init=dict(weights=[0.5, 0.5], means=np.zeros((3, 2)), covariances=np.stack([np.eye(2)] * 2))), "shape"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_options(no_compile, options, message):
    with pytest.raises(ValueError, match=message):
        fit(X_GOOD, **options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_components=0), "n_components"),
        (dict(n_components=2, covariance_type="banana"), "covariance_type"),
        (dict(n_components=2, reg_covar=-1.0), "reg_covar"),
    ],
)
def test_bad_model_configuration(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaxem.GaussianMixture(**kwargs)


def test_integer_data_is_fitted_in_floating_point():
    X = np.random.default_rng(1).integers(0, 20, size=(40, 2))
    res = fit(X, max_iter=5)
    assert jnp.issubdtype(res.params.means.dtype, jnp.floating)


def test_tracing_skips_value_checks_but_keeps_shape_checks():
    model = jaxem.GaussianMixture(2)
    run = jax.jit(lambda X: jaxem.fit(model, X, key=jax.random.key(0), max_iter=3).log_likelihood)
    assert np.isfinite(run(jnp.asarray(X_GOOD)))
    with pytest.raises(ValueError, match="must be 2-D"):
        run(jnp.zeros(5))
