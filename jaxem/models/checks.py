"""Eager value checks shared by the mixture families: user-given params and data domains.

Run at the public boundary before tracing; data checks skip tracers so a user's jit or
vmap around jaxem.fit keeps working.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jaxem import validation


def arrays_from_dict(values: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Float64 arrays for every key of `shapes`, checked for presence, shape and finiteness."""
    missing = set(shapes) - set(values)
    if missing:
        raise ValueError(f"init dict is missing {sorted(missing)}.")
    arrays = {}
    for name, shape in shapes.items():
        array = np.asarray(values[name], dtype=np.float64)
        if array.shape != shape:
            raise ValueError(f"init {name} must have shape {shape}, got {array.shape}.")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"init {name} contains NaN or infinite values.")
        arrays[name] = array
    return arrays


def check_probabilities(array: np.ndarray, name: str) -> None:
    """Entries non-negative and summing to one over the last axis (weights, categorical probs)."""
    if np.any(array < 0) or not np.allclose(array.sum(axis=-1), 1.0, atol=1e-6):
        where = " over its last axis" if array.ndim > 1 else ""
        raise ValueError(f"init {name} must be non-negative and sum to 1{where}.")


def check_in_range(array: np.ndarray, name: str, low: float, high: float) -> None:
    """Entries inside the closed interval [low, high]."""
    if np.any(array < low) or np.any(array > high):
        raise ValueError(f"init {name} must lie in [{low}, {high}].")


def check_integer_data(X: jax.Array, what: str, low: float, high: float = np.inf) -> None:
    """Data entries must be whole numbers in [low, high]; tracers pass unchecked.

    Args:
      X: (n_samples, n_features) float data from jaxem.validation.as_data.
      what: how the model reads the entries, for the message ("counts", "category codes").
    """
    if validation.is_traced(X):
        return
    array = np.asarray(X)
    bad = (array != np.round(array)) | (array < low) | (array > high)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        bounds = f"[{low:g}, {high:g}]" if np.isfinite(high) else f">= {low:g}"
        raise ValueError(
            f"X must hold {what}: whole numbers {bounds}; {int(bad.sum())} entries are not, "
            f"the first is X[{row}, {col}] = {array[row, col]!r}."
        )


def check_hyperparameter(value: Any, name: str, positive: bool = False) -> None:
    """A Python-number hyperparameter (pytree leaf) must be finite and >= 0 (or > 0)."""
    if isinstance(value, (int, float)):
        validation.check_non_negative(value, name)
        if positive and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")
