"""The model protocol: everything the EM engine calls on a model, and nothing else.

`jaxem.fit`, the EM loop (jaxem.core), the accelerators (jaxem.accel), chunked E-steps
(jaxem.parallel) and implicit gradients (jaxem.implicit) use a model only through the
methods declared here. A new family implements `Model` (directly, or through a layer such
as `jaxem.models.mixture.MixtureModel`) and needs nothing changed in the engine.

Data units. A model's data is a JAX array or a pytree of arrays whose leaves all share a
leading axis of *units*: rows for mixtures and factor models, sequences for hidden Markov
models. Sample weights are per unit, chunked E-steps split every leaf along that axis, and
the statistics `e_step` returns must add up over units when `additive_statistics` is True
(the seam: design notes in docs/design.md).

Params are any pytree of float arrays. `tol` and the data are traced; the model object is
a pytree whose static fields are configuration and whose leaves (such as `reg_covar`) are
differentiable hyperparameters: a frozen dataclass registered with `jaxem.register_model`
(not jax.tree_util.register_dataclass, whose structures jax 0.10 confuses across classes;
jaxem.pytrees).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import jax


class Model(abc.ABC):
    """What the engine calls. Every method is abstract; implementations are final."""

    # e_step statistics sum over units, so chunked and sharded E-steps may add them up.
    additive_statistics: ClassVar[bool]

    # --- eager, at jaxem.fit's boundary (concrete values, or shapes under a user's jit) ----
    @abc.abstractmethod
    def as_data(self, X: Any) -> Any:
        """Validate user data and return it as the model's data: an array or pytree of
        arrays with a leading unit axis. Raises ValueError when unusable."""

    @abc.abstractmethod
    def start_params(self, values: dict, data: Any) -> Any:
        """Params from a user's dict of starting values, validated; raises ValueError."""

    # --- traced, once per fit ---------------------------------------------------------------
    @abc.abstractmethod
    def init_params(
        self, key: jax.Array, data: Any, sample_weight: jax.Array, method: str | None, chunk_size: int | None
    ) -> Any:
        """Starting params of one restart by `method` (one of jaxem.init.INIT_METHODS, or
        None when the model has its own); chunk_size: the fit's E-step chunks in units."""

    @abc.abstractmethod
    def precompute(self, data: Any) -> Any:
        """Fixed per-fit form of the data that `e_step` consumes in its place."""

    @abc.abstractmethod
    def precompute_chunks(self, chunks: Any) -> Any:
        """`precompute` of chunked data (every leaf (n_chunks, chunk_size, ...)); every leaf
        of the result has a leading n_chunks axis."""

    @abc.abstractmethod
    def init_m_state(self, params: Any) -> Any:
        """State an iterative M-step carries across iterations (() for closed forms)."""

    @abc.abstractmethod
    def param_constraints(self, params: Any) -> Any:
        """Constraint names (jaxem.constraints) shaped like params; the accelerators move
        in the unconstrained coordinates they define."""

    # --- traced, every iteration ------------------------------------------------------------
    @abc.abstractmethod
    def e_step_params(self, params: Any) -> Any:
        """params with per-E-step work (factorisations) done once, before a chunked E-step
        calls `e_step` on every chunk; `e_step` accepts either form."""

    @abc.abstractmethod
    def e_step(self, params: Any, data: Any, sample_weight: jax.Array) -> tuple[Any, jax.Array]:
        """(statistics, sum over units of w_u log p(unit_u | params)) on precomputed data."""

    @abc.abstractmethod
    def log_prior(self, params: Any) -> jax.Array:
        """log p(params) for MAP-EM (0 for maximum likelihood): a scalar."""

    @abc.abstractmethod
    def maximize(
        self, stats: Any, params: Any, m_state: Any, data: Any, sample_weight: jax.Array
    ) -> tuple[Any, Any]:
        """One M-step: (new params, new m_state). The data is there for M-steps that need it
        (gradient steps on Q); closed forms use only the statistics."""


REQUIRED_METHODS = tuple(sorted(Model.__abstractmethods__))


def check_model(model: Any) -> None:
    """Raise a clear error, before anything is traced, when `model` does not implement the
    protocol (a missing method or a missing `additive_statistics` flag)."""
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(model, name, None))]
    flag = getattr(model, "additive_statistics", None)
    if missing or not isinstance(flag, bool):
        what = [f"method(s) {', '.join(missing)}"] if missing else []
        if not isinstance(flag, bool):
            what.append("the bool class attribute additive_statistics")
        raise TypeError(
            f"{type(model).__name__} is not a jaxem model: it lacks {' and '.join(what)} "
            "(the protocol is jaxem.protocol.Model)."
        )
