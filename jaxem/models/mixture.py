"""Finite mixtures: one implementation of jaxem.protocol.Model for models whose latent
variable is a component label per data row.

A mixture family supplies the mixture layer's hooks:
  component_log_prob(params, X) -> (n_samples, n_components)  log p(x | z=k)
  statistics(params, X, resp)    -> additive stats from weighted responsibilities
  m_step(stats, params)          -> params
  params_from_resp(X, resp)      -> starting params from responsibilities
  params_from_dict(d, D, dtype)  -> params from user-supplied arrays (validated)
  param_constraints(params)      -> pytree of constraint names (jaxem.constraints)
  n_parameters(n_features)       -> free parameter count, for BIC/AIC
  sample(key, params, n)         -> (X, labels), drawing labels with `sample_labels`
and may replace check_data (eager checks on rows), log_prior, or the defaults a Gaussian
mixture replaces for speed: precompute / precompute_chunks / e_step_params (fixed
features of the data), e_step and params_from_resp_t. Params have a `weights` field (K,).
The data units are rows: (n_samples, n_features) arrays.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from jaxem import init as init_lib
from jaxem import validation
from jaxem.protocol import Model
from jaxem.sizes import UNROLL_COMPONENTS


def weighted_posterior(log_joint: jax.Array, sample_weight: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """Responsibilities times sample weights, and the weighted summed log-likelihood.

    Args:
      log_joint: log p(x, z=k), components along `axis` (0 or 1) and samples along the other.
      sample_weight: (n_samples,).
    Returns:
      (resp, log_lik): resp = w_n p(z=k | x_n) in log_joint's layout; log_lik =
      sum_n w_n log p(x_n), where a zero-weight point adds nothing even if its density
      underflows to 0.
    """
    n_components = log_joint.shape[axis]
    # Slices rather than reductions over a short component axis (jaxem.sizes); the reverse
    # pass then has none either (a broadcast's transpose is a reduction, a slice's an add).
    if n_components <= UNROLL_COMPONENTS:
        slices = [jax.lax.index_in_dim(log_joint, k, axis, keepdims=True) for k in range(n_components)]
    else:
        slices = [log_joint]
    # logsumexp and the responsibilities share one exp per entry (the E-step's costliest
    # elementwise op): resp = exp(l - peak) / sum_k exp(l - peak).
    peak = functools.reduce(jnp.maximum, [jnp.max(s, axis=axis, keepdims=True) for s in slices])
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    unnormalised = [jnp.exp(s - peak) for s in slices]
    total = functools.reduce(jnp.add, [jnp.sum(u, axis=axis, keepdims=True) for u in unnormalised])
    scale = jnp.expand_dims(sample_weight, axis) / total
    resp = jnp.concatenate([u * scale for u in unnormalised], axis=axis)
    log_norm = jnp.squeeze(peak + jnp.log(total), axis)
    log_lik = jnp.sum(jnp.where(sample_weight > 0, sample_weight * log_norm, 0.0))
    return resp, log_lik


class MixtureModel(Model):
    """The protocol for finite mixtures, with shared prediction and model selection."""

    n_components: int
    additive_statistics = True

    # --- jaxem.protocol.Model ---------------------------------------------------------------
    def as_data(self, X: Any) -> jax.Array:
        """Rows: a finite (n_samples, n_features) float array, checked by `check_data`."""
        X = validation.as_data(X)
        self.check_data(X)
        return X

    def start_params(self, values: dict, data: jax.Array) -> Any:
        """`params_from_dict` for data of data.shape[1] features."""
        return self.params_from_dict(values, data.shape[1], data.dtype)

    def precompute(self, X: jax.Array) -> Any:
        """Fixed per-fit form of a block of rows X that `e_step` accepts in place of X."""
        return X

    def precompute_chunks(self, chunks: jax.Array) -> Any:
        """`precompute` of every chunk of rows, chunks: (n_chunks, chunk_size, n_features);
        every leaf of the result has a leading n_chunks axis."""
        return jax.vmap(self.precompute)(chunks)

    def e_step_params(self, params: Any) -> Any:
        """params in a form `e_step` also accepts, with what every chunk's E-step would
        otherwise recompute (factorisations) done once; a chunked E-step calls this once per
        E-step, outside its loop over chunks. The default is params themselves."""
        return params

    def log_weights(self, params: Any) -> jax.Array:
        """log p(z=k): (n_components,)."""
        return jnp.log(params.weights)

    def sample_labels(self, key: jax.Array, params: Any, n_samples: int) -> jax.Array:
        """Component labels of n_samples draws: (n_samples,) int."""
        return jax.random.categorical(key, self.log_weights(params), shape=(n_samples,))

    def log_joint(self, params: Any, X: jax.Array) -> jax.Array:
        """log p(x, z=k | params): (n_samples, n_components)."""
        return self.component_log_prob(params, X) + self.log_weights(params)[None, :]

    def e_step(self, params: Any, X: jax.Array, sample_weight: jax.Array) -> tuple[Any, jax.Array]:
        """Additive sufficient statistics and the weighted summed log-likelihood.

        Args:
          X: (n_samples, n_features); sample_weight: (n_samples,).
        Returns:
          (stats, log_lik) with log_lik = sum_n w_n log p(x_n | params), a scalar.
        """
        resp, log_lik = weighted_posterior(self.log_joint(params, X), sample_weight, axis=1)
        return self.statistics(params, X, resp), log_lik

    def log_prior(self, params: Any) -> jax.Array:
        """log p(params) for MAP-EM; the default flat prior is 0."""
        return jnp.zeros((), jax.tree.leaves(params)[0].dtype)

    def init_m_state(self, params: Any) -> Any:
        """State an iterative M-step carries across EM iterations; none for closed forms."""
        return ()

    def maximize(
        self, stats: Any, params: Any, m_state: Any, X: jax.Array, sample_weight: jax.Array
    ) -> tuple[Any, Any]:
        """One M-step with its carried state.

        Closed-form mixtures use only the statistics; X and sample_weight are there for
        M-steps that need the data itself (gradient steps on Q for generic models).
        """
        return self.m_step(stats, params), m_state

    def init_params(
        self, key: jax.Array, X: jax.Array, sample_weight: jax.Array, method: str, chunk_size: int | None = None
    ) -> Any:
        """Starting params from one of jaxem.init.INIT_METHODS (one M-step on responsibilities);
        chunk_size: the fit's E-step chunks (see `params_from_resp_t`)."""
        return self.init_params_among(key, X, sample_weight, method, chunk_size, active=None)

    def init_params_among(
        self, key: jax.Array, X: jax.Array, sample_weight: jax.Array, method: str, chunk_size: int | None,
        active: jax.Array | None,
    ) -> Any:
        """`init_params` with responsibility only for the `active` components ((K,) bool, or
        None for all); see jaxem.init.initial_responsibilities."""
        resp_t = init_lib.initial_responsibilities(key, X, sample_weight, self.n_components, method, active)
        return self.params_from_resp_t(X, resp_t * sample_weight[None, :], chunk_size)

    def params_from_resp_t(self, X: jax.Array, resp_t: jax.Array, chunk_size: int | None = None) -> Any:
        """`params_from_resp` from component-major responsibilities (K, n_samples); models
        whose statistics are GEMMs over samples override it to skip the transpose, and may
        use the fit's chunk_size to share the EM loop's data features. Here it is unused."""
        return self.params_from_resp(X, resp_t.T)

    def check_data(self, X: jax.Array) -> None:
        """Model-specific eager checks on validated data to fit; raise ValueError when unusable."""
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"n_components={self.n_components} must be <= n_samples={X.shape[0]}."
            )
        self.check_values(X)

    def check_values(self, X: jax.Array) -> None:
        """The family's checks on the values of rows, to fit or to predict (counts, codes,
        binary values); tracers pass unchecked. Raises ValueError. None here."""

    # --- prediction -----------------------------------------------------------------------
    def predict_proba(self, params: Any, X: Any) -> jax.Array:
        """Posterior responsibilities p(z=k | x): (n_samples, n_components)."""
        log_joint = self.log_joint(params, self._data(X))
        return jnp.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))

    def predict(self, params: Any, X: Any) -> jax.Array:
        """Most probable component per sample: (n_samples,) int."""
        return jnp.argmax(self.log_joint(params, self._data(X)), axis=1)

    def score_samples(self, params: Any, X: Any) -> jax.Array:
        """log p(x | params) per sample: (n_samples,)."""
        return logsumexp(self.log_joint(params, self._data(X)), axis=1)

    def score(self, params: Any, X: Any) -> jax.Array:
        """Mean per-sample log-likelihood, a scalar."""
        return jnp.mean(self.score_samples(params, X))

    def bic(self, params: Any, X: Any) -> jax.Array:
        """Bayesian information criterion, -2 log L + p log n (lower is better)."""
        X = self._data(X)
        n = X.shape[0]
        return -2.0 * self.score(params, X) * n + self.count_parameters(params, X.shape[1]) * jnp.log(n)

    def aic(self, params: Any, X: Any) -> jax.Array:
        """Akaike information criterion, -2 log L + 2 p (lower is better)."""
        X = self._data(X)
        return -2.0 * self.score(params, X) * X.shape[0] + 2.0 * self.count_parameters(params, X.shape[1])

    def count_parameters(self, params: Any, n_features: int) -> int:
        """Free parameters for BIC/AIC; built-in families count them from n_features."""
        return self.n_parameters(n_features)

    def _data(self, X: Any) -> jax.Array:
        """Rows to predict or score: validated (jaxem.validation.as_data), values in the
        family's domain (check_values)."""
        X = validation.as_data(X)
        self.check_values(X)
        return X
