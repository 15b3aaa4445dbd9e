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

from jaxem import batching, sizes

AUTO_PARALLEL_MIN_LENGTH = 256
"""Padded length from which method="auto" picks the parallel scan on GPU/TPU.

A placeholder, not measured on a GPU/TPU: the crossover is to be set by a benchmark on each
backend. On CPU the parallel scan never won against the scaled scan
(benchmarks/bench_hmm.py, results/hmm_cpu.json), so "auto" never picks it there.
"""

METHODS = ("sequential", "parallel", "auto")
"""The user's choices. "auto" resolves to "parallel" (see AUTO_PARALLEL_MIN_LENGTH) or to
the internal "scaled" kernel (probability space, one fused forward-backward scan)."""


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
    """"sequential", "parallel" or "scaled": "auto" picks parallel off CPU for T >=
    AUTO_PARALLEL_MIN_LENGTH, else the scaled scan."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    on_accelerator = jax.default_backend() != "cpu"
    return "parallel" if on_accelerator and num_steps >= AUTO_PARALLEL_MIN_LENGTH else "scaled"


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


# --- the scaled kernel: probability space, a batch of sequences, one fused scan ---------------
# alpha_hat_t = p(z_t | x_{0:t}) and c_t = p(x_t | x_{0:t-1}) / exp(peak_t), where
# p_t(k) = exp(log_emission_t(k) - peak_t), peak_t = max_k log_emission_t(k): the forward step
# is alpha_hat_t = (alpha_hat_{t-1} A) * p_t / c_t, so log p(x) = sum_t log c_t + peak_t.
# beta_hat_t is beta_t rescaled to sum 1 at every step (any positive scale would do: the
# marginals are alpha_hat_t * beta_hat_t normalised over states). The backward recursion
# needs nothing from the forward one, so one lax.scan runs both, the forward at step t and
# the backward at step T - 1 - t: half the sequential steps, each a few small fused loops (no
# K x K exp or log per step, as the log-space scan has). The pair posteriors are summed
# outside the scan in one GEMM over all steps and sequences:
#   sum_t xi_t(i, j) = A_ij sum_t alpha_hat_{t-1}(i) p_t(j) beta_hat_t(j) / (c_t g_t),
# g_t = sum_k alpha_hat_t(k) beta_hat_t(k) (sum_ij of the numerator is c_t g_t).
# Exact in real arithmetic; in floating point a state whose probability relative to the
# step's best falls below the dtype's smallest normal number is 0 here and tiny in log
# space, which matters only if the data later force the path through it (a zero
# transition or emission probability elsewhere); the log-space "sequential" method has no
# such limit (hmmlearn's and dynamax's scaled algorithms share it).


def _times_transition(alpha: jax.Array, transition: jax.Array, by_dot: bool) -> jax.Array:
    """(S, K) alpha @ transition (K, K): a dot_general if by_dot (full precision, no TF32 on
    GPUs), else a broadcast multiply and reduce that XLA:CPU fuses into one loop (see
    _contract_by_dot)."""
    return jnp.matmul(alpha, transition, precision="highest") if by_dot else jnp.sum(alpha[:, :, None] * transition, axis=1)


def _transition_times(values: jax.Array, transition: jax.Array, by_dot: bool) -> jax.Array:
    """(S, K) values @ transition.T: sum_j transition[i, j] values[s, j]."""
    return jnp.matmul(values, transition.T, precision="highest") if by_dot else jnp.sum(values[:, None, :] * transition, axis=2)


def _contract_by_dot(num_sequences: int, num_states: int) -> bool:
    """Whether the scan's per-step products with the transition matrix are dot_generals:
    from sizes.HMM_DOT_MIN_MESSAGES message entries per step, counting the restarts
    vmapped around this call (a dot_general per step pays a call's overhead that the
    fused loop avoids on small batches, and the fused loop scales badly on large ones)."""
    return num_sequences * num_states * batching.restarts_in_flight() >= sizes.HMM_DOT_MIN_MESSAGES


def _scaled_emissions(log_emission: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(T, S, K) p_t = exp(log_emission - peak_t) and (T, S) peak_t, padded steps 0 (so p = 1
    there); log_emission (T, S, K) time-major, valid (T, S)."""
    log_emission = jnp.where(valid[..., None], log_emission, 0.0)
    peak = jnp.max(log_emission, axis=-1)
    peak = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    return jnp.exp(log_emission - peak[..., None]), peak


def _scaled_start(log_initial, log_transition, log_emission, lengths):
    """What both scaled passes start from: valid (T, S), the scaled emissions (T, S, K)
    with their peaks (T, S), the initial distribution (K,), the transition matrix (K, K),
    and whether the scan's products with it are dot_generals (_contract_by_dot).
    log_emission (T, S, K) time-major, lengths (S,)."""
    valid = jnp.arange(log_emission.shape[0])[:, None] < lengths[None, :]
    emission, peak = _scaled_emissions(log_emission, valid)
    by_dot = _contract_by_dot(*emission.shape[1:])
    return valid, emission, peak, jnp.exp(log_initial), jnp.exp(log_transition), by_dot


def _scaled_forward_step(alpha_prev, emission_t, transition, initial, first, by_dot):
    """One normalised forward step: (alpha_t (S, K), its scale c_t (S,)) from alpha_{t-1},
    or from the initial distribution (K,) where `first` (t = 0)."""
    predicted = jnp.where(first, initial, _times_transition(alpha_prev, transition, by_dot)) * emission_t
    scale = jnp.sum(predicted, axis=-1)
    return predicted / scale[:, None], scale


def _scaled_forward_backward(log_initial, log_transition, log_emission, lengths, pair_weight):
    """Scaled forward-backward on a time-major batch: log_emission (T, S, K), lengths (S,),
    pair_weight (S,). Returns marginals (T, S, K) (0 at padded steps), transitions (K, K) =
    sum_s pair_weight[s] * (expected transition counts of sequence s) (sequences of weight 0
    add exactly nothing), log_likelihood (S,).

    One lax.scan of T steps: step t emits the forward message alpha_t and the backward
    message beta_{T-1-t} it holds, then updates both. The emissions are indexed inside the
    step (scanning over slices of them would copy them twice) and every output is
    time-major, so nothing is transposed."""
    num_steps = log_emission.shape[0]
    valid, emission, peak, initial, transition, by_dot = _scaled_start(log_initial, log_transition, log_emission, lengths)
    ones = jnp.ones(emission.shape[1:], emission.dtype)

    def step(carry, t):
        alpha, beta = carry
        u = num_steps - 1 - t
        emission_t = lax.dynamic_index_in_dim(emission, t, keepdims=False)
        emission_u = lax.dynamic_index_in_dim(emission, u, keepdims=False)
        valid_u = lax.dynamic_index_in_dim(valid, u, keepdims=False)
        # Forward at t: past a sequence's end it runs on (p = 1) and is masked out below.
        alpha, scale = _scaled_forward_step(alpha, emission_t, transition, initial, t == 0, by_dot)
        # Backward: beta_{u-1} from beta_u; 1 for u >= length (the last update, u = 0, is unused).
        message = _transition_times(emission_u * beta, transition, by_dot)
        following = jnp.where(valid_u[:, None], message / jnp.sum(message, axis=-1)[:, None], 1.0)
        return (alpha, following), (alpha, scale, beta)

    _, (alphas, scales, reversed_betas) = lax.scan(step, (ones, ones), jnp.arange(num_steps))
    betas = reversed_betas[::-1]
    log_likelihood = jnp.sum(jnp.where(valid, jnp.log(scales) + peak, 0.0), axis=0)
    products = alphas * betas
    norm = jnp.sum(products, axis=-1)
    marginals = jnp.where(valid[..., None], products / norm[..., None], 0.0)
    counted = valid[1:] & (pair_weight > 0)[None, :]
    step_weight = jnp.where(counted, pair_weight / (scales[1:] * norm[1:]), 0.0)
    right = emission[1:] * betas[1:] * step_weight[..., None]
    num_states = transition.shape[0]
    transitions = transition * (alphas[:-1].reshape(-1, num_states).T @ right.reshape(-1, num_states))
    return marginals, transitions, log_likelihood


def _scaled_log_likelihood(log_initial, log_transition, log_emission, lengths):
    """(S,) log p(x) of a time-major batch (T, S, K) by the scaled forward pass alone."""
    num_steps = log_emission.shape[0]
    valid, emission, peak, initial, transition, by_dot = _scaled_start(log_initial, log_transition, log_emission, lengths)

    def step(alpha, t):
        emission_t = lax.dynamic_index_in_dim(emission, t, keepdims=False)
        return _scaled_forward_step(alpha, emission_t, transition, initial, t == 0, by_dot)

    _, scales = lax.scan(step, jnp.ones(emission.shape[1:], emission.dtype), jnp.arange(num_steps))
    return jnp.sum(jnp.where(valid, jnp.log(scales) + peak, 0.0), axis=0)


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
      method: "sequential" (log-space lax.scan, O(T K^2) work, depth T), "parallel"
        (lax.associative_scan over (K, K) log-matrices, O(T K^3) work and memory, depth
        O(log T)), or "auto": parallel on GPU/TPU from AUTO_PARALLEL_MIN_LENGTH steps,
        else the scaled scan (probability space, forward and backward in one scan of
        T steps; see the notes above `_scaled_forward_backward`). Static.

    Returns:
      Posterior(marginals (T, K), transitions (K, K), log_likelihood ()). Reverse-mode
      gradients of log_likelihood with respect to log_emission, log_transition and
      log_initial are marginals, transitions and marginals[0].
    """
    num_steps = log_emission.shape[0]
    method = _resolve_method(method, num_steps)
    valid = _valid_steps(num_steps, length)
    log_emission = _masked_emission(log_emission, valid)
    if method == "scaled":
        marginals, transitions, log_likelihood = _scaled_forward_backward(
            log_initial, log_transition, log_emission[:, None], jnp.asarray(length)[None], jnp.ones((1,), log_emission.dtype)
        )
        return Posterior(marginals[:, 0], transitions, log_likelihood[0])
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
    if method == "scaled":
        return _scaled_log_likelihood(log_initial, log_transition, log_emission[:, None], jnp.asarray(length)[None])[0]
    valid = _valid_steps(num_steps, length)
    log_emission = _masked_emission(log_emission, valid)
    if method == "sequential":
        _, alpha_last = _forward_sequential(log_initial, log_transition, log_emission, valid, False)
    else:
        matrices = _step_matrices(log_initial, log_transition, log_emission, valid)
        alpha_last = _forward_parallel(matrices)[-1]
    return _logsumexp(alpha_last, axis=0)


def batch_posterior(
    log_initial: jax.Array,
    log_transition: jax.Array,
    log_emission: jax.Array,
    lengths: jax.Array,
    pair_weight: jax.Array,
    method: str = "sequential",
    time_major: bool = False,
) -> Posterior:
    """forward_backward on a batch of sequences with the transitions summed over them.

    Args:
      log_emission: (S, T, K), or (T, S, K) if time_major; lengths: (S,); pair_weight: (S,)
        weights of the sequences' expected transition counts (a sequence of weight <= 0
        adds exactly nothing); the rest as in forward_backward.
      time_major: static; the layout of log_emission and of the marginals returned. The
        scaled kernel works time-major, so a caller that can lay out its emissions that
        way saves two transposes of a (S, T, K) array.

    Returns:
      Posterior(marginals (S, T, K) or (T, S, K) if time_major, transitions (K, K) =
      sum_s pair_weight[s] * transitions_s, log_likelihood (S,)). The scaled kernel runs
      the batch as one scan and the sum as one GEMM; the other methods vmap
      forward_backward.
    """
    method = _resolve_method(method, log_emission.shape[0 if time_major else 1])
    if method == "scaled":
        time_major_emission = log_emission if time_major else jnp.swapaxes(log_emission, 0, 1)
        marginals, transitions, log_lik = _scaled_forward_backward(
            log_initial, log_transition, time_major_emission, lengths, pair_weight
        )
        return Posterior(marginals if time_major else jnp.swapaxes(marginals, 0, 1), transitions, log_lik)
    run = lambda e, n: forward_backward(log_initial, log_transition, e, n, method)
    post = jax.vmap(run, in_axes=(1 if time_major else 0, 0), out_axes=Posterior(1 if time_major else 0, 0, 0))(log_emission, lengths)
    used = pair_weight > 0
    weight = jnp.where(used, pair_weight, 0.0)[:, None, None]
    transitions = jnp.sum(jnp.where(used[:, None, None], post.transitions, 0.0) * weight, axis=0)
    return post._replace(transitions=transitions)


def batch_log_likelihood(
    log_initial: jax.Array, log_transition: jax.Array, log_emission: jax.Array, lengths: jax.Array, method: str = "sequential"
) -> jax.Array:
    """(S,) log p(x_s) of a batch, log_emission (S, T, K); arguments as in batch_posterior."""
    method = _resolve_method(method, log_emission.shape[1])
    if method == "scaled":
        return _scaled_log_likelihood(log_initial, log_transition, jnp.swapaxes(log_emission, 0, 1), lengths)
    return jax.vmap(lambda e, n: log_likelihood(log_initial, log_transition, e, n, method))(log_emission, lengths)


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
