"""Private two-component Poisson mixture for the London deaths benchmark (to be replaced by
jaxem.PoissonMixture once that family is merged)."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxem.models.base import MixtureModel

LONDON_COUNTS = jnp.arange(10.0)[:, None]
LONDON_FREQUENCIES = jnp.array([162.0, 267, 271, 185, 111, 61, 27, 8, 3, 1])
LONDON_OPTIMUM_NEG_LOGLIK = 1989.945859883


class PoissonParams(NamedTuple):
    weights: jax.Array
    rates: jax.Array


class PoissonStats(NamedTuple):
    counts: jax.Array
    sums: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PoissonMixture(MixtureModel):
    n_components: int = dataclasses.field(metadata=dict(static=True))

    def log_weights(self, params):
        return jnp.log(params.weights)

    def component_log_prob(self, params, X):
        x = X[:, :1]
        return x * jnp.log(params.rates)[None, :] - params.rates[None, :] - gammaln(x + 1)

    def statistics(self, params, X, resp):
        return PoissonStats(jnp.sum(resp, axis=0), resp.T @ X[:, 0])

    def m_step(self, stats, params):
        return PoissonParams(stats.counts / jnp.sum(stats.counts), stats.sums / stats.counts)

    def param_constraints(self):
        return PoissonParams("simplex", "positive")
