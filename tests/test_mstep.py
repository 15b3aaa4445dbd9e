"""M-step strategies: guarded gradient ascent, freezing, the Q function."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxem
from jaxem import constraints, mstep
from jaxem.models.gaussian_mixture import GaussianMixtureParams

# A concave objective of constrained params with a known maximiser:
# weights -> Dirichlet-like log term maximised at TARGET_WEIGHTS, scale -> s log s - ... at 2.
TARGET_WEIGHTS = jnp.array([0.2, 0.3, 0.5])
CONSTRAINTS = {"weights": "simplex", "scale": "positive"}
START = {"weights": jnp.array([1 / 3, 1 / 3, 1 / 3]), "scale": jnp.array(0.5)}


def objective(params):
    # argmax over the simplex of sum t log w is w = t; argmax of 2 log s - s is s = 2.
    return jnp.sum(TARGET_WEIGHTS * jnp.log(params["weights"])) + 2 * jnp.log(params["scale"]) - params["scale"]


def ascend(optimizer, n_steps, mask=None, jit=True):
    mask = mask or {"weights": False, "scale": False}

    def run(params):
        opt_state = optimizer.init(constraints.to_unconstrained(CONSTRAINTS, params))
        return mstep.gradient_ascent(objective, params, opt_state, optimizer, CONSTRAINTS, mask, n_steps)

    return (jax.jit(run) if jit else run)(START)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("optimizer", [optax.lbfgs(), optax.adam(0.1)], ids=["lbfgs", "adam"])
def test_gradient_ascent_finds_the_known_maximiser(optimizer, jit):
    params, _ = ascend(optimizer, 200, jit=jit)
    np.testing.assert_allclose(params["weights"], TARGET_WEIGHTS, atol=1e-5)
    np.testing.assert_allclose(params["scale"], 2.0, atol=1e-5)


@pytest.mark.parametrize("jit", [True, False])
def test_lbfgs_output_is_the_maximiser_to_rounding_whatever_the_rounding_of_the_start(jit):
    """Near the maximiser computed values tie to rounding; the iterate kept is then the one
    with the smaller gradient, so the output is the maximiser to 1e-14 and does not move
    when the start moves by an ulp (chosen by value, it was 2.1e-9 off, and an ulp moved it
    by as much)."""
    ulp = np.finfo(np.float64).eps
    for shift in (0.0, ulp, -ulp, 3 * ulp):
        start = {name: value * (1 + shift) for name, value in START.items()}
        opt_state = optax.lbfgs().init(constraints.to_unconstrained(CONSTRAINTS, start))
        run = lambda p, s: mstep.gradient_ascent(objective, p, s, optax.lbfgs(), CONSTRAINTS, {"weights": False, "scale": False}, 50)  # noqa: E731
        params, _ = (jax.jit(run) if jit else run)(start, opt_state)
        np.testing.assert_allclose(params["weights"], TARGET_WEIGHTS, rtol=1e-14, err_msg=str(shift))
        np.testing.assert_allclose(params["scale"], 2.0, rtol=1e-14, err_msg=str(shift))


def test_a_diverging_optimizer_returns_the_start_exactly():
    params, _ = ascend(optax.sgd(1e6), 5)
    for name in START:
        np.testing.assert_array_equal(params[name], START[name])


def test_gradient_ascent_never_returns_a_worse_point():
    for learning_rate in (0.01, 1.0, 30.0):
        params, _ = ascend(optax.sgd(learning_rate), 3)
        assert objective(params) >= objective(START)


def test_frozen_leaves_do_not_move_in_gradient_ascent():
    params, _ = ascend(optax.lbfgs(), 50, mask={"weights": True, "scale": False})
    np.testing.assert_array_equal(params["weights"], START["weights"])
    np.testing.assert_allclose(params["scale"], 2.0, atol=1e-6)


def test_frozen_spec_forms_give_the_same_mask():
    params = GaussianMixtureParams(jnp.ones(2), jnp.ones((2, 1)), jnp.ones(2))
    expected = GaussianMixtureParams(True, False, True)
    for frozen in (["weights", "covariances"], {"weights", "covariances"}, expected):
        assert mstep.FrozenSpec.from_user(frozen).mask(params) == expected
    assert not mstep.FrozenSpec.from_user(None)
    with pytest.raises(ValueError, match="structure"):
        mstep.FrozenSpec.from_user({"weights": True}).mask(params)


def test_expected_log_joint_ignores_zero_responsibilities():
    log_joint = jnp.array([[-jnp.inf, -1.0], [-2.0, -3.0]])
    resp = jnp.array([[0.0, 1.0], [0.25, 0.75]])
    assert float(mstep.expected_log_joint(log_joint, resp)) == pytest.approx(-1.0 - 0.5 - 2.25, rel=1e-15)


def blobs(seed=0, n=200):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-2, 1, (n // 2, 2)), rng.normal(2, 0.5, (n // 2, 2))])


@pytest.mark.parametrize("frozen", ["weights", "means", ("means", "covariances")])
def test_freeze_gaussian_mixture_keeps_frozen_params_and_is_monotone(frozen):
    X = blobs()
    model = jaxem.GaussianMixture(2)
    start = model.init_params(jax.random.key(1), jnp.asarray(X), jnp.ones(len(X)), "kmeans++")
    init = {name: np.asarray(value) for name, value in start._asdict().items()}
    result = jaxem.fit(jaxem.freeze(model, frozen), X, key=jax.random.key(0), init=init, max_iter=30, tol=0.0)
    assert int(result.n_decreases) == 0
    names = {frozen} if isinstance(frozen, str) else set(frozen)
    for name in names:
        np.testing.assert_array_equal(getattr(result.params, name), init[name])
    if names == {"weights"}:
        # Weights and Gaussian parameters separate in Q: the free update is the closed form's.
        resp = np.asarray(model.predict_proba(result.params, X))
        means = resp.T @ X / resp.sum(0)[:, None]
        np.testing.assert_allclose(result.params.means, means, rtol=1e-6)


def test_frozen_weights_em_follows_numpy_em_to_rounding():
    """Weights frozen, the guarded ECM step is EM's conditional maximiser, which the guard
    keeps unless Q drops beyond rounding: after 300 iterations means and covariances equal a
    numpy EM with fixed weights to 1e-12. A guard that rejected steps whose Q rounded below
    the old one stalled near the fixed point, 1.5e-8 from it."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 2)), 0.8 * rng.normal(size=(200, 2)) + [1.5, 1.0]])
    weights, means, covariances = np.array([0.3, 0.7]), np.array([[0.0, 0.2], [1.0, 1.0]]), np.stack([np.eye(2)] * 2)
    init = {"weights": weights, "means": means, "covariances": covariances}
    reg_covar = jaxem.GaussianMixture(2).reg_covar
    for _ in range(300):
        log_joint = np.log(weights) + np.stack([multivariate_normal(m, c).logpdf(X) for m, c in zip(means, covariances)], 1)
        resp = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
        counts = resp.sum(0)
        means = resp.T @ X / counts[:, None]
        covariances = np.stack([
            (resp[:, k, None] * (X - means[k])).T @ (X - means[k]) / counts[k] + reg_covar * np.eye(2) for k in range(2)
        ])
    model = jaxem.freeze(jaxem.GaussianMixture(2), "weights")
    result = jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=300, tol=0.0)
    np.testing.assert_allclose(result.params.means, means, rtol=1e-12)
    np.testing.assert_allclose(result.params.covariances, covariances, rtol=1e-12)
