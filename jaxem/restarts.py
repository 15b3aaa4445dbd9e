"""Restarts: one `vmap` of the single-start EM run over starting params, and selection.

EM converges to a local maximum (EM_NOTES), so restarts are part of the method. All runs
are returned; the best is the one with the highest final objective among finite runs.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxem import accel
from jaxem.core import FitResult, Status, run_em


def run_restarts(
    model: Any,
    init_params: Any,
    X: jax.Array,
    sample_weight: jax.Array,
    accelerate: str | None = None,
    diff: str | None = "implicit",
    adjoint: str = "auto",
    vmap_slots: int | str | None = "auto",
    **options,
) -> FitResult:
    """The single-start runner for `accelerate` vmapped over the leading (n_restarts) axis
    of init_params: run_em (None), accel.run_squarem ("squarem") or
    accel.run_quasi_newton ("quasi_newton"), differentiable as `diff` says. vmap_slots:
    run_em's (the accelerated runners vmap in lockstep).

    Returns a FitResult whose fields all have a leading n_restarts axis.
    """
    if accelerate is None:
        runner = partial(run_em, diff=diff, adjoint=adjoint, vmap_slots=vmap_slots)
    else:
        runner = {"squarem": accel.run_squarem, "quasi_newton": accel.run_quasi_newton}[accelerate]
        if diff == "implicit":
            runner = accel.through_fixed_point(
                runner, adjoint=adjoint, max_iter=options.pop("max_iter"), chunk_size=options.pop("chunk_size", None)
            )
    return jax.vmap(lambda params: runner(model, params, X, sample_weight, **options))(init_params)


def best_restart_index(restarts: FitResult) -> jax.Array:
    """Index of the restart with the highest finite final objective (0 if none is finite)."""
    usable = (restarts.status != Status.NON_FINITE) & jnp.isfinite(restarts.log_likelihood)
    return jnp.argmax(jnp.where(usable, restarts.log_likelihood, -jnp.inf))


def select_best(restarts: FitResult) -> FitResult:
    """The best restart's fields, with `best_restart` and all `restarts` attached."""
    best = best_restart_index(restarts)
    chosen = jax.tree.map(lambda leaf: leaf[best], restarts)
    return chosen._replace(best_restart=best, restarts=restarts)
