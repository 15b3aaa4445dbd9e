"""Eager input checks at the public boundary, run before anything is traced or compiled.

Value checks (NaN, negative weights) need concrete arrays; on tracers (a user's `jit` or
`vmap` around `jaxem.fit`) only shape and dtype are checked, so validation never breaks
tracing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x: Any) -> bool:
    """True for abstract values inside jit/vmap/grad, where values cannot be inspected."""
    return isinstance(x, jax.core.Tracer)


def _float_dtype_for(dtype: np.dtype) -> np.dtype:
    """Floating dtype that data of `dtype` is fitted in: floats keep theirs."""
    if jnp.issubdtype(dtype, jnp.floating) and np.dtype(dtype).itemsize >= 4:
        return jnp.dtype(dtype) if jax.config.jax_enable_x64 else jnp.dtype(jnp.float32)
    return jnp.dtype(jnp.result_type(float))


def as_data(X: Any, name: str = "X", allow_nan: bool = False) -> jax.Array:
    """Check a data matrix and return it as a floating JAX array.

    Args:
      X: (n_samples, n_features) array-like of numbers, finite.
      allow_nan: accept NaN entries (missing values, jaxem.missing); inf stays an error.
    Returns:
      (n_samples, n_features) float array; float inputs keep their dtype.
    Raises:
      ValueError: non-numeric dtype, ndim != 2, no samples or features, NaN or inf.
    """
    if is_traced(X):
        _check_numeric_dtype(X.dtype, name)
        _check_ndim(X.shape, name)
        return X.astype(_float_dtype_for(X.dtype))
    return to_device(host_data(X, name, allow_nan))


def to_device(array: np.ndarray) -> jax.Array:
    """A host array on the default device. A read-only one (np.load(..., mmap_mode="r"),
    jaxem.stream's blocks) goes through jax.device_put, which on CPU uses its memory in
    place when it is 64-byte aligned: no second copy of the data (issue #16). A writable
    one is copied (jnp.asarray), so that writes to it after the call cannot reach a fit
    still running on it."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        return jax.device_put(array)
    return jnp.asarray(array)


def host_data(X: Any, name: str = "X", allow_nan: bool = False) -> np.ndarray:
    """`as_data` of concrete X, left on the host: a NumPy array of the dtype `as_data`
    gives (the array itself when it has that dtype)."""
    try:
        array = np.asarray(X)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} could not be read as a numeric array: {err}") from None
    _check_numeric_dtype(array.dtype, name)
    _check_ndim(array.shape, name)
    if _has_bad_entries(array, allow_nan):
        bad = np.isinf(array) if allow_nan else ~np.isfinite(array)
        rows = np.flatnonzero(bad.any(axis=1))
        hint = (
            "Infinite values cannot be fitted." if allow_nan else
            'Remove or impute them before fitting, or fit with jaxem.fit(..., missing="em") '
            "(NaN as missing values: GaussianMixture, FactorAnalysis, PPCA, GaussianHMM)."
        )
        raise ValueError(
            f"{name} contains {int(bad.sum())} {'infinite' if allow_nan else 'NaN or infinite'} value(s) "
            f"in {rows.size} row(s); the first is row {int(rows[0])}: {array[rows[0]].tolist()}. {hint}"
        )
    return array.astype(_float_dtype_for(array.dtype), copy=False)


# Rows whose entries `as_data` checks at a time: its boolean masks stay this size rather
# than a quarter of a float32 data set's (issue #16).
CHECK_ROWS = 65_536


def _has_bad_entries(array: np.ndarray, allow_nan: bool) -> bool:
    """Whether array (n, D) has an infinite entry, or a NaN one unless allow_nan; checked
    CHECK_ROWS rows at a time."""
    bad = np.isinf if allow_nan else (lambda rows: ~np.isfinite(rows))
    return any(bad(array[start : start + CHECK_ROWS]).any() for start in range(0, array.shape[0], CHECK_ROWS))


def _check_numeric_dtype(dtype: Any, name: str) -> None:
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise ValueError(
            f"{name} must hold numbers, got dtype {dtype}; convert non-numeric columns first."
        )


def _check_ndim(shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        hint = " Use X.reshape(-1, 1) for a single feature." if len(shape) == 1 else ""
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got shape {tuple(shape)}.{hint}"
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"{name} needs at least one sample and one feature, got shape {shape}.")


def as_sample_weight(sample_weight: Any, n_samples: int, dtype: Any) -> jax.Array:
    """Check per-sample weights; None means all ones.

    Args:
      sample_weight: None or (n_samples,) non-negative finite numbers, not all zero.
    Returns:
      (n_samples,) array of `dtype`.
    """
    if sample_weight is None:
        return jnp.ones((n_samples,), dtype)
    if is_traced(sample_weight):
        if sample_weight.shape != (n_samples,):
            raise ValueError(
                f"sample_weight must have shape ({n_samples},), got {sample_weight.shape}."
            )
        return sample_weight.astype(dtype)
    weights = np.asarray(sample_weight)
    _check_numeric_dtype(weights.dtype, "sample_weight")
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape ({n_samples},) to match X, got {weights.shape}."
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("sample_weight contains NaN or infinite values.")
    if np.any(weights < 0):
        first = int(np.flatnonzero(weights < 0)[0])
        raise ValueError(
            f"sample_weight must be non-negative; entry {first} is {weights[first]}."
        )
    if not np.any(weights > 0):
        raise ValueError("sample_weight sums to zero: at least one sample needs weight > 0.")
    return jnp.asarray(weights, dtype=dtype)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Check a Python integer option such as n_components or max_iter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """Check a string option against its allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def check_non_negative(value: Any, name: str) -> Any:
    """Check a float option (tol, reg_covar); traced values pass through unchecked."""
    if is_traced(value):
        return value
    number = float(value)
    if not np.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


def check_observed_columns(observed: np.ndarray) -> None:
    """Every column needs an observed entry (missing values): observed (D,) bool, whether
    each column has one. Raises ValueError naming those that have none."""
    empty_columns = np.flatnonzero(~np.asarray(observed))
    if empty_columns.size:
        raise ValueError(f"X has column(s) {empty_columns.tolist()} with every entry missing.")
