"""Starting responsibilities for mixtures, computed on device (docs/design.md: local maxima).

Each strategy returns responsibilities component-major, (n_components, n_samples), the
layout of the E-step's; a model turns them into its starting params with one M-step. All
are pure functions of an explicit `key`, so restarts are a `vmap` over keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxem.sizes import UNROLL_AXIS

INIT_METHODS = ("kmeans++", "random", "random_from_data")


def squared_distance_to(X: jax.Array, point: jax.Array) -> jax.Array:
    """||x_n - point||^2 for every row: (n_samples,), without expanding the square."""
    if X.shape[1] <= UNROLL_AXIS:
        return functools.reduce(jnp.add, [(X[:, d] - point[d]) ** 2 for d in range(X.shape[1])])
    return jnp.sum((X - point) ** 2, axis=1)


def weighted_choice(key: jax.Array, weights: jax.Array) -> jax.Array:
    """One index drawn with probability weights / sum(weights), weights: (n,) >= 0.

    Inverse-CDF sampling: one uniform number and a cumulative sum, where
    jax.random.categorical draws n Gumbel numbers (the largest set-up cost of a k-means++
    start). Zero weights are never drawn. The draw's
    position in the CDF is found by comparing against all n entries, one vectorised pass
    like the cumulative sum, where a binary search is a loop of log2(n) dependent steps.
    """
    cdf = jnp.cumsum(weights)
    target = jax.random.uniform(key, (), weights.dtype) * cdf[-1]
    index = jnp.searchsorted(cdf, target, side="right", method="compare_all")
    return jnp.minimum(index, weights.shape[0] - 1)


def kmeans_plusplus_centers(
    key: jax.Array, X: jax.Array, sample_weight: jax.Array, n_components: int
) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), weighted by sample_weight.

    Args:
      X: (n_samples, n_features); sample_weight: (n_samples,).
    Returns:
      centers: (n_components, n_features), rows of X.
    """
    first_key, rest_key = jax.random.split(key)
    first = weighted_choice(first_key, sample_weight)
    centers = jnp.zeros((n_components, X.shape[1]), X.dtype).at[0].set(X[first])
    closest = squared_distance_to(X, X[first])

    def add_center(k, carry):
        centers, closest = carry
        # D^2 weighting; by weight alone once every point coincides with a chosen center.
        d2_weights = sample_weight * closest
        d2_weights = jnp.where(jnp.sum(d2_weights) > 0, d2_weights, sample_weight)
        index = weighted_choice(jax.random.fold_in(rest_key, k), d2_weights)
        centers = centers.at[k].set(X[index])
        closest = jnp.minimum(closest, squared_distance_to(X, X[index]))
        return centers, closest

    # Unrolled for few components: a loop's per-step overhead outweighs one draw's work.
    unroll = n_components <= UNROLL_AXIS
    centers, _ = jax.lax.fori_loop(1, n_components, add_center, (centers, closest), unroll=unroll)
    return centers


def random_from_data_centers(
    key: jax.Array, X: jax.Array, sample_weight: jax.Array, n_components: int
) -> jax.Array:
    """n_components distinct rows of X drawn with probability proportional to weight."""
    p = sample_weight / jnp.sum(sample_weight)
    index = jax.random.choice(key, X.shape[0], (n_components,), replace=False, p=p)
    return X[index]


def distance_ranks(X: jax.Array, centers: jax.Array) -> jax.Array:
    """||x_n - c_k||^2 up to a per-point constant, by one GEMM: (n_centers, n_samples).

    With y = x - x_0 and b_k = c_k - x_0, ||x - c_k||^2 = ||y||^2 + (||b_k||^2 - 2 b_k . y);
    the bracket orders centers as the distances do. Centring on the first data point keeps
    float32 cancellation at the scale of the data's spread, and does not depend on the
    centers, so vmapped restarts share y. XLA:CPU runs the direct sum over features slowly
    (a short-axis reduction, see jaxem.sizes.UNROLL_AXIS); the GEMM is several times faster.
    """
    offsets = centers - X[0]
    return jnp.sum(offsets * offsets, axis=1)[:, None] - 2.0 * (offsets @ (X - X[0]).T)


def hard_responsibilities(X: jax.Array, centers: jax.Array, active: jax.Array | None = None) -> jax.Array:
    """One-hot responsibilities (n_centers, n_samples) assigning each point its nearest
    center (the first of equally near ones; for more than UNROLL_AXIS centers, nearest up
    to float rounding of `distance_ranks`); active: None or (n_centers,) bool, the centers
    that may be chosen."""
    if len(centers) > UNROLL_AXIS:
        ranks = distance_ranks(X, centers)
        if active is not None:
            ranks = jnp.where(active[:, None], ranks, jnp.inf)
        nearest = jnp.argmin(ranks, axis=0)
        return (jnp.arange(len(centers))[:, None] == nearest).astype(X.dtype)
    distances = [squared_distance_to(X, center) for center in centers]
    if active is not None:
        distances = [jnp.where(active[k], d, jnp.inf) for k, d in enumerate(distances)]
    nearest = functools.reduce(jnp.minimum, distances)
    taken = jnp.zeros(X.shape[0], bool)
    rows = []
    for distance in distances:
        row = (distance == nearest) & ~taken
        taken = taken | row
        rows.append(row.astype(X.dtype))
    return jnp.stack(rows)


def random_responsibilities(key: jax.Array, n_samples: int, n_components: int, dtype) -> jax.Array:
    """Uniform random responsibilities (n_components, n_samples) normalised over
    components, as scikit-learn's "random"."""
    u = jax.random.uniform(key, (n_samples, n_components), dtype).T
    return u / jnp.sum(u, axis=0, keepdims=True)


def initial_responsibilities(
    key: jax.Array, X: jax.Array, sample_weight: jax.Array, n_components: int, method: str,
    active: jax.Array | None = None,
) -> jax.Array:
    """Responsibilities (n_components, n_samples) from one of INIT_METHODS.

    active: None, or (n_components,) bool: only these components get responsibility. The
    first m k-means++ centers do not depend on n_components, so with the first m active
    "kmeans++" gives what it gives for m components.
    """
    if method == "kmeans++":
        return hard_responsibilities(X, kmeans_plusplus_centers(key, X, sample_weight, n_components), active)
    if method == "random_from_data":
        return hard_responsibilities(X, random_from_data_centers(key, X, sample_weight, n_components), active)
    if method == "random":
        resp = random_responsibilities(key, X.shape[0], n_components, X.dtype)
        if active is None:
            return resp
        resp = jnp.where(active[:, None], resp, 0.0)
        return resp / jnp.sum(resp, axis=0, keepdims=True)
    raise ValueError(f"init must be one of {INIT_METHODS} or a dict of params, got {method!r}.")
