"""jaxem.schedule.while_loop: vmapped over problems it must compute exactly what separate
loops compute, whatever the number of slots, and so must a vmapped fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import schedule


def collatz_steps(start):
    """Reference: iterations of the Collatz map until 1 (a data-dependent trip count)."""
    n, steps = int(start), 0
    while n != 1:
        n, steps = (n // 2 if n % 2 == 0 else 3 * n + 1), steps + 1
    return steps


def collatz_state(start):
    # A float32 leaf makes the scheduler carry the int32 leaves bitcast in a float32 buffer
    # (small ints are float denormals, which must come back bit for bit), plus a bool.
    return {
        "n": jnp.asarray(start, jnp.int32), "steps": jnp.zeros((), jnp.int32), "trace": jnp.zeros(128, jnp.int32),
        "half": jnp.asarray(start / 2, jnp.float32), "odd": jnp.asarray(start % 2 == 1),
    }


def running(state):
    return state["n"] != 1


def collatz_body(state, data):
    n = state["n"]
    new = jnp.where(n % 2 == 0, n // 2, 3 * n + 1) + (0 * jnp.asarray(data["offset"])).astype(n.dtype)
    return {
        "n": new, "steps": state["steps"] + 1, "trace": state["trace"].at[state["steps"]].set(new),
        "half": (new / 2).astype(jnp.float32), "odd": new % 2 == 1,
    }


STARTS = np.array([27, 1, 6, 97, 2, 871, 7, 1, 3, 31, 9, 54])


@pytest.mark.parametrize("slots", [1, 3, 5, 8, len(STARTS), 40, "auto", None])
def test_vmapped_loop_equals_separate_loops(slots):
    data = {"offset": jnp.arange(len(STARTS))}
    loop = lambda start, data: schedule.while_loop(running, collatz_body, collatz_state(start), data, slots=slots)
    batched = jax.jit(jax.vmap(loop))(jnp.asarray(STARTS), data)
    separate = [jax.lax.while_loop(running, lambda s: collatz_body(s, {"offset": 0}), collatz_state(s)) for s in STARTS]
    np.testing.assert_array_equal(batched["steps"], [collatz_steps(s) for s in STARTS])
    np.testing.assert_array_equal(batched["trace"], np.stack([s["trace"] for s in separate]))
    np.testing.assert_array_equal(batched["n"], 1)
    np.testing.assert_array_equal(batched["half"], 0.5)
    np.testing.assert_array_equal(batched["odd"], True)


def test_unbatched_data_runs_members_in_lockstep_and_nests_under_a_vmap_over_problems():
    # Inner vmap: "restarts" sharing one problem's data; outer vmap: problems.
    starts = jnp.asarray(STARTS.reshape(4, 3))
    offsets = {"offset": jnp.arange(4)}

    def problem(starts, data):
        return jax.vmap(lambda s: schedule.while_loop(running, collatz_body, collatz_state(s), data, slots=2))(starts)

    batched = jax.jit(jax.vmap(problem))(starts, offsets)
    np.testing.assert_array_equal(batched["steps"], np.vectorize(collatz_steps)(STARTS).reshape(4, 3))


def test_unbatched_start_state_is_broadcast():
    # Same start for every problem, only the data differs.
    data = {"offset": jnp.arange(5)}
    out = jax.vmap(lambda d: schedule.while_loop(running, collatz_body, collatz_state(27), d, slots=2))(data)
    np.testing.assert_array_equal(out["steps"], [collatz_steps(27)] * 5)


def blob_problems(n_problems, n=120, seed=0):
    rng = np.random.default_rng(seed)
    separation = rng.uniform(1.0, 4.0, size=(n_problems, 1, 1))
    labels = rng.integers(2, size=(n_problems, n, 1))
    return jnp.asarray(rng.normal(size=(n_problems, n, 2)) + labels * separation)


@pytest.mark.parametrize("n_restarts", [1, 2])
def test_vmapped_fit_with_few_slots_equals_separate_fits(n_restarts):
    X = blob_problems(7)
    keys = jax.random.split(jax.random.key(3), 7)
    model = jaxem.GaussianMixture(2)
    options = dict(n_restarts=n_restarts, max_iter=60, tol=1e-6)
    batched = jax.jit(jax.vmap(lambda X, k: jaxem.fit(model, X, key=k, vmap_slots=2, **options)))(X, keys)
    separate = [jaxem.fit(model, X[i], key=keys[i], **options) for i in range(7)]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *separate)
    assert len(np.unique(stacked.restarts.n_iter)) > 3  # the fits stop at different iterations
    for field in ("n_iter", "status", "best_restart"):
        np.testing.assert_array_equal(getattr(batched, field), getattr(stacked, field))
    np.testing.assert_array_equal(batched.restarts.n_iter, stacked.restarts.n_iter)
    np.testing.assert_allclose(batched.trace, stacked.trace, rtol=1e-12)
    for a, b in zip(batched.params, stacked.params):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_of_a_vmapped_fit_equals_separate_gradients():
    X = blob_problems(5, n=80, seed=1)
    keys = jax.random.split(jax.random.key(4), 5)
    model = jaxem.GaussianMixture(2)

    def loss(X, key, slots):
        return jnp.sum(jaxem.fit(model, X, key=key, tol=1e-10, max_iter=300, vmap_slots=slots).params.means ** 2)

    batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, 0, None)), static_argnums=2)(X, keys, 2)
    separate = np.stack([jax.grad(loss)(X[i], keys[i], None) for i in range(5)])
    np.testing.assert_allclose(batched, separate, rtol=1e-8, atol=1e-12)
    assert np.all(np.isfinite(batched)) and np.any(batched != 0)


@pytest.mark.parametrize("slots", [0, -1, 2.5, "all", True])
def test_invalid_vmap_slots_are_rejected(slots):
    with pytest.raises(ValueError, match="vmap_slots"):
        jaxem.fit(jaxem.GaussianMixture(2), np.random.default_rng(0).normal(size=(20, 2)), key=jax.random.key(0), vmap_slots=slots)


def test_forward_mode_through_a_vmapped_fit_without_reverse_mode():
    # diff=None keeps a plain while_loop, so vmap of jvp works; translating the data
    # translates the fitted means (a closed-form tangent).
    X = blob_problems(3, n=60, seed=2)
    model = jaxem.GaussianMixture(2)
    fit_means = lambda X: jaxem.fit(model, X, key=jax.random.key(0), diff=None, tol=1e-10, max_iter=300).params.means
    shift = jnp.ones_like(X[0])
    tangents = jax.vmap(lambda X: jax.jvp(fit_means, (X,), (shift,))[1])(X)
    np.testing.assert_allclose(tangents, 1.0, rtol=1e-8)
