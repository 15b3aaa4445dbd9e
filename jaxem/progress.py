"""Progress of a running fit, reported from inside the compiled loop.

`report(config, n_iter, value, previous)` calls `config.progress(n_iter, objective, change)`
on the host through `jax.debug.callback` (once per iteration of every run; vmapped
restarts call it once per restart). `Printer`, what `jaxem.fit(progress=True)` uses,
throttles on the host: it prints at most one line per `interval` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import jax


def report(config: Any, n_iter: jax.Array, value: jax.Array, previous: jax.Array) -> None:
    """Send (n_iter, objective, change since the previous iteration) to config.progress."""
    if config.progress is not None:
        jax.debug.callback(config.progress, n_iter, value, value - previous)


class Printer:
    """A progress callback that prints `iter N  objective  change` lines to a stream, at
    most one per `interval` seconds (the first iteration always), so that a long fit shows
    it is alive at the cost of one host call per iteration."""

    def __init__(self, interval: float = 1.0, stream: Any = None):
        self.interval = interval
        self.stream = stream
        self._last = -float("inf")

    def __call__(self, n_iter, objective, change) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and int(n_iter) != 1:
            return
        self._last = now
        stream = self.stream if self.stream is not None else sys.stderr
        print(f"iter {int(n_iter):6d}  objective {float(objective): .10g}  change {float(change): .3g}", file=stream)


# The printer `jaxem.fit(progress=True)` uses: one object, so fits with progress=True
# share their compiled programs.
PRINTER = Printer()
