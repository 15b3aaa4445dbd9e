"""Model classes as pytrees whose structure knows their class (`register_model`).

jaxem's models are frozen dataclasses: fields marked `metadata=dict(static=True)` are
configuration (part of the tree's structure), the others leaves. `jax.tree_util.register_dataclass`
would register them so, but in jax 0.10.2 two of its treedefs compare equal whenever
their static fields do, whatever their classes (their hashes differ): `jax.jit`'s cache
then hands one class's compiled program to another when the hashes happen to share a
slot. FactorAnalysis(1) and PPCA(1), fitted one after the other, did: the PPCA fit
returned FactorAnalysisParams. A custom node (`jax.tree_util.register_pytree_with_keys`)
compares its class too, so `register_model` registers the dataclass as one.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import jax

T = TypeVar("T")


def register_model(cls: type[T]) -> type[T]:
    """Register the dataclass `cls` as a pytree node and return it (a class decorator).

    Leaves are its init fields without `metadata=dict(static=True)`; the static ones are
    the node's auxiliary data, compared (with the class) when JAX compares structures.
    Unflattening calls `cls(**fields)`, as register_dataclass does. Use it for a new
    model class instead of `jax.tree_util.register_dataclass` (module docstring).

    Raises:
      TypeError: cls is not a dataclass.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"register_model takes a dataclass; got {cls!r}.")
    fields = [field for field in dataclasses.fields(cls) if field.init]
    static = tuple(field.name for field in fields if field.metadata.get("static", False))
    leaves = tuple(field.name for field in fields if not field.metadata.get("static", False))
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in leaves)

    def configuration(node):
        return tuple(getattr(node, name) for name in static)

    def flatten_with_keys(node):
        return tuple((key, getattr(node, name)) for key, name in zip(keys, leaves)), configuration(node)

    def flatten(node):
        return tuple(getattr(node, name) for name in leaves), configuration(node)

    def unflatten(aux, children):
        return cls(**dict(zip(static, aux)), **dict(zip(leaves, children)))

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls
