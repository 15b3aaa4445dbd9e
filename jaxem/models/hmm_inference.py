"""Hidden Markov model inference on one padded sequence, in log space.

Every function takes one sequence (callers vmap over a batch) of padded length T with K
states and a traced `length` (1 <= length <= T): time steps t >= length contribute
nothing, whatever log_emission holds there. Log-probabilities may be -inf (a forbidden
transition, an impossible initial state or emission); outputs and reverse-mode gradients
stay finite as long as the sequence itself has positive probability.

Conventions: log_initial (K,) = log p(z_0); log_transition (K, K) with row i = from state
i, log_transition[i, j] = log p(z_t = j | z_{t-1} = i); log_emission (T, K) =
log p(x_t | z_t = k).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

AUTO_PARALLEL_MIN_LENGTH = 256
"""Padded length from which method="auto" picks the parallel scan on GPU/TPU.

A placeholder, not measured: the crossover is to be set by a benchmark on each backend.
"""

METHODS = ("sequential", "parallel", "auto")


class Posterior(NamedTuple):
    """marginals: (T, K) p(z_t = k | x), rows t >= length exactly 0; transitions: (K, K)
    sum over t = 1..length-1 of p(z_{t-1} = i, z_t = j | x); log_likelihood: () log p(x)."""

    marginals: jax.Array
    transitions: jax.Array
    log_likelihood: jax.Array


# --- log-space primitives ------------------------------------------------------------------


def _logsumexp(x: jax.Array, axis: int) -> jax.Array:
    """log sum exp over `axis`; -inf where every entry is -inf, with zero (not NaN) gradients there."""
    peak = jnp.max(x, axis=axis, keepdims=True)
    peak = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    total = jnp.sum(jnp.exp(x - peak), axis=axis)
    positive = total > 0
    log_total = jnp.where(positive, jnp.log(jnp.where(positive, total, 1.0)), -jnp.inf)
    return log_total + jnp.squeeze(peak, axis)


def _log_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """(..., K, K) x (..., K, K) -> (..., K, K): log(exp(a) @ exp(b)), via a (..., K, K, K) sum."""
    return _logsumexp(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def _log_identity(num_states: int, dtype) -> jax.Array:
    """(K, K) log of the identity matrix: 0 on the diagonal, -inf elsewhere."""
    return jnp.where(jnp.eye(num_states, dtype=bool), 0.0, -jnp.inf).astype(dtype)


def _valid_steps(num_steps: int, length: jax.Array) -> jax.Array:
    """(T,) bool, True for t < length."""
    return jnp.arange(num_steps) < length


def _masked_emission(log_emission: jax.Array, valid: jax.Array) -> jax.Array:
    """(T, K) log_emission with padded rows set to 0, so padding never reaches values or gradients."""
    return jnp.where(valid[:, None], log_emission, 0.0)


def _resolve_method(method: str, num_steps: int) -> str:
    """"sequential" or "parallel"; "auto" picks parallel off CPU for T >= AUTO_PARALLEL_MIN_LENGTH."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    on_accelerator = jax.default_backend() != "cpu"
    return "parallel" if on_accelerator and num_steps >= AUTO_PARALLEL_MIN_LENGTH else "sequential"


# --- forward and backward messages -----------------------------------------------------------
# alpha_t(k) = log p(x_{0:t}, z_t = k), beta_t(k) = log p(x_{t+1:length} | z_t = k); for
# t >= length alpha_t = alpha_{length-1} and beta_t = 0.


def _forward_sequential(log_initial, log_transition, log_emission, valid, keep_messages: bool):
    """lax.scan forward pass: ((T, K) alpha or None, (K,) alpha at the last step)."""

    def step(alpha_prev, inputs):
        log_emission_t, valid_t = inputs
        alpha = _logsumexp(alpha_prev[:, None] + log_transition, axis=0) + log_emission_t
        alpha = jnp.where(valid_t, alpha, alpha_prev)
        return alpha, alpha if keep_messages else None

    alpha_0 = log_initial + log_emission[0]
    alpha_last, alphas = lax.scan(step, alpha_0, (log_emission[1:], valid[1:]))
    if keep_messages:
        alphas = jnp.concatenate([alpha_0[None], alphas])
    return alphas, alpha_last


def _backward_sequential(log_transition, log_emission, valid, alphas, log_likelihood):
    """Reverse lax.scan: ((T, K) beta, (K, K) expected transitions), accumulated step by step."""
    num_states = log_transition.shape[0]

    def step(carry, inputs):
        beta, transitions = carry
        alpha_prev, log_emission_t, valid_t = inputs
        joint = log_transition + (log_emission_t + beta)[None, :]
        beta_prev = jnp.where(valid_t, _logsumexp(joint, axis=1), 0.0)
        pair = jnp.exp(alpha_prev[:, None] + joint - log_likelihood)
        return (beta_prev, transitions + jnp.where(valid_t, pair, 0.0)), beta_prev

    init = (jnp.zeros(num_states, alphas.dtype), jnp.zeros((num_states, num_states), alphas.dtype))
    (_, transitions), betas = lax.scan(
        step, init, (alphas[:-1], log_emission[1:], valid[1:]), reverse=True
    )
    return jnp.concatenate([betas, init[0][None]]), transitions


def _step_matrices(log_initial, log_transition, log_emission, valid):
    """(T, K, K) log elements of the parallel scan: M_t[i, j] = A[i, j] + e_t[j] for t >= 1,
    every row of M_0 = initial + e_0, the identity for padded steps."""
    num_states = log_initial.shape[0]
    matrices = log_transition[None] + log_emission[:, None, :]
    matrices = matrices.at[0].set(jnp.broadcast_to(log_initial + log_emission[0], matrices.shape[1:]))
    return jnp.where(valid[:, None, None], matrices, _log_identity(num_states, matrices.dtype))


def _forward_parallel(matrices):
    """(T, K) alpha from prefix products of the step matrices (O(log T) depth)."""
    return lax.associative_scan(_log_matmul, matrices)[:, 0, :]


def _backward_parallel(matrices):
    """(T, K) beta from suffix products M_{t+1} ... M_{T-1} (O(log T) depth)."""
    suffixes = lax.associative_scan(lambda later, earlier: _log_matmul(earlier, later), matrices[1:], reverse=True)
    last = jnp.zeros((1, matrices.shape[-1]), matrices.dtype)
    return jnp.concatenate([_logsumexp(suffixes, axis=-1), last])


def _transitions_parallel(matrices, alphas, betas, valid, log_likelihood):
    """(K, K) expected transitions, from a materialised (T-1, K, K) array of pair posteriors
    (the parallel scan holds arrays of that size already)."""
    pairs = jnp.exp(alphas[:-1, :, None] + matrices[1:] + betas[1:, None, :] - log_likelihood)
    return jnp.sum(jnp.where(valid[1:, None, None], pairs, 0.0), axis=0)


# --- public API ------------------------------------------------------------------------------


def forward_backward(
    log_initial: jax.Array,
    log_transition: jax.Array,
    log_emission: jax.Array,
    length: jax.Array,
    method: str = "sequential",
) -> Posterior:
    """Posterior of the hidden states of one sequence.

    Args:
      log_initial: (K,); log_transition: (K, K), row i = from state i; log_emission: (T, K).
      length: () int, 1 <= length <= T; steps t >= length are padding.
      method: "sequential" (lax.scan, O(T K^2) work, depth T), "parallel"
        (lax.associative_scan over (K, K) log-matrices, O(T K^3) work and memory, depth
        O(log T)), or "auto" (see AUTO_PARALLEL_MIN_LENGTH). Static.

    Returns:
      Posterior(marginals (T, K), transitions (K, K), log_likelihood ()). Reverse-mode
      gradients of log_likelihood with respect to log_emission, log_transition and
      log_initial are marginals, transitions and marginals[0].
    """
    num_steps = log_emission.shape[0]
    method = _resolve_method(method, num_steps)
    valid = _valid_steps(num_steps, length)
    log_emission = _masked_emission(log_emission, valid)
    if method == "sequential":
        alphas, alpha_last = _forward_sequential(log_initial, log_transition, log_emission, valid, True)
        log_likelihood = _logsumexp(alpha_last, axis=0)
        betas, transitions = _backward_sequential(log_transition, log_emission, valid, alphas, log_likelihood)
    else:
        matrices = _step_matrices(log_initial, log_transition, log_emission, valid)
        alphas = _forward_parallel(matrices)
        betas = _backward_parallel(matrices)
        log_likelihood = _logsumexp(alphas[-1], axis=0)
        transitions = _transitions_parallel(matrices, alphas, betas, valid, log_likelihood)
    marginals = jnp.where(valid[:, None], jnp.exp(alphas + betas - log_likelihood), 0.0)
    return Posterior(marginals, transitions, log_likelihood)


def log_likelihood(
    log_initial: jax.Array,
    log_transition: jax.Array,
    log_emission: jax.Array,
    length: jax.Array,
    method: str = "sequential",
) -> jax.Array:
    """() log p(x_{0:length}) by the forward pass alone; arguments as in forward_backward."""
    num_steps = log_emission.shape[0]
    method = _resolve_method(method, num_steps)
    valid = _valid_steps(num_steps, length)
    log_emission = _masked_emission(log_emission, valid)
    if method == "sequential":
        _, alpha_last = _forward_sequential(log_initial, log_transition, log_emission, valid, False)
    else:
        matrices = _step_matrices(log_initial, log_transition, log_emission, valid)
        alpha_last = _forward_parallel(matrices)[-1]
    return _logsumexp(alpha_last, axis=0)


def viterbi(
    log_initial: jax.Array,
    log_transition: jax.Array,
    log_emission: jax.Array,
    length: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Most likely state path of one sequence (max-product forward pass, then backtracking).

    Arguments as in forward_backward. Returns (path (T,) int32, log_prob ()) where log_prob
    = max over paths of log p(x, z). Padded entries path[t] for t >= length equal
    path[length - 1]. Ties go to the lowest state index.
    """
    num_steps, num_states = log_emission.shape
    valid = _valid_steps(num_steps, length)
    log_emission = _masked_emission(log_emission, valid)
    stay = jnp.arange(num_states, dtype=jnp.int32)

    def step(delta_prev, inputs):
        log_emission_t, valid_t = inputs
        scores = delta_prev[:, None] + log_transition
        delta = jnp.where(valid_t, jnp.max(scores, axis=0) + log_emission_t, delta_prev)
        best_previous = jnp.where(valid_t, jnp.argmax(scores, axis=0).astype(jnp.int32), stay)
        return delta, best_previous

    delta_last, best_previous = lax.scan(
        step, log_initial + log_emission[0], (log_emission[1:], valid[1:])
    )
    last_state = jnp.argmax(delta_last).astype(jnp.int32)

    def backtrack(state, best_previous_t):
        previous = best_previous_t[state]
        return previous, previous

    _, earlier_states = lax.scan(backtrack, last_state, best_previous, reverse=True)
    return jnp.concatenate([earlier_states, last_state[None]]), jnp.max(delta_last)


def sample_states(
    key: jax.Array, initial: jax.Array, transition: jax.Array, num_steps: int
) -> jax.Array:
    """(num_steps,) int32 states of a Markov chain: z_0 ~ initial (K,), z_t ~ transition[z_{t-1}]
    (K, K). num_steps >= 1 is static."""
    keys = jax.random.split(key, num_steps)
    log_transition = jnp.log(transition)
    first = jax.random.categorical(keys[0], jnp.log(initial)).astype(jnp.int32)

    def step(state, step_key):
        following = jax.random.categorical(step_key, log_transition[state]).astype(jnp.int32)
        return following, following

    _, rest = lax.scan(step, first, keys[1:])
    return jnp.concatenate([first[None], rest])
