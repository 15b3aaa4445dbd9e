"""The bound of docs/design.md, evaluated: log p(X|θ) = ELBO(q, θ) + KL(q || p(Z|X, θ)).

Works for any model with `log_joint(params, X) -> (n_samples, K)` (every MixtureModel and
LatentModel). Each term is computed from its own definition, not as a difference of the
others, so the identity is a check, not a tautology. All quantities are sums over the
data, weighted by sample_weight when given.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, xlogy

from jaxem import mstep, validation


class ElboDecomposition(NamedTuple):
    """Terms of the bound, each a scalar summed over the data.

    log_likelihood: sum_n w_n log p(x_n | θ).
    expected_log_joint: sum_n w_n E_q[log p(x_n, z | θ)].
    entropy: sum_n w_n H(q_n).
    elbo: expected_log_joint + entropy.
    kl: sum_n w_n KL(q_n || p(z | x_n, θ)) >= 0.
    """

    log_likelihood: jax.Array
    elbo: jax.Array
    kl: jax.Array
    entropy: jax.Array
    expected_log_joint: jax.Array


class MonotonicityChain(NamedTuple):
    """The monotonicity chain (docs/design.md) for one step θ_old -> θ_new with q = p(Z | X, θ_old):

    log_likelihood_old = elbo_old <= elbo_new <= log_likelihood_new, where
    elbo_old = ELBO(q, θ_old) and elbo_new = ELBO(q, θ_new); kl_new = KL(q || p(Z|X, θ_new))
    is the gap elbo_new -> log_likelihood_new.
    """

    log_likelihood_old: jax.Array
    elbo_old: jax.Array
    elbo_new: jax.Array
    kl_new: jax.Array
    log_likelihood_new: jax.Array


def elbo_decomposition(
    model: Any, params: Any, X: Any, q: Any = None, sample_weight: Any = None
) -> ElboDecomposition:
    """log_likelihood, elbo, kl, entropy and expected_log_joint of q at params.

    Args:
      model: any model with log_joint(params, X) -> (n_samples, K).
      X: (n_samples, n_features).
      q: None for the posterior p(z | x, params), else (n_samples, K) rows of
        probabilities (non-negative, summing to one).
      sample_weight: None or (n_samples,) non-negative weights.
    Raises:
      ValueError: invalid X, weights, or q of the wrong shape or not rows of probabilities.
    """
    X = validation.as_data(X)
    sample_weight = validation.as_sample_weight(sample_weight, X.shape[0], X.dtype)
    log_joint = model.log_joint(params, X)
    log_evidence = logsumexp(log_joint, axis=1)
    log_posterior = log_joint - log_evidence[:, None]
    q = jnp.exp(log_posterior) if q is None else _as_distribution(q, log_joint.shape, X.dtype)
    weighted_q = q * sample_weight[:, None]
    expected = mstep.expected_log_joint(log_joint, weighted_q)
    entropy = -jnp.sum(sample_weight * jnp.sum(xlogy(q, q), axis=1))
    safe_log_posterior = jnp.where(q > 0, log_posterior, 0.0)
    kl = jnp.sum(sample_weight * jnp.sum(xlogy(q, q) - q * safe_log_posterior, axis=1))
    return ElboDecomposition(
        log_likelihood=jnp.sum(sample_weight * log_evidence),
        elbo=expected + entropy,
        kl=kl,
        entropy=entropy,
        expected_log_joint=expected,
    )


def monotonicity_chain(
    model: Any, params_old: Any, params_new: Any, X: Any, sample_weight: Any = None
) -> MonotonicityChain:
    """The four numbers of the monotonicity argument (docs/design.md) for one EM step."""
    X = validation.as_data(X)
    q_old = model.predict_proba(params_old, X)
    old = elbo_decomposition(model, params_old, X, None, sample_weight)
    new = elbo_decomposition(model, params_new, X, q_old, sample_weight)
    return MonotonicityChain(
        log_likelihood_old=old.log_likelihood,
        elbo_old=old.elbo,
        elbo_new=new.elbo,
        kl_new=new.kl,
        log_likelihood_new=new.log_likelihood,
    )


def _as_distribution(q: Any, shape: tuple, dtype: Any) -> jax.Array:
    if tuple(np.shape(q)) != tuple(shape):
        raise ValueError(f"q must have shape {tuple(shape)} (n_samples, K), got {np.shape(q)}.")
    if not validation.is_traced(q):
        values = np.asarray(q, np.float64)
        if np.any(values < 0) or not np.allclose(values.sum(axis=1), 1.0, atol=1e-8):
            raise ValueError("q must hold probabilities: non-negative rows that sum to one.")
    return jnp.asarray(q, dtype)
