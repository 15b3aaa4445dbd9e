"""One EM run from given starting params: the pure step, stopping rules and the loop.

The whole run is one `lax.while_loop` whose carry holds params, the M-step's state, the
objective, the iteration count, a status code and a fixed-size trace; the data is an
argument of the loop body, never carried (jaxem.schedule, which runs the loop, gives each
vmapped problem its own). Restarts (jaxem.restarts) are a `vmap` of `run_em`.

The objective tracked is the weighted mean per-unit log-likelihood (plus log_prior / sum
of weights for MAP-EM), evaluated at the params entering each iteration, as
scikit-learn's `lower_bound_`. EM guarantees it never decreases (docs/design.md). The
model is used only through jaxem.protocol.Model; the static options come in one
jaxem.config.FitConfig.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem import implicit, parallel, progress, schedule, units
from jaxem.config import FitConfig


class Status(enum.IntEnum):
    """Why a run stopped. RUNNING only appears inside the loop."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITER = 2
    NON_FINITE = 3


STATUS_MESSAGES = {
    Status.RUNNING: "running",
    Status.CONVERGED: "converged: change below tol",
    Status.MAX_ITER: "stopped at max_iter without converging",
    Status.NON_FINITE: "failed: the log-likelihood or the params became NaN or infinite",
}


def status_message(status: Any) -> str:
    """Readable message for a status code (an int or a 0-d array)."""
    return STATUS_MESSAGES[Status(int(status))]


class Method(enum.IntEnum):
    """Which optimiser produced a run's final params (FitResult.method)."""

    EM = 0
    SQUAREM = 1
    QUASI_NEWTON = 2


METHOD_NAMES = {Method.EM: "EM", Method.SQUAREM: "SQUAREM", Method.QUASI_NEWTON: "quasi-Newton"}


def method_name(method: Any) -> str:
    """Readable name for a method code (an int or a 0-d array)."""
    return METHOD_NAMES[Method(int(method))]


class FitResult(NamedTuple):
    """Outcome of a fit; a pytree, so it passes through jit and vmap.

    params: fitted params (of the best restart for jaxem.fit).
    log_likelihood: () mean per-sample log-likelihood (plus prior term) at `params`.
    n_iter: () number of E+M iterations performed.
    converged: () bool, True only when the stopping rule was met.
    status: () int, a `Status` code; `status_message` turns it into words.
    trace: (max_iter,) objective at the params entering each iteration, NaN-padded.
    n_decreases: () iterations where the objective decreased beyond rounding.
    n_evals: () E-step evaluations used (each also evaluates the objective; a
      value-and-gradient of the log-likelihood counts as one).
    method: () int, the `Method` that produced the final params; `method_name` names it.
    best_restart: () index of the selected restart (jaxem.fit), else None.
    restarts: FitResult with a leading n_restarts axis on every field (jaxem.fit), else None.
    """

    params: Any
    log_likelihood: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    status: jax.Array
    trace: jax.Array
    n_decreases: jax.Array
    n_evals: jax.Array
    method: jax.Array
    best_restart: Any = None
    restarts: Any = None


class EMState(NamedTuple):
    """The while-loop carry. previous: the params entering the last iteration, whose
    objective is `objective` (kept for a run whose next objective is not finite)."""

    params: Any
    previous: Any
    m_state: Any
    objective: jax.Array
    n_iter: jax.Array
    status: jax.Array
    trace: jax.Array
    report_at: jax.Array  # int32: the iteration of the next progress report (progress.report_paced)


def objective(model, params, data, sample_weight, chunk_size=None, prepared=None):
    """Weighted mean per-unit log-likelihood plus log_prior / sum(w), and the statistics.

    prepared: `parallel.prepare(model, data, sample_weight, chunk_size)`, which `run_em`
    computes once per fit; computed here when None.
    """
    if prepared is None:
        prepared = parallel.prepare(model, data, sample_weight, chunk_size)
    stats, log_lik = parallel.e_step_prepared(model, params, *prepared)
    total = (log_lik + model.log_prior(params)) / jnp.sum(sample_weight)
    return total, stats


def em_update(model, params, m_state, data, sample_weight, chunk_size=None, prepared=None):
    """One E+M step, the fixed-point map T(params) = M(E(params)).

    prepared: as in `objective`.
    Returns (objective at `params`, new params, new M-step state).
    """
    value, stats = objective(model, params, data, sample_weight, chunk_size, prepared)
    new_params, new_m_state = model.maximize(stats, params, m_state, data, sample_weight)
    return value, new_params, new_m_state


def tree_where(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise select between two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def all_finite(tree: Any) -> jax.Array:
    """True when every entry of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def max_relative_change(new: Any, old: Any) -> jax.Array:
    """Largest over leaves of max|new - old| / max|old| (per leaf, so scale-free)."""

    def leaf_change(a, b):
        scale = jnp.maximum(jnp.max(jnp.abs(b)), jnp.finfo(b.dtype).tiny)
        return jnp.max(jnp.abs(a - b)) / scale

    return jnp.max(jnp.stack([leaf_change(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))]))


def decrease_tolerance(dtype: Any) -> float:
    """A drop of the per-unit objective below this (relative) counts as a real decrease."""
    return float(jnp.finfo(dtype).eps) ** 0.75


def count_decreases(trace: jax.Array) -> jax.Array:
    """Iterations where the NaN-padded trace fell by more than rounding."""
    tol = decrease_tolerance(trace.dtype) * jnp.maximum(1.0, jnp.abs(trace[:-1]))
    drops = trace[1:] < trace[:-1] - tol
    return jnp.sum(jnp.where(jnp.isnan(trace[1:]), False, drops))


def next_status(finite: jax.Array, done: jax.Array, n_iter: jax.Array, max_iter: int) -> jax.Array:
    """Status after an iteration: non-finite beats converged beats max_iter."""
    status = jnp.where(
        ~finite,
        Status.NON_FINITE,
        jnp.where(done, Status.CONVERGED, jnp.where(n_iter >= max_iter, Status.MAX_ITER, Status.RUNNING)),
    )
    return status.astype(jnp.int32)


def is_done(criterion: str, new_value, old_value, new_params, old_params, tol) -> jax.Array:
    """The stopping rule between two accepted iterates: "loglik" compares objectives,
    "params" the largest relative change of the params."""
    if criterion == "loglik":
        return jnp.abs(new_value - old_value) < tol
    return max_relative_change(new_params, old_params) < tol


def fit_result(params, log_likelihood, *, n_iter, status, trace, n_evals, method) -> FitResult:
    """The FitResult of one run; a non-finite final objective overrides the status."""
    status = jnp.where(jnp.isfinite(log_likelihood), status, Status.NON_FINITE).astype(jnp.int32)
    return FitResult(
        params=params,
        log_likelihood=log_likelihood,
        n_iter=n_iter,
        converged=status == Status.CONVERGED,
        status=status,
        trace=trace,
        n_decreases=count_decreases(trace),
        n_evals=n_evals,
        method=jnp.asarray(method, jnp.int32),
    )


def as_config(config: FitConfig | None, options: dict) -> FitConfig:
    """`config` with `options` (FitConfig fields by name) applied; a default FitConfig
    when None. Lets run_em and the accelerators be called with keyword options."""
    config = FitConfig() if config is None else config
    return config.replace(**options) if options else config


class EMData(NamedTuple):
    """What an EM iteration reads besides its state: the model, the data, the weights,
    `parallel.prepare`'s form of them, and tol (each vmapped problem has its own)."""

    model: Any
    data: Any
    sample_weight: jax.Array
    prepared: Any
    tol: jax.Array


def start_state(params: Any, m_state: Any, dtype: Any, max_iter: int) -> EMState:
    """The carry before the first iteration: objective -inf, an all-NaN trace."""
    return EMState(
        params=params,
        previous=params,
        m_state=m_state,
        objective=jnp.asarray(-jnp.inf, dtype),
        n_iter=jnp.zeros((), jnp.int32),
        status=jnp.asarray(Status.RUNNING, jnp.int32),
        trace=jnp.full((max_iter,), jnp.nan, dtype),
        report_at=jnp.zeros((), jnp.int32),
    )


class Progress(NamedTuple):
    """How far a stopped run got, for `run_em(..., resume=)`: its objective at the params
    entering its last iteration, its iteration count and its trace (any length; the
    first n_iter entries are kept). All floats, so that the implicit-gradient solve can take
    them as (gradient-free) inputs."""

    objective: jax.Array
    n_iter: jax.Array
    trace: jax.Array

    @classmethod
    def of(cls, result: FitResult) -> "Progress":
        """The progress of a FitResult (one run, or restarts with a leading axis)."""
        trace = jnp.asarray(result.trace)
        n_iter = jnp.asarray(result.n_iter)
        last = jnp.take_along_axis(trace, jnp.maximum(n_iter - 1, 0)[..., None], axis=-1)[..., 0]
        return cls(objective=last, n_iter=n_iter.astype(trace.dtype), trace=trace)


def resumed_state(start: EMState, resume: Progress) -> EMState:
    """`start` (built from the resumed params) carrying on from `resume`'s iteration."""
    n_iter = resume.n_iter.astype(jnp.int32)
    kept = jnp.where(jnp.arange(resume.trace.shape[-1]) < n_iter, resume.trace, jnp.nan)
    width = start.trace.shape[0]
    trace = jnp.full((width,), jnp.nan, start.trace.dtype).at[: min(width, kept.shape[0])].set(kept[:width])
    objective = jnp.where(n_iter > 0, resume.objective, start.objective).astype(start.objective.dtype)
    status = jnp.where(n_iter >= width, Status.MAX_ITER, Status.RUNNING).astype(jnp.int32)
    return start._replace(objective=objective, n_iter=n_iter, status=status, trace=trace)


def em_iteration(state: EMState, em_data: EMData, config: FitConfig) -> EMState:
    """One E+M step from `state` with the stopping rule applied: the body of plain EM's
    loop and of the accelerators' EM phases. A non-finite step ends the run with the last
    params whose objective is finite: the current ones when only the M-step's params are
    not finite, the previous ones when the current params' objective is not."""
    model, data, sample_weight, prepared, tol = em_data
    value, new_params, new_m_state = em_update(
        model, state.params, state.m_state, data, sample_weight, config.chunk_size, prepared
    )
    finite = jnp.isfinite(value) & all_finite(new_params)
    done = is_done(config.criterion, value, state.objective, new_params, state.params, tol)
    n_iter = state.n_iter + 1
    report_at = progress.report_paced(config, state.report_at, n_iter, value, state.objective, is_running(state))
    keep = lambda new, old: tree_where(finite, new, old)
    last_finite = tree_where(jnp.isfinite(value), state.params, state.previous)
    return EMState(
        params=keep(new_params, last_finite),
        previous=keep(state.params, state.previous),
        m_state=keep(new_m_state, state.m_state),
        objective=value,
        n_iter=n_iter,
        status=next_status(finite, done, n_iter, config.max_iter),
        trace=state.trace.at[state.n_iter].set(value),
        report_at=report_at,
    )


def is_running(state) -> jax.Array:
    """Whether a loop state's status is still RUNNING."""
    return state.status == Status.RUNNING


def _loop(body, start: EMState, data, config: FitConfig) -> EMState:
    """Apply `body` while the status is RUNNING, as `config.diff` needs.

    "implicit": jaxem.schedule.while_loop, a lax.while_loop that retires finished problems
    when vmapped over data sets (`config.vmap_slots` of them in flight); reverse mode goes
    around it (jaxem.implicit). None: a plain lax.while_loop, which forward mode (jvp) can
    also differentiate under vmap (JAX's custom_vmap cannot be). "unroll": a lax.scan of
    exactly max_iter steps in which a stopped state is carried unchanged, so reverse mode
    can differentiate it. All three give the same values.
    """
    if config.diff == "implicit":
        return schedule.while_loop(is_running, body, start, data, slots=config.vmap_slots)
    if config.diff is None:
        return jax.lax.while_loop(is_running, lambda state: body(state, data), start)

    def step(state, _):
        advanced = body(state, data)
        return tree_where(is_running(state), advanced, state), None

    final, _ = jax.lax.scan(step, start, None, length=config.max_iter)
    return final


def run_em(
    model: Any,
    init_params: Any,
    data: Any,
    sample_weight: jax.Array,
    *,
    tol: Any,
    config: FitConfig | None = None,
    resume: Progress | None = None,
    **options,
) -> FitResult:
    """EM from `init_params` until the stopping rule holds, max_iter, or a non-finite value.

    Each iteration is one E-step and one M-step; `max_iter=n, tol=0` performs exactly n of
    them. criterion "loglik" stops when the objective changes by less than tol between
    iterations; "params" when `max_relative_change` of the params is below tol. A NaN or
    inf objective or params end the run with Status.NON_FINITE, keeping the last finite params.

    Reverse-mode gradients (with respect to the data, sample_weight and the model's leaves):
    diff="implicit" differentiates the fixed point params = T(params) with jaxem.implicit,
    solving the adjoint with `config.adjoint`, and gives init_params a zero gradient;
    diff="unroll" runs a bounded scan of max_iter iterations (params frozen once stopped)
    that reverse mode differentiates step by step; None runs the plain while_loop (forward
    mode only). All three compute the same values.

    Vmapped over data sets, the while loop of diff="implicit" advances `config.vmap_slots`
    problems at a time and retires each at its own stop (jaxem.schedule.while_loop);
    diff=None keeps the lockstep while_loop, so that vmap of jvp works.

    Args:
      data: the model's data (leading axis: units); sample_weight: (n_units,).
      tol: scalar (may be traced).
      config: the static options (jaxem.config.FitConfig); `options` override its fields
        by name (run_em(..., max_iter=50, criterion="params")).
      resume: None, or the `Progress` of a stopped run whose params are init_params: the
        run continues from its iteration count, objective and trace (config.max_iter then
        bounds the total), computing exactly what one uninterrupted run computes.
    Returns:
      FitResult with best_restart and restarts None.
    """
    config = as_config(config, options)
    dtype = units.float_dtype(data)
    tol = jnp.asarray(tol, dtype)

    def solve(init_params, model, data, sample_weight, tol, resume):
        # Fixed features of the data (model.precompute), built once, outside the loop.
        prepared = parallel.prepare(model, data, sample_weight, config.chunk_size)
        start = start_state(init_params, model.init_m_state(init_params), dtype, config.max_iter)
        if resume is not None:
            start = resumed_state(start, resume)
        body = lambda state, em_data: em_iteration(state, em_data, config)
        final = _loop(body, start, EMData(model, data, sample_weight, prepared, tol), config)
        return final.params, final._replace(params=None, previous=None)

    if config.diff == "implicit":

        def fixed_point_map(params, final, model, data, sample_weight, tol, resume):
            return em_update(model, params, final.m_state, data, sample_weight, config.chunk_size)[1]

        solve = implicit.custom_fixed_point(fixed_point_map, solver=config.adjoint, max_iter=config.max_iter)(solve)
    params, final = solve(init_params, model, data, sample_weight, tol, resume)
    final_value, _ = objective(model, params, data, sample_weight, config.chunk_size)
    return fit_result(
        params, final_value, n_iter=final.n_iter, status=final.status, trace=final.trace,
        n_evals=final.n_iter + 1, method=Method.EM,
    )
