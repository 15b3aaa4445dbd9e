"""Starting values: weighted sampling and k-means++ seeding (jaxem.init)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem.init import hard_responsibilities, kmeans_plusplus_centers, weighted_choice


def test_weighted_choice_draws_in_proportion_to_weight_and_never_a_zero_weight():
    weights = jnp.asarray([0.5, 0.0, 2.0, 1.0, 0.0, 6.5])
    n_draws = 20_000
    keys = jax.random.split(jax.random.key(0), n_draws)
    draws = np.asarray(jax.vmap(weighted_choice, in_axes=(0, None))(keys, weights))
    frequencies = np.bincount(draws, minlength=weights.size) / n_draws
    p = np.asarray(weights) / float(weights.sum())
    # Five binomial standard deviations; exactly zero where the weight is zero.
    np.testing.assert_array_less(np.abs(frequencies - p), 5 * np.sqrt(p * (1 - p) / n_draws) + 1e-12)
    assert frequencies[1] == 0 and frequencies[4] == 0


def test_kmeans_plusplus_never_seeds_at_a_zero_weight_point_even_once_the_rest_coincide():
    # Two coincident weighted points and one distinct point of weight zero, last: after the
    # first center every weighted point is at distance 0, so D^2 weights are all zero.
    X = jnp.asarray([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]], jnp.float32)
    weights = jnp.asarray([1.0, 1.0, 0.0], jnp.float32)
    keys = jax.random.split(jax.random.key(1), 50)
    centers = jax.vmap(lambda k: kmeans_plusplus_centers(k, X, weights, 3))(keys)
    np.testing.assert_array_equal(np.asarray(centers), 1.0)


def test_kmeans_plusplus_seeds_one_center_per_well_separated_cluster():
    rng = np.random.default_rng(0)
    offsets = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    X = jnp.asarray(np.concatenate([o + rng.normal(size=(200, 2)) for o in offsets]))
    keys = jax.random.split(jax.random.key(2), 20)
    centers = np.asarray(jax.vmap(lambda k: kmeans_plusplus_centers(k, X, jnp.ones(600), 3))(keys))
    # D^2 sampling picks a far cluster with probability > 1 - 1e-3 at each step.
    clusters = np.argmin(np.linalg.norm(centers[:, :, None, :] - offsets[None, None], axis=-1), axis=-1)
    assert all(sorted(c) == [0, 1, 2] for c in clusters)


@pytest.mark.parametrize("n_centers, n_features", [(3, 2), (12, 5), (16, 16)])
def test_hard_responsibilities_assign_each_point_its_nearest_center_far_from_the_origin(n_centers, n_features):
    """float32 data 1000 away from the origin: the assignment by one GEMM (more than
    UNROLL_AXIS centers) must centre before expanding the square, or rounding of the
    expanded terms (~2 for D = 16) swamps the distance gaps."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(3000, n_features)) + 1e3).astype(np.float32)
    centers = X[rng.choice(len(X), n_centers, replace=False)]
    resp = np.asarray(hard_responsibilities(jnp.asarray(X), jnp.asarray(centers)))
    distances = ((X.astype(np.float64)[:, None, :] - centers.astype(np.float64)[None]) ** 2).sum(-1)
    gaps = np.diff(np.sort(distances, axis=1)[:, :2], axis=1)[:, 0]
    clear = gaps > 1e-3  # points not (nearly) equidistant from their two nearest centers
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(resp.sum(axis=0), 1.0)
    np.testing.assert_array_equal(resp.argmax(axis=0)[clear], distances.argmin(axis=1)[clear])
