"""The static options of a fit, validated once and passed down as one hashable value.

`jaxem.fit` builds a `FitConfig` from its keyword arguments; `jaxem.restarts`,
`jaxem.core` and `jaxem.accel` read the fields they use from it. A new option is a new
field here plus the one place that reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxem import validation
from jaxem.implicit import ADJOINT_SOLVERS
from jaxem.init import INIT_METHODS

CRITERIA = ("loglik", "params")
DIFF_MODES = ("implicit", "unroll", None)
ACCELERATIONS = (None, "squarem", "quasi_newton", "auto", "preconditioned")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Static options of a fit (compile-time constants of its program).

    n_restarts: runs fitted as one vmapped program.
    max_iter: bound on E+M iterations (SQUAREM cycles, quasi-Newton steps) per run; trace length.
    criterion: "loglik" (change of the per-unit objective below tol) or "params" (largest
      relative change of any params leaf below tol).
    init: a jaxem.init method for the starting params, or None when they are given.
    chunk_size: units per chunk of a chunked E-step, None for one pass.
    accelerate: None, "squarem", "quasi_newton", "auto" or "preconditioned" (jaxem.accel).
    diff: reverse-mode gradients through the fit: "implicit", "unroll" or None.
    adjoint: the implicit adjoint solver (jaxem.implicit).
    vmap_slots: problems in flight when a fit is vmapped over data sets ("auto", an int,
      or None for lockstep; jaxem.schedule).
    progress: None, or a callable (n_iter, objective, change) called from inside the
      compiled loop after every iteration of every run, or paced when it has a positive
      `interval` attribute (jaxem.progress).
    """

    n_restarts: int = 1
    max_iter: int = 100
    criterion: str = "loglik"
    init: str | None = "kmeans++"
    chunk_size: int | None = None
    accelerate: str | None = None
    diff: str | None = "implicit"
    adjoint: str = "auto"
    vmap_slots: int | str | None = "auto"
    progress: Callable | None = None

    def __post_init__(self):
        validation.check_positive_int(self.n_restarts, "n_restarts")
        validation.check_positive_int(self.max_iter, "max_iter")
        validation.check_choice(self.criterion, "criterion", CRITERIA)
        if self.init is not None and self.init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS} or a dict of params, got {self.init!r}.")
        if self.chunk_size is not None:
            validation.check_positive_int(self.chunk_size, "chunk_size")
        validation.check_choice(self.accelerate, "accelerate", ACCELERATIONS)
        validation.check_choice(self.diff, "diff", DIFF_MODES)
        validation.check_choice(self.adjoint, "adjoint", ADJOINT_SOLVERS)
        if not (self.vmap_slots is None or self.vmap_slots == "auto"):
            validation.check_positive_int(self.vmap_slots, 'vmap_slots (or "auto", None)')
        if self.progress is not None and not callable(self.progress):
            raise ValueError(f"progress must be None, True or a callable, got {self.progress!r}.")
        if self.accelerate is not None and self.diff == "unroll":
            raise ValueError(
                'diff="unroll" differentiates plain EM iterations; with accelerate use '
                'diff="implicit" (the same fixed point) or None.'
            )

    def replace(self, **changes) -> "FitConfig":
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)
