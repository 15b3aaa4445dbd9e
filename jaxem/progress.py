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
`Printer`, what `jaxem.fit(progress=True)` uses, throttles on the host: it prints at most
one line per `interval` seconds, of the best run.
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
    fields = [jnp.asarray(n_iter), jnp.asarray(value), jnp.asarray(value - previous), jnp.asarray(running, jnp.uint8)]
    _send(_Deliver(config.progress, tuple(field.dtype for field in fields)), _pack(fields))


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

    def __call__(self, packed) -> None:
        packed = np.asarray(packed)
        rows = packed.reshape(-1, packed.shape[-1])
        fields, start = [], 0
        for dtype in self.dtypes:
            fields.append(np.ascontiguousarray(rows[:, start : start + dtype.itemsize]).view(dtype)[:, 0])
            start += dtype.itemsize
        n_iter, value, change, running = fields
        running = running.astype(bool)
        n_iter, value, change = n_iter[running], value[running], change[running]
        if getattr(self.progress, "batched", False):
            if n_iter.size:
                self.progress(n_iter, value, change)
            return
        for run in range(n_iter.size):
            self.progress(n_iter[run], value[run], change[run])


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
