"""Acceleration of EM near the maximum: SQUAREM, a switch to quasi-Newton, and both.

EM converges linearly, at a rate set by the fraction of missing information, so near the
maximum of a poorly separated model it crawls (docs/design.md: switch to, or accelerate with,
another optimiser there). The remedies here are drop-ins for `jaxem.core.run_em`: same
signature (a jaxem.config.FitConfig), same FitResult, no host synchronisation (only `lax.while_loop`s), so
`jaxem.restarts` vmaps them. They move in the unconstrained coordinates of
`jaxem.constraints`, so every point they try is a valid parameter of any model that
declares `param_constraints(params)`.

run_squarem   SQUAREM (Varadhan & Roland 2008, scheme SqS3) on the fixed-point map
              T(θ) = M(E(θ)); the trace stays monotone where EM's does.
run_quasi_newton  EM until its per-iteration progress stalls, then `optax.lbfgs` on the
              negative objective (gradients by autodiff of the E-step's log-likelihood),
              then EM again, which stops only where its own stopping rule holds.
run_auto      the same with SQUAREM in place of EM: it keeps to EM's path where L-BFGS
              switched on early can leave it for another maximum.
run_preconditioned  run_auto with quasi-Newton preconditioned by EM (Jamshidian &
              Jennrich 1997, `run_preconditioned_phase`) in place of L-BFGS: one
              evaluation per step, no line search.

Evaluations are counted in FitResult.n_evals: one per E-step (`jaxem.core.em_update` or
`jaxem.core.objective`), and one per value-and-gradient of the objective (its cost is a
small multiple of an E-step's; the preconditioned phase's also gives the EM step, from
the same E-step's statistics).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxem import implicit, parallel, progress, units
from jaxem.config import FitConfig
from jaxem.constraints import from_unconstrained, inside, to_unconstrained
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
# SQUAREM (run_auto) has stalled once its gain per cycle shrinks by a factor above
# SQUAREM_STALL_RATE, after at least MIN_SQUAREM_CYCLES cycles of a phase. On the 60
# random mixtures of bench_accel_random.py (E-steps of plain EM over run_auto's, median):
# 0.5 and 3 cycles 5.28x, none ending below plain EM; 2 or 5 cycles 5.07x / 5.17x; rate
# 0.7 5.03x; rate 0.3 5.44x, but one problem ended 9.3e-3 per sample below plain EM.
# quasi-Newton (EM first) leaves EM's path on 4 of those 60 (ending above plain EM, by up
# to 0.026 per sample) and on bench_accel's 3-component problem at N=3500 (issue #18),
# where switching after 10-40 EM iterations instead of 5 stays and after 60 leaves
# again: no switch rule keeps it on EM's path, SQUAREM's extrapolation along it does.
SQUAREM_STALL_RATE = 0.5
MIN_SQUAREM_CYCLES = 3
# A phase after quasi-Newton that stops within this many iterations confirms its end.
CONFIRM_ITER = 3
# Gains up to this many float eps (relative to the objective) are rounding (`settled`).
ROUNDING_GAINS = 64
MAX_LINESEARCH_STEPS = 30
# Rank-two terms kept by the EM-preconditioned quasi-Newton phase (as LBFGS_MEMORY pairs).
CORRECTION_MEMORY = 40
# A secant pair is learned only where s'y exceeds this fraction of |s| |y| (curvature of
# the right sign, not rounding).
CURVATURE_FLOOR = 1e-10
# A rejected preconditioned step is retried at BACKTRACK times its length, down to
# MIN_STEP_FRACTION; below, an EM step is taken and S restarts. On the 60 random mixtures
# of bench_accel_random.py (median E-steps of plain EM over run_preconditioned's): 6.46x; with no
# retry (EM step and restart at once) 6.02x; retries by 0.25 down to 0.01 6.13x; keeping
# S after an EM step instead of restarting it needed up to 10x more evaluations.
BACKTRACK = 0.5
MIN_STEP_FRACTION = 0.1


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
    leave the parameter space (a negative rate, an indefinite covariance, a rate below its
    floor): such a point, detected by its unconstrained coordinates being non-finite or by
    leaving an Interval (`jaxem.constraints.inside`), is replaced by the extrapolation in
    unconstrained coordinates, which is always valid. (Projecting it onto the bound
    instead sent a float32 Poisson mixture's rate of 0.08 to its floor, SQUAREM ending
    7.6e-3 per sample below plain EM.) Either way the
    point goes back through the constraint bijection, which projects rounding errors
    away (a simplex is renormalised); without that, extrapolating from an extrapolated
    point multiplies the error of a sum by (alpha - 1)^2 at every step.
    Returns (params, alpha of the chosen extrapolation).
    """
    natural, natural_alpha = squarem_extrapolate(theta, mapped, twice_mapped, step_max)
    natural_u = to_unconstrained(constraints, natural)
    unconstrained = [to_unconstrained(constraints, p) for p in (theta, mapped, twice_mapped)]
    fallback_u, fallback_alpha = squarem_extrapolate(*unconstrained, step_max)
    valid = all_finite(natural_u) & inside(constraints, natural)
    params = from_unconstrained(constraints, tree_where(valid, natural_u, fallback_u))
    return params, jnp.where(valid, natural_alpha, fallback_alpha)


def next_step_max(step_max: jax.Array, alpha: jax.Array, accepted: jax.Array) -> jax.Array:
    """Step-bound control of the SQUAREM package: a step at the bound that was accepted
    grows the bound, one that was rejected shrinks it; steps below the bound leave it."""
    at_bound = alpha >= step_max
    grown = jnp.where(at_bound, step_max * STEP_GROWTH, step_max)
    shrunk = jnp.where(at_bound, jnp.maximum(STEP_MAX_START, step_max / STEP_GROWTH), step_max)
    return jnp.where(accepted, grown, shrunk)


def rounding(value: jax.Array) -> jax.Array:
    """Changes of the objective up to this size, at `value`, are rounding."""
    return ROUNDING_GAINS * jnp.finfo(value.dtype).eps * jnp.maximum(1.0, jnp.abs(value))


def settled(gain: jax.Array, previous_gain: jax.Array, value: jax.Array) -> jax.Array:
    """Whether a gain below tol may end a run: it is at rounding level, or no larger than
    the gain before it (of the same kind of step, finite).

    Near a maximum EM's gains shrink. Growing gains below tol mean EM is leaving the point
    slowly, as from a rate near its floor, where EM grows the rate by a few percent per
    iteration (a zero-inflated Poisson fit; issue #18).
    """
    return (gain <= rounding(value)) | (jnp.isfinite(previous_gain) & (gain <= previous_gain))


def dropped(em_value: jax.Array, value: jax.Array) -> jax.Array:
    """Whether an EM step lowered the objective from `value` to `em_value` beyond rounding.

    EM's M-step then does not maximise the objective exactly (a Gaussian mixture's
    reg_covar). In a phase that starts at the end of an L-BFGS phase, which climbs the
    objective itself, this means the point is above EM's own fixed point: the hybrids stop
    there (EM cannot improve it) instead of following EM down to its fixed point. Before
    any L-BFGS phase (plain SQUAREM, and the hybrids' first phase) the drop is EM's own
    and is followed, as plain EM follows it: stopping there had SQUAREM, quasi-Newton and
    auto end a GaussianMixture with reg_covar=1e-2 after 3 E-steps, 1.9e-3 from plain
    EM's fixed point. (That premise needs the model's `param_constraints` to declare the
    bounds its M-step keeps, so that no extrapolation leaves them: undeclared, SQUAREM
    follows EM back from past a bound with counted decreases,
    benchmarks/bench_accel_families.py --declare-positive.)
    """
    return em_value < value - rounding(value)


def is_stalled(gain: jax.Array, previous_gain: jax.Array, rate: float, value: jax.Array) -> jax.Array:
    """Slow linear convergence: the gain, above rounding at `value`, shrank by a factor
    above `rate`. (The ratio of two gains at rounding level is noise: it had quasi-Newton
    switch to L-BFGS, or not, by how the objective rounded.)"""
    real = gain > rounding(value)
    return real & (gain >= rate * previous_gain) & (gain < previous_gain)


class SquaremState(NamedTuple):
    """The SQUAREM while-loop carry.

    params: the accepted iterate θ; value: objective at θ; mapped: T(θ), and m_state the
    M-step state after computing it (the E-step at θ that gave `value` also gave T(θ)).
    extrapolated: whether θ came from an extrapolation (else from a plain EM step).
    gain: the objective gained by the last cycle (inf before the first); cycles: cycles
    since this phase started; stalled: SQUAREM's gains per cycle have stalled.
    """

    params: Any
    value: jax.Array
    mapped: Any
    m_state: Any
    step_max: jax.Array
    extrapolated: jax.Array
    gain: jax.Array
    cycles: jax.Array
    stalled: jax.Array
    n_iter: jax.Array
    n_evals: jax.Array
    status: jax.Array
    trace: jax.Array


def squarem_start(step, params, step_max, n_iter, n_evals, trace, max_iter: int) -> SquaremState:
    """The SQUAREM carry at `params`, after the E-step there (one evaluation)."""
    value, mapped, m_state = step(params, None)
    status = next_status(jnp.isfinite(value) & all_finite(mapped), jnp.asarray(False), n_iter, max_iter)
    return SquaremState(
        params=params, value=value, mapped=mapped, m_state=m_state, step_max=step_max,
        extrapolated=jnp.asarray(False), gain=jnp.asarray(jnp.inf, value.dtype), cycles=jnp.zeros((), jnp.int32),
        stalled=jnp.asarray(False), n_iter=n_iter, n_evals=n_evals + 1, status=status, trace=trace,
    )


def run_squarem_phase(
    state: SquaremState, step, constraints, config: FitConfig, tol, *, switch, after_quasi_newton=False
) -> SquaremState:
    """SQUAREM cycles from `state` until a stopping rule holds or, when `switch`, the gain
    per cycle stalls (`is_stalled`, after MIN_SQUAREM_CYCLES cycles of this phase). When
    `after_quasi_newton` (the phase starts at a quasi-Newton phase's end), a cycle whose
    EM step `dropped` ends the run at its starting point."""

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
        gain = new_value - state.value
        done = is_done(config.criterion, new_value, state.value, new_params, state.params, tol) & settled(
            gain, state.gain, new_value
        )
        cycles = state.cycles + 1
        stalled = switch & (cycles >= MIN_SQUAREM_CYCLES) & is_stalled(gain, state.gain, SQUAREM_STALL_RATE, new_value)
        stop = after_quasi_newton & dropped(em_value, state.value)
        progress.report(config, n_iter, new_value, state.value, (state.status == Status.RUNNING) & ~stop)
        keep = lambda new, old: tree_where(finite, new, old)
        advanced = SquaremState(
            params=keep(new_params, state.params),
            value=jnp.where(finite, new_value, state.value),
            mapped=keep(tree_where(accepted, extrapolated_mapped, twice_mapped), state.mapped),
            m_state=keep(tree_where(accepted, extrapolated_m_state, twice_m_state), state.m_state),
            step_max=next_step_max(state.step_max, alpha, accepted),
            extrapolated=accepted & (alpha > 1),
            gain=gain,
            cycles=cycles,
            stalled=stalled,
            n_iter=n_iter,
            n_evals=state.n_evals + 2,
            status=next_status(finite, done, n_iter, config.max_iter),
            trace=state.trace.at[state.n_iter].set(state.value),
        )
        stopped = state._replace(n_evals=state.n_evals + 2, status=jnp.asarray(Status.CONVERGED, jnp.int32))
        return tree_where(stop, stopped, advanced)

    return jax.lax.while_loop(lambda s: is_running(s) & ~s.stalled, body, state)


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
    """SQUAREM-accelerated EM from `init_params`; the objective never decreases where EM's
    does not (`dropped`).

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
    is one SQUAREM cycle, and the trace holds the objective at the accepted iterates. A
    cycle's gain below tol ends the run only when it is `settled`: no larger than the
    cycle's before (so never the first cycle), or at rounding level.
    Returns:
      FitResult; method is SQUAREM when the last accepted iterate was extrapolated, EM when
      it was a plain EM step.
    """
    config = as_config(config, options)
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints(init_params)
    # Fixed features of the data (model.precompute), built once, outside the loop.
    prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
    step = em_step(model, data, sample_weight, config, prepared)
    zero = jnp.zeros((), jnp.int32)
    start = squarem_start(
        step, init_params, jnp.asarray(STEP_MAX_START, dtype), zero, zero,
        jnp.full((config.max_iter,), jnp.nan, dtype), config.max_iter,
    )
    final = run_squarem_phase(start, step, constraints, config, tol, switch=False)
    return fit_result(
        final.params, final.value, n_iter=final.n_iter, status=final.status, trace=final.trace,
        n_evals=final.n_evals, method=jnp.where(final.extrapolated, Method.SQUAREM, Method.EM),
    )


def em_step(model, data, sample_weight, config: FitConfig, prepared):
    """The EM map as step(params, m_state) -> (objective at params, T(params), M-step
    state); m_state None means a fresh `init_m_state`. prepared: the fixed features of
    the data (`parallel.prepare`), built once, outside the loops."""

    def step(params, m_state):
        m_state = model.init_m_state(params) if m_state is None else m_state
        return em_update(model, params, m_state, data, sample_weight, config.chunk_size, prepared)

    return step


# --- a first phase (EM or SQUAREM), then quasi-Newton ------------------------------------------
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


def run_em_phase(
    state: EMPhaseState, em_data: EMData, config: FitConfig, *, switch, after_quasi_newton
) -> EMPhaseState:
    """EM iterations (jaxem.core.em_iteration) from `state` until a stopping rule holds or,
    when `switch`, EM stalls.

    EM has stalled once, after MIN_EM_ITER iterations of this phase, its gain per
    iteration shrinks by a factor above STALL_RATE: it is in slow linear convergence.
    Stopping rules as run_em, but a gain below tol must be `settled`; when
    `after_quasi_newton` (the phase starts at a quasi-Newton phase's end), an iteration
    that `dropped` the objective is undone and ends the run.
    """
    first_iter = state.em.n_iter
    # Reported here, not by em_iteration: an undone iteration is not reported.
    unreported = config.replace(progress=None)

    def body(state: EMPhaseState) -> EMPhaseState:
        em = em_iteration(state.em, em_data, unreported)
        gain = em.objective - state.em.objective
        stop = after_quasi_newton & dropped(em.objective, state.em.objective)
        progress.report(config, em.n_iter, em.objective, state.em.objective, is_running(state.em) & ~stop)
        unsettled = (em.status == Status.CONVERGED) & ~settled(gain, state.gain, em.objective)
        em = em._replace(status=jnp.where(unsettled, Status.RUNNING, em.status).astype(jnp.int32))
        undone = state.em._replace(params=state.em.previous, status=jnp.asarray(Status.CONVERGED, jnp.int32))
        em = tree_where(stop, undone, em)
        stalled = switch & (em.n_iter - first_iter >= MIN_EM_ITER) & is_stalled(gain, state.gain, STALL_RATE, em.objective)
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


class PreconditionedState(NamedTuple):
    """Carry of the EM-preconditioned quasi-Newton phase, in flat unconstrained coordinates.

    u: (p,) the iterate; value, grad (p,): the objective and its gradient at u; em_dir (p,):
    the EM step from u (the coordinates of T(params) minus u). The correction S to EM's
    preconditioner is a sum of up to CORRECTION_MEMORY rank-two terms (`apply_correction`):
    steps, images (CORRECTION_MEMORY, p) and scales (CORRECTION_MEMORY, 2), zero rows
    unused (the oldest overwritten once all are used), n_terms the terms added since S
    was last reset. step_fraction: of the next quasi-Newton step (below 1 after
    rejections); failed: an EM step lowered the objective beyond rounding or was not
    finite (the phase ends).
    """

    u: jax.Array
    value: jax.Array
    grad: jax.Array
    em_dir: jax.Array
    steps: jax.Array
    images: jax.Array
    scales: jax.Array
    n_terms: jax.Array
    step_fraction: jax.Array
    failed: jax.Array
    n_iter: jax.Array
    n_evals: jax.Array
    status: jax.Array
    trace: jax.Array


def preconditioned_evaluation(model, data, sample_weight, config: FitConfig, prepared, constraints, unravel):
    """evaluate(u) -> (objective, its gradient, EM step) at flat unconstrained coordinates
    u (p,); unravel maps u back to the pytree of `constraints`. One E-step, differentiated
    in reverse mode for the gradient, whose statistics also give the M-step (from a fresh
    `init_m_state`, as at the start of every EM phase): counted as one evaluation, as a
    value-and-gradient is."""
    to_params = lambda u: from_unconstrained(constraints, unravel(u))

    def value_and_stats(u):
        return objective(model, to_params(u), data, sample_weight, config.chunk_size, prepared)

    def evaluate(u):
        (value, stats), grad = jax.value_and_grad(value_and_stats, has_aux=True)(u)
        params = to_params(u)
        mapped, _ = model.maximize(stats, params, model.init_m_state(params), data, sample_weight)
        return value, grad, ravel_pytree(to_unconstrained(constraints, mapped))[0] - u

    return evaluate


def preconditioned_start(evaluate, u, n_iter, n_evals, status, trace) -> PreconditionedState:
    """The phase's carry at u (p,), after evaluating there (one evaluation), with S = 0."""
    value, grad, em_dir = evaluate(u)
    rows = jnp.zeros((CORRECTION_MEMORY, u.shape[0]), u.dtype)
    return PreconditionedState(
        u=u, value=value, grad=grad, em_dir=em_dir, steps=rows, images=rows,
        scales=jnp.zeros((CORRECTION_MEMORY, 2), u.dtype), n_terms=jnp.zeros((), jnp.int32),
        step_fraction=jnp.ones((), u.dtype),
        failed=~(jnp.isfinite(value) & all_finite(grad) & all_finite(em_dir)),
        n_iter=n_iter, n_evals=n_evals + 1, status=status, trace=trace,
    )


def apply_correction(state: PreconditionedState, v: jax.Array) -> jax.Array:
    """S v, for S = sum_i a_i s_i s_i' - (h_i s_i' + s_i h_i') / (s_i' y_i): rows s_i of
    steps, h_i of images, [a_i, 1 / (s_i' y_i)] of scales."""
    sv = state.steps @ v
    hv = state.images @ v
    a, inverse_sy = state.scales[:, 0], state.scales[:, 1]
    return state.steps.T @ (a * sv - inverse_sy * hv) - state.images.T @ (inverse_sy * sv)


def correction_term(state: PreconditionedState, step, grad, em_dir):
    """The rank-two update of S for the step `step` to a point with gradient `grad` and EM
    step `em_dir`: (image h, scales [a, 1 / s'y], whether s'y > 0 lets it be learned).

    The BFGS update of the inverse observed information H = A + S for the secant pair
    (s, y = g_old - g_new), written for S: H y is unknown but A y, EM's preconditioner
    applied to y, is g~_old - g~_new, so h = (g~_old - g~_new) + S y stands for H y and
    S += (1 + y'h / s'y) s s' / s'y - (h s' + s h') / s'y; then H y = s.
    """
    y = state.grad - grad
    image = (state.em_dir - em_dir) + apply_correction(state, y)
    sy = jnp.dot(step, y)
    curved = sy > CURVATURE_FLOOR * jnp.linalg.norm(step) * jnp.linalg.norm(y)
    inverse_sy = jnp.where(curved, 1.0 / jnp.where(curved, sy, 1.0), 0.0)
    a = (1.0 + jnp.dot(y, image) * inverse_sy) * inverse_sy
    return image, jnp.stack([a, inverse_sy]), curved


def run_preconditioned_phase(evaluate, state: PreconditionedState, config: FitConfig, *, tol, to_params):
    """Quasi-Newton preconditioned by EM (Jamshidian & Jennrich 1997, "QN2") from `state`
    until a stopping rule holds or an EM step fails.

    EM's step is a preconditioned gradient, g~ ≈ A g with A the inverse complete-data
    information; the inverse observed information is H = A + S, with S learned from the
    secant pairs (`correction_term`). Each step goes along d = g~ + S g, whose unit step is
    EM's own when S = 0, so EM's preconditioner scales it and only the missing
    information's part of the curvature is learned. A step is accepted when the objective
    does not decrease; a rejected one is retried at BACKTRACK times its length, and below
    MIN_STEP_FRACTION of it (or where d is not an ascent direction) the step is EM's and
    S restarts from zero. An EM step that lowers the objective beyond rounding
    (`dropped`), or is not finite, fails the phase, as a failed L-BFGS step. Stopping
    rules are run_em's, on accepted steps; each step costs one evaluation
    (`preconditioned_evaluation`) and reports the objective it ends at to config.progress.
    """
    running = lambda s: (s.status == Status.RUNNING) & ~s.failed

    def body(s: PreconditionedState) -> PreconditionedState:
        qn_dir = s.step_fraction * (s.em_dir + apply_correction(s, s.grad))
        ascent = (jnp.dot(s.grad, qn_dir) > 0) & all_finite(qn_dir)
        use_em = (s.step_fraction < MIN_STEP_FRACTION) | ~ascent
        s = s._replace(
            steps=jnp.where(use_em, 0.0, s.steps), images=jnp.where(use_em, 0.0, s.images),
            scales=jnp.where(use_em, 0.0, s.scales), n_terms=jnp.where(use_em, 0, s.n_terms),
        )
        step = jnp.where(use_em, s.em_dir, qn_dir)
        u = s.u + step
        value, grad, em_dir = evaluate(u)
        finite = jnp.isfinite(value) & all_finite(grad) & all_finite(em_dir)
        failed = use_em & (~finite | dropped(value, s.value))
        accepted = finite & ((value >= s.value) | (use_em & ~failed))
        image, scales, curved = correction_term(s, step, grad, em_dir)
        learn = accepted & curved
        slot = s.n_terms % CORRECTION_MEMORY
        put = lambda rows, row: jnp.where(learn, rows.at[slot].set(row), rows)
        n_iter = s.n_iter + 1
        done = accepted & is_done(config.criterion, value, s.value, to_params(u), to_params(s.u), tol)
        keep = lambda new, old: jnp.where(accepted, new, old)
        progress.report(config, n_iter, keep(value, s.value), s.value, running(s))
        return PreconditionedState(
            u=keep(u, s.u), value=keep(value, s.value), grad=keep(grad, s.grad), em_dir=keep(em_dir, s.em_dir),
            steps=put(s.steps, step), images=put(s.images, image), scales=put(s.scales, scales),
            n_terms=s.n_terms + learn.astype(jnp.int32),
            step_fraction=jnp.where(accepted, 1.0, s.step_fraction * BACKTRACK), failed=failed,
            n_iter=n_iter, n_evals=s.n_evals + 1,
            status=next_status(jnp.asarray(True), done, n_iter, config.max_iter),
            trace=s.trace.at[s.n_iter].set(s.value),
        )

    return jax.lax.while_loop(running, body, state)


class QuasiNewtonEnd(NamedTuple):
    """Where a quasi-Newton phase (L-BFGS or preconditioned) ended: params, the objective
    there, whether it failed (a step did not ascend), and the run's counters."""

    params: Any
    value: jax.Array
    failed: jax.Array
    n_iter: jax.Array
    n_evals: jax.Array
    status: jax.Array
    trace: jax.Array


class HybridState(NamedTuple):
    """Carry between the phases of `run_hybrid`.

    params: where the next phase starts; value: the objective at params, NaN when not
    computed; step_max: SQUAREM's step bound, kept across phases; may_switch: False once
    a quasi-Newton phase failed; by_quasi_newton: the last quasi-Newton phase met the
    stopping rule and the phase after it confirmed its end within CONFIRM_ITER
    iterations; extrapolated: the last SQUAREM iterate was extrapolated;
    after_quasi_newton: params are a quasi-Newton phase's end.
    """

    params: Any
    value: jax.Array
    step_max: jax.Array
    may_switch: jax.Array
    by_quasi_newton: jax.Array
    extrapolated: jax.Array
    after_quasi_newton: jax.Array
    n_iter: jax.Array
    n_evals: jax.Array
    status: jax.Array
    trace: jax.Array


def run_hybrid(
    model, init_params, data, sample_weight, *, tol, config: FitConfig, first: str, second: str = "lbfgs"
) -> FitResult:
    """Phases of `first` ("em" or "squarem") and of quasi-Newton (`second`: "lbfgs" or
    "preconditioned"), alternating until a phase of `first` meets its stopping rule,
    max_iter or a non-finite value (run_quasi_newton, run_auto, run_preconditioned). A
    quasi-Newton phase that meets the stopping rule hands its end to a phase of `first`,
    which stops there only if its own rule holds."""
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)
    constraints = model.param_constraints(init_params)
    to_params = lambda u: from_unconstrained(constraints, u)
    prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
    loss_fn = lambda u: -objective(model, to_params(u), data, sample_weight, config.chunk_size, prepared)[0]
    em_data = EMData(model, data, sample_weight, prepared, tol)
    step = em_step(model, data, sample_weight, config, prepared)

    def em_phase(state: HybridState) -> tuple[HybridState, jax.Array]:
        em = start_state(state.params, model.init_m_state(state.params), dtype, config.max_iter)
        em = em._replace(n_iter=state.n_iter, status=state.status, trace=state.trace)
        phase = run_em_phase(
            EMPhaseState(em=em, gain=jnp.asarray(jnp.inf, dtype), stalled=jnp.asarray(False), n_evals=state.n_evals),
            em_data, config, switch=state.may_switch, after_quasi_newton=state.after_quasi_newton,
        )
        em = phase.em
        return state._replace(
            params=em.params, value=jnp.asarray(jnp.nan, dtype), n_iter=em.n_iter, n_evals=phase.n_evals,
            status=em.status, trace=em.trace,
        ), phase.stalled

    def squarem_phase(state: HybridState) -> tuple[HybridState, jax.Array]:
        start = squarem_start(
            step, state.params, state.step_max, state.n_iter, state.n_evals, state.trace, config.max_iter
        )
        phase = run_squarem_phase(
            start, step, constraints, config, tol, switch=state.may_switch,
            after_quasi_newton=state.after_quasi_newton,
        )
        return state._replace(
            params=phase.params, value=phase.value, step_max=phase.step_max, extrapolated=phase.extrapolated,
            n_iter=phase.n_iter, n_evals=phase.n_evals, status=phase.status, trace=phase.trace,
        ), phase.stalled

    def lbfgs_phase(phase: HybridState) -> QuasiNewtonEnd:
        u = to_unconstrained(constraints, phase.params)
        loss, grad = jax.value_and_grad(loss_fn)(u)
        end = run_lbfgs_phase(
            loss_fn,
            LbfgsPhaseState(
                u=u, loss=loss, grad=grad, opt_state=None, failed=~(jnp.isfinite(loss) & all_finite(grad)),
                n_iter=phase.n_iter, n_evals=phase.n_evals + 1, status=phase.status, trace=phase.trace,
            ),
            config, to_params=to_params, tol=tol,
        )
        return QuasiNewtonEnd(
            to_params(end.u), -end.loss, end.failed, end.n_iter, end.n_evals, end.status, end.trace
        )

    def preconditioned_phase(phase: HybridState) -> QuasiNewtonEnd:
        u, unravel = ravel_pytree(to_unconstrained(constraints, phase.params))
        evaluate = preconditioned_evaluation(model, data, sample_weight, config, prepared, constraints, unravel)
        start = preconditioned_start(evaluate, u, phase.n_iter, phase.n_evals, phase.status, phase.trace)
        end = run_preconditioned_phase(evaluate, start, config, tol=tol, to_params=lambda u: to_params(unravel(u)))
        return QuasiNewtonEnd(
            to_params(unravel(end.u)), end.value, end.failed, end.n_iter, end.n_evals, end.status, end.trace
        )

    def body(state: HybridState) -> HybridState:
        phase, stalled = (em_phase if first == "em" else squarem_phase)(state)
        switched = stalled & is_running(phase)
        end = (lbfgs_phase if second == "lbfgs" else preconditioned_phase)(phase)
        converged = end.status == Status.CONVERGED
        confirming = next_status(jnp.asarray(True), jnp.asarray(False), end.n_iter, config.max_iter)
        handed_over = HybridState(
            params=end.params,
            value=end.value,
            step_max=phase.step_max,
            may_switch=phase.may_switch & ~end.failed,
            by_quasi_newton=converged,
            extrapolated=jnp.asarray(False),
            after_quasi_newton=jnp.asarray(True),
            n_iter=end.n_iter,
            n_evals=end.n_evals,
            status=jnp.where(converged, confirming, end.status),
            trace=end.trace,
        )
        confirmed = state.by_quasi_newton & (phase.n_iter - state.n_iter <= CONFIRM_ITER)
        return tree_where(switched, handed_over, phase._replace(by_quasi_newton=confirmed))

    start = HybridState(
        params=init_params, value=jnp.asarray(jnp.nan, dtype), step_max=jnp.asarray(STEP_MAX_START, dtype),
        may_switch=jnp.asarray(True), by_quasi_newton=jnp.asarray(False), extrapolated=jnp.asarray(False),
        after_quasi_newton=jnp.asarray(False),
        n_iter=jnp.zeros((), jnp.int32), n_evals=jnp.zeros((), jnp.int32),
        status=jnp.asarray(Status.RUNNING, jnp.int32), trace=jnp.full((config.max_iter,), jnp.nan, dtype),
    )
    final = jax.lax.while_loop(is_running, body, start)
    unknown = jnp.isnan(final.value)
    final_value = jnp.where(
        unknown, objective(model, final.params, data, sample_weight, config.chunk_size, prepared)[0], final.value
    )
    method = jnp.where(
        final.by_quasi_newton, Method.QUASI_NEWTON, jnp.where(final.extrapolated, Method.SQUAREM, Method.EM)
    )
    return fit_result(
        final.params, final_value, n_iter=final.n_iter, status=final.status, trace=final.trace,
        n_evals=final.n_evals + unknown.astype(jnp.int32), method=method,
    )


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
    """EM until it stalls, then L-BFGS on the negative objective, then EM again.

    EM is robust far from the maximum and slow near it; L-BFGS (optax.lbfgs with a zoom
    line search, gradients by autodiff of the E-step's log-likelihood in unconstrained
    coordinates) converges superlinearly near it. The line search only accepts descent,
    and a step that does not lower the loss is discarded, so the objective never
    decreases. Where L-BFGS stops, EM checks its end: the run stops only when EM's own
    stopping rule holds there (a gain below tol, `settled`); otherwise EM goes on and may
    hand over to L-BFGS again, with a fresh memory (never after an L-BFGS step failed).

    Args, stopping rules and statuses are those of `jaxem.core.run_em`; max_iter bounds EM
    iterations plus L-BFGS iterations. n_evals counts E-steps, value-and-gradients (one
    per line-search step, one when L-BFGS starts) and the final evaluation.
    Returns:
      FitResult; method is QUASI_NEWTON when L-BFGS found the final point (EM confirmed it
      within CONFIRM_ITER iterations), else EM.
    """
    config = as_config(config, options)
    return run_hybrid(model, init_params, data, sample_weight, tol=tol, config=config, first="em")


def run_auto(
    model: Any,
    init_params: Any,
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    **options,
) -> FitResult:
    """SQUAREM until its gain per cycle stalls, then L-BFGS, then SQUAREM again.

    run_quasi_newton with SQUAREM cycles in place of EM iterations: SQUAREM is faster than
    EM far from the maximum and keeps to EM's path, and its step bound is kept across
    phases. Args, stopping rules, statuses and Returns as run_quasi_newton (method
    SQUAREM when the last iterate was extrapolated).
    """
    config = as_config(config, options)
    return run_hybrid(model, init_params, data, sample_weight, tol=tol, config=config, first="squarem")


def run_preconditioned(
    model: Any,
    init_params: Any,
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    **options,
) -> FitResult:
    """SQUAREM until its gain per cycle stalls, then quasi-Newton preconditioned by EM,
    then SQUAREM again.

    run_auto with, in place of L-BFGS, a quasi-Newton method that takes the EM step as
    its preconditioner and learns only the missing information's curvature
    (`run_preconditioned_phase`): one evaluation per step (objective, gradient and EM
    step from one E-step), no line search. Where the maximum lies on a bound of the
    parameter space (a factor-analysis noise variance at min_noise) it approaches it
    slowly, as EM does, and may stop short of it where L-BFGS reaches it
    (benchmarks/bench_accel_families.py). Args, stopping rules, statuses and Returns as
    run_auto.
    """
    config = as_config(config, options)
    return run_hybrid(
        model, init_params, data, sample_weight, tol=tol, config=config, first="squarem", second="preconditioned"
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


RUNNERS = {
    "squarem": run_squarem, "quasi_newton": run_quasi_newton, "auto": run_auto, "preconditioned": run_preconditioned,
}
