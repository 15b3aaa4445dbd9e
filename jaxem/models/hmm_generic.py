"""A hidden Markov model from its emission log-density alone: Baum-Welch with gradient M-steps.

The user writes log p(x | z=k, emission params) for one observation; the E-step is the
forward-backward pass of every HMM (jaxem.models.hmm), the initial distribution and the
transition rows have their closed-form (Dirichlet MAP) update, and the emission params get
guarded optax steps on Q_emission = sum_t sum_k gamma_t(k) log p(x_t | z=k) (+ an optional
log prior) in unconstrained coordinates (jaxem.mstep.gradient_ascent), kept only when
Q does not drop beyond rounding (generalised EM), so the log-likelihood never decreases.

The statistics for the gradient M-step are the weighted per-step marginals themselves (one
row per step of every sequence), which chunks cannot sum, so `additive_statistics` is
False and chunk_size does not apply (as for jaxem.LatentModel).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxem import constraints as constraints_lib
from jaxem import mstep, validation
from jaxem.models import checks
from jaxem.models.hmm import HMMModel, Sequences, check_fixed, check_method, check_prior, rows_and_weights, step_rows
from jaxem.models.latent_model import (
    _check_constraint_names,
    check_constraint_shapes,
    remembers_objective,
    resolve_constraints,
)


class HMMParams(NamedTuple):
    """initial (K,), transition (K, K) (row i: from state i), emission: the user's pytree."""

    initial: jax.Array
    transition: jax.Array
    emission: Any


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class HMM(HMMModel):
    """An HMM given by the emission log-density of one observation.

    The whole model is static configuration (compared by identity under jit).

    Args:
      emission_log_prob: (emission, x) -> (K,) log p(x | z=k) for one observation x (D,);
        K, the number of states, is the length of its output.
      init: (key, X) -> emission params (a pytree of float arrays), X: every step of every
        sequence as a row, (n_sequences * max_len, D), padded steps repeating their
        sequence's last observation. Initial and transition probabilities start from the
        per-step state posteriors under these emission params.
      constraints: names (jaxem.constraints) for the emission params: None (all "real"),
        one name, or a pytree of names (a prefix of the params'); in a dict a missing key
        means "real".
      optimizer, n_steps, reset_optimizer: the gradient M-step, as in jaxem.LatentModel.
      emission_prior: optional emission -> log p(emission), for MAP-EM.
      sampler: optional (key, emission, state) -> x (D,), for `sample`.
      initial_prior, transition_prior: Dirichlet pseudo-counts >= 1 (1 means none).
      method: forward-backward "sequential", "parallel" or "auto".
      fixed: among "initial", "transition", "emission": held at their starting values.
    """

    emission_log_prob: Callable
    init: Callable
    constraints: Any = None
    optimizer: Any = dataclasses.field(default_factory=optax.lbfgs)
    n_steps: int = 20
    reset_optimizer: bool | None = None
    emission_prior: Callable | None = None
    sampler: Callable | None = None
    initial_prior: Any = 1.0
    transition_prior: Any = 1.0
    method: str = "auto"
    fixed: tuple = ()

    additive_statistics = False
    params_class = HMMParams

    def __post_init__(self):
        for name in ("emission_log_prob", "init"):
            if not callable(getattr(self, name)):
                raise ValueError(f"{name} must be callable, got {getattr(self, name)!r}.")
        for name in ("emission_prior", "sampler"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"{name} must be None or callable, got {getattr(self, name)!r}.")
        if not (hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")):
            raise ValueError(f"optimizer must be an optax GradientTransformation, got {self.optimizer!r}.")
        _check_constraint_names(self.constraints)
        validation.check_positive_int(self.n_steps, "n_steps")
        if self.reset_optimizer not in (None, True, False):
            raise ValueError(f"reset_optimizer must be None, True or False, got {self.reset_optimizer!r}.")
        check_prior(self.initial_prior, "initial_prior")
        check_prior(self.transition_prior, "transition_prior")
        check_method(self.method)
        object.__setattr__(self, "fixed", check_fixed(self.fixed, HMMParams._fields))

    @property
    def resets_optimizer(self) -> bool:
        if self.reset_optimizer is None:
            return remembers_objective(self.optimizer)
        return self.reset_optimizer

    # --- the emission hooks ------------------------------------------------------------------
    def log_emission(self, params: HMMParams, factors: Any, X: jax.Array) -> jax.Array:
        return jax.vmap(self.emission_log_prob, in_axes=(None, 0))(params.emission, X)

    def emission_factors(self, params: HMMParams) -> Any:
        return None

    def emission_statistics(self, params: HMMParams, X: jax.Array, gamma: jax.Array) -> jax.Array:
        """The weighted marginals of every step, (max_len * n_sequences, K) in hmm.step_rows order."""
        return gamma

    def emission_log_prior(self, params: HMMParams) -> jax.Array:
        if self.emission_prior is None:
            return jnp.zeros((), params.initial.dtype)
        return self.emission_prior(params.emission)

    def emission_constraint_names(self, emission: Any) -> Any:
        return resolve_constraints(self.constraints, emission)

    def param_constraints(self, params: HMMParams) -> HMMParams:
        return HMMParams("simplex", "simplex", self.emission_constraint_names(params.emission))

    def n_emission_parameters(self, params: HMMParams) -> dict:
        sizes = jax.tree.map(
            lambda name, leaf: constraints_lib.free_size(name, leaf.shape),
            self.emission_constraint_names(params.emission), params.emission,
        )
        return {"emission": sum(jax.tree.leaves(sizes))}

    def count_parameters(self, params: HMMParams) -> int:
        k = params.initial.shape[0]
        sizes = {"initial": k - 1, "transition": k * (k - 1)}
        sizes.update(self.n_emission_parameters(params))
        return sum(size for name, size in sizes.items() if name not in self.fixed)

    def sample_emission(self, key, params: HMMParams, states: jax.Array) -> jax.Array:
        if self.sampler is None:
            raise ValueError("sample needs the HMM's sampler=(key, emission, state) -> x option.")
        keys = jax.random.split(key, states.size)
        keys = keys.reshape(states.shape + keys.shape[1:])
        draw = lambda k, s: self.sampler(k, params.emission, s)
        return jax.vmap(jax.vmap(draw))(keys, states)

    # --- the protocol ---------------------------------------------------------------------------
    def check_observations(self, observations: np.ndarray) -> None:
        """Trace init and emission_log_prob on the data's shape: (K,) per observation."""
        n_sequences, max_len, n_features = observations.shape
        rows = jax.ShapeDtypeStruct((n_sequences * max_len, n_features), observations.dtype)
        emission = jax.eval_shape(self.init, jax.random.key(0), rows)
        for leaf in jax.tree.leaves(emission):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise ValueError(f"every emission params leaf must be a float array, got dtype {leaf.dtype}.")
        check_constraint_shapes(self.emission_constraint_names(emission), emission)
        out = jax.eval_shape(self.emission_log_prob, emission, jax.ShapeDtypeStruct(rows.shape[1:], rows.dtype))
        if len(out.shape) != 1 or out.shape[0] < 1:
            raise ValueError(
                f"emission_log_prob must return a (K,) vector for one observation, got shape {out.shape}."
            )

    def start_params(self, values: dict, data: Sequences) -> HMMParams:
        """Params from a dict with initial (K,), transition (K, K) and emission (a pytree)."""
        if "emission" not in values or "initial" not in values:
            raise ValueError("init dict must have keys initial, transition and emission.")
        k = np.asarray(values["initial"]).shape[0] if np.ndim(values["initial"]) == 1 else 0
        arrays = checks.arrays_from_dict(values, {"initial": (k,), "transition": (k, k)})
        checks.check_probabilities(arrays["initial"], "initial")
        checks.check_probabilities(arrays["transition"], "transition")
        dtype = data.observations.dtype
        emission = jax.tree.map(
            lambda value: jnp.asarray(np.asarray(value, np.float64), dtype),
            values["emission"], is_leaf=lambda value: isinstance(value, list),
        )
        names = self.emission_constraint_names(emission)
        check_constraint_shapes(names, emission)
        unconstrained = constraints_lib.to_unconstrained(names, emission)
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(unconstrained)):
            raise ValueError(f"init emission params do not satisfy their constraints {names}.")
        return HMMParams(jnp.asarray(arrays["initial"], dtype), jnp.asarray(arrays["transition"], dtype), emission)

    def init_params(self, key, data: Sequences, sample_weight, method, chunk_size=None) -> HMMParams:
        """The user's init(key, X) for the emission; `method` does not apply."""
        rows, _ = rows_and_weights(data, sample_weight)
        emission = self.init(key, rows)
        k = jax.eval_shape(self.emission_log_prob, emission, rows[0]).shape[0]
        dtype = rows.dtype
        uniform = HMMParams(jnp.full(k, 1.0 / k, dtype), jnp.full((k, k), 1.0 / k, dtype), emission)
        return self.params_from_emission(uniform, data, sample_weight)

    def init_m_state(self, params: HMMParams) -> Any:
        if self.resets_optimizer or "emission" in self.fixed:
            return ()
        names = self.emission_constraint_names(params.emission)
        return self.optimizer.init(constraints_lib.to_unconstrained(names, params.emission))

    def maximize(self, stats, params: HMMParams, m_state: Any, data: Sequences, sample_weight: Any):
        """Closed-form initial/transition updates, guarded gradient steps for the emission."""
        closed, _ = super().maximize(stats._replace(emission=None), params, (), data, sample_weight)
        if "emission" in self.fixed:
            return closed, m_state
        rows = step_rows(data)  # the E-step's row order, that of gamma
        gamma = stats.emission

        def objective(emission):
            log_em = self.log_emission(params._replace(emission=emission), None, rows)
            return mstep.expected_log_joint(log_em, gamma) + self.emission_log_prior(params._replace(emission=emission))

        names = self.emission_constraint_names(params.emission)
        mask = jax.tree.map(lambda _: False, params.emission)
        opt_state = (
            self.optimizer.init(constraints_lib.to_unconstrained(names, params.emission))
            if self.resets_optimizer
            else m_state
        )
        emission, opt_state = mstep.gradient_ascent(
            objective, params.emission, opt_state, self.optimizer, names, mask, self.n_steps
        )
        return closed._replace(emission=emission), (() if self.resets_optimizer else opt_state)

    def m_step_emission(self, stats: Any, params: HMMParams) -> dict:
        return {}
