"""Chunked evaluation of a model's E-step: the map-reduce of docs/design.md.

Statistics are additive over data units (rows, sequences), so the E-step over the whole
data set is the tree-sum of E-steps over chunks of units. Scanning over chunks bounds the memory of intermediates
(for a Gaussian mixture the (chunk, K) log densities) at no change in the result beyond
summation order. A model's `precompute` (fixed features of the data) or, for chunks,
`precompute_chunks` (which may keep a compact form that each chunk's E-step expands) runs
once per fit in `prepare`; the EM loop then calls `e_step_prepared` every iteration.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxem import units


def tree_add(a: Any, b: Any) -> Any:
    """Leafwise sum of two pytrees of the same structure."""
    return jax.tree.map(jnp.add, a, b)


def prepare(
    model: Any, data: Any, sample_weight: jax.Array, chunk_size: int | None = None
) -> tuple[Any, jax.Array]:
    """`model.precompute` of the data, per chunk of chunk_size units when given; once per fit.

    Returns (features, weights): unchunked, model.precompute(data) and weights (n_units,);
    chunked, every leaf gets a leading n_chunks axis and weights are (n_chunks, chunk_size).
    Raises:
      ValueError: chunk_size given for a model whose statistics are not additive.
    """
    if chunk_size is not None and not model.additive_statistics:
        raise ValueError(
            f"chunk_size is not supported by {type(model).__name__}: its E-step statistics are "
            "per-sample responsibilities, which chunks cannot sum. Fit without chunk_size."
        )
    if is_chunked(units.n_units(data), chunk_size):
        sample_weight = units.split_chunks(sample_weight, chunk_size, "zero")
    return precompute(model, data, chunk_size), sample_weight


def is_chunked(n_units: int, chunk_size: int | None) -> bool:
    """Whether `prepare` splits n_units units into chunks of chunk_size."""
    return chunk_size is not None and chunk_size < n_units


def precompute(model: Any, data: Any, chunk_size: int | None = None) -> Any:
    """The data half of `prepare`: model.precompute(data), or model.precompute_chunks of
    the data's chunks (edge-padded; every leaf with a leading n_chunks axis) when chunked."""
    if not is_chunked(units.n_units(data), chunk_size):
        return model.precompute(data)
    return model.precompute_chunks(units.split_chunks(data, chunk_size, "edge"))


def e_step_prepared(model: Any, params: Any, data: Any, weights: jax.Array) -> tuple[Any, jax.Array]:
    """model.e_step over data and weights from `prepare`, scanning over chunks if chunked.

    Padded rows carry weight zero, so they add nothing to the statistics.
    Returns (stats, summed log-likelihood), as model.e_step.
    """
    if weights.ndim == 1:
        return model.e_step(params, data, weights)
    # Factorisations once, not per chunk. Besides the saved work, this keeps batched LAPACK
    # calls (which fan out over a thread pool and wait on it) out of chunk E-steps that the
    # runtime runs side by side, where two of them at once can deadlock XLA:CPU's thread
    # pool (seen with jaxlib 0.10.2 on 2 cores).
    params = model.e_step_params(params)
    return sum_over_chunks(lambda chunk, weight: model.e_step(params, chunk, weight), (data, weights))


def sum_over_chunks(fn: Any, chunks: Any, unroll: int | None = None) -> Any:
    """sum_c fn(*chunks_c): fn's pytree output summed over the leading (chunk) axis that
    every leaf of the tuple `chunks` has, by a scan running `unroll` chunks per step
    (None: `scan_unroll`; 1 where a chunk's intermediates should stay in cache)."""
    first = jax.tree.map(lambda leaf: leaf[0], chunks)
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *first))

    def add_chunk(total, chunk):
        return tree_add(total, fn(*chunk)), None

    n_chunks = jax.tree.leaves(chunks)[0].shape[0]
    total, _ = jax.lax.scan(add_chunk, zero, chunks, unroll=scan_unroll(n_chunks) if unroll is None else unroll)
    return total


def scan_unroll(n_chunks: int) -> int:
    """Chunks per scan step: the smallest of 2, 3, 5 that divides n_chunks, else 1.

    The E-steps of the chunks in one step are independent, so the CPU runtime runs them
    side by side (one small GEMM per core beats one split over cores; benchmarks/bench_gmm.py).
    A divisor avoids a remainder step; more than 5 at once was slower on CPU.
    """
    return next((u for u in (2, 3, 5) if n_chunks % u == 0), 1)


def e_step(
    model: Any, params: Any, data: Any, sample_weight: jax.Array, chunk_size: int | None = None
) -> tuple[Any, jax.Array]:
    """model.e_step over all of the data, in chunks of chunk_size units when given.

    Returns (stats, summed log-likelihood), as model.e_step.
    """
    return e_step_prepared(model, params, *prepare(model, data, sample_weight, chunk_size))
