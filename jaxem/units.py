"""Data units: a model's data is an array or a pytree of arrays sharing a leading axis.

Units are rows for mixtures and factor models and sequences for hidden Markov models;
sample weights, chunks (and later shards and streamed blocks) are counted in units. These
helpers are all the engine knows about the data's layout (jaxem.protocol).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def n_units(data: Any) -> int:
    """The length of the leading axis every leaf of `data` shares.

    Raises:
      ValueError: a leaf without a leading axis, or leaves that disagree on its length.
    """
    lengths = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(data)}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            f"every array of a model's data must share one leading (unit) axis; got leading "
            f"lengths {sorted(map(str, lengths))}."
        )
    return lengths.pop()


def float_dtype(data: Any) -> Any:
    """The dtype a fit on `data` computes in: that of its first floating leaf."""
    for leaf in jax.tree.leaves(data):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    raise ValueError("a model's data needs at least one floating-point array.")


def split_chunks(data: Any, chunk_size: int, pad_value: str) -> Any:
    """Every leaf (n, ...) -> (n_chunks, chunk_size, ...), padding the tail by repeating the
    last unit (pad_value="edge", keeps densities finite) or with zeros ("zero", for weights).
    """

    def split(array):
        n = array.shape[0]
        n_chunks = -(-n // chunk_size)
        widths = [(0, n_chunks * chunk_size - n)] + [(0, 0)] * (array.ndim - 1)
        padded = jnp.pad(array, widths, mode="edge" if pad_value == "edge" else "constant")
        return padded.reshape((n_chunks, chunk_size) + array.shape[1:])

    return jax.tree.map(split, data)
