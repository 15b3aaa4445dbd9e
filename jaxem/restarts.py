"""Restarts: one `vmap` of the single-start EM run over starting params, and selection.

EM converges to a local maximum (docs/design.md), so restarts are part of the method. All runs
are returned; the best is the one with the highest final objective among finite runs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxem import accel
from jaxem.batching import RESTARTS
from jaxem.config import FitConfig
from jaxem.core import FitResult, Progress, Status, run_em


def runner_for(config: FitConfig):
    """The single-start runner for `config.accelerate`: run_em (None) or accel.RUNNERS'
    run_squarem, run_quasi_newton, run_auto, run_preconditioned, the accelerated ones given
    implicit gradients through plain EM's fixed point when config.diff is "implicit"."""
    if config.accelerate is None:
        return run_em
    runner = accel.RUNNERS[config.accelerate]
    return accel.through_fixed_point(runner) if config.diff == "implicit" else runner


def run_restarts(
    model: Any, init_params: Any, data: Any, sample_weight: jax.Array, tol: Any, config: FitConfig,
    resume: Progress | None = None,
) -> FitResult:
    """`runner_for(config)` vmapped over the leading (n_restarts) axis of init_params (and
    of `resume`, the restarts' core.Progress when continuing plain EM runs).

    The vmap binds the axis name jaxem.batching.RESTARTS (kernels may read its size).
    Returns a FitResult whose fields all have a leading n_restarts axis.
    """
    runner = runner_for(config)
    if resume is None:
        single = lambda params: runner(model, params, data, sample_weight, tol=tol, config=config)  # noqa: E731
        return jax.vmap(single, axis_name=RESTARTS)(init_params)
    resumed = lambda params, progress: runner(  # noqa: E731
        model, params, data, sample_weight, tol=tol, config=config, resume=progress
    )
    return jax.vmap(resumed, axis_name=RESTARTS)(init_params, resume)


def best_restart_index(restarts: FitResult) -> jax.Array:
    """Index of the restart with the highest finite final objective (0 if none is finite)."""
    usable = (restarts.status != Status.NON_FINITE) & jnp.isfinite(restarts.log_likelihood)
    return jnp.argmax(jnp.where(usable, restarts.log_likelihood, -jnp.inf))


def select_best(restarts: FitResult) -> FitResult:
    """The best restart's fields, with `best_restart` and all `restarts` attached."""
    best = best_restart_index(restarts)
    chosen = jax.tree.map(lambda leaf: leaf[best], restarts)
    return chosen._replace(best_restart=best, restarts=restarts)
