"""Categorical mixture (latent class model), closed-form MAP M-step.

Every feature d is a categorical variable with codes 0 .. C - 1, independent given the
component: log p(x | z=k) = sum_d log probs[k, d, x_d]. The statistics n_k = sum r and
m_kdc = sum r [x_d = c] are additive. The M-step is the MAP estimate under a symmetric
Dirichlet(1 + a) prior per feature (a = pseudo_count): probs_kdc = (m_kdc + a) / (n_k + C a),
and `log_prior` returns a * sum log probs, so EM is monotone in the penalised objective.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jaxem import validation
from jaxem.models import checks
from jaxem.models.mixture import MixtureModel
from jaxem.pytrees import register_model


class CategoricalMixtureParams(NamedTuple):
    """weights: (K,) mixing proportions; probs: (K, D, C) category probabilities, summing to
    one over the last axis."""

    weights: jax.Array
    probs: jax.Array


class CategoricalMixtureStats(NamedTuple):
    """counts: (K,) sum of r; category_counts: (K, D, C) sum of r [x_d = c]."""

    counts: jax.Array
    category_counts: jax.Array


@register_model
@dataclasses.dataclass(frozen=True)
class CategoricalMixture(MixtureModel):
    """Mixture of products of independent categorical distributions.

    Data: X (n_samples, D) of integer category codes in [0, n_categories) (floats holding
    integers are accepted). All features share the code range; a feature with fewer
    levels simply never uses the higher codes, which then get only the pseudo-count's mass
    (n_parameters counts C - 1 free probabilities per feature regardless).

    Args:
      n_components: number of mixture components K.
      n_categories: number of category codes C >= 2.
      pseudo_count: a >= 0 (a pytree leaf), the Dirichlet(1 + a) prior's pseudo-count per
        category; the default 1e-3 keeps probabilities away from 0. 0 gives maximum
        likelihood.
    """

    n_components: int = dataclasses.field(metadata=dict(static=True))
    n_categories: int = dataclasses.field(default=2, metadata=dict(static=True))
    pseudo_count: Any = 1e-3

    def __post_init__(self):
        validation.check_positive_int(self.n_components, "n_components")
        validation.check_positive_int(self.n_categories, "n_categories", minimum=2)
        checks.check_hyperparameter(self.pseudo_count, "pseudo_count")

    def check_values(self, X: jax.Array) -> None:
        checks.check_integer_data(X, "category codes", low=0, high=self.n_categories - 1)

    def one_hot(self, X: jax.Array) -> jax.Array:
        """(n_samples, D) codes -> (n_samples, D, C) indicators in X's dtype."""
        return jax.nn.one_hot(X.astype(jnp.int32), self.n_categories, dtype=X.dtype)

    # --- densities --------------------------------------------------------------------------
    def component_log_prob(self, params: CategoricalMixtureParams, X: jax.Array) -> jax.Array:
        """sum_d log probs[k, d, x_d]: (n_samples, n_components)."""
        codes = X.astype(jnp.int32)
        features = jnp.arange(X.shape[1])[None, :]
        # Gather instead of one-hot @ log probs, so a zero probability of an unseen code
        # contributes nothing rather than 0 * (-inf).
        log_probs = jnp.log(params.probs)[:, features, codes]  # (K, n_samples, D)
        return jnp.sum(log_probs, axis=-1).T

    def log_prior(self, params: CategoricalMixtureParams) -> jax.Array:
        """a * sum log probs, the Dirichlet(1 + a) log density up to a constant."""
        a = jnp.asarray(self.pseudo_count, params.probs.dtype)
        return jnp.sum(xlogy(a, params.probs))

    # --- statistics and M-step ----------------------------------------------------------------
    def statistics(
        self, params: CategoricalMixtureParams, X: jax.Array, resp: jax.Array
    ) -> CategoricalMixtureStats:
        """Additive statistics from weighted responsibilities resp: (n_samples, K)."""
        category_counts = jnp.einsum("nk,ndc->kdc", resp, self.one_hot(X))
        return CategoricalMixtureStats(jnp.sum(resp, axis=0), category_counts)

    def m_step(
        self, stats: CategoricalMixtureStats, params: CategoricalMixtureParams
    ) -> CategoricalMixtureParams:
        """Closed-form MAP: weights n_k / n, probs (m_kdc + a) / (n_k + C a).

        Ten machine epsilons join the pseudo-count, so a component with no points keeps
        valid (uniform) probabilities even when a = 0.
        """
        dtype = stats.category_counts.dtype
        tiny = 10 * jnp.finfo(dtype).eps
        smoothed = stats.category_counts + jnp.asarray(self.pseudo_count, dtype) + tiny
        probs = smoothed / jnp.sum(smoothed, axis=-1, keepdims=True)
        counts = stats.counts + tiny
        return CategoricalMixtureParams(counts / jnp.sum(counts), probs)

    # --- initialisation -----------------------------------------------------------------------
    def params_from_resp(self, X: jax.Array, resp: jax.Array) -> CategoricalMixtureParams:
        """One M-step from weighted responsibilities (n_samples, K)."""
        return self.m_step(self.statistics(None, X, resp), None)

    def params_from_dict(
        self, values: dict, n_features: int, dtype: Any
    ) -> CategoricalMixtureParams:
        """Validated params from a dict with keys weights (K,) and probs (K, D, C)."""
        shapes = {"weights": (self.n_components,), "probs": (self.n_components, n_features, self.n_categories)}
        arrays = checks.arrays_from_dict(values, shapes)
        checks.check_probabilities(arrays["weights"], "weights")
        checks.check_probabilities(arrays["probs"], "probs")
        return CategoricalMixtureParams(*(jnp.asarray(arrays[n], dtype) for n in shapes))

    # --- model selection and sampling ---------------------------------------------------------
    def param_constraints(self, params: Any = None) -> CategoricalMixtureParams:
        """Constraint names per params leaf (see jaxem.constraints)."""
        return CategoricalMixtureParams("simplex", "simplex")

    def n_parameters(self, n_features: int) -> int:
        """Free parameters: K - 1 weights and K * D * (C - 1) probabilities."""
        k = self.n_components
        return k * n_features * (self.n_categories - 1) + k - 1

    def sample(
        self, key: jax.Array, params: CategoricalMixtureParams, n_samples: int
    ) -> tuple[jax.Array, jax.Array]:
        """Draw n_samples points. Returns (X (n_samples, D) float codes, labels (n_samples,))."""
        label_key, code_key = jax.random.split(key)
        labels = self.sample_labels(label_key, params, n_samples)
        log_probs = jnp.log(params.probs[labels])  # (n_samples, D, C)
        codes = jax.random.categorical(code_key, log_probs, axis=-1)
        return codes.astype(params.probs.dtype), labels
