"""A discrete-latent model defined by its log-joint alone: EM and GEM by autodiff.

The user writes log p(x, z=k | params) for one data point; everything else follows:
  E-step   responsibilities p(z=k | x) by normalising the log-joint over k;
  Q        sum_n w_n sum_k r_nk log p(x_n, z=k | θ), and its gradient by autodiff;
  M-step   the user's closed form when given, else guarded optax steps on -(Q + log_prior)
           in unconstrained coordinates (jaxem.mstep.gradient_ascent), so the
           log-likelihood never decreases (GEM, to rounding of Q).

The E-step statistics are the weighted responsibilities (n_samples, K) themselves: Q of a
model we know nothing about has no fixed-size sufficient statistics. They are not additive
over data points in the sense of jaxem.parallel (they are per-sample), so chunked E-steps
are refused (`additive_statistics = False`); the M-step sees all of X anyway.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxem import constraints as constraints_lib
from jaxem import mstep, validation
from jaxem.models.mixture import MixtureModel


def flat_log_prior(params: Any) -> jax.Array:
    """The flat prior, log p(params) = 0: plain maximum likelihood."""
    return jnp.zeros((), jax.tree.leaves(params)[0].dtype)


def _is_name(spec: Any) -> bool:
    """A single constraint (a name or an Interval) rather than a pytree of them."""
    return isinstance(spec, (str, constraints_lib.Interval))


def resolve_constraints(spec: Any, params: Any) -> Any:
    """Constraint names shaped exactly like params.

    Args:
      spec: None (all "real"), one name for every leaf, or a pytree of names whose
        structure is a prefix of the params'; in a dict, a missing key means "real".
      params: a params pytree (arrays or jax.ShapeDtypeStruct leaves).
    Raises:
      ValueError: a key that is not a parameter, or a structure that does not match.
    """
    if spec is None:
        spec = "real"
    if _is_name(spec):
        return jax.tree.map(lambda _: spec, params)
    if isinstance(spec, dict) and isinstance(params, dict):
        extra = sorted(set(spec) - set(params))
        if extra:
            raise ValueError(
                f"constraints name {extra}, which are not parameters; the parameters are "
                f"{sorted(params)}."
            )
        return {key: resolve_constraints(spec.get(key), value) for key, value in params.items()}
    try:
        return jax.tree.map(
            resolve_constraints, spec, params, is_leaf=lambda s: s is None or _is_name(s)
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"constraints {spec!r} do not have the structure of the params "
            f"{jax.tree.structure(params)}: {err}"
        ) from None


def check_constraint_shapes(constraints: Any, params: Any) -> None:
    """Raise ValueError where a leaf's shape cannot carry its constraint."""

    def check(name, leaf):
        shape = tuple(leaf.shape)
        if name == "simplex" and (len(shape) < 1 or shape[-1] < 1):
            raise ValueError(f"a 'simplex' parameter needs a last axis, got shape {shape}.")
        if name in ("positive_definite", "cholesky") and (len(shape) < 2 or shape[-1] != shape[-2]):
            raise ValueError(f"a {name!r} parameter must be (..., D, D), got shape {shape}.")

    jax.tree.map(check, constraints, params)


_OBJECTIVE_MEMORY_STATES = (
    optax.ScaleByLBFGSState,
    optax.ScaleByZoomLinesearchState,
    optax.ScaleByBacktrackingLinesearchState,
)


def remembers_objective(optimizer: optax.GradientTransformation) -> bool:
    """True when the optimiser's state stores curvature pairs or line-search values of the
    function it last minimised, which are stale once EM moves on to the next Q."""
    state = jax.eval_shape(optimizer.init, jnp.zeros(2))
    nodes = jax.tree.leaves(state, is_leaf=lambda node: isinstance(node, _OBJECTIVE_MEMORY_STATES))
    return any(isinstance(node, _OBJECTIVE_MEMORY_STATES) for node in nodes)


def _check_constraint_names(spec: Any) -> None:
    leaves = jax.tree.leaves(spec, is_leaf=lambda s: s is None)
    for name in leaves:
        if name is not None:
            constraints_lib.check_name(name)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class LatentModel(MixtureModel):
    """A model p(x, z | params) with discrete z in {0..K-1}, given by its log-joint.

    The whole model is static configuration (compared by identity under jit): callables,
    optimizer and options. Put continuous hyperparameters inside the callables.

    Args:
      point_log_joint: (params, x) -> (K,) log p(x, z=k | params) for one data point
        x: (n_features,).
      init: (key, X) -> params, any pytree of float arrays; `jaxem.fit` uses it for every
        restart (its `init` option and sample weights do not apply, a dict of starting
        params still does).
      constraints: None (all "real"), one name, or a pytree of names shaped like params
        (a prefix of it); in a dict, missing keys mean "real". Names: jaxem.constraints;
        `jaxem.constraints.Interval(low, high)` in place of a name bounds a parameter.
      optimizer: optax GradientTransformation for the gradient M-step (optax.lbfgs
        included); unused when `m_step` is given.
      m_step: optional closed form (params, X, resp) -> params maximising
        sum resp * log_joint (+ log_prior), resp: (n_samples, K) responsibilities times
        sample weights. When given, no gradient steps are taken.
      n_steps: optimiser steps per M-step.
      reset_optimizer: False carries the optimiser state across EM iterations (in the
        core's m_state), as adam-like optimisers want; True starts it afresh every M-step,
        as quasi-Newton / line-search ones want (optax.lbfgs's curvature memory of the
        previous Q can stall it on the next). None (default) picks True exactly when the
        optimiser's state holds L-BFGS memory or a line search (`remembers_objective`).
      frozen: params held at their starting values: a top-level name, an iterable of
        names, or a pytree of bools shaped like params (jaxem.mstep.FrozenSpec).
      log_prior: optional params -> log p(params) for MAP-EM (default flat).
    """

    point_log_joint: Callable
    init: Callable
    constraints: Any = None
    optimizer: Any = dataclasses.field(default_factory=optax.lbfgs)
    m_step: Callable | None = None
    n_steps: int = 20
    reset_optimizer: bool | None = None
    frozen: Any = None
    log_prior: Callable = flat_log_prior

    additive_statistics = False

    def __post_init__(self):
        for name in ("point_log_joint", "init", "log_prior"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable, got {getattr(self, name)!r}.")
        if self.m_step is not None and not callable(self.m_step):
            raise ValueError(f"m_step must be None or callable, got {self.m_step!r}.")
        if self.m_step is None and not (
            hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")
        ):
            raise ValueError(
                f"optimizer must be an optax GradientTransformation, got {self.optimizer!r}."
            )
        _check_constraint_names(self.constraints)
        validation.check_positive_int(self.n_steps, "n_steps")
        if self.reset_optimizer not in (None, True, False):
            raise ValueError(f"reset_optimizer must be None, True or False, got {self.reset_optimizer!r}.")
        mstep.FrozenSpec.from_user(self.frozen)

    @property
    def resets_optimizer(self) -> bool:
        """Whether each gradient M-step starts from a fresh optimiser state."""
        if self.reset_optimizer is None:
            return remembers_objective(self.optimizer)
        return self.reset_optimizer

    # --- the protocol used by jaxem.core ----------------------------------------------------
    def log_joint(self, params: Any, X: jax.Array) -> jax.Array:
        """log p(x_n, z=k | params): (n_samples, K)."""
        return jax.vmap(self.point_log_joint, in_axes=(None, 0))(params, X)

    def statistics(self, params: Any, X: jax.Array, resp: jax.Array) -> jax.Array:
        """The weighted responsibilities (n_samples, K) themselves."""
        return resp

    def param_constraints(self, params: Any) -> Any:
        """Constraint names shaped exactly like params (missing dict keys filled with "real")."""
        return resolve_constraints(self.constraints, params)

    def count_parameters(self, params: Any, n_features: int) -> int:
        """Free real coordinates of the params that are not frozen (for BIC/AIC)."""
        sizes = jax.tree.map(
            lambda name, leaf, frozen: 0 if frozen else constraints_lib.free_size(name, leaf.shape),
            self.param_constraints(params), params, self.frozen_mask(params),
        )
        return sum(jax.tree.leaves(sizes))

    def frozen_mask(self, params: Any) -> Any:
        """Pytree of bools shaped like params, True for frozen leaves."""
        return mstep.FrozenSpec.from_user(self.frozen).mask(params)

    def expected_log_joint(self, params: Any, X: jax.Array, resp: jax.Array) -> jax.Array:
        """Q(params) = sum_n sum_k resp_nk log p(x_n, z=k | params), a scalar."""
        return mstep.expected_log_joint(self.log_joint(params, X), resp)

    def init_m_state(self, params: Any) -> Any:
        """Optimizer state over unconstrained params when carried across EM iterations."""
        if self.m_step is not None or self.resets_optimizer:
            return ()
        return self.optimizer.init(constraints_lib.to_unconstrained(self.param_constraints(params), params))

    def maximize(
        self, stats: jax.Array, params: Any, m_state: Any, X: jax.Array, sample_weight: jax.Array
    ) -> tuple[Any, Any]:
        """Closed-form or guarded-gradient M-step on Q + log_prior; frozen leaves kept.

        Args:
          stats: (n_samples, K) responsibilities times sample weights at `params`.
        """
        mask = self.frozen_mask(params)

        def objective(candidate):
            return self.expected_log_joint(candidate, X, stats) + self.log_prior(candidate)

        if self.m_step is not None:
            candidate = self.m_step(params, X, stats)
            if not any(jax.tree.leaves(mask)):
                return candidate, m_state
            candidate = mstep.restore_frozen(mask, candidate, params)
            return mstep.keep_if_not_worse(objective, candidate, params), m_state
        constraints = self.param_constraints(params)
        opt_state = (
            self.optimizer.init(constraints_lib.to_unconstrained(constraints, params))
            if self.resets_optimizer
            else m_state
        )
        new_params, opt_state = mstep.gradient_ascent(
            objective, params, opt_state, self.optimizer, constraints, mask, self.n_steps
        )
        return new_params, (() if self.resets_optimizer else opt_state)

    def init_params(
        self, key: jax.Array, X: jax.Array, sample_weight: jax.Array, method: str, chunk_size: int | None = None
    ) -> Any:
        """The model's own init(key, X); `method`, the weights and chunk_size do not apply."""
        return self.init(key, X)

    def check_data(self, X: jax.Array) -> None:
        """Trace init and log_joint on X's shape and check them against the options.

        Raises:
          ValueError: log_joint is not (K,) per point, params are not floats, or
            constraints / frozen do not fit the params' structure and shapes.
        """
        params = jax.eval_shape(self.init, jax.random.key(0), X)
        self._check_params_structure(params)
        out = jax.eval_shape(self.log_joint, params, X)
        if len(out.shape) != 2 or out.shape[1] < 1:
            raise ValueError(
                "point_log_joint must return a (K,) vector of log p(x, z=k) for one data point; "
                f"over X it gave shape {out.shape[1:]} per point."
            )

    def _check_params_structure(self, params: Any) -> None:
        for leaf in jax.tree.leaves(params):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(f"every params leaf must be a float array, got dtype {leaf.dtype}.")
        check_constraint_shapes(self.param_constraints(params), params)
        self.frozen_mask(params)

    def params_from_dict(self, values: dict, n_features: int, dtype: Any) -> Any:
        """Starting params from a user dict (lists are arrays), checked against constraints.

        Raises:
          ValueError: non-finite values, or values outside their constraint (e.g. a
            negative "positive" entry, a "simplex" leaf not summing to one).
        """
        # A list is one array (as in JSON), not a pytree node.
        params = jax.tree.map(
            lambda value: jnp.asarray(np.asarray(value, np.float64), dtype),
            values,
            is_leaf=lambda value: isinstance(value, list),
        )
        self._check_params_structure(params)
        constraints = self.param_constraints(params)
        for leaf in jax.tree.leaves(params):
            if not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError("init params contain NaN or infinite values.")
        unconstrained = constraints_lib.to_unconstrained(constraints, params)
        feasible = all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(unconstrained))

        def sums_to_one(name, leaf):
            return name != "simplex" or np.allclose(np.sum(np.asarray(leaf), axis=-1), 1.0, atol=1e-6)

        if not feasible or not all(jax.tree.leaves(jax.tree.map(sums_to_one, constraints, params))):
            raise ValueError(f"init params do not satisfy their constraints {constraints}.")
        return params
