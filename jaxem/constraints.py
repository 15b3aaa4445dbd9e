"""Bijections between constrained parameters and unconstrained real coordinates.

Gradient M-steps (GEM), SQUAREM extrapolation and quasi-Newton all move parameters in
unconstrained coordinates, so that any step lands back on a valid parameter. Each model
describes its parameters with a pytree of the same structure as its params whose leaves
are constraint names; `to_unconstrained` / `from_unconstrained` map whole pytrees.

Names (each acts on the trailing axes of a leaf, leading axes are batch axes):
  "real"              identity
  "positive"          x = exp(u)
  "unit_interval"     x = sigmoid(u)
  "simplex"           last axis sums to one; x = softmax([u, 0]) (additive log-ratio),
                      so u has one fewer entry on the last axis
  "positive_definite" (..., D, D) symmetric positive definite; u is the lower Cholesky
                      factor with its diagonal replaced by its log
  "cholesky"          (..., D, D) lower-triangular with positive diagonal; same u
and one parametrised constraint, an object leaf in place of a name:
  Interval(low, high=None, log=False)
                      low <= x <= high elementwise, or x >= low (high None); `inverse`
                      projects onto the set (Interval's docstring).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

CONSTRAINTS = ("real", "positive", "unit_interval", "simplex", "positive_definite", "cholesky")


@dataclasses.dataclass(frozen=True, eq=False)
class Interval:
    """The constraint low <= x <= high, elementwise (high=None: x >= low).

    A model whose M-step keeps a parameter inside bounds (StudentTMixture's degrees of
    freedom in [min_dof, max_dof], a rate or noise variance floored at a minimum) declares
    them with it, so that SQUAREM's extrapolation and L-BFGS, which move in unconstrained
    coordinates, stay where EM's M-step can go. Outside that set an EM step lowers the
    objective, and an accelerated run stopped there (issue #18).

    x = low + (high - low) sigmoid(u); on log x when `log` (0 < low); x = low + exp(u)
    when high is None. `inverse` projects x onto the set: the fraction of the way from
    low to high is clipped to [eps, 1 - eps], x - low to at least eps |low|, so a point
    on a bound (where EM's M-step puts it) has finite coordinates (unless high is None
    and low = 0, as "positive"). SQUAREM does not rely on that projection for points it
    extrapolates past a bound: it asks `inside` and extrapolates in these coordinates
    instead (jaxem.accel.extrapolate_params).
    low, high: scalars or arrays broadcasting against the leaf (a model's pytree leaves,
    so possibly traced); low < high.
    """

    low: Any
    high: Any = None
    log: bool = False

    def __post_init__(self):
        if self.log and self.high is None:
            raise ValueError("Interval(log=True) needs a finite high bound.")

    def _scale(self, x: jax.Array) -> jax.Array:
        return jnp.log(x) if self.log else x

    def _bounds(self, dtype) -> tuple[jax.Array, jax.Array]:
        return self._scale(jnp.asarray(self.low, dtype)), self._scale(jnp.asarray(self.high, dtype))

    def forward(self, u: jax.Array) -> jax.Array:
        if self.high is None:
            return jnp.asarray(self.low, u.dtype) + jnp.exp(u)
        low, high = self._bounds(u.dtype)
        t = low + (high - low) * jax.nn.sigmoid(u)
        return jnp.exp(t) if self.log else t

    def inverse(self, x: jax.Array) -> jax.Array:
        eps = jnp.finfo(x.dtype).eps
        if self.high is None:
            low = jnp.asarray(self.low, x.dtype)
            return jnp.log(jnp.maximum(x - low, eps * jnp.abs(low)))
        low, high = self._bounds(x.dtype)
        fraction = jnp.clip((self._scale(x) - low) / (high - low), eps, 1 - eps)
        return jnp.log(fraction) - jnp.log1p(-fraction)


def check_name(name: Any) -> None:
    """Raise ValueError unless `name` is one of CONSTRAINTS or an Interval."""
    if isinstance(name, Interval):
        return
    if name not in CONSTRAINTS:
        raise ValueError(
            f"unknown constraint {name!r}; expected one of {CONSTRAINTS} or a jaxem.constraints.Interval."
        )


def _cholesky_to_unconstrained(chol: jax.Array) -> jax.Array:
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    strict = jnp.tril(chol, k=-1)
    return strict + _embed_diagonal(jnp.log(diag))


def _unconstrained_to_cholesky(u: jax.Array) -> jax.Array:
    diag = jnp.diagonal(u, axis1=-2, axis2=-1)
    return jnp.tril(u, k=-1) + _embed_diagonal(jnp.exp(diag))


def _embed_diagonal(diag: jax.Array) -> jax.Array:
    eye = jnp.eye(diag.shape[-1], dtype=diag.dtype)
    return diag[..., :, None] * eye


def forward(name: str | Interval, u: jax.Array) -> jax.Array:
    """Map unconstrained coordinates `u` to a parameter satisfying constraint `name`."""
    check_name(name)
    if isinstance(name, Interval):
        return name.forward(u)
    if name == "real":
        return u
    if name == "positive":
        return jnp.exp(u)
    if name == "unit_interval":
        return jax.nn.sigmoid(u)
    if name == "simplex":
        zeros = jnp.zeros(u.shape[:-1] + (1,), u.dtype)
        return jax.nn.softmax(jnp.concatenate([u, zeros], axis=-1), axis=-1)
    chol = _unconstrained_to_cholesky(u)
    if name == "cholesky":
        return chol
    return chol @ jnp.swapaxes(chol, -1, -2)


def inverse(name: str | Interval, x: jax.Array) -> jax.Array:
    """Map a parameter satisfying constraint `name` to unconstrained coordinates."""
    check_name(name)
    if isinstance(name, Interval):
        return name.inverse(x)
    if name == "real":
        return x
    if name == "positive":
        return jnp.log(x)
    if name == "unit_interval":
        return jnp.log(x) - jnp.log1p(-x)
    if name == "simplex":
        log_x = jnp.log(x)
        return log_x[..., :-1] - log_x[..., -1:]
    if name == "cholesky":
        return _cholesky_to_unconstrained(x)
    sym = 0.5 * (x + jnp.swapaxes(x, -1, -2))
    return _cholesky_to_unconstrained(jnp.linalg.cholesky(sym))


def free_size(name: str | Interval, shape: tuple[int, ...]) -> int:
    """Number of free real coordinates of a parameter of `shape` under constraint `name`."""
    check_name(name)
    batch = math.prod(shape[:-1]) if shape else 1
    if name == "simplex":
        return batch * (shape[-1] - 1)
    if name in ("positive_definite", "cholesky"):
        d = shape[-1]
        return math.prod(shape[:-2]) * d * (d + 1) // 2
    return math.prod(shape)


def inside(constraints: Any, params: Any) -> jax.Array:
    """() bool: every Interval leaf of params lies within its bounds. (Points outside the
    other constraints are caught by their coordinates: `inverse` gives NaN there, while
    an Interval's `inverse` projects, so a caller that must tell asks here.)"""

    def within(name, x):
        if not isinstance(name, Interval):
            return jnp.asarray(True)
        above = x >= jnp.asarray(name.low, x.dtype)
        below = True if name.high is None else x <= jnp.asarray(name.high, x.dtype)
        return jnp.all(above & below)

    return jnp.all(jnp.stack(jax.tree.leaves(jax.tree.map(within, constraints, params)) + [jnp.asarray(True)]))


def to_unconstrained(constraints: Any, params: Any) -> Any:
    """Map a params pytree to unconstrained coordinates, leaf by leaf."""
    return jax.tree.map(inverse, constraints, params)


def from_unconstrained(constraints: Any, unconstrained: Any) -> Any:
    """Inverse of `to_unconstrained`."""
    return jax.tree.map(forward, constraints, unconstrained)
