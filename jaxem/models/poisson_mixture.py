"""Poisson mixture: independent Poisson counts per feature, closed-form M-step.

log p(x | z=k) = sum_d [x_d log lambda_kd - lambda_kd - log x_d!]. The statistics
n_k = sum r and s_k = sum r x are additive; the M-step is lambda_k = s_k / n_k, floored at
`min_rate`. Q is concave in each rate, so the floored value is the exact maximiser of Q
over rates >= min_rate and EM stays monotone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

from jaxem import validation
from jaxem.constraints import Interval
from jaxem.models import checks
from jaxem.models.mixture import MixtureModel
from jaxem.pytrees import register_model

# A start's rates are at least this fraction of their feature's weighted mean (see
# PoissonMixture.params_from_resp_t).
START_RATE_FRACTION = 0.1


class PoissonMixtureParams(NamedTuple):
    """weights: (K,) mixing proportions; rates: (K, D) Poisson means per component and feature."""

    weights: jax.Array
    rates: jax.Array


class PoissonMixtureStats(NamedTuple):
    """counts: (K,) sum of r; sums: (K, D) sum of r x."""

    counts: jax.Array
    sums: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class PoissonMixture(MixtureModel):
    """Mixture of products of independent Poisson distributions.

    Data: X (n_samples, D) of non-negative whole-number counts (floats holding integers are
    accepted; jaxem.fit turns integer arrays into floats). Feature d of a point from
    component k is Poisson(rates[k, d]), independently of the other features.

    Args:
      n_components: number of mixture components K.
      min_rate: floor >= 0 on every fitted rate (a pytree leaf). The default 1e-10 keeps
        log-rates finite when a component sees only zeros in a feature.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    min_rate: Any = 1e-10

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        checks.check_hyperparameter(self.min_rate, "min_rate")

    def check_values(self, X: jax.Array) -> None:
        checks.check_integer_data(X, "non-negative counts", low=0)

    # --- densities --------------------------------------------------------------------------
    def component_log_prob(self, params: PoissonMixtureParams, X: jax.Array) -> jax.Array:
        """log prod_d Poisson(x_d | rates[k, d]): (n_samples, n_components)."""
        rates = params.rates[None, :, :]
        x = X[:, None, :]
        return jnp.sum(xlogy(x, rates) - rates - gammaln(x + 1.0), axis=-1)

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: PoissonMixtureParams, X: jax.Array, resp: jax.Array
    ) -> PoissonMixtureStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        return PoissonMixtureStats(jnp.sum(resp, axis=0), resp.T @ X)

    def m_step(self, stats: PoissonMixtureStats, params: PoissonMixtureParams) -> PoissonMixtureParams:
        """Closed-form maximiser of Q: weights n_k / n, rates max(s_k / n_k, min_rate)."""
        dtype = stats.sums.dtype
        counts = stats.counts + 10 * jnp.finfo(dtype).eps
        rates = jnp.maximum(stats.sums / counts[:, None], jnp.asarray(self.min_rate, dtype))
        return PoissonMixtureParams(counts / jnp.sum(counts), rates)

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> PoissonMixtureParams:
        """One M-step from weighted responsibilities (n_samples, K)."""
        return self.m_step(self.statistics(None, X, resp), None)

    def params_from_resp_t(self, X: jax.Array, resp_t: jax.Array, chunk_size: int | None = None) -> PoissonMixtureParams:
        """Starting params from weighted responsibilities (K, n_samples): one M-step, then
        every rate raised to at least START_RATE_FRACTION of its feature's weighted mean.

        A hard start (k-means++) can give a component only zero counts, so a rate at the
        floor min_rate. Near the floor EM raises a rate by a few percent per iteration (the
        London deaths data: 9%, hundreds of iterations from 1e-9), a loglik change per
        iteration below any useful tol, and L-BFGS in log-rate coordinates sees no
        gradient: from such starts accelerated fits stopped at -log L = 1994.05, the
        zero-inflated fit, instead of the optimum 1989.95 (issue #18). A feature with no
        counts at all keeps the floor.
        """
        params = self.params_from_resp(X, resp_t.T)
        mean = jnp.sum(resp_t @ X, axis=0) / jnp.sum(resp_t)
        return params._replace(rates=jnp.maximum(params.rates, START_RATE_FRACTION * mean))

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> PoissonMixtureParams:
        """Validated params from a dict with keys weights (K,) and rates (K, D), rates > 0."""
        k = self.n_components
        arrays = checks.arrays_from_dict(values, {"weights": (k,), "rates": (k, n_features)})
        checks.check_probabilities(arrays["weights"], "weights")
        if arrays["rates"].min() <= 0:
            raise ValueError("init rates must be positive.")
        return PoissonMixtureParams(*(jnp.asarray(arrays[n], dtype) for n in ("weights", "rates")))

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> PoissonMixtureParams:
        """Constraint names per params leaf (see jaxem.constraints); rates >= min_rate, the
        M-step's floor, so that accelerators stay where EM's M-step can go."""
        return PoissonMixtureParams("simplex", Interval(self.min_rate))

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights and K * D rates."""
        return self.n_components * n_features + self.n_components - 1

    def sample(
        self, key: jax.Array, params: PoissonMixtureParams, n_samples: int
    ) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D) float counts, labels (n_samples,))."""
        label_key, count_key = jax.random.split(key)
        labels = self.sample_labels(label_key, params, n_samples)
        rates = params.rates[labels]
        return jax.random.poisson(count_key, rates).astype(rates.dtype), labels
