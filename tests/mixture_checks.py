"""Checks every mixture family must pass, shared by tests/test_<family>.py.

Each compares the model against something it does not compute itself: the E-step on the
halves of the data, the fit on repeated rows, the gradient of Q from `log_joint` (through
jaxem.constraints), or a fit's own trace.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

import jaxem
from jaxem import constraints


def as_init(params):
    """A params NamedTuple as the dict jaxem.fit accepts for `init`."""
    return {name: np.asarray(value) for name, value in params._asdict().items()}


def assert_trees_close(a, b, rtol, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_statistics_additive(model, params, X, sample_weight, split):
    """E-step on X[:split] plus E-step on X[split:] equals the E-step on X."""
    X, w = jnp.asarray(X), jnp.asarray(sample_weight)
    e_step = jax.jit(model.e_step)
    whole, log_lik = e_step(params, X, w)
    first, log_lik1 = e_step(params, X[:split], w[:split])
    second, log_lik2 = e_step(params, X[split:], w[split:])
    assert_trees_close(jax.tree.map(jnp.add, first, second), whole, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(log_lik1 + log_lik2, log_lik, rtol=1e-12)


def assert_em_update_same_with_and_without_jit(model, params, X):
    X = jnp.asarray(X)
    w = jnp.ones(X.shape[0], X.dtype)
    update = lambda p: jaxem.core.em_update(model, p, (), X, w)
    assert_trees_close(jax.jit(update)(params), update(params), rtol=1e-12, atol=1e-14)


def assert_weights_equal_repeated_rows(model, X, start, n_iter=10, seed=2):
    """Integer sample weights give the same fit as repeating rows that many times."""
    counts = np.random.default_rng(seed).integers(0, 4, size=X.shape[0])
    key = jax.random.key(0)
    options = dict(key=key, init=as_init(start), max_iter=n_iter, tol=0.0)
    weighted = jaxem.fit(model, X, sample_weight=counts, **options)
    repeated = jaxem.fit(model, np.repeat(X, counts, axis=0), **options)
    assert_trees_close(weighted.params, repeated.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, repeated.log_likelihood, rtol=1e-12)


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
