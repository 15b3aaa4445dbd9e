"""Hidden Markov models (jaxem.models.hmm, hmm_emissions, hmm_generic) against hmmlearn
and against the engine run other ways.

hmmlearn is the independent reference: the same start (init_params=""), the same number of
Baum-Welch iterations (tol=-inf), then params, log-likelihood traces, Viterbi paths and
scores compared. Most tests share one data set and one model configuration, so that the
engine's compiled fit is reused (the model's priors are pytree leaves, traced).
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import norm
from scipy.special import logsumexp

import jaxem
from jaxem.models import hmm_inference

from mixture_checks import assert_monotone, assert_trees_close

hmm = pytest.importorskip("hmmlearn.hmm")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)

K, D = 3, 2
LENGTHS = np.array([40, 25, 1, 34])
MEANS = np.array([[0.0, 0.0], [3.0, 1.0], [-2.0, 3.0]])


def gaussian_data(seed=0, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    z = rng.integers(K, size=lengths.sum())
    return MEANS[z] + rng.normal(size=(lengths.sum(), D))


def gaussian_start(covariance_type, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(K, D, D))
    full = a @ a.transpose(0, 2, 1) + np.eye(D)
    covariances = {
        "full": full,
        "diag": np.stack([np.diag(c) for c in full]),
        "spherical": np.array([1.0, 1.5, 0.7]),
        "tied": full[0],
    }[covariance_type]
    return dict(
        initial=rng.dirichlet(np.ones(K)),
        transition=rng.dirichlet(3 * np.ones(K), size=K),
        means=MEANS + 0.3 * rng.normal(size=(K, D)),
        covariances=covariances,
    )


def fit5(model, X, start, **options):
    """Exactly five EM iterations from `start` (the shared compiled configuration)."""
    return jaxem.fit(model, X, key=jax.random.key(0), init=start, max_iter=5, tol=0.0, **options)


def hmmlearn_gaussian(covariance_type, start, X, lengths, n_iter=5, **options):
    ref = hmm.GaussianHMM(K, covariance_type=covariance_type, init_params="", n_iter=n_iter, tol=-np.inf, **options)
    ref.startprob_, ref.transmat_ = start["initial"], start["transition"]
    ref.means_, ref.covars_ = start["means"], start["covariances"]
    return ref.fit(X, lengths)


def hmmlearn_covariances(ref, covariance_type):
    # hmmlearn keeps spherical variances tiled to (K, D) after an M-step.
    return ref._covars_[:, 0] if covariance_type == "spherical" else ref._covars_


def assert_close_relative(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * np.max(np.abs(expected)))


# --- against hmmlearn ----------------------------------------------------------------------------
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_gaussian_matches_hmmlearn(covariance_type):
    X, start = gaussian_data(), gaussian_start(covariance_type)
    # Maximum likelihood (hmmlearn with covars_prior=0): params and the whole trace.
    model = jaxem.GaussianHMM(K, covariance_type=covariance_type, covars_prior=0.0)
    res = fit5(model, (X, LENGTHS), start)
    ref = hmmlearn_gaussian(covariance_type, start, X, LENGTHS, covars_prior=0.0)
    for name, expected in [("initial", ref.startprob_), ("transition", ref.transmat_), ("means", ref.means_)]:
        assert_close_relative(getattr(res.params, name), expected, 1e-8)
    assert_close_relative(res.params.covariances, hmmlearn_covariances(ref, covariance_type), 1e-8)
    # The trace is the mean per-sequence objective at the params entering each iteration.
    np.testing.assert_allclose(np.asarray(res.trace) * len(LENGTHS), np.array(ref.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(model.score(res.params, (X, LENGTHS)), ref.score(X, LENGTHS), rtol=1e-10)
    # hmmlearn's default covariance prior and Dirichlet priors on start and transitions (MAP).
    priors = dict(initial_prior=1.5, transition_prior=2.0)
    model = jaxem.GaussianHMM(K, covariance_type=covariance_type, **priors)
    res = fit5(model, (X, LENGTHS), start)
    ref = hmmlearn_gaussian(covariance_type, start, X, LENGTHS, startprob_prior=1.5, transmat_prior=2.0)
    for name, expected in [("initial", ref.startprob_), ("transition", ref.transmat_), ("means", ref.means_)]:
        assert_close_relative(getattr(res.params, name), expected, 1e-8)
    assert_close_relative(res.params.covariances, hmmlearn_covariances(ref, covariance_type), 1e-8)
    # Objective = (log-likelihood + log prior) / n_sequences, at the final params.
    objective = (model.score(res.params, (X, LENGTHS)) + model.log_prior(res.params)) / len(LENGTHS)
    np.testing.assert_allclose(res.log_likelihood, objective, rtol=1e-12)
    np.testing.assert_allclose(model.score(res.params, (X, LENGTHS)), ref.score(X, LENGTHS), rtol=1e-10)


def test_categorical_matches_hmmlearn():
    rng = np.random.default_rng(3)
    n_categories = 4
    X = rng.integers(n_categories, size=(LENGTHS.sum(), 1))
    start = dict(
        initial=rng.dirichlet(np.ones(K)),
        transition=rng.dirichlet(np.ones(K), size=K),
        probs=rng.dirichlet(np.ones(n_categories), size=K),
    )
    model = jaxem.CategoricalHMM(K, n_categories=n_categories, emission_prior=1.5)
    res = fit5(model, (X, LENGTHS), start)
    ref = hmm.CategoricalHMM(K, n_features=n_categories, init_params="", n_iter=5, tol=-np.inf, emissionprob_prior=1.5)
    ref.startprob_, ref.transmat_, ref.emissionprob_ = start["initial"], start["transition"], start["probs"]
    ref.fit(X, LENGTHS)
    assert res.params.probs.shape == (K, n_categories)
    for actual, expected in [(res.params.initial, ref.startprob_), (res.params.transition, ref.transmat_), (res.params.probs, ref.emissionprob_)]:
        assert_close_relative(actual, expected, 1e-8)
    prior = model.log_prior(model.start_params(start, model.as_data((X, LENGTHS))))
    np.testing.assert_allclose(res.trace[0] * len(LENGTHS) - prior, ref.monitor_.history[0], rtol=1e-10)
    np.testing.assert_allclose(model.score(res.params, (X, LENGTHS)), ref.score(X, LENGTHS), rtol=1e-10)
    np.testing.assert_allclose(model.bic(res.params, (X, LENGTHS)), ref.bic(X, LENGTHS), rtol=1e-10)


def test_poisson_matches_hmmlearn():
    rng = np.random.default_rng(4)
    rates = np.array([[1.0, 5.0], [4.0, 0.5], [9.0, 3.0]])
    X = rng.poisson(rates[rng.integers(K, size=LENGTHS.sum())]).astype(float)
    start = dict(
        initial=rng.dirichlet(np.ones(K)),
        transition=rng.dirichlet(np.ones(K), size=K),
        rates=rates * rng.uniform(0.7, 1.3, size=rates.shape),
    )
    model = jaxem.PoissonHMM(K)
    res = fit5(model, (X, LENGTHS), start)
    ref = hmm.PoissonHMM(K, init_params="", n_iter=5, tol=-np.inf)
    ref.startprob_, ref.transmat_, ref.lambdas_ = start["initial"], start["transition"], start["rates"]
    ref.fit(X, LENGTHS)
    for actual, expected in [(res.params.initial, ref.startprob_), (res.params.transition, ref.transmat_), (res.params.rates, ref.lambdas_)]:
        assert_close_relative(actual, expected, 1e-8)
    np.testing.assert_allclose(np.asarray(res.trace) * len(LENGTHS), np.array(ref.monitor_.history), rtol=1e-10)
    np.testing.assert_allclose(model.aic(res.params, (X, LENGTHS)), ref.aic(X, LENGTHS), rtol=1e-10)
    assert int(res.n_decreases) == 0


def test_predictions_match_hmmlearn():
    X, start = gaussian_data(), gaussian_start("full")
    model = jaxem.GaussianHMM(K, covariance_type="full")
    params = fit5(model, (X, LENGTHS), start).params
    ref = hmmlearn_gaussian("full", start, X, LENGTHS)
    np.testing.assert_array_equal(model.predict(params, (X, LENGTHS)), ref.predict(X, LENGTHS))
    log_prob, _ = model.decode(params, (X, LENGTHS))
    np.testing.assert_allclose(log_prob, ref.decode(X, LENGTHS)[0], rtol=1e-10)
    np.testing.assert_allclose(model.predict_proba(params, (X, LENGTHS)), ref.predict_proba(X, LENGTHS), atol=1e-10)
    per_sequence = [ref.score(part) for part in np.split(X, np.cumsum(LENGTHS)[:-1])]
    np.testing.assert_allclose(model.score_samples(params, (X, LENGTHS)), per_sequence, rtol=1e-10)
    np.testing.assert_allclose(model.bic(params, (X, LENGTHS)), ref.bic(X, LENGTHS), rtol=1e-10)
    # The padded layout gives the same values, -1 / 0 at padded steps.
    padded = model.as_data((X, LENGTHS))
    paths = model.predict(params, padded)
    valid = np.arange(padded.observations.shape[1]) < LENGTHS[:, None]
    np.testing.assert_array_equal(paths[valid], ref.predict(X, LENGTHS))
    assert np.all(np.asarray(paths)[~valid] == -1)
    assert np.all(np.asarray(model.predict_proba(params, padded))[~valid] == 0)


# --- the engine run other ways ---------------------------------------------------------------------
def test_batch_statistics_are_sums_over_sequences():
    """The E-step of a padded batch of sequences of different lengths is the sum of the
    E-steps of parts of it padded differently; method="parallel" gives the same."""
    X, start = gaussian_data(), gaussian_start("full")
    model = jaxem.GaussianHMM(K, covariance_type="full")
    data = model.as_data((X, LENGTHS))
    params = model.start_params(start, data)
    w = jnp.array([0.5, 2.0, 1.0, 3.0])
    e_step = jax.jit(model.e_step)
    whole, log_lik = e_step(params, data, w)
    # The halves have other padded lengths (40 and 34) than the batch.
    split = np.cumsum(LENGTHS)[1]
    first, log_lik1 = e_step(params, model.as_data((X[:split], LENGTHS[:2])), w[:2])
    second, log_lik2 = e_step(params, model.as_data((X[split:], LENGTHS[2:])), w[2:])
    assert_trees_close(jax.tree.map(jnp.add, first, second), whole, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(log_lik1 + log_lik2, log_lik, rtol=1e-12)
    parallel = jaxem.GaussianHMM(K, covariance_type="full", method="parallel")
    stats, log_lik_parallel = jax.jit(parallel.e_step)(params, data, w)
    assert_trees_close(stats, whole, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_lik_parallel, log_lik, rtol=1e-12)


def test_monotone_on_random_problems():
    """Random categorical data with two features (probs (K, D, C)), four restarts from
    kmeans++ starts on one-hot codes."""
    rng = np.random.default_rng(6)
    lengths = np.array([60, 45, 30])
    model = jaxem.CategoricalHMM(3, n_categories=5)
    X = rng.integers(5, size=(lengths.sum(), 2))
    res = jaxem.fit(model, (X, lengths), key=jax.random.key(1), n_restarts=4, max_iter=60, tol=0.0)
    for r in range(4):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts._replace(best_restart=None, restarts=None)))
    assert np.all(np.isfinite(res.restarts.log_likelihood))


def test_squarem_reaches_the_same_optimum():
    X, start = gaussian_data(seed=8), gaussian_start("diag")
    model = jaxem.GaussianHMM(K, covariance_type="diag")
    options = dict(key=jax.random.key(0), init=start, max_iter=3000, tol=1e-12)
    plain = jaxem.fit(model, (X, LENGTHS), **options)
    fast = jaxem.fit(model, (X, LENGTHS), accelerate="squarem", **options)
    assert bool(plain.converged) and bool(fast.converged)
    assert int(fast.n_decreases) == 0
    np.testing.assert_allclose(fast.log_likelihood, plain.log_likelihood, rtol=1e-10)
    assert_trees_close(fast.params, plain.params, rtol=1e-4, atol=1e-5)
    assert int(fast.n_evals) < int(plain.n_evals)


def gradient_problem():
    X, start = gaussian_data(seed=9), gaussian_start("diag")
    model = jaxem.GaussianHMM(K, covariance_type="diag")
    padded = np.asarray(model.as_data((X, LENGTHS)).observations)

    def objective(observations, diff="unroll", of=lambda res: res.log_likelihood, tol=1e-13, max_iter=60):
        res = jaxem.fit(
            model, (observations, LENGTHS), key=jax.random.key(0), init=start, max_iter=max_iter, tol=tol, diff=diff
        )
        return of(res)

    return padded, objective


def test_gradient_with_respect_to_observations():
    """jax.grad of a converged fit's objective (diff="unroll") equals a central finite
    difference of two refits; padded steps get exactly zero."""
    padded, objective = gradient_problem()
    grad = jax.jit(jax.grad(objective))(jnp.asarray(padded))
    assert np.all(np.isfinite(grad))
    valid = np.arange(padded.shape[1]) < LENGTHS[:, None]
    assert np.all(np.asarray(grad)[~valid] == 0)
    direction = np.random.default_rng(0).normal(size=padded.shape) * valid[:, :, None]
    h = 1e-4
    difference = (objective(padded + h * direction) - objective(padded - h * direction)) / (2 * h)
    np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), difference, rtol=1e-6)


def test_implicit_gradient_with_respect_to_observations():
    """Implicit differentiation of the fitted HMM equals differentiating through the unrolled
    loop (both converged), and a fitted mean's gradient (through the adjoint solve) equals a
    central finite difference of two refits."""
    padded, objective = gradient_problem()
    grad = jax.jit(jax.grad(lambda x: objective(x, diff="implicit")))(jnp.asarray(padded))
    unrolled = jax.jit(jax.grad(objective))(jnp.asarray(padded))
    np.testing.assert_allclose(grad, unrolled, rtol=1e-6, atol=1e-9)
    # A fitted parameter's gradient goes through the adjoint solve (d theta* / d X).
    def mean_spread(res):
        return jnp.sum(res.params.means[:, 0] * jnp.arange(K))

    grad = jax.jit(jax.grad(lambda x: objective(x, diff="implicit", of=mean_spread)))(jnp.asarray(padded))
    valid = np.arange(padded.shape[1]) < LENGTHS[:, None]
    direction = np.random.default_rng(1).normal(size=padded.shape) * valid[:, :, None]
    # The reference refits run to the fixed point (tol=0, 100 iterations): a fit stopped by
    # tol=1e-13 on the objective has params only ~sqrt(tol) from it, which h would amplify.
    converged = functools.partial(objective, of=mean_spread, tol=0.0, max_iter=100)
    h = 1e-4
    difference = (converged(padded + h * direction) - converged(padded - h * direction)) / (2 * h)
    assert abs(float(difference)) > 1e-2
    np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), difference, rtol=1e-5)


# --- degenerate cases -------------------------------------------------------------------------------
def test_unvisited_state_and_zero_transition():
    X, start = gaussian_data(), gaussian_start("full")
    start["means"] = start["means"].copy()
    start["means"][2] = [1e3, -1e3]  # no observation comes near state 2
    start["transition"] = start["transition"].copy()
    start["transition"][0, 1] = 0.0
    start["transition"][0] /= start["transition"][0].sum()
    model = jaxem.GaussianHMM(K, covariance_type="full")
    res = fit5(model, (X, LENGTHS), start)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(res.params))
    np.testing.assert_array_equal(res.params.means[2], start["means"][2])
    np.testing.assert_array_equal(res.params.covariances[2], start["covariances"][2])
    np.testing.assert_array_equal(res.params.transition[2], start["transition"][2])  # never left
    assert float(res.params.transition[0, 1]) == 0.0
    assert float(res.params.initial[2]) == 0.0
    assert int(res.n_decreases) == 0


def test_sequences_of_length_one():
    lengths = np.ones(12, int)
    X, start = gaussian_data(seed=10, lengths=lengths), gaussian_start("diag")
    model = jaxem.GaussianHMM(K, covariance_type="diag")
    res = fit5(model, (X, lengths), start)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(res.params))
    np.testing.assert_array_equal(res.params.transition, start["transition"])  # no transitions seen
    ref = hmmlearn_gaussian("diag", start, X, lengths)
    for name, expected in [("initial", ref.startprob_), ("means", ref.means_), ("covariances", ref._covars_)]:
        assert_close_relative(getattr(res.params, name), expected, 1e-8)


def test_fixed_transition_and_freeze():
    X, start = gaussian_data(), gaussian_start("full")
    with pytest.raises(ValueError, match="log_joint"):
        jaxem.freeze(jaxem.GaussianHMM(K), "transition")
    model = jaxem.GaussianHMM(K, covariance_type="full", fixed=("transition",))
    res = fit5(model, (X, LENGTHS), start)
    np.testing.assert_array_equal(res.params.transition, start["transition"])
    ref = hmm.GaussianHMM(K, covariance_type="full", init_params="", params="smc", n_iter=5, tol=-np.inf)
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = (start[n] for n in ("initial", "transition", "means", "covariances"))
    ref.fit(X, LENGTHS)
    assert_close_relative(res.params.means, ref.means_, 1e-8)
    assert_close_relative(res.params.covariances, ref.covars_, 1e-8)
    assert model.count_parameters(res.params) == (K - 1) + K * D + K * D * (D + 1) // 2


# --- the generic HMM ------------------------------------------------------------------------------------
def test_generic_hmm_reaches_the_closed_form_optimum():
    X, start = gaussian_data(seed=8), gaussian_start("diag")

    def log_prob(emission, x):
        return jnp.sum(norm.logpdf(x, emission["means"], jnp.sqrt(emission["variances"])), axis=-1)

    def init(key, rows):
        index = jax.random.choice(key, rows.shape[0], (K,), replace=False)
        return {"means": rows[index], "variances": jnp.ones((K, rows.shape[1]))}

    generic = jaxem.HMM(log_prob, init, constraints={"variances": "positive"}, optimizer=optax.lbfgs(), n_steps=15)
    generic_start = dict(
        initial=start["initial"], transition=start["transition"],
        emission={"means": start["means"], "variances": start["covariances"]},
    )
    # The options and data of test_squarem_reaches_the_same_optimum: its compiled fit is reused.
    options = dict(key=jax.random.key(0), max_iter=3000, tol=1e-12)
    res = jaxem.fit(generic, (X, LENGTHS), init=generic_start, **options)
    closed = jaxem.fit(jaxem.GaussianHMM(K, "diag", covars_prior=0.0), (X, LENGTHS), init=start, **options)
    assert int(res.n_decreases) == 0
    np.testing.assert_allclose(res.log_likelihood, closed.log_likelihood, rtol=1e-8)
    np.testing.assert_allclose(res.params.emission["means"], closed.params.means, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.params.transition, closed.params.transition, atol=1e-4)
    assert generic.count_parameters(res.params) == (K - 1) + K * (K - 1) + 2 * K * D
    # Its own init, and its predictions through the shared HMM layer.
    data = generic.as_data((X, LENGTHS))
    own = jax.jit(lambda key: generic.init_params(key, data, jnp.ones(len(LENGTHS)), None))(jax.random.key(1))
    assert own.transition.shape == (K, K) and np.isfinite(generic.score(own, data))
    np.testing.assert_allclose(
        generic.score_samples(res.params, (X, LENGTHS)),
        jaxem.GaussianHMM(K, "diag").score_samples(closed.params, (X, LENGTHS)), rtol=1e-6,
    )
    with pytest.raises(ValueError, match="chunk_size"):
        jaxem.fit(generic, (X, LENGTHS), init=generic_start, chunk_size=2, **options)


# --- data, sampling, validation --------------------------------------------------------------------
def test_data_layouts_and_sampling():
    model = jaxem.GaussianHMM(K, covariance_type="diag")
    X = gaussian_data()
    data = model.as_data((X, LENGTHS))
    assert data.observations.shape == (4, 40, D) and data.lengths.tolist() == LENGTHS.tolist()
    # Padded steps hold the sequence's last observation, whatever the input held there.
    raw = np.asarray(data.observations).copy()
    raw[2, 1:] = np.nan
    again = model.as_data(jaxem.Sequences(raw, LENGTHS))
    np.testing.assert_array_equal(again.observations, data.observations)
    assert model.as_data(X[:5]).observations.shape == (1, 5, D)
    params = model.start_params(gaussian_start("diag"), data)
    observations, states = model.sample(jax.random.key(0), params, 6, 30)
    assert observations.shape == (6, 30, D) and states.shape == (6, 30)
    assert set(np.unique(states)) <= set(range(K))
    categorical = jaxem.CategoricalHMM(2, n_categories=3)
    codes, _ = categorical.sample(
        jax.random.key(1), jaxem.CategoricalHMMParams(jnp.ones(2) / 2, jnp.ones((2, 2)) / 2, jnp.ones((2, 2, 3)) / 3), 2, 10
    )
    assert codes.shape == (2, 10, 2) and set(np.unique(codes)) <= {0, 1, 2}


@pytest.mark.parametrize(
    "model, X, message",
    [
        (jaxem.GaussianHMM(2), (np.zeros((10, 2)), [4, 5]), "sum to 9"),
        (jaxem.GaussianHMM(2), (np.zeros((10, 2)), [4, 0, 6]), "positive integers"),
        (jaxem.GaussianHMM(2), (np.zeros((2, 5, 2)), [6, 3]), "max_len"),
        (jaxem.GaussianHMM(2), (np.full((10, 2), np.nan), [10]), "NaN"),
        (jaxem.GaussianHMM(2), np.zeros((3, 4, 2, 1)), "must be"),
        (jaxem.PoissonHMM(2), (np.full((4, 1), 1.5), [4]), "counts"),
        (jaxem.CategoricalHMM(2, n_categories=3), (np.full((4, 1), 3.0), [4]), "category codes"),
    ],
)
def test_bad_data_is_rejected(model, X, message):
    with pytest.raises(ValueError, match=message):
        model.as_data(X)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="covariance_type"):
        jaxem.GaussianHMM(2, covariance_type="round")
    with pytest.raises(ValueError, match="transition_prior"):
        jaxem.GaussianHMM(2, transition_prior=0.5)
    with pytest.raises(ValueError, match="fixed"):
        jaxem.PoissonHMM(2, fixed=("weights",))
    with pytest.raises(ValueError, match="method"):
        jaxem.PoissonHMM(2, method="fast")
    with pytest.raises(ValueError, match="transition"):
        jaxem.PoissonHMM(2).start_params(
            dict(initial=[0.5, 0.5], transition=[[0.5, 0.6], [0.5, 0.5]], rates=[[1.0], [2.0]]),
            jaxem.PoissonHMM(2).as_data(np.ones((3, 1))),
        )


def test_score_samples_by_enumeration():
    """A 2-state, 4-step sequence: log-likelihood by summing over all 16 state paths."""
    model = jaxem.PoissonHMM(2)
    params = jaxem.PoissonHMMParams(jnp.array([0.3, 0.7]), jnp.array([[0.8, 0.2], [0.4, 0.6]]), jnp.array([[1.0], [4.0]]))
    x = np.array([[0.0], [3.0], [5.0], [1.0]])
    from scipy.stats import poisson

    emission = poisson.logpmf(x, np.array([1.0, 4.0])[None, :])
    paths = np.array(np.meshgrid(*[[0, 1]] * 4, indexing="ij")).reshape(4, -1).T
    log_joint = [
        np.log([0.3, 0.7][p[0]]) + sum(np.log(np.asarray(params.transition)[p[t - 1], p[t]]) for t in range(1, 4))
        + sum(emission[t, p[t]] for t in range(4))
        for p in paths
    ]
    np.testing.assert_allclose(model.score_samples(params, x), [logsumexp(log_joint)], rtol=1e-12)
    assert hmm_inference.METHODS == ("sequential", "parallel", "auto")
