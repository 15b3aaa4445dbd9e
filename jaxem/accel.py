"""Acceleration of EM near the maximum: SQUAREM, and a switch to quasi-Newton.

EM converges linearly, at a rate set by the fraction of missing information, so near the
maximum of a poorly separated model it crawls (EM_NOTES: "switch to, or accelerate with,
another optimiser there"). Both remedies here are drop-ins for `jaxem.core.run_em`: same
signature, same FitResult, no host synchronisation (only `lax.while_loop`s), so
`jaxem.restarts` vmaps them. Both move in the unconstrained coordinates of
`jaxem.constraints`, so every point they try is a valid parameter of any model that
declares `param_constraints()`.

run_squarem   SQUAREM (Varadhan & Roland 2008, scheme SqS3) on the fixed-point map
              T(θ) = M(E(θ)); the trace stays monotone.
run_quasi_newton  EM until its per-iteration progress stalls, then `optax.lbfgs` on the
              negative objective (gradients by autodiff of the E-step's log-likelihood).

Evaluations are counted in FitResult.n_evals: one per E-step (`jaxem.core.em_update` or
`jaxem.core.objective`), and one per value-and-gradient of the objective (its cost is a
small multiple of an E-step's).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxem.constraints import from_unconstrained, to_unconstrained
from jaxem.core import Method, Status, all_finite, count_decreases, em_update, max_relative_change, objective
from jaxem.core import FitResult

ACCELERATIONS = (None, "squarem", "quasi_newton")

# Step-length control of the SQUAREM R package (Varadhan & Roland 2008; step.max0 = 1,
# mstep = 4): steps start as plain EM (bound 1) and the bound grows by STEP_GROWTH each
# time a step at the bound is accepted, shrinks by it when one is rejected.
STEP_MAX_START = 1.0
STEP_GROWTH = 4.0

# EM has "stalled" (quasi-Newton takes over) once its gain per iteration shrinks by less
# than this factor per iteration, i.e. it has entered slow linear convergence.
STALL_RATE = 0.9
# ... but not before this many EM iterations, which move from a rough start to the basin.
MIN_EM_ITER = 5
LBFGS_MEMORY = 10
MAX_LINESEARCH_STEPS = 30


def tree_where(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise select between two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def next_status(finite: jax.Array, done: jax.Array, n_iter: jax.Array, max_iter: int) -> jax.Array:
    """Status after an iteration: non-finite beats converged beats max_iter."""
    status = jnp.where(
        ~finite,
        Status.NON_FINITE,
        jnp.where(done, Status.CONVERGED, jnp.where(n_iter >= max_iter, Status.MAX_ITER, Status.RUNNING)),
    )
    return status.astype(jnp.int32)


def is_done(criterion: str, new_value, old_value, new_params, old_params, tol) -> jax.Array:
    """The stopping rule of jaxem.core.run_em between two accepted iterates."""
    if criterion == "loglik":
        return jnp.abs(new_value - old_value) < tol
    return max_relative_change(new_params, old_params) < tol


# --- SQUAREM -----------------------------------------------------------------------------------
def squarem_step_length(r: Any, v: Any, step_max: jax.Array) -> jax.Array:
    """SqS3 step length |r| / |v|, clamped to [1, step_max] (1 means two plain EM steps).

    Varadhan & Roland write it as alpha = -|r|/|v| <= -1; this is its magnitude.
    Args:
      r: T(θ) - θ and v: T(T(θ)) - 2 T(θ) + θ, pytrees of the same structure.
    """
    r_norm2 = optax.tree.vdot(r, r)
    v_norm2 = optax.tree.vdot(v, v)
    ratio = jnp.sqrt(r_norm2 / jnp.where(v_norm2 > 0, v_norm2, 1.0))
    return jnp.clip(jnp.where(v_norm2 > 0, ratio, 1.0), 1.0, step_max)


def squarem_extrapolate(theta: Any, mapped: Any, twice_mapped: Any, step_max: jax.Array) -> tuple[Any, jax.Array]:
    """θ + 2 alpha r + alpha^2 v, with r = T(θ) - θ, v = T(T(θ)) - 2 T(θ) + θ (alpha = 1 gives T(T(θ))).

    Returns (extrapolated point, alpha).
    """
    r = optax.tree.sub(mapped, theta)
    v = optax.tree.sub(optax.tree.sub(twice_mapped, mapped), r)
    alpha = squarem_step_length(r, v, step_max)
    return jax.tree.map(lambda a, b, c: a + 2 * alpha * b + alpha**2 * c, theta, r, v), alpha


def extrapolate_params(constraints: Any, theta: Any, mapped: Any, twice_mapped: Any, step_max: jax.Array):
    """The SQUAREM point, in the model's own coordinates when that stays valid.

    A mixture's EM map is nearly affine in its own coordinates (weights and means are
    ratios of expected statistics), so extrapolating there takes the longest safe steps;
    on the London deaths Poisson mixture it needs about 40% fewer E-steps than in
    unconstrained coordinates. Extrapolation is affine, so it keeps sums (simplex) but may
    leave the parameter space (a negative rate, an indefinite covariance): such a point,
    detected by its unconstrained coordinates being non-finite, is replaced by the
    extrapolation in unconstrained coordinates, which is always valid. Either way the
    point goes back through the constraint bijection, which projects rounding errors
    away (a simplex is renormalised); without that, extrapolating from an extrapolated
    point multiplies the error of a sum by (alpha - 1)^2 at every step.
    Returns (params, alpha of the chosen extrapolation).
    """
    natural, natural_alpha = squarem_extrapolate(theta, mapped, twice_mapped, step_max)
    natural_u = to_unconstrained(constraints, natural)
    unconstrained = [to_unconstrained(constraints, p) for p in (theta, mapped, twice_mapped)]
    fallback_u, fallback_alpha = squarem_extrapolate(*unconstrained, step_max)
    valid = all_finite(natural_u)
    params = from_unconstrained(constraints, tree_where(valid, natural_u, fallback_u))
    return params, jnp.where(valid, natural_alpha, fallback_alpha)


def next_step_max(step_max: jax.Array, alpha: jax.Array, accepted: jax.Array) -> jax.Array:
    """Step-bound control of the SQUAREM package: a step at the bound that was accepted
    grows the bound, one that was rejected shrinks it; steps below the bound leave it."""
    at_bound = alpha >= step_max
    grown = jnp.where(at_bound, step_max * STEP_GROWTH, step_max)
    shrunk = jnp.where(at_bound, jnp.maximum(STEP_MAX_START, step_max / STEP_GROWTH), step_max)
    return jnp.where(accepted, grown, shrunk)


class SquaremState(NamedTuple):
    """The SQUAREM while-loop carry.

    params: the accepted iterate θ; value: objective at θ; mapped: T(θ), and m_state the
    M-step state after computing it (the E-step at θ that gave `value` also gave T(θ)).
    extrapolated: whether θ came from an extrapolation (else from a plain EM step).
    """

    params: Any
    value: jax.Array
    mapped: Any
    m_state: Any
    step_max: jax.Array
    extrapolated: jax.Array
    n_iter: jax.Array
    status: jax.Array
    trace: jax.Array


def run_squarem(
    model: Any,
    init_params: Any,
    X: jax.Array,
    sample_weight: jax.Array,
    *,
    max_iter: int,
    tol: Any,
    criterion: str = "loglik",
    chunk_size: int | None = None,
) -> FitResult:
    """SQUAREM-accelerated EM from `init_params`; the objective never decreases.

    An iteration from θ, with its objective and T(θ) already known, costs two E-steps:
    one at T(θ), giving its objective and T(T(θ)); one at the extrapolated point
    θ' = θ + 2αr + α²v (`extrapolate_params`), giving its objective and T(θ'), the next
    iteration's map. θ' is accepted when its objective is at least that of the plain EM
    step T(θ); otherwise the iteration takes T(θ) (whose objective and image are already
    known, so a rejection costs nothing extra) and the step bound shrinks. Varadhan &
    Roland's stabilisation T(θ') is thus the first E-step of the next iteration, and the
    objective check comes free with the E-step instead of as a separate evaluation.
    n_evals = 1 + 2 n_iter.

    Args, stopping rules and statuses are those of `jaxem.core.run_em`; an iteration here
    is one SQUAREM cycle, and the trace holds the objective at the accepted iterates.
    Returns:
      FitResult; method is SQUAREM when the last accepted iterate was extrapolated, EM when
      it was a plain EM step.
    """
    dtype = X.dtype
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints()
    step = lambda params, m_state: em_update(model, params, m_state, X, sample_weight, chunk_size)

    def body(state: SquaremState) -> SquaremState:
        em_value, twice_mapped, twice_m_state = step(state.mapped, state.m_state)
        extrapolated, alpha = extrapolate_params(
            constraints, state.params, state.mapped, twice_mapped, state.step_max
        )
        value, extrapolated_mapped, extrapolated_m_state = step(extrapolated, twice_m_state)
        accepted = jnp.isfinite(value) & all_finite(extrapolated_mapped) & (value >= em_value)
        new_params = tree_where(accepted, extrapolated, state.mapped)
        new_value = jnp.where(accepted, value, em_value)
        finite = jnp.isfinite(em_value) & all_finite(twice_mapped)
        n_iter = state.n_iter + 1
        done = is_done(criterion, new_value, state.value, new_params, state.params, tol)
        keep = lambda new, old: tree_where(finite, new, old)
        return SquaremState(
            params=keep(new_params, state.params),
            value=jnp.where(finite, new_value, state.value),
            mapped=keep(tree_where(accepted, extrapolated_mapped, twice_mapped), state.mapped),
            m_state=keep(tree_where(accepted, extrapolated_m_state, twice_m_state), state.m_state),
            step_max=next_step_max(state.step_max, alpha, accepted),
            extrapolated=accepted & (alpha > 1),
            n_iter=n_iter,
            status=next_status(finite, done, n_iter, max_iter),
            trace=state.trace.at[state.n_iter].set(state.value),
        )

    value, mapped, m_state = step(init_params, model.init_m_state(init_params))
    n_iter = jnp.zeros((), jnp.int32)
    start = SquaremState(
        params=init_params,
        value=value,
        mapped=mapped,
        m_state=m_state,
        step_max=jnp.asarray(STEP_MAX_START, dtype),
        extrapolated=jnp.asarray(False),
        n_iter=n_iter,
        status=next_status(jnp.isfinite(value) & all_finite(mapped), False, n_iter, max_iter),
        trace=jnp.full((max_iter,), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(lambda s: s.status == Status.RUNNING, body, start)
    return FitResult(
        params=final.params,
        log_likelihood=final.value,
        n_iter=final.n_iter,
        converged=final.status == Status.CONVERGED,
        status=final.status,
        trace=final.trace,
        n_decreases=count_decreases(final.trace),
        n_evals=1 + 2 * final.n_iter,
        method=jnp.where(final.extrapolated, Method.SQUAREM, Method.EM).astype(jnp.int32),
    )
