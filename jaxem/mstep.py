"""M-step strategies: guarded gradient ascent on Q (GEM) and frozen parameters (ECM).

Generalised EM (docs/design.md): any θ_new with Q(θ_new, θ_old) >= Q(θ_old, θ_old) keeps the monotone
log-likelihood. `gradient_ascent` runs any optax optimiser on -Q in unconstrained
coordinates (jaxem.constraints), keeps the best iterate it evaluated, and returns it only
when its Q is at least Q(θ_old) (computed at exactly θ_old, not a round trip through the
bijections) up to rounding of Q; otherwise θ_old comes back unchanged. So the GEM
condition holds as computed, to `VALUE_ROUNDING_ULPS` ulps of Q.

Near the maximiser, iterates whose computed Q values differ by less than rounding are
told apart by their gradients (the smaller norm is the closer point) rather than by the
values: their order by value is rounding noise, and choosing by it made the M-step's
output depend on rounding at the sqrt(eps) level (one ulp in θ_old moved a latent Poisson
mixture's EM update by 3.2e-9; jit against eager differed by 2.8e-11 under other XLA
emitters), where the gradient determines it to rounding.

Freezing holds a subset of params at their current values. In a gradient M-step frozen
leaves never move (their gradient is exactly zero and they are restored bit for bit). A
closed-form M-step followed by restoring frozen leaves is a conditional maximisation (ECM)
only when the free leaves' update does not depend on the frozen ones, so it is guarded the
same way: a step that would lower Q beyond rounding is rejected (rejecting drops within
rounding stalled such fits 1.5e-8 short of the fixed point). `freeze(model, frozen)`
applies this to any built-in model with a closed-form M-step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxem import constraints as constraints_lib
from jaxem.core import tree_where
from jaxem.models.mixture import weighted_posterior
from jaxem.pytrees import register_model


# --- the Q function ------------------------------------------------------------------------
def expected_log_joint(log_joint: jax.Array, resp: jax.Array) -> jax.Array:
    """Q = sum_n sum_k resp_nk log p(x_n, z=k); entries with resp 0 add 0 even where log_joint is -inf.

    Args:
      log_joint: (n_samples, K); resp: (n_samples, K) non-negative weights.
    Returns:
      a scalar.
    """
    positive = resp > 0
    safe_log_joint = jnp.where(positive, log_joint, 0.0)
    return jnp.sum(jnp.where(positive, resp * safe_log_joint, 0.0))


# --- freezing --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrozenSpec:
    """Which params are held fixed, in a hashable form (it is static model configuration).

    names: top-level names (dict keys, NamedTuple/dataclass fields, sequence indices);
    or mask_structure/mask_leaves: a pytree of Python bools with the params' structure.
    """

    names: frozenset = frozenset()
    mask_structure: Any = None
    mask_leaves: tuple = ()

    @classmethod
    def from_user(cls, frozen: Any) -> "FrozenSpec":
        """None, a name, an iterable of names, or a pytree of bools shaped like the params."""
        if frozen is None:
            return cls()
        if isinstance(frozen, FrozenSpec):
            return frozen
        if isinstance(frozen, str):
            return cls(names=frozenset([frozen]))
        if isinstance(frozen, (set, frozenset)) and all(isinstance(name, str) for name in frozen):
            return cls(names=frozenset(frozen))
        leaves, structure = jax.tree.flatten(frozen)
        if all(isinstance(leaf, str) for leaf in leaves) and not isinstance(frozen, dict):
            return cls(names=frozenset(leaves))
        if all(isinstance(leaf, bool) for leaf in leaves):
            return cls(mask_structure=structure, mask_leaves=tuple(leaves))
        raise ValueError(
            "frozen must be None, a parameter name, an iterable of top-level parameter names, "
            f"or a pytree of Python bools shaped like the params; got {frozen!r}."
        )

    def __bool__(self) -> bool:
        return bool(self.names) or any(self.mask_leaves)

    def mask(self, params: Any) -> Any:
        """Pytree of Python bools with the structure of params: True where frozen.

        Raises:
          ValueError: a name that is not a top-level parameter, or a mask of another structure.
        """
        if self.mask_structure is not None:
            structure = jax.tree.structure(params)
            if structure != self.mask_structure:
                raise ValueError(
                    f"frozen mask structure {self.mask_structure} does not match the params "
                    f"structure {structure}."
                )
            return jax.tree.unflatten(structure, self.mask_leaves)
        paths_leaves, structure = jax.tree_util.tree_flatten_with_path(params)
        top_names = [_top_level_name(path) for path, _ in paths_leaves]
        unknown = self.names - set(top_names)
        if unknown:
            raise ValueError(
                f"frozen names {sorted(map(str, unknown))} are not parameters; the top-level "
                f"parameter names are {sorted(set(map(str, top_names)))}."
            )
        return jax.tree.unflatten(structure, [name in self.names for name in top_names])


def _top_level_name(path: tuple) -> Any:
    first = path[0]
    for attribute in ("key", "name", "idx"):
        if hasattr(first, attribute):
            return getattr(first, attribute)
    raise ValueError(f"cannot name the parameter at path {path}.")


# Computed values of Q within this many ulps of each other (relative to the objective) are
# taken as equal to rounding: a sum over data of terms of one sign rounds within log2(n) ulps.
VALUE_ROUNDING_ULPS = 64


def restore_frozen(mask: Any, candidate: Any, params: Any) -> Any:
    """candidate with its frozen leaves (mask True) replaced by those of params, exactly."""
    return jax.tree.map(lambda frozen, new, old: old if frozen else new, mask, candidate, params)


def keep_if_not_worse(objective: Callable, candidate: Any, params: Any) -> Any:
    """candidate when objective(candidate) >= objective(params) to rounding
    (`value_rounding`), else params (the GEM guard)."""
    before = objective(params)
    accept = objective(candidate) >= before - value_rounding(before)
    return tree_where(accept, candidate, params)


def value_rounding(value: jax.Array) -> jax.Array:
    """How far apart computed values of the objective near `value` may be from rounding
    alone: VALUE_ROUNDING_ULPS ulps of it."""
    return VALUE_ROUNDING_ULPS * jnp.finfo(value.dtype).eps * jnp.abs(value)


# --- gradient M-step ---------------------------------------------------------------------------
class _Best(NamedTuple):
    """The best iterate so far and how it was judged: its unconstrained point, loss (-Q),
    squared gradient norm and iteration (-1 for θ_old itself); the lowest loss seen."""

    point: Any
    loss: jax.Array
    grad_norm: jax.Array
    step: jax.Array
    lowest: jax.Array


def _remember_best(best: _Best, point: Any, value: jax.Array, grad: Any, step: jax.Array, rounding: jax.Array) -> _Best:
    """best, or the iterate (point, value, grad) of iteration `step` when its loss is lower by
    more than `rounding`, or within `rounding` of the lowest loss seen with a smaller
    gradient norm. A NaN value or gradient is never kept."""
    grad_norm = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(grad))
    clearly_lower = value < best.loss - rounding
    as_low_and_flatter = (value <= best.lowest + rounding) & (grad_norm < best.grad_norm)
    better = clearly_lower | as_low_and_flatter
    return _Best(
        tree_where(better, point, best.point),
        jnp.where(better, value, best.loss),
        jnp.where(better, grad_norm, best.grad_norm),
        jnp.where(better, step, best.step),
        jnp.where(value < best.lowest, value, best.lowest),
    )


def gradient_ascent(
    objective: Callable,
    params: Any,
    opt_state: Any,
    optimizer: optax.GradientTransformation,
    constraints: Any,
    mask: Any,
    n_steps: int,
) -> tuple[Any, Any]:
    """n_steps optax steps on -objective in unconstrained coordinates, guarded (GEM).

    Args:
      objective: params -> scalar to maximise, Q(params, θ_old) + log_prior(params).
      params: θ_old, satisfying `constraints` (a pytree of names shaped like params).
      opt_state: optimizer state for the unconstrained params (carried or fresh).
      optimizer: any optax GradientTransformation; extra-args ones such as optax.lbfgs
        receive value, grad and value_fn.
      mask: pytree of bools shaped like params, True for frozen leaves.
      n_steps: static number of optimiser steps.
    Returns:
      (params, opt_state): the best iterate evaluated (module docstring) if its objective
      is >= objective(θ_old) to rounding, else θ_old itself, exactly; and the optimiser
      state after the n_steps.
    """
    optimizer = optax.with_extra_args_support(optimizer)
    start = constraints_lib.to_unconstrained(constraints, params)

    def params_at(unconstrained):
        return restore_frozen(mask, constraints_lib.from_unconstrained(constraints, unconstrained), params)

    def loss(unconstrained):
        return -objective(params_at(unconstrained))

    loss_and_grad = jax.value_and_grad(loss)
    start_loss = -objective(params)
    rounding = value_rounding(start_loss)
    inf = jnp.asarray(jnp.inf, start_loss.dtype)

    def step(i, carry):
        point, state, best = carry
        value, grad = loss_and_grad(point)
        best = _remember_best(best, point, value, grad, i, rounding)
        updates, state = optimizer.update(grad, state, point, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(point, updates), state, best

    initial = _Best(start, start_loss, inf, jnp.asarray(-1), start_loss)
    point, opt_state, best = jax.lax.fori_loop(0, n_steps, step, (start, opt_state, initial))
    value, grad = loss_and_grad(point)
    best = _remember_best(best, point, value, grad, n_steps, rounding)
    # Iteration 0 is θ_old's own round trip: returning it would return θ_old inexactly.
    improved = (best.step > 0) & (best.loss <= start_loss + rounding)
    new_params = tree_where(improved, params_at(best.point), params)
    return new_params, opt_state


# --- freezing a built-in closed-form model ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrozenModel:
    """A model whose M-step keeps the `frozen` params at their current values (guarded ECM).

    Everything except `maximize` is delegated to `model`. Build it with `jaxem.freeze`.
    """

    model: Any
    frozen: FrozenSpec = dataclasses.field(metadata=dict(static=True))

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (e.g. during unpickling): avoid endless recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def maximize(
        self, stats: Any, params: Any, m_state: Any, X: jax.Array, sample_weight: jax.Array
    ) -> tuple[Any, Any]:
        """The model's M-step, frozen leaves restored, kept only if Q + log_prior does not drop."""
        candidate, m_state = self.model.maximize(stats, params, m_state, X, sample_weight)
        candidate = restore_frozen(self.frozen.mask(params), candidate, params)
        resp, _ = weighted_posterior(self.model.log_joint(params, X), sample_weight, axis=1)

        def objective(p):
            return expected_log_joint(self.model.log_joint(p, X), resp) + self.model.log_prior(p)

        return keep_if_not_worse(objective, candidate, params), m_state


register_model(FrozenModel)


def freeze(model: Any, frozen: Any) -> FrozenModel:
    """Hold some params of a closed-form model fixed during EM.

    Args:
      model: a model with `log_joint`, e.g. `jaxem.GaussianMixture(3)`.
      frozen: a top-level name ("weights"), an iterable of names, or a pytree of bools
        shaped like the params.
    Returns:
      a FrozenModel to pass to `jaxem.fit`; frozen params keep their starting values.
    Raises:
      ValueError: `frozen` is not one of the accepted forms, or `model` has no log_joint.
    """
    if not hasattr(model, "log_joint"):
        raise ValueError(f"{type(model).__name__} has no log_joint(params, X); it cannot be frozen.")
    return FrozenModel(model, FrozenSpec.from_user(frozen))
