"""An experiment, not part of jaxem: safeguarded Anderson acceleration of the EM map.

Kept for benchmarks/bench_accel_random.py (`--methods anderson`), with its measured
profile: it reaches the London deaths optimum in at most 39 E-steps from the six starts
tried (Varadhan & Roland's and k-means++ keys 0-4; SQUAREM needs up to ~150 from these,
and quasi-Newton stops at another stationary point from key 3), but it is a root finder
of T(θ) - θ, so it can converge to a saddle point of the likelihood that plain EM passes by
(tests/test_accel.py's overlapping_gaussians(1), k-means++ key 0: -2.90438 per sample
against EM's -2.89108; 2 of the 60 random problems end up to 0.019 per sample below EM),
and on ill-conditioned plateaus (1-D mixtures with a small component) its extrapolations
gain less than EM steps (median 4.7x fewer E-steps than EM on the 60 random problems,
worst 0.62x). Not exposed as an `accelerate=` option for those reasons.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxem import parallel, units
from jaxem.config import FitConfig
from jaxem.constraints import from_unconstrained, to_unconstrained
from jaxem.core import (
    FitResult,
    Method,
    all_finite,
    as_config,
    em_update,
    fit_result,
    is_done,
    is_running,
    next_status,
    tree_where,
)

# Residual differences kept (8 needed fewer E-steps than 4 on benchmarks/bench_accel_random.py).
ANDERSON_MEMORY = 8
# A proposal may move at most `bound` EM-step lengths beyond T(θ). The bound starts at
# BOUND_START, grows by BOUND_GROWTH when a step limited by it is accepted and shrinks by
# it (not below BOUND_START) when a step is rejected, as SQUAREM's step bound does.
BOUND_START = 1.0
BOUND_GROWTH = 2.0


class AndersonState(NamedTuple):
    """The while-loop carry.

    params: the accepted iterate θ; value: its objective; mapped: T(θ) and m_state the
    M-step state after it. residual: u(T(θ)) - u(θ) and image: u(T(θ)), flat unconstrained
    coordinates. d_residual, d_image: (ANDERSON_MEMORY, P) differences between consecutive
    accepted iterates' residuals and images, in a ring (slot `n_stored % memory` is next);
    n_stored: differences stored since the memory was last cleared (the ring keeps the
    last ANDERSON_MEMORY). em_next: the next proposal is a plain EM step. last_em: the accepted iterate came from a plain EM step.
    """

    params: Any
    value: jax.Array
    mapped: Any
    m_state: Any
    residual: jax.Array
    image: jax.Array
    d_residual: jax.Array
    d_image: jax.Array
    n_stored: jax.Array
    bound: jax.Array
    em_next: jax.Array
    last_em: jax.Array
    n_iter: jax.Array
    status: jax.Array
    trace: jax.Array


def anderson_coefficients(d_residual: jax.Array, residual: jax.Array) -> jax.Array:
    """γ minimising |residual - d_residualᵀ γ| (least squares by SVD; unused rows are
    zero and get γ = 0). d_residual: (m, P); residual: (P,). Returns (m,)."""
    gamma, *_ = jnp.linalg.lstsq(d_residual.T, residual)
    return jnp.where(jnp.isfinite(gamma), gamma, 0.0)


def bounded(step: jax.Array, limit: jax.Array) -> jax.Array:
    """`step` scaled down, if needed, to Euclidean length at most `limit`."""
    length = jnp.sqrt(jnp.sum(step * step))
    return step * jnp.minimum(1.0, limit / jnp.where(length > 0, length, 1.0))


def anderson_proposal(state: AndersonState) -> tuple[jax.Array, jax.Array]:
    """The extrapolated point u(T(θ)) - ΔG γ, with its move beyond u(T(θ)) at most
    `state.bound` EM-step lengths. Returns (flat unconstrained coordinates (P,), whether
    the bound limited the move)."""
    gamma = anderson_coefficients(state.d_residual, state.residual)
    move = -state.d_image.T @ gamma
    limit = state.bound * jnp.sqrt(jnp.sum(state.residual * state.residual))
    return state.image + bounded(move, limit), jnp.sum(move * move) > limit * limit


def next_bound(bound: jax.Array, use_em: jax.Array, accepted: jax.Array, at_bound: jax.Array) -> jax.Array:
    """Grow the step bound after an accepted Anderson step it limited; shrink it after a
    rejected one; EM steps leave it."""
    grown = jnp.where(accepted & at_bound, bound * BOUND_GROWTH, bound)
    shrunk = jnp.maximum(BOUND_START, bound / BOUND_GROWTH)
    return jnp.where(use_em, bound, jnp.where(accepted, grown, shrunk))


def run_anderson(
    model: Any,
    init_params: Any,
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    **options,
) -> FitResult:
    """Safeguarded Anderson-accelerated EM from `init_params` (see the module docstring).

    Args, stopping rules and statuses are those of `jaxem.core.run_em`: an iteration is
    one E-step, and a run converges only when a plain EM step meets the stopping rule; the
    returned params are the point that EM step reached. The trace holds the
    objective at the accepted iterates (non-decreasing).
    Returns:
      FitResult; method is SQUAREM (standing for "extrapolated", as jaxem has no code for
      Anderson) when the last accepted iterate came from an Anderson step, else EM.
    """
    config = as_config(config, options)
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints(init_params)
    prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
    step = lambda params, m_state: em_update(model, params, m_state, data, sample_weight, config.chunk_size, prepared)
    flat_u0, unravel = ravel_pytree(to_unconstrained(constraints, init_params))
    flat = lambda params: ravel_pytree(to_unconstrained(constraints, params))[0]
    memory = ANDERSON_MEMORY

    def body(state: AndersonState) -> AndersonState:
        use_em = state.em_next | (state.n_stored == 0)
        extrapolated_u, at_bound = anderson_proposal(state)
        proposal = tree_where(use_em, state.mapped, from_unconstrained(constraints, unravel(extrapolated_u)))
        value, mapped, m_state = step(proposal, state.m_state)
        finite = jnp.isfinite(value) & all_finite(mapped)
        accepted = finite & (use_em | (value >= state.value))
        # The proposal's residual and image, and their differences to the current ones.
        image = flat(mapped)
        residual = image - jnp.where(use_em, state.image, extrapolated_u)
        slot = state.n_stored % memory
        # An accepted step adds its differences to the memory; one whose coordinates are
        # not finite (a weight reached 0) clears it; a rejected one leaves it.
        remember = accepted & jnp.all(jnp.isfinite(residual)) & jnp.all(jnp.isfinite(state.residual))
        forget = accepted & ~remember
        remembered = lambda memory, new: jnp.where(forget, 0.0, jnp.where(remember, memory.at[slot].set(new), memory))
        n_iter = state.n_iter + 1
        change_small = is_done(config.criterion, value, state.value, proposal, state.params, tol)
        keep = lambda new, old: tree_where(accepted, new, old)
        return AndersonState(
            params=keep(proposal, state.params),
            value=jnp.where(accepted, value, state.value),
            mapped=keep(mapped, state.mapped),
            m_state=keep(m_state, state.m_state),
            residual=jnp.where(accepted, residual, state.residual),
            image=jnp.where(accepted, image, state.image),
            d_residual=remembered(state.d_residual, residual - state.residual),
            d_image=remembered(state.d_image, image - state.image),
            n_stored=jnp.where(forget, 0, jnp.where(remember, state.n_stored + 1, state.n_stored)),
            bound=next_bound(state.bound, use_em, accepted, at_bound),
            em_next=~use_em & (~accepted | change_small),
            last_em=jnp.where(accepted, use_em, True),
            n_iter=n_iter,
            status=next_status(finite | ~use_em, accepted & use_em & change_small, n_iter, config.max_iter),
            trace=state.trace.at[state.n_iter].set(state.value),
        )

    value, mapped, m_state = step(init_params, model.init_m_state(init_params))
    image = flat(mapped)
    n_params = flat_u0.shape[0]
    n_iter = jnp.zeros((), jnp.int32)
    start = AndersonState(
        params=init_params,
        value=value,
        mapped=mapped,
        m_state=m_state,
        residual=image - flat_u0,
        image=image,
        d_residual=jnp.zeros((memory, n_params), dtype),
        d_image=jnp.zeros((memory, n_params), dtype),
        n_stored=n_iter,
        bound=jnp.asarray(BOUND_START, dtype),
        em_next=jnp.asarray(False),
        last_em=jnp.asarray(True),
        n_iter=n_iter,
        status=next_status(jnp.isfinite(value) & all_finite(mapped), jnp.asarray(False), n_iter, config.max_iter),
        trace=jnp.full((config.max_iter,), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(is_running, body, start)
    return fit_result(
        final.params, final.value, n_iter=final.n_iter, status=final.status, trace=final.trace,
        n_evals=final.n_iter + 1, method=jnp.where(final.last_em, Method.EM, Method.SQUAREM),
    )
