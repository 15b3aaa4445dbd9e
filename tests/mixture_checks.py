"""Checks shared by tests/test_<family>.py (the engine-level contract every family meets
is tests/test_contract.py).

Each compares the model against something it does not compute itself: the gradient of Q
from `log_joint` (through jaxem.constraints), predictions by hand, or a fit's own trace.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from jaxem import constraints


def as_init(params):
    """A params NamedTuple as the dict jaxem.fit accepts for `init`."""
    return {name: np.asarray(value) for name, value in params._asdict().items()}


def assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def expected_complete_log_lik(model, old_params, X, sample_weight):
    """Q(., old) + log_prior as a function of unconstrained coordinates, from log_joint."""
    X = jnp.asarray(X)
    resp = model.predict_proba(old_params, X) * jnp.asarray(sample_weight)[:, None]
    names = model.param_constraints()

    def q(unconstrained):
        params = constraints.from_unconstrained(names, unconstrained)
        return jnp.sum(resp * model.log_joint(params, X)) + model.log_prior(params)

    return q


def assert_m_step_maximises_q(model, old_params, X, sample_weight):
    """The closed-form M-step output is a stationary point of Q (gradient ~ 0), and Q rose."""
    X = jnp.asarray(X)
    stats, _ = model.e_step(old_params, X, jnp.asarray(sample_weight))
    new_params = model.m_step(stats, old_params)
    q = expected_complete_log_lik(model, old_params, X, sample_weight)
    names = model.param_constraints()
    new_u = constraints.to_unconstrained(names, new_params)
    old_u = constraints.to_unconstrained(names, old_params)
    grad_new = jax.grad(q)(new_u)
    grad_old = jax.grad(q)(old_u)
    largest_old = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_old))
    assert largest_old > 1e-3, "the starting params should not already maximise Q"
    for g in jax.tree.leaves(grad_new):
        np.testing.assert_allclose(g, 0.0, atol=1e-8 * float(np.sum(sample_weight)))
    assert float(q(new_u)) > float(q(old_u))


def assert_monotone(result):
    trace = np.asarray(result.trace)
    trace = trace[~np.isnan(trace)]
    assert int(result.n_decreases) == 0
    assert np.all(np.diff(trace) >= -1e-12 * np.abs(trace[1:]))


def assert_predictions_by_hand(model, params, X, component_log_density, n_free_parameters):
    """Predictions and bic/aic against an independent log p(x | z=k): (n_samples, K).

    The reference densities come from scipy.stats or the textbook formula in the test.
    """
    n = X.shape[0]
    log_joint = component_log_density + np.log(np.asarray(params.weights))[None, :]
    log_lik = logsumexp(log_joint, axis=1)
    np.testing.assert_allclose(model.score_samples(params, X), log_lik, rtol=1e-10)
    np.testing.assert_allclose(model.predict_proba(params, X), np.exp(log_joint - log_lik[:, None]), atol=1e-10)
    np.testing.assert_array_equal(model.predict(params, X), np.argmax(log_joint, axis=1))
    total = float(np.sum(log_lik))
    assert model.n_parameters(X.shape[1]) == n_free_parameters
    np.testing.assert_allclose(model.bic(params, X), -2 * total + n_free_parameters * np.log(n), rtol=1e-10)
    np.testing.assert_allclose(model.aic(params, X), -2 * total + 2 * n_free_parameters, rtol=1e-10)
