"""Acceleration of EM near the maximum: SQUAREM, and a switch to quasi-Newton.

EM converges linearly, at a rate set by the fraction of missing information, so near the
maximum of a poorly separated model it crawls (docs/design.md: switch to, or accelerate with,
another optimiser there). Both remedies here are drop-ins for `jaxem.core.run_em`: same
signature (a jaxem.config.FitConfig), same FitResult, no host synchronisation (only `lax.while_loop`s), so
`jaxem.restarts` vmaps them. Both move in the unconstrained coordinates of
`jaxem.constraints`, so every point they try is a valid parameter of any model that
declares `param_constraints(params)`.

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

from jaxem import implicit, parallel, progress, units
from jaxem.config import FitConfig
from jaxem.constraints import from_unconstrained, to_unconstrained
from jaxem.core import (
    EMData,
    EMState,
    FitResult,
    Method,
    Status,
    all_finite,
    as_config,
    em_iteration,
    em_update,
    fit_result,
    is_done,
    is_running,
    next_status,
    objective,
    start_state,
    tree_where,
)

# Step-length control of the SQUAREM R package (Varadhan & Roland 2008; step.max0 = 1,
# mstep = 4): steps start as plain EM (bound 1) and the bound grows by STEP_GROWTH each
# time a step at the bound is accepted, shrinks by it when one is rejected.
STEP_MAX_START = 1.0
STEP_GROWTH = 4.0

# EM has "stalled" (quasi-Newton takes over) once its gain per iteration shrinks by less
# than this factor per iteration, i.e. it has entered linear convergence at a rate above
# 1/2. On benchmarks/bench_accel.py, 0.9 (a later switch) needed 15-100% more evaluations
# to reach plain EM's optimum on every problem.
STALL_RATE = 0.5
# ... but not before this many EM iterations, which move from a rough start to the basin.
MIN_EM_ITER = 5
# Curvature pairs kept by L-BFGS, at O(LBFGS_MEMORY n_params) per iteration. 10 pairs
# needed 4x more evaluations on Old Faithful (badly scaled coordinates) and up to 22% more
# on the other benchmark problems. As many pairs as coordinates (up to 100) saved 2% of
# the evaluations on the random mixtures (bench_accel_random.py) but cost more wall time
# than it saved there: at N = 1000 on a CPU L-BFGS's own work per iteration (~0.08 ms with
# 40 pairs, ~0.19 ms with 100) exceeds a value-and-gradient (0.055 ms). The cost of the
# quasi-Newton phase is its iteration count through the curved region before the maximum
# (scipy's BFGS from the same switch point needs as many); memory seeded with EM's secant
# pairs, stricter line-search curvature, an earlier switch and fewer line-search steps did
# not lower it (issue #18).
LBFGS_MEMORY = 40
MAX_LINESEARCH_STEPS = 30


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
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    **options,
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
    config = as_config(config, options)
    max_iter = config.max_iter
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints(init_params)
    # Fixed features of the data (model.precompute), built once, outside the loop.
    prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
    step = lambda params, m_state: em_update(model, params, m_state, data, sample_weight, config.chunk_size, prepared)

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
        done = is_done(config.criterion, new_value, state.value, new_params, state.params, tol)
        progress.report(config, n_iter, new_value, state.value, state.status == Status.RUNNING)
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
        status=next_status(jnp.isfinite(value) & all_finite(mapped), jnp.asarray(False), n_iter, max_iter),
        trace=jnp.full((max_iter,), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(is_running, body, start)
    return fit_result(
        final.params, final.value, n_iter=final.n_iter, status=final.status, trace=final.trace,
        n_evals=1 + 2 * final.n_iter, method=jnp.where(final.extrapolated, Method.SQUAREM, Method.EM),
    )


# --- EM, then quasi-Newton ------------------------------------------------------------------------
class EMPhaseState(NamedTuple):
    """Carry of the EM phase: plain EM's state, the last gain, a stall flag and evaluations."""

    em: EMState
    gain: jax.Array
    stalled: jax.Array
    n_evals: jax.Array


class LbfgsPhaseState(NamedTuple):
    """Carry of the L-BFGS phase, in unconstrained coordinates `u`.

    loss: the negative objective at u; grad: its gradient; failed: the last step did not
    lower the loss (EM takes over again).
    """

    u: Any
    loss: jax.Array
    grad: Any
    opt_state: Any
    failed: jax.Array
    n_iter: jax.Array
    n_evals: jax.Array
    status: jax.Array
    trace: jax.Array


def run_em_phase(state: EMPhaseState, em_data: EMData, config: FitConfig, *, switch: bool) -> EMPhaseState:
    """EM iterations (jaxem.core.em_iteration) from `state` until a stopping rule holds or,
    when `switch`, EM stalls.

    EM has stalled once, after MIN_EM_ITER iterations, its gain per iteration shrinks by a
    factor above STALL_RATE: it is in slow linear convergence. Stopping rules as run_em.
    """

    def body(state: EMPhaseState) -> EMPhaseState:
        em = em_iteration(state.em, em_data, config)
        gain = em.objective - state.em.objective
        stalled = switch & (em.n_iter >= MIN_EM_ITER) & (gain > 0) & (gain >= STALL_RATE * state.gain)
        return EMPhaseState(em=em, gain=gain, stalled=stalled, n_evals=state.n_evals + 1)

    return jax.lax.while_loop(lambda s: is_running(s.em) & ~s.stalled, body, state)


def run_lbfgs_phase(loss_fn, state: LbfgsPhaseState, config: FitConfig, *, tol, to_params):
    """optax.lbfgs steps on loss_fn until a stopping rule holds or a step fails to descend.

    Each zoom line-search step is one value-and-gradient evaluation. Stopping rules are
    run_em's, on the objective (-loss) or on the params (`to_params(u)`); each iteration
    reports the objective it ends at to config.progress.
    """
    optimizer = optax.lbfgs(
        memory_size=LBFGS_MEMORY,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=MAX_LINESEARCH_STEPS, initial_guess_strategy="one"
        ),
    )
    state = state._replace(opt_state=optimizer.init(state.u))
    running = lambda s: (s.status == Status.RUNNING) & ~s.failed

    def body(state: LbfgsPhaseState) -> LbfgsPhaseState:
        updates, opt_state = optimizer.update(
            state.grad, state.opt_state, state.u, value=state.loss, grad=state.grad, value_fn=loss_fn
        )
        u = optax.apply_updates(state.u, updates)
        loss = optax.tree.get(opt_state, "value")
        grad = optax.tree.get(opt_state, "grad")
        descended = jnp.isfinite(loss) & all_finite(grad) & all_finite(u) & (loss <= state.loss)
        n_iter = state.n_iter + 1
        done = is_done(config.criterion, -loss, -state.loss, to_params(u), to_params(state.u), tol)
        status = jnp.where(descended, next_status(jnp.asarray(True), done, n_iter, config.max_iter), Status.RUNNING)
        keep = lambda new, old: tree_where(descended, new, old)
        kept_loss = jnp.where(descended, loss, state.loss)
        progress.report(config, n_iter, -kept_loss, -state.loss, running(state))
        return LbfgsPhaseState(
            u=keep(u, state.u),
            loss=kept_loss,
            grad=keep(grad, state.grad),
            opt_state=opt_state,
            failed=~descended,
            n_iter=n_iter,
            n_evals=state.n_evals + optax.tree.get(opt_state, "num_linesearch_steps").astype(jnp.int32),
            status=status.astype(jnp.int32),
            trace=state.trace.at[state.n_iter].set(-state.loss),
        )

    return jax.lax.while_loop(running, body, state)


def run_quasi_newton(
    model: Any,
    init_params: Any,
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    **options,
) -> FitResult:
    """EM until it stalls, then L-BFGS on the negative objective; EM again if L-BFGS fails.

    EM is robust far from the maximum and slow near it; L-BFGS (optax.lbfgs with a zoom
    line search, gradients by autodiff of the E-step's log-likelihood in unconstrained
    coordinates) converges superlinearly near it. The line search only accepts descent,
    and a step that does not lower the loss is discarded and hands the run back to EM
    (without further switching), so the objective never decreases. The phases are three
    `lax.while_loop`s; a phase with nothing to do costs no iteration.

    Args, stopping rules and statuses are those of `jaxem.core.run_em`; max_iter bounds EM
    iterations plus L-BFGS iterations. n_evals counts E-steps, value-and-gradients (one
    per line-search step, one when L-BFGS starts) and the final evaluation.
    Returns:
      FitResult; method is QUASI_NEWTON when L-BFGS finished the run, else EM.
    """
    config = as_config(config, options)
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints(init_params)
    to_params = lambda u: from_unconstrained(constraints, u)
    prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
    loss_fn = lambda u: -objective(model, to_params(u), data, sample_weight, config.chunk_size, prepared)[0]
    em_data = EMData(model, data, sample_weight, prepared, tol)

    zero = jnp.zeros((), jnp.int32)
    start = start_state(init_params, model.init_m_state(init_params), dtype, config.max_iter)
    first = run_em_phase(
        EMPhaseState(em=start, gain=jnp.asarray(jnp.inf, dtype), stalled=jnp.asarray(False), n_evals=zero),
        em_data, config, switch=True,
    )

    def start_lbfgs(phase: EMPhaseState) -> LbfgsPhaseState:
        u = to_unconstrained(constraints, phase.em.params)
        loss, grad = jax.value_and_grad(loss_fn)(u)
        return LbfgsPhaseState(
            u=u, loss=loss, grad=grad, opt_state=None, failed=~(jnp.isfinite(loss) & all_finite(grad)),
            n_iter=phase.em.n_iter, n_evals=phase.n_evals + 1, status=phase.em.status, trace=phase.em.trace,
        )

    # value_and_grad runs for every restart under vmap; it is counted only where used.
    switched = first.em.status == Status.RUNNING
    lbfgs = run_lbfgs_phase(loss_fn, start_lbfgs(first), config, to_params=to_params, tol=tol)
    lbfgs = lbfgs._replace(n_evals=jnp.where(switched, lbfgs.n_evals, first.n_evals))
    lbfgs_params = tree_where(switched, to_params(lbfgs.u), first.em.params)
    restart = first.em._replace(
        params=lbfgs_params, previous=lbfgs_params, objective=jnp.asarray(-jnp.inf, dtype), n_iter=lbfgs.n_iter,
        status=lbfgs.status, trace=lbfgs.trace,
    )
    last = run_em_phase(first._replace(em=restart, stalled=jnp.asarray(False), n_evals=lbfgs.n_evals), em_data, config, switch=False)
    final_value, _ = objective(model, last.em.params, data, sample_weight, config.chunk_size, prepared)
    finished_by_lbfgs = switched & ~lbfgs.failed
    return fit_result(
        last.em.params, final_value, n_iter=last.em.n_iter, status=last.em.status, trace=last.em.trace,
        n_evals=last.n_evals + 1, method=jnp.where(finished_by_lbfgs, Method.QUASI_NEWTON, Method.EM),
    )


def through_fixed_point(runner):
    """Give an accelerated runner implicit reverse-mode gradients.

    SQUAREM and quasi-Newton end at a fixed point of the plain EM map T, the same one
    `run_em` differentiates, so their gradients come from θ* = T(θ*) by jaxem.implicit.
    The M-step state at θ* is taken fresh (`init_m_state`): exact for closed-form and
    reset-optimizer M-steps. The returned runner recomputes log_likelihood outside the
    solve so that it is differentiable.
    """

    def run(model, init_params, data, sample_weight, *, tol, config: FitConfig):
        def solve(init, model, data, sample_weight, tol):
            result = runner(model, init, data, sample_weight, tol=tol, config=config)
            return result.params, result._replace(params=None)

        def em_map(params, aux, model, data, sample_weight, tol):
            return em_update(model, params, model.init_m_state(params), data, sample_weight, config.chunk_size)[1]

        solve = implicit.custom_fixed_point(em_map, solver=config.adjoint, max_iter=config.max_iter)(solve)
        params, result = solve(init_params, model, data, sample_weight, tol)
        log_likelihood, _ = objective(model, params, data, sample_weight, config.chunk_size)
        return result._replace(params=params, log_likelihood=log_likelihood)

    return run


RUNNERS = {"squarem": run_squarem, "quasi_newton": run_quasi_newton}
