"""Bernoulli mixture (latent class model for binary data), closed-form MAP M-step.

log p(x | z=k) = sum_d [x_d log p_kd + (1 - x_d) log(1 - p_kd)]. The statistics
n_k = sum r and s_k = sum r x are additive. The M-step is the MAP estimate under an
independent Beta(1 + a, 1 + a) prior on every probability (a = pseudo_count):
p_kd = (s_kd + a) / (n_k + 2 a), and `log_prior` returns a * sum [log p + log(1 - p)], so
EM is monotone in the penalised objective. a > 0 keeps every probability strictly inside
(0, 1), so no log(0) appears; a = 0 is maximum likelihood.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import xlog1py, xlogy

from jaxem import validation
from jaxem.models import checks
from jaxem.models.mixture import MixtureModel
from jaxem.pytrees import register_model


class BernoulliMixtureParams(NamedTuple):
    """weights: (K,) mixing proportions; probs: (K, D) probability that feature d is 1."""

    weights: jax.Array
    probs: jax.Array


class BernoulliMixtureStats(NamedTuple):
    """counts: (K,) sum of r; sums: (K, D) sum of r x (weighted number of ones)."""

    counts: jax.Array
    sums: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class BernoulliMixture(MixtureModel):
    """Mixture of products of independent Bernoulli distributions.

    Data: X (n_samples, D) with entries 0 or 1 (booleans and integers are accepted).
    Feature d of a point from component k is 1 with probability probs[k, d].

    Args:
      n_components: number of mixture components K.
      pseudo_count: a >= 0 (a pytree leaf), the Beta(1 + a, 1 + a) prior's pseudo-count
        added to both outcomes of every feature; the default 1e-3 keeps probabilities away
        from 0 and 1 without visibly moving them. 0 gives maximum likelihood.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    pseudo_count: Any = 1e-3

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        checks.check_hyperparameter(self.pseudo_count, "pseudo_count")

    def check_values(self, X: jax.Array) -> None:
        checks.check_integer_data(X, "binary values", low=0, high=1)

    # --- densities --------------------------------------------------------------------------
    def component_log_prob(self, params: BernoulliMixtureParams, X: jax.Array) -> jax.Array:
        """log prod_d Bernoulli(x_d | probs[k, d]): (n_samples, n_components)."""
        probs = params.probs[None, :, :]
        x = X[:, None, :]
        return jnp.sum(xlogy(x, probs) + xlog1py(1.0 - x, -probs), axis=-1)

    def log_prior(self, params: BernoulliMixtureParams) -> jax.Array:
        """a * sum_kd [log p_kd + log(1 - p_kd)], the Beta(1 + a, 1 + a) log density up to a constant."""
        a = jnp.asarray(self.pseudo_count, params.probs.dtype)
        return jnp.sum(xlogy(a, params.probs) + xlog1py(a, -params.probs))

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: BernoulliMixtureParams, X: jax.Array, resp: jax.Array
    ) -> BernoulliMixtureStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        return BernoulliMixtureStats(jnp.sum(resp, axis=0), resp.T @ X)

    def m_step(
        self, stats: BernoulliMixtureStats, params: BernoulliMixtureParams
    ) -> BernoulliMixtureParams:
        """Closed-form MAP: weights n_k / n, probs (s_k + a) / (n_k + 2 a).

        Ten machine epsilons join the pseudo-count, so a component with no points keeps
        valid probabilities (1/2) even when a = 0. Probabilities are clipped to [0, 1]: the
        GEMM that sums x can exceed the sum of the same responsibilities by a rounding
        error, and a probability of 1 + 1e-15 would make log(1 - p) NaN.
        """
        dtype = stats.sums.dtype
        tiny = 10 * jnp.finfo(dtype).eps
        a = jnp.asarray(self.pseudo_count, dtype) + tiny
        probs = jnp.clip((stats.sums + a) / (stats.counts[:, None] + 2.0 * a), 0.0, 1.0)
        counts = stats.counts + tiny
        return BernoulliMixtureParams(counts / jnp.sum(counts), probs)

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> BernoulliMixtureParams:
        """One M-step from weighted responsibilities (n_samples, K)."""
        return self.m_step(self.statistics(None, X, resp), None)

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> BernoulliMixtureParams:
        """Validated params from a dict with keys weights (K,) and probs (K, D) in (0, 1)."""
        k = self.n_components
        arrays = checks.arrays_from_dict(values, {"weights": (k,), "probs": (k, n_features)})
        checks.check_probabilities(arrays["weights"], "weights")
        checks.check_in_range(arrays["probs"], "probs", 0.0, 1.0)
        return BernoulliMixtureParams(*(jnp.asarray(arrays[n], dtype) for n in ("weights", "probs")))

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> BernoulliMixtureParams:
        """Constraint names per params leaf (see jaxem.constraints)."""
        return BernoulliMixtureParams("simplex", "unit_interval")

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights and K * D probabilities."""
        return self.n_components * n_features + self.n_components - 1

    def sample(
        self, key: jax.Array, params: BernoulliMixtureParams, n_samples: int
    ) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D) of 0.0/1.0, labels (n_samples,))."""
        label_key, bit_key = jax.random.split(key)
        labels = self.sample_labels(label_key, params, n_samples)
        probs = params.probs[labels]
        return jax.random.bernoulli(bit_key, probs).astype(probs.dtype), labels
