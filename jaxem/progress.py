"""Progress of a running fit, reported from inside the compiled loop.

`report(config, n_iter, value, previous, running)` sends (n_iter, objective, change) to
`config.progress` on the host through `jax.debug.callback`, after every iteration of every
run. Vmapped runs (restarts, data sets, or both) make one host call per iteration for all
of them together: under `vmap` the call is a `custom_vmap` whose rule stacks the runs'
values, where `jax.debug.callback` would call the host once per run; and the values go
as one argument (their bytes), since the call's cost is mostly a fixed cost per argument
(benchmarks/bench_progress.py). Runs that have already stopped, which a vmapped loop
keeps computing and discards, are not reported.

On the host, a callable is called once per reported run with NumPy scalars
`(n_iter, objective, change)`, in the runs' order; one with a true attribute `batched`
(as `Printer`) is called once per iteration with 1-D NumPy arrays over those runs.
`Printer`, what `jaxem.fit(progress=True)` uses, prints at most one line per `interval`
seconds, of the best run.

A host call costs more than its own work: inside a loop whose operations use XLA's thread
pool it adds ~0.2-1 ms per iteration on CPU (benchmarks/bench_progress.py), a few percent
of a 30 ms iteration. So plain EM's loop paces its calls (`report_paced`): a callable with
a positive attribute `interval` (seconds; the Printer's) is called again only after about
interval / 2 of iterations at the pace measured between its calls (the stride at most
doubling from one call to the next, from 1), the skipped iterations costing one integer
comparison; without `interval` it is called after every iteration. The accelerators'
loops (2-3 E-steps per iteration) report every iteration (`report`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def report(config: Any, n_iter: jax.Array, value: jax.Array, previous: jax.Array, running: Any = True) -> None:
    """Send (n_iter, objective, change since the previous iteration) to config.progress,
    if `running` (whether the run was still running when this iteration started: a
    vmapped loop also steps the runs that have stopped, and those are not reported)."""
    if config.progress is None:
        return
    fields = _fields(n_iter, value, previous, running)
    _send(_Deliver(config.progress, _dtypes(fields)), _pack(fields))


def report_paced(
    config: Any, report_at: jax.Array, n_iter: jax.Array, value: jax.Array, previous: jax.Array, running: Any = True
) -> jax.Array:
    """`report`, but for a progress callable with a positive `interval` only once the run's
    iteration count reaches `report_at` (a loop-carried int32, 0 at the start): returns the
    next `report_at`, n_iter + the stride the host asks for after a call (module
    docstring), `report_at` unchanged when nothing was sent. Under vmap one host call goes
    for all runs when any running run is due."""
    if config.progress is None:
        return report_at
    if not _interval(config.progress) > 0:
        report(config, n_iter, value, previous, running)
        return report_at
    fields = _fields(n_iter, value, previous, running)
    due = jnp.asarray(running, bool) & (n_iter >= report_at)
    deliver = _Deliver(config.progress, _dtypes(fields))
    stride = _send_when_due(deliver, _Pace(deliver), _pack(fields), due)
    return jnp.where(stride > 0, n_iter + stride, report_at).astype(jnp.int32)


def _interval(progress: Callable) -> float:
    return float(getattr(progress, "interval", 0) or 0)


def _fields(n_iter, value, previous, running) -> list[jax.Array]:
    """What a report carries: n_iter, the objective, its change, whether running."""
    return [jnp.asarray(n_iter), jnp.asarray(value), jnp.asarray(value - previous), jnp.asarray(running, jnp.uint8)]


def _dtypes(fields: list[jax.Array]) -> tuple:
    return tuple(field.dtype for field in fields)


def _pack(fields: list[jax.Array]) -> jax.Array:
    """Scalars of any dtypes as the bytes of one uint8 vector: the host call's cost is
    mostly the conversion of each argument into a jax.Array, so one argument rather than
    four makes it a fraction (benchmarks/bench_progress.py)."""
    return jnp.concatenate([jax.lax.bitcast_convert_type(field, jnp.uint8).reshape(-1) for field in fields])


def _send(deliver: Callable, packed: jax.Array) -> None:
    """jax.debug.callback(deliver, packed), called once per vmapped batch with the batch's
    vectors stacked (leading axes, outermost vmap first), rather than once per member."""

    @jax.custom_batching.custom_vmap
    def send(packed):
        jax.debug.callback(deliver, packed)
        return jnp.zeros((), jnp.int32)  # custom_vmap wants an output; nothing reads it

    @send.def_vmap
    def send_batched(axis_size, in_batched, packed):
        return send(packed), False  # under a further vmap, this stacks that axis too

    # Progress is not differentiated: a stopped gradient keeps jvp (diff=None) off the
    # custom_vmap, which forward mode cannot go through.
    send(jax.lax.stop_gradient(packed))


def _send_when_due(deliver: Callable, pace: Callable, packed: jax.Array, due: jax.Array) -> jax.Array:
    """Where `due`: jax.debug.callback(deliver, packed) and the stride pace(packed) asks for
    (int32 >= 1), else 0; once per vmapped batch, due where any member is, the stride one
    for the whole batch. Two host calls: the stride must come back, and only
    jax.debug.callback (which returns nothing) may run in a while loop with a batched
    predicate (vmapped restarts); its side effect also keeps XLA from dropping the
    stride's pure_callback with the loop-carried report_at."""

    @jax.custom_batching.custom_vmap
    def send(packed, due):
        def call(packed):
            jax.debug.callback(deliver, packed)
            return jax.pure_callback(pace, jax.ShapeDtypeStruct((), jnp.int32), packed)

        return jax.lax.cond(due, call, lambda packed: jnp.zeros((), jnp.int32), packed)

    @send.def_vmap
    def send_batched(axis_size, in_batched, packed, due):
        packed_batched, due_batched = in_batched
        if not packed_batched:
            packed = jnp.broadcast_to(packed, (axis_size, *packed.shape))
        return send(packed, jnp.any(due) if due_batched else due), False

    return send(jax.lax.stop_gradient(packed), jax.lax.stop_gradient(due))


class _Deliver:
    """The host side of `report`: unpacks the vectors of the runs and hands those that
    were running to the progress callable (module docstring). Equal for the same callable
    and dtypes, so that retracing finds the same callback."""

    def __init__(self, progress: Callable, dtypes: tuple):
        self.progress = progress
        self.dtypes = tuple(np.dtype(dtype) for dtype in dtypes)

    def __eq__(self, other):
        return isinstance(other, _Deliver) and other.progress is self.progress and other.dtypes == self.dtypes

    def __hash__(self):
        return hash((_Deliver, id(self.progress), self.dtypes))

    def unpack(self, packed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n_iter, objective, change) of the runs that were running, 1-D over runs."""
        packed = np.asarray(packed)
        rows = packed.reshape(-1, packed.shape[-1])
        fields, start = [], 0
        for dtype in self.dtypes:
            fields.append(np.ascontiguousarray(rows[:, start : start + dtype.itemsize]).view(dtype)[:, 0])
            start += dtype.itemsize
        n_iter, value, change, running = fields
        running = running.astype(bool)
        return n_iter[running], value[running], change[running]

    def __call__(self, packed) -> None:
        n_iter, value, change = self.unpack(packed)
        if getattr(self.progress, "batched", False):
            if n_iter.size:
                self.progress(n_iter, value, change)
            return
        for run in range(n_iter.size):
            self.progress(n_iter[run], value[run], change[run])


class _Pace:
    """The host side of the stride between paced reports (module docstring): about
    `interval` / 2 seconds of iterations at the pace measured since the previous call, at
    least 1 and at most twice the previous stride; 1 for the first call of a fit (an
    iteration count that did not grow). Equal for equal deliveries, as _Deliver, so that
    retracing finds the same callback."""

    def __init__(self, deliver: _Deliver):
        self.deliver = deliver
        self.last = None  # (time, iteration, stride) of the previous call

    def __eq__(self, other):
        return isinstance(other, _Pace) and other.deliver == self.deliver

    def __hash__(self):
        return hash((_Pace, self.deliver))

    def __call__(self, packed) -> np.ndarray:
        n_iter = self.deliver.unpack(packed)[0]
        return np.asarray(self.stride(int(n_iter.max()) if n_iter.size else None), np.int32)

    def stride(self, n_iter: int | None) -> int:
        interval = _interval(self.deliver.progress)
        if n_iter is None:
            return 1
        now = time.monotonic()
        stride = 1
        if self.last is not None and n_iter > self.last[1]:
            seconds_per_iteration = max(now - self.last[0], 1e-9) / (n_iter - self.last[1])
            stride = int(min(max(0.5 * interval / seconds_per_iteration, 1), 2 * self.last[2]))
        self.last = (now, n_iter, stride)
        return stride


class Printer:
    """A progress callback that prints `iter N  objective  change` lines to a stream, at
    most one per `interval` seconds (the first iteration always), so that a long fit shows
    it is alive at the cost of one host call per iteration.

    Called with arrays over runs (`batched`: restarts, data sets), it prints the run with
    the highest finite objective and how many runs are still running."""

    batched = True

    def __init__(self, interval: float = 1.0, stream: Any = None):
        self.interval = interval
        self.stream = stream
        self._last = -float("inf")

    def __call__(self, n_iter, objective, change) -> None:
        n_iter, objective, change = (np.ravel(a) for a in (n_iter, objective, change))
        now = time.monotonic()
        if now - self._last < self.interval and not np.any(n_iter == 1):
            return
        self._last = now
        best = int(np.argmax(np.where(np.isfinite(objective), objective, -np.inf))) if objective.size > 1 else 0
        runs = f"  (best of {objective.size} running)" if objective.size > 1 else ""
        stream = self.stream if self.stream is not None else sys.stderr
        print(
            f"iter {int(n_iter[best]):6d}  objective {float(objective[best]): .10g}  change {float(change[best]): .3g}{runs}",
            file=stream,
        )


# The printer `jaxem.fit(progress=True)` uses: one object, so fits with progress=True
# share their compiled programs.
PRINTER = Printer()
