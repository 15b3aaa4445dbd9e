"""Every matrix product of a fit, forward and backward, is traced at full precision
(jaxem.precision): XLA's default would run float32 products as TF32 on NVIDIA GPUs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem


def dot_precisions(lowered_text):
    """Operand precisions of every dot_general in a lowered StableHLO module."""
    dots = lowered_text.count("stablehlo.dot_general")
    precisions = re.findall(r"stablehlo\.dot_general[^\n]*precision = \[(\w+), (\w+)\]", lowered_text)
    assert len(precisions) == dots, "a dot_general without a precision attribute"
    return [p for pair in precisions for p in pair]


@pytest.mark.parametrize("n_features, n_components", [(3, 2), (10, 9)])
@pytest.mark.parametrize("diff", ["implicit", "unroll"])
def test_a_fit_and_its_gradient_trace_every_matrix_product_at_highest_precision(n_features, n_components, diff):
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(300, n_features)), jnp.float32)
    model = jaxem.GaussianMixture(n_components)

    def log_likelihood(X):
        return jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=4, diff=diff).log_likelihood

    precisions = dot_precisions(jax.jit(jax.value_and_grad(log_likelihood)).lower(X).as_text())
    assert len(precisions) > 10
    assert set(precisions) == {"HIGHEST"}
