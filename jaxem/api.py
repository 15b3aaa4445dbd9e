"""`jaxem.fit`: validate inputs eagerly, build starting params, run vmapped restarts."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxem import missing as missing_lib
from jaxem import units, validation
from jaxem.config import FitConfig
from jaxem.core import FitResult, Progress
from jaxem.init import INIT_METHODS
from jaxem.precision import full_precision
from jaxem.progress import PRINTER
from jaxem.protocol import check_model
from jaxem.restarts import run_restarts, select_best


AUTO_CHUNK_SIZE = 10_000

# How many more chunks than the fewest `auto_chunk_size` will use (relatively) to find a
# count that divides the data: chunks at least 1 / (1 + this) of AUTO_CHUNK_SIZE.
AUTO_CHUNK_SLACK = 0.25


def auto_chunk_size(model: Any, n_units: int) -> int | None:
    """Units per E-step chunk for large data sets of models whose statistics add up over
    chunks: at most AUTO_CHUNK_SIZE, in an even number of near-equal chunks, so that
    `parallel.scan_unroll` pairs them, one chunk per core of a 2-core CPU (measured in
    benchmarks/bench_gmm.py; README "Performance"). None (one pass) for data sets of at
    most twice AUTO_CHUNK_SIZE units and for non-additive models. The chunk count is one
    that divides n_units when one is at most AUTO_CHUNK_SLACK above the fewest
    (`even_chunk_count`): equal chunks need no padded copy of the data (issue #16)."""
    if not model.additive_statistics or n_units <= 2 * AUTO_CHUNK_SIZE:
        return None
    return -(-n_units // even_chunk_count(n_units))


def even_chunk_count(n_units: int) -> int:
    """The number of chunks `auto_chunk_size` splits n_units units into: the fewest even
    count of chunks of at most AUTO_CHUNK_SIZE units, or, when one divides n_units, the
    smallest even divisor at most AUTO_CHUNK_SLACK above it."""
    fewest = -(-n_units // AUTO_CHUNK_SIZE)
    fewest += fewest % 2
    most = int(fewest * (1 + AUTO_CHUNK_SLACK))
    return next((n for n in range(fewest, most + 1, 2) if n_units % n == 0), fewest)


def fit(
    model: Any,
    X: Any,
    *,
    key: jax.Array,
    n_restarts: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    criterion: str = "loglik",
    init: str | dict = "kmeans++",
    sample_weight: Any = None,
    chunk_size: int | str | None = "auto",
    accelerate: str | None = None,
    diff: str | None = "implicit",
    adjoint: str = "auto",
    vmap_slots: int | str | None = "auto",
    progress: bool | Callable | None = None,
    resume: FitResult | None = None,
    missing: str | None = None,
) -> FitResult:
    """Fit `model` to X by EM with `n_restarts` vmapped random restarts.

    Args:
      model: a model such as `jaxem.GaussianMixture(n_components=3)`.
      X: (n_samples, n_features) finite numbers; float inputs keep their dtype.
      key: a JAX PRNG key; restart r uses `jax.random.split(key, n_restarts)[r]`.
      n_restarts: number of independent runs, fitted as one vmapped program.
      max_iter: maximum E+M iterations per run (also the trace length).
      tol: stopping threshold for `criterion`.
      criterion: "loglik" (change of the mean per-sample log-likelihood) or "params"
        (largest relative change of any params leaf).
      init: "kmeans++", "random", "random_from_data", or a dict of starting params.
      sample_weight: None or (n_samples,) non-negative weights.
      chunk_size: evaluate the E-step in chunks of this many rows, bounding memory to
        O(chunk_size * K) per restart; "auto" (default): `auto_chunk_size`, chunks of at
        most AUTO_CHUNK_SIZE rows for data sets of more than twice that and one pass
        otherwise; None always one pass.
      accelerate: None (plain EM), "squarem" (SQUAREM extrapolation of the EM map),
        "quasi_newton" (EM, then L-BFGS once EM stalls), "auto" (SQUAREM, then L-BFGS
        once SQUAREM stalls) or "preconditioned" (SQUAREM, then quasi-Newton
        preconditioned by EM once SQUAREM stalls); see jaxem.accel. All keep the objective monotone where
        EM does (jaxem.accel.dropped);
        FitResult.n_evals counts the E-steps used.
      diff: how reverse-mode gradients (jax.grad of anything computed from the result, with
        respect to X, sample_weight and the model's continuous leaves such as reg_covar)
        pass through the fit. "implicit": through the converged fixed point (jaxem.implicit;
        starting params get no gradient, backward cost independent of the iteration
        count; works with every `accelerate`). "unroll": through every iteration of a
        bounded scan (plain EM only; memory grows with max_iter). None: no reverse mode.
        The fitted values are the same in all three. With restarts, the gradient flows
        through the selected run.
      adjoint: solver of the implicit adjoint system: "auto" (default: "dense" up to
        jaxem.implicit.DENSE_MAX_PARAMS parameters, "bicgstab" above), "dense" (the
        Jacobian from batched VJPs, then one linear solve), "bicgstab", "gmres", or
        "fixed_point" (iterates u <- v + J^T u, converging at EM's own rate, so it is slow
        where EM is slow); see benchmarks/bench_implicit.py.
      vmap_slots: only matters when `fit` is vmapped over data sets (jit(vmap(fit))): how
        many problems EM advances at a time, each retired at its own stop rather than all
        iterating until the slowest converges (jaxem.schedule). "auto" (default):
        jaxem.schedule.CPU_AUTO_SLOTS on CPU, the whole batch on accelerators; an int; or
        None for lockstep. Results do not depend on it beyond rounding. Plain EM with
        diff="implicit" (the default) only: diff=None keeps a lockstep loop so that
        forward mode (vmap of jvp) works, and accelerate runs in lockstep.
      progress: None (default, silent), True (jaxem.progress.PRINTER: a line to stderr at
        most once a second, of the best restart), or a callable (n_iter, objective, change)
        called on the host with NumPy scalars after every iteration of every restart still
        running (EM steps and SQUAREM cycles), in restart order; the restarts of an
        iteration make one host call together. A callable with `batched = True` is called
        once per iteration with 1-D arrays over the running restarts instead. One with a
        positive attribute `interval` (seconds, as the printer's) is paced by plain EM:
        called again after about interval / 2 of iterations (jaxem.progress). The callable
        is part of the compiled program's key: pass the same one to reuse it.
      resume: a FitResult of a plain-EM fit of this model on the same data (or one
        loaded with jaxem.load) to continue: every restart carries on from its params,
        iteration count, objective and trace, until the new max_iter (the total) or its
        stopping rule, computing what one uninterrupted fit computes (bit for bit for
        closed-form M-steps; an M-step optimiser state carried across iterations starts
        afresh). key, init and n_restarts are then ignored.
      missing: None (default): NaN in X is an error. "em": NaN entries are missing values
        (missing at random), latent variables of EM: the E-step takes their conditional
        expectations given each row's observed entries, and the objective is the
        log-likelihood of the observed entries (jaxem.missing). For models with Gaussian
        components: GaussianMixture (every covariance type), FactorAnalysis, PPCA,
        MixtureOfFactorAnalyzers (a row or column with every entry missing is an error)
        and GaussianHMM (a step may miss every entry). inf is always an error.
    Returns:
      FitResult of the best restart, with every run in `.restarts`.
    Raises:
      ValueError: on invalid data, weights or options, before anything is compiled.
    """
    check_model(model)
    if missing_lib.check_missing(missing) == "em":
        model, X, sample_weight = missing_lib.prepare(model, X, sample_weight)
        # Its E-step bounds memory with blocks of incomplete rows; chunks would take the
        # slower per-row path (an explicit chunk_size still does, to bound memory further).
        chunk_size = None if chunk_size == "auto" else chunk_size
    config = FitConfig(
        n_restarts=n_restarts, max_iter=max_iter, criterion=criterion,
        init=None if isinstance(init, dict) else validation.check_choice(init, "init", INIT_METHODS), accelerate=accelerate, diff=diff,
        adjoint=adjoint, vmap_slots=vmap_slots, progress=PRINTER if progress is True else (progress or None),
    )
    tol = validation.check_non_negative(tol, "tol")
    data = model.as_data(X)
    n_units = units.n_units(data)
    config = config.replace(chunk_size=auto_chunk_size(model, n_units) if chunk_size == "auto" else chunk_size)
    sample_weight = validation.as_sample_weight(sample_weight, n_units, units.float_dtype(data))
    start = model.start_params(init, data) if isinstance(init, dict) else None
    if resume is not None:
        start, progress_so_far = resumed_restarts(resume, config, units.float_dtype(data))
        config = config.replace(n_restarts=units.n_units(progress_so_far.n_iter))
        return _fit(model, data, sample_weight, key, start, tol, config, progress_so_far)
    return _fit(model, data, sample_weight, key, start, tol, config)


def resumed_restarts(resume: FitResult, config: FitConfig, dtype: Any) -> tuple[Any, Progress]:
    """(params of every restart, their core.Progress) of a FitResult to resume.

    Raises:
      ValueError: not a fit's result (no restarts), an accelerated fit, or a config the
        resumed runs cannot continue under.
    """
    runs = getattr(resume, "restarts", None)
    if runs is None or not hasattr(runs, "trace"):
        raise ValueError("resume must be the FitResult of jaxem.fit (with its .restarts).")
    if config.accelerate is not None:
        raise ValueError("resume continues plain EM runs; fit with accelerate=None.")
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), runs.params)
    return params, Progress.of(runs._replace(trace=jnp.asarray(runs.trace, dtype)))


@partial(jax.jit, static_argnames=("config",))
def _fit(model, data, sample_weight, key, start, tol, config: FitConfig, resume: Progress | None = None):
    # Every matrix product of the fit at full float32 precision on GPUs/TPUs (jaxem.precision).
    with full_precision():
        if resume is not None:
            init_params = start
        elif start is None:
            keys = jax.random.split(key, config.n_restarts)
            init_params = jax.vmap(
                lambda k: model.init_params(k, data, sample_weight, config.init, config.chunk_size)
            )(keys)
        else:
            init_params = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (config.n_restarts,) + leaf.shape), start)
        restarts = run_restarts(model, init_params, data, sample_weight, tol, config, resume)
        return select_best(restarts)
