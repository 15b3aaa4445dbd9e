"""weighted_posterior: responsibilities and log-likelihood against a numpy reference, for
component counts on both sides of UNROLL_COMPONENTS (sliced vs reduced) and both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem.models.mixture import weighted_posterior
from jaxem.sizes import UNROLL_COMPONENTS


def numpy_posterior(log_joint, weights):
    """(resp, log_lik) for log_joint: (n, K), by numpy's stable log-sum-exp."""
    peak = log_joint.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(log_joint - peak).sum(axis=1))
    resp = weights[:, None] * np.exp(log_joint - log_norm[:, None])
    return resp, float(np.sum(weights * log_norm))


@pytest.mark.parametrize("n_components", [1, 3, UNROLL_COMPONENTS, UNROLL_COMPONENTS + 4])
@pytest.mark.parametrize("axis", [0, 1])
def test_weighted_posterior_matches_numpy_and_its_gradient_is_resp(n_components, axis):
    rng = np.random.default_rng(n_components)
    log_joint = rng.normal(scale=30.0, size=(50, n_components)) - 500.0
    weights = rng.uniform(0.0, 2.0, size=50)
    expected_resp, expected_log_lik = numpy_posterior(log_joint, weights)
    layout = log_joint if axis == 1 else log_joint.T
    resp, log_lik = weighted_posterior(jnp.asarray(layout), jnp.asarray(weights), axis)
    np.testing.assert_allclose(resp if axis == 1 else resp.T, expected_resp, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_lik, expected_log_lik, rtol=1e-13)
    # d/dl sum_n w_n log sum_k exp(l_nk) = w_n p(z=k | x_n): the E-step's own output.
    grad = jax.grad(lambda l: weighted_posterior(l, jnp.asarray(weights), axis)[1])(jnp.asarray(layout))
    np.testing.assert_allclose(grad if axis == 1 else grad.T, expected_resp, rtol=1e-12, atol=1e-300)


def test_zero_weight_point_with_underflowing_density_adds_nothing():
    log_joint = jnp.asarray([[0.0, -1.0], [-jnp.inf, -jnp.inf]])
    resp, log_lik = weighted_posterior(log_joint, jnp.asarray([1.0, 0.0]), axis=1)
    np.testing.assert_allclose(log_lik, np.logaddexp(0.0, -1.0), rtol=1e-14)
    assert np.all(np.isfinite(resp[0]))
