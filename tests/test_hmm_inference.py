"""HMM inference kernels against brute-force enumeration of state paths and against each other."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem.models import hmm_inference

METHODS = ("sequential", "parallel")

forward_backward = jax.jit(hmm_inference.forward_backward, static_argnames="method")
log_likelihood = jax.jit(hmm_inference.log_likelihood, static_argnames="method")
viterbi = jax.jit(hmm_inference.viterbi)


def random_problem(rng, num_states, num_steps):
    """(log_initial, log_transition, log_emission) with Dirichlet initial and transition rows."""
    initial = rng.dirichlet(np.ones(num_states))
    transition = rng.dirichlet(np.ones(num_states), size=num_states)
    log_emission = rng.normal(scale=2.0, size=(num_steps, num_states))
    return np.log(initial), np.log(transition), log_emission


def brute_force(log_initial, log_transition, log_emission):
    """Exact posterior and Viterbi path of an unpadded sequence by enumerating all K^L paths."""
    num_steps, num_states = log_emission.shape
    paths = np.array(list(itertools.product(range(num_states), repeat=num_steps)))
    steps = np.arange(num_steps)
    log_joint = (
        log_initial[paths[:, 0]]
        + log_transition[paths[:, :-1], paths[:, 1:]].sum(axis=1)
        + log_emission[steps, paths].sum(axis=1)
    )
    joint = np.exp(log_joint)
    evidence = joint.sum()
    weights = joint / evidence
    marginals = np.zeros((num_steps, num_states))
    transitions = np.zeros((num_states, num_states))
    for path, weight in zip(paths, weights):
        marginals[steps, path] += weight
        np.add.at(transitions, (path[:-1], path[1:]), weight)
    best = np.argmax(log_joint)
    return dict(
        log_likelihood=np.log(evidence),
        marginals=marginals,
        transitions=transitions,
        path=paths[best],
        log_prob=log_joint[best],
    )


def assert_matches_brute_force(problem, method):
    reference = brute_force(*problem)
    length = problem[2].shape[0]
    posterior = forward_backward(*problem, length, method=method)
    np.testing.assert_allclose(posterior.log_likelihood, reference["log_likelihood"], rtol=1e-12)
    np.testing.assert_allclose(posterior.marginals, reference["marginals"], atol=1e-12)
    np.testing.assert_allclose(posterior.transitions, reference["transitions"], atol=1e-12)
    np.testing.assert_allclose(log_likelihood(*problem, length, method=method), reference["log_likelihood"], rtol=1e-12)
    path, log_prob = viterbi(*problem, length)
    np.testing.assert_array_equal(path, reference["path"])
    np.testing.assert_allclose(log_prob, reference["log_prob"], rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_matches_brute_force(length, method):
    assert_matches_brute_force(random_problem(np.random.default_rng(length), 3, length), method)


def zero_probability_problem(num_steps):
    """State 1 never starts, 0 -> 2 and 2 -> 1 are forbidden, state 0 cannot emit x_1."""
    log_initial, log_transition, log_emission = random_problem(np.random.default_rng(7), 3, num_steps)
    initial = np.exp(log_initial)
    initial[1] = 0.0
    transition = np.exp(log_transition)
    transition[0, 2] = transition[2, 1] = 0.0
    transition /= transition.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_initial, log_transition = np.log(initial / initial.sum()), np.log(transition)
    log_emission[1, 0] = -np.inf
    return log_initial, log_transition, log_emission


@pytest.mark.parametrize("method", METHODS)
def test_zero_probabilities_match_brute_force(method):
    assert_matches_brute_force(zero_probability_problem(5), method)


@pytest.mark.parametrize("method", METHODS)
def test_zero_probabilities_give_finite_gradients(method):
    problem = zero_probability_problem(7)
    weights = np.random.default_rng(0).normal(size=(7, 3))

    def objective(log_initial, log_transition, log_emission):
        posterior = hmm_inference.forward_backward(log_initial, log_transition, log_emission, 5, method=method)
        return posterior.log_likelihood + jnp.sum(weights * posterior.marginals) + jnp.sum(posterior.transitions**2)

    gradients = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(*problem)
    for gradient in gradients:
        assert np.all(np.isfinite(gradient))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 3, 5])
def test_padded_sequence_equals_unpadded(length, method):
    log_initial, log_transition, log_emission = random_problem(np.random.default_rng(10 + length), 3, 7)
    log_emission[length:] = np.nan  # padding content must not matter
    unpadded = forward_backward(log_initial, log_transition, log_emission[:length], length, method=method)
    padded = forward_backward(log_initial, log_transition, log_emission, length, method=method)
    np.testing.assert_allclose(padded.log_likelihood, unpadded.log_likelihood, rtol=1e-13)
    np.testing.assert_allclose(padded.marginals[:length], unpadded.marginals, atol=1e-13)
    np.testing.assert_array_equal(padded.marginals[length:], 0.0)
    np.testing.assert_allclose(padded.transitions, unpadded.transitions, atol=1e-13)
    np.testing.assert_allclose(
        log_likelihood(log_initial, log_transition, log_emission, length, method=method),
        unpadded.log_likelihood,
        rtol=1e-13,
    )
    padded_path, padded_log_prob = viterbi(log_initial, log_transition, log_emission, length)
    unpadded_path, unpadded_log_prob = viterbi(log_initial, log_transition, log_emission[:length], length)
    np.testing.assert_array_equal(padded_path[:length], unpadded_path)
    np.testing.assert_array_equal(padded_path[length:], unpadded_path[-1])
    np.testing.assert_allclose(padded_log_prob, unpadded_log_prob, rtol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_length_one(method):
    log_initial, log_transition, log_emission = random_problem(np.random.default_rng(3), 3, 7)
    posterior = forward_backward(log_initial, log_transition, log_emission, 1, method=method)
    first = np.exp(log_initial + log_emission[0])
    np.testing.assert_allclose(posterior.marginals[0], first / first.sum(), rtol=1e-13)
    np.testing.assert_array_equal(posterior.marginals[1:], 0.0)
    np.testing.assert_array_equal(posterior.transitions, 0.0)
    np.testing.assert_allclose(posterior.log_likelihood, np.log(first.sum()), rtol=1e-13)


def batch_problem():
    """K=4 parameters and a batch of T=50 emissions with lengths 1, 2, 17, 49, 50."""
    rng = np.random.default_rng(42)
    log_initial, log_transition, _ = random_problem(rng, 4, 50)
    lengths = np.array([1, 2, 17, 49, 50])
    log_emission = rng.normal(scale=2.0, size=(len(lengths), 50, 4))
    return log_initial, log_transition, log_emission, lengths


@functools.cache
def batched(function, method):
    """jit(vmap(function)) over (log_emission, length) with shared initial and transition."""
    return jax.jit(jax.vmap(functools.partial(function, method=method), in_axes=(None, None, 0, 0)))


def test_sequential_equals_parallel_in_a_jitted_vmap():
    problem = batch_problem()
    sequential = batched(hmm_inference.forward_backward, "sequential")(*problem)
    parallel = batched(hmm_inference.forward_backward, "parallel")(*problem)
    for name in hmm_inference.Posterior._fields:
        np.testing.assert_allclose(getattr(parallel, name), getattr(sequential, name), rtol=1e-10, atol=1e-10)
    for method in METHODS:
        np.testing.assert_allclose(
            batched(hmm_inference.log_likelihood, method)(*problem), sequential.log_likelihood, rtol=1e-10
        )


def batch_reference(log_initial, log_transition, log_emission, lengths, pair_weight):
    """Posterior of a batch from the log-space sequential method, one sequence at a time,
    with the transitions summed with pair_weight (numpy)."""
    posts = [
        forward_backward(log_initial, log_transition, e, n, method="sequential") for e, n in zip(log_emission, lengths)
    ]
    transitions = sum(w * np.asarray(p.transitions) for w, p in zip(pair_weight, posts) if w > 0)
    return np.stack([p.marginals for p in posts]), transitions, np.array([p.log_likelihood for p in posts])


@pytest.mark.parametrize("time_major", [False, True])
def test_scaled_batch_kernel_equals_log_space(time_major):
    """The scaled kernel (method="auto" on CPU), alone (fused per-step products) and inside
    the fit's named restart vmap with enough restarts for dot_general products
    (sizes.HMM_DOT_MIN_MESSAGES), equals the log-space method; padding holds NaN."""
    from jaxem import batching, sizes

    log_initial, log_transition, log_emission, lengths = batch_problem()
    log_emission = np.where(np.arange(50)[None, :, None] < lengths[:, None, None], log_emission, np.nan)
    pair_weight = np.array([1.0, 0.0, 2.5, 1.0, 0.5])
    marginals, transitions, log_lik = batch_reference(log_initial, log_transition, log_emission, lengths, pair_weight)
    layout = (lambda a: np.swapaxes(a, 0, 1)) if time_major else (lambda a: a)

    def posterior(log_transition):
        return hmm_inference.batch_posterior(
            log_initial, log_transition, layout(log_emission), lengths, pair_weight, "auto", time_major=time_major
        )

    restarts = -(-sizes.HMM_DOT_MIN_MESSAGES // log_emission[:, 0].size)
    alone = jax.jit(posterior)(log_transition)
    vmapped = jax.jit(jax.vmap(posterior, axis_name=batching.RESTARTS))(np.broadcast_to(log_transition, (restarts, 4, 4)))
    uses_dot = []
    jax.vmap(lambda x: uses_dot.append(hmm_inference._contract_by_dot(*log_emission[:, 0].shape)), axis_name=batching.RESTARTS)(
        np.zeros(restarts)
    )
    assert uses_dot == [True] and not hmm_inference._contract_by_dot(*log_emission[:, 0].shape)
    for post in (alone, jax.tree.map(lambda leaf: leaf[-1], vmapped)):
        np.testing.assert_allclose(post.log_likelihood, log_lik, rtol=1e-12)
        np.testing.assert_allclose(layout(np.asarray(post.marginals)), marginals, atol=1e-12)
        np.testing.assert_allclose(post.transitions, transitions, atol=1e-11)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_of_log_likelihood_are_posterior_expectations(method):
    problem = (*random_problem(np.random.default_rng(5), 3, 7), 5)
    posterior = forward_backward(*problem, method=method)

    def evidence(log_initial, log_transition, log_emission, length):
        return hmm_inference.forward_backward(log_initial, log_transition, log_emission, length, method).log_likelihood

    for function in (evidence, functools.partial(hmm_inference.log_likelihood, method=method)):
        d_initial, d_transition, d_emission = jax.jit(jax.grad(function, argnums=(0, 1, 2)))(*problem)
        np.testing.assert_allclose(d_emission, posterior.marginals, atol=1e-10)
        np.testing.assert_allclose(d_transition, posterior.transitions, atol=1e-10)
        np.testing.assert_allclose(d_initial, posterior.marginals[0], atol=1e-10)


def test_auto_method_and_unknown_method():
    problem = random_problem(np.random.default_rng(0), 3, 7)
    auto = forward_backward(*problem, 5, method="auto")
    sequential = forward_backward(*problem, 5, method="sequential")
    np.testing.assert_allclose(auto.marginals, sequential.marginals, atol=1e-13)
    with pytest.raises(ValueError, match="method"):
        hmm_inference.forward_backward(*problem, 5, method="fast")


def test_sampled_frequencies_approach_the_chain():
    num_chains, num_steps = 2000, 6
    initial = np.array([0.5, 0.0, 0.5])
    transition = np.array([[0.6, 0.3, 0.1], [0.0, 0.2, 0.8], [0.45, 0.45, 0.1]])
    keys = jax.random.split(jax.random.key(0), num_chains)
    sample = jax.jit(jax.vmap(hmm_inference.sample_states, in_axes=(0, None, None, None)), static_argnums=3)
    states = np.asarray(sample(keys, initial, transition, num_steps))
    assert states.shape == (num_chains, num_steps) and states.dtype == np.int32

    def assert_frequencies_close(counts, probabilities):
        trials = counts.sum(axis=-1, keepdims=True)
        standard_error = np.sqrt(probabilities * (1 - probabilities) / trials)
        np.testing.assert_array_less(np.abs(counts / trials - probabilities), 5 * standard_error + 1e-12)

    assert_frequencies_close(np.bincount(states[:, 0], minlength=3), initial)
    transition_counts = np.zeros((3, 3))
    np.add.at(transition_counts, (states[:, :-1], states[:, 1:]), 1)
    assert transition_counts.sum() == num_chains * (num_steps - 1)
    assert_frequencies_close(transition_counts, transition)
