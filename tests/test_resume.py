"""resume=: a stopped fit continued computes what one uninterrupted fit computes, bit for bit."""

import jax
import numpy as np
import pytest

import jaxem


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 2)) + 4.0 * rng.integers(2, size=(200, 1))


def assert_identical(a, b):
    np.testing.assert_array_equal(np.asarray(a.restarts.trace), np.asarray(b.restarts.trace))
    for x, y in zip(jax.tree.leaves(a.restarts.params), jax.tree.leaves(b.restarts.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(a.restarts.n_iter, b.restarts.n_iter)
    np.testing.assert_array_equal(a.restarts.status, b.restarts.status)
    assert int(a.best_restart) == int(b.best_restart)


@pytest.mark.parametrize("diff", ["implicit", None])
def test_sixty_iterations_equal_thirty_then_thirty_more(diff):
    model, X = jaxem.GaussianMixture(2), data()
    options = dict(key=jax.random.key(0), n_restarts=3, tol=0.0, diff=diff)
    whole = jaxem.fit(model, X, max_iter=60, **options)
    first = jaxem.fit(model, X, max_iter=30, **options)
    assert np.all(np.asarray(first.restarts.n_iter) == 30)
    resumed = jaxem.fit(model, X, max_iter=60, resume=first, **options)
    assert_identical(resumed, whole)


def test_resumed_run_stops_where_the_uninterrupted_one_does():
    rng = np.random.default_rng(1)
    X = rng.poisson(np.where(rng.uniform(size=(150, 1)) < 0.4, 1.0, 8.0)).astype(float)
    model = jaxem.PoissonMixture(2)
    options = dict(key=jax.random.key(2), n_restarts=2, tol=1e-9)
    whole = jaxem.fit(model, X, max_iter=400, **options)
    assert bool(np.all(whole.restarts.converged))
    resumed = jaxem.fit(model, X, max_iter=400, resume=jaxem.fit(model, X, max_iter=7, **options), **options)
    assert_identical(resumed, whole)


def test_resume_of_a_finished_run_changes_nothing_and_bad_resume_raises():
    model, X = jaxem.GaussianMixture(2), data()
    done = jaxem.fit(model, X, key=jax.random.key(0), max_iter=10, tol=0.0)
    again = jaxem.fit(model, X, key=jax.random.key(0), max_iter=10, tol=0.0, resume=done)
    assert_identical(again, done)
    with pytest.raises(ValueError, match="accelerate"):
        jaxem.fit(model, X, key=jax.random.key(0), accelerate="squarem", resume=done)
    with pytest.raises(ValueError, match="restarts"):
        jaxem.fit(model, X, key=jax.random.key(0), resume=done.params)


def test_hmm_resumed_from_a_checkpoint_file_equals_the_uninterrupted_fit(tmp_path):
    """jaxem.save / jaxem.load between the two halves: the file holds all resume= needs.
    The first half starts from another key than the resuming call is given, so a resume that
    started afresh would not match."""
    rng = np.random.default_rng(3)
    lengths = np.array([40, 25, 35])
    X = rng.normal(size=(lengths.sum(), 2)) + 3.0 * rng.integers(2, size=(lengths.sum(), 1))
    data, model = (X, lengths), jaxem.GaussianHMM(2, covariance_type="diag")
    options = dict(n_restarts=2, tol=0.0)
    whole = jaxem.fit(model, data, key=jax.random.key(2), max_iter=20, **options)
    path = jaxem.save(tmp_path / "hmm.npz", jaxem.fit(model, data, key=jax.random.key(2), max_iter=10, **options))
    resumed = jaxem.fit(model, data, key=jax.random.key(1), max_iter=20, resume=jaxem.load(path), **options)
    assert_identical(resumed, whole)
    afresh = jaxem.fit(model, data, key=jax.random.key(1), max_iter=20, **options)
    assert not np.array_equal(np.asarray(afresh.restarts.trace), np.asarray(whole.restarts.trace))
