"""Matrix products at full float32 precision on every backend.

XLA's default precision lets an NVIDIA GPU (Ampere or later) run float32 matrix products in
TF32, a 10-bit mantissa, and a TPU in bfloat16. jaxem's Gaussian-mixture E-step expands
quadratic forms into GEMMs whose terms cancel (see jaxem.models.gaussian_mixture), which
needs every bit of float32, so every fit, and the backward pass of its implicit gradient,
is traced under `full_precision()`. On CPU the setting does not change the fit's speed.
"""

from __future__ import annotations

import contextlib

import jax


def full_precision() -> contextlib.AbstractContextManager:
    """Context in which traced matrix products default to full (HIGHEST) precision."""
    return jax.default_matmul_precision("highest")
