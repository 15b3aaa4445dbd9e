"""SQUAREM, quasi-Newton and auto: published optimum, plain EM's optimum, monotone traces, jit, vmap."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jax.scipy.stats import poisson
from scipy.stats import poisson as sp_poisson

from jaxem import accel
from jaxem.accel import run_auto, run_preconditioned, run_quasi_newton, run_squarem
from jaxem.core import run_em

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_accel import three_overlapping_gaussians  # noqa: E402

LONDON = np.loadtxt(jaxem.data_path("london_deaths.csv"), delimiter=",", skiprows=1)
LONDON_COUNTS, LONDON_FREQUENCIES = jnp.asarray(LONDON[:, :1]), jnp.asarray(LONDON[:, 1])
LONDON_OPTIMUM_NEG_LOGLIK = 1989.945859883  # published optimum (Varadhan & Roland 2008)

RUNNERS = {
    "squarem": run_squarem, "quasi_newton": run_quasi_newton, "auto": run_auto, "preconditioned": run_preconditioned,
}
# Varadhan & Roland (2008)'s start for the London deaths data.
LONDON_START = jaxem.PoissonMixtureParams(jnp.array([0.3, 0.7]), jnp.array([[1.0], [2.5]]))


def london_neg_loglik(result):
    return -float(result.log_likelihood) * float(jnp.sum(LONDON_FREQUENCIES))


@pytest.mark.parametrize("name", sorted(RUNNERS))
@pytest.mark.parametrize("use_jit", [False, True])
def test_london_deaths_published_optimum_in_few_evaluations(name, use_jit):
    run = lambda p: RUNNERS[name](jaxem.PoissonMixture(2), p, LONDON_COUNTS, LONDON_FREQUENCIES, max_iter=200, tol=1e-11)
    result = (jax.jit(run) if use_jit else run)(LONDON_START)
    assert bool(result.converged)
    assert abs(london_neg_loglik(result) - LONDON_OPTIMUM_NEG_LOGLIK) < 1e-6
    assert int(result.n_evals) <= 60
    assert int(result.n_decreases) == 0


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_london_deaths_published_optimum_from_a_start_with_a_zero_count_cluster(name):
    # k-means++ with key 3 gives the days without deaths a cluster of their own. Its rate
    # at the floor 1e-10 made quasi-Newton stop at the zero-inflated fit, -log L = 1994.05.
    model = jaxem.PoissonMixture(2)
    start = model.init_params(jax.random.key(3), LONDON_COUNTS, LONDON_FREQUENCIES, "kmeans++")
    result = RUNNERS[name](model, start, LONDON_COUNTS, LONDON_FREQUENCIES, max_iter=500, tol=1e-11)
    assert bool(result.converged)
    assert abs(london_neg_loglik(result) - LONDON_OPTIMUM_NEG_LOGLIK) < 1e-6


def test_quasi_newton_does_not_stop_where_em_gains_grow():
    # At the zero-inflated fit with the other params at their optimum, EM raises the
    # small rate by 9% per iteration: gains far below tol, but growing. L-BFGS (in
    # log-rate coordinates) stopped there; EM's check of its end must not.
    start = jaxem.PoissonMixtureParams(jnp.array([0.95044, 0.04956]), jnp.array([[2.269406], [1e-9]]))
    result = run_quasi_newton(jaxem.PoissonMixture(2), start, LONDON_COUNTS, LONDON_FREQUENCIES, max_iter=1000, tol=1e-11)
    assert bool(result.converged)
    assert abs(london_neg_loglik(result) - LONDON_OPTIMUM_NEG_LOGLIK) < 1e-6


def test_plain_em_on_london_needs_thousands_of_evaluations():
    result = run_em(jaxem.PoissonMixture(2), LONDON_START, LONDON_COUNTS, LONDON_FREQUENCIES, max_iter=5000, tol=1e-11)
    assert int(result.n_evals) == int(result.n_iter) + 1 > 1000


def test_gains_at_rounding_level_are_not_a_stall():
    value = jnp.asarray(-3.7)
    rounding = float(accel.rounding(value))
    real = [(0.6e-6, 1e-6), (0.9e-9, 1e-9)]  # shrinking by 0.6 and 0.9: stalled
    noise = [(0.6 * rounding, rounding), (0.9 * rounding, rounding)]  # the same ratios, at rounding
    for gain, previous in real:
        assert bool(accel.is_stalled(jnp.asarray(gain), jnp.asarray(previous), accel.STALL_RATE, value))
    for gain, previous in noise:
        assert not bool(accel.is_stalled(jnp.asarray(gain), jnp.asarray(previous), accel.STALL_RATE, value))


def quadratic_with_em_map(p=6, seed=0, missing=0.97):
    """A concave quadratic objective -(u - m)' B (u - m) / 2 whose "EM step" is A g, with
    A = (B + M)^-1 the inverse of observed plus missing information: EM converges
    linearly, at rate `missing` (the largest eigenvalue of A M)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(p, p)))
    complete = rotation @ np.diag(rng.uniform(1.0, 3.0, p)) @ rotation.T  # B + M
    fractions = np.linspace(0.2, missing, p)  # of each complete-information direction missing
    root = np.linalg.cholesky(complete)
    other, _ = np.linalg.qr(rng.normal(size=(p, p)))
    observed = root @ other @ np.diag(1 - fractions) @ other.T @ root.T
    m = rng.normal(size=p)
    A = np.linalg.inv(complete)

    def evaluate(u):
        grad = -jnp.asarray(observed) @ (u - m)
        return -0.5 * jnp.dot(u - m, -grad), grad, jnp.asarray(A) @ grad

    return evaluate, m, A


def test_correction_update_meets_the_secant_condition_with_em_as_preconditioner():
    # (A + S) y = s after the update, where A y is only known as the change of the EM step.
    evaluate, m, A = quadratic_with_em_map()
    rng = np.random.default_rng(1)
    state = accel.preconditioned_start(evaluate, jnp.asarray(rng.normal(size=6)), 0, 0, 0, jnp.zeros(4))
    for slot in range(3):  # the later updates have terms in S already
        step = jnp.asarray(rng.normal(size=6)) * 0.3
        value, grad, em_dir = evaluate(state.u + step)
        image, scales, curved = accel.correction_term(state, step, grad, em_dir)
        assert bool(curved)
        y = state.grad - grad
        state = state._replace(
            u=state.u + step, value=value, grad=grad, em_dir=em_dir, steps=state.steps.at[slot].set(step),
            images=state.images.at[slot].set(image), scales=state.scales.at[slot].set(scales),
        )
        np.testing.assert_allclose(A @ np.asarray(y) + accel.apply_correction(state, y), step, rtol=1e-10, atol=1e-12)


def test_preconditioned_phase_converges_where_em_crawls():
    # EM at rate 0.97 needs ~700 steps to get within 1e-10 of the maximiser; learning the
    # missing information's 6 directions takes the preconditioned phase a few dozen.
    evaluate, m, A = quadratic_with_em_map()
    u0 = jnp.zeros(6)
    config = jaxem.config.FitConfig(max_iter=200)
    start = accel.preconditioned_start(evaluate, u0, jnp.asarray(0), jnp.asarray(0),
                                       jnp.asarray(jaxem.Status.RUNNING, jnp.int32), jnp.full(200, jnp.nan))
    end = accel.run_preconditioned_phase(evaluate, start, config, tol=jnp.asarray(1e-22), to_params=lambda u: u)
    assert int(end.status) == jaxem.Status.CONVERGED and not bool(end.failed)
    np.testing.assert_allclose(end.u, m, atol=1e-9)
    u, em_steps = u0, 0
    while np.max(np.abs(u - m)) > 1e-9:
        u, em_steps = u + evaluate(u)[2], em_steps + 1
    assert int(end.n_evals) * 10 < em_steps


def test_quasi_newton_does_not_switch_on_rounding_noise():
    # Two well separated clusters: EM contracts fast, so it never stalls, and with
    # criterion "params" at 1e-14 it runs on while its gains are rounding noise. The
    # ratio of two such gains had quasi-Newton switch to L-BFGS, which (with reg_covar)
    # ended at the unregularised covariances, 1e-6 from plain EM's (with XLA's default
    # CPU compile, JAXEM_TEST_XLA_DEFAULTS=1; the suite's quick compile rounded so that
    # it did not switch here, but did in test_implicit's problem).
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (80, 2)), rng.normal(4, 1, (80, 2))])
    options = dict(key=jax.random.key(0), tol=1e-14, criterion="params", max_iter=500)
    em = jaxem.fit(jaxem.GaussianMixture(2), X, **options)
    fast = jaxem.fit(jaxem.GaussianMixture(2), X, accelerate="quasi_newton", **options)
    assert bool(em.converged) and bool(fast.converged)
    assert int(fast.method) == jaxem.Method.EM and int(fast.n_evals) == int(em.n_evals)
    for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(em.params)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("accelerate", sorted(RUNNERS))
def test_accelerators_follow_em_where_em_itself_lowers_the_objective(accelerate):
    # reg_covar = 1e-2: EM's M-step is not the likelihood's maximiser, and plain EM lowers
    # the log-likelihood 4 times (by up to 1e-5 per sample) on its way to its fixed point.
    # The accelerators stopped at the first such drop, after 3 E-steps, 1.9e-3 from it.
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 1, (80, 2)), rng.normal(4, 1, (80, 2))])
    model = jaxem.GaussianMixture(2, reg_covar=1e-2)
    options = dict(key=jax.random.key(0), tol=1e-13, criterion="params", max_iter=500)
    em = jaxem.fit(model, X, **options)
    assert bool(em.converged) and int(em.n_decreases) > 0
    fast = jaxem.fit(model, X, accelerate=accelerate, **options)
    assert bool(fast.converged)
    for a, b in zip(jax.tree.leaves(fast.params), jax.tree.leaves(em.params)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def family_problem(prefix):
    from benchmarks.bench_accel_families import problems

    return next((model, X, options) for name, model, X, options in problems() if name.startswith(prefix))


@pytest.mark.parametrize(
    "prefix, accelerate",
    [
        ("Poisson", "squarem"), ("Poisson", "auto"), ("Poisson", "preconditioned"),
        ("factor analysis", "quasi_newton"), ("factor analysis", "auto"),
    ],
)
def test_accelerators_stay_above_the_floors_the_m_step_keeps(prefix, accelerate):
    # A Poisson rate whose data are all zeros (EM: min_rate) and a Heywood noise variance
    # (EM: min_noise, approached sublinearly). Declared "positive", these runs ended with a
    # rate or a noise variance below the floor (benchmarks/bench_accel_families.py
    # --declare-positive), a point EM cannot reach.
    from benchmarks.bench_accel_families import outside_bounds

    model, X, options = family_problem(prefix)
    fast = jaxem.fit(model, X, key=jax.random.key(1), max_iter=2000, tol=1e-12, accelerate=accelerate, **options)
    assert bool(fast.converged) and int(fast.n_decreases) == 0
    assert not outside_bounds(model, fast.params)
    if prefix == "Poisson":
        plain = jaxem.fit(model, X, key=jax.random.key(1), max_iter=2000, tol=1e-12, **options)
        assert bool(plain.converged)
        np.testing.assert_allclose(fast.log_likelihood, plain.log_likelihood, rtol=1e-10)
    else:  # at the floor, where plain EM creeps (not converged in 20000 iterations)
        assert np.isclose(np.min(np.asarray(fast.params.noise_variances)), model.min_noise, rtol=1e-2)


@pytest.mark.parametrize("seed", [2, 4, 6])
@pytest.mark.parametrize("accelerate", ["squarem", "auto"])
def test_extrapolation_past_a_floor_falls_back_to_unconstrained_coordinates(accelerate, seed):
    # float32 Poisson mixtures with a small rate (0.05) and a zero one. Projected onto the
    # floor (jaxem.constraints.Interval's inverse), SQUAREM's overshoot of a small rate
    # below zero sent it to 1e-10, and the runs ended 1e-3 to 6.6e-3 per sample below
    # plain EM (seeds 2, 4, 6); extrapolated in log(rate - floor) instead, they end at or
    # above it (float32 rounding of the per-sample log-likelihood: ~1e-6).
    rng = np.random.default_rng(seed)
    rates = np.array([[0.05, 3.0], [2.5, 0.0], [4.0, 4.0]])
    X = rng.poisson(rates[rng.integers(3, size=800)]).astype(np.float32)
    options = dict(key=jax.random.key(1), max_iter=3000, tol=1e-6, init="random")
    plain = jaxem.fit(jaxem.PoissonMixture(3), X, **options)
    fast = jaxem.fit(jaxem.PoissonMixture(3), X, accelerate=accelerate, **options)
    assert plain.log_likelihood.dtype == np.float32 and bool(plain.converged) and bool(fast.converged)
    assert float(fast.log_likelihood) >= float(plain.log_likelihood) - 1e-5


def test_inside_checks_interval_leaves_only():
    from jaxem.constraints import Interval, inside

    names = {"rate": Interval(1e-10), "dof": Interval(0.1, 1000.0, log=True), "mean": "real"}
    ok = {"rate": jnp.array([1e-10, 2.0]), "dof": jnp.array(1000.0), "mean": jnp.array(-5.0)}
    assert bool(inside(names, ok))
    assert not bool(inside(names, {**ok, "rate": jnp.array([-1e-3, 2.0])}))
    assert not bool(inside(names, {**ok, "dof": jnp.array(1000.5)}))


def overlapping_gaussians(seed=0, n=300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    X[: n // 2] += 1.0
    return X


@pytest.mark.parametrize("name", sorted(RUNNERS))
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_accelerated_run_reaches_plain_em_optimum_with_fewer_evaluations(covariance_type, name):
    X = overlapping_gaussians()
    model = jaxem.GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0)
    start = model.init_params(jax.random.key(3), jnp.asarray(X), jnp.ones(len(X)), "random_from_data")
    w = jnp.ones(len(X))
    em = run_em(model, start, jnp.asarray(X), w, max_iter=20000, tol=1e-13)
    fast = RUNNERS[name](model, start, jnp.asarray(X), w, max_iter=2000, tol=1e-13)
    assert bool(em.converged) and bool(fast.converged)
    np.testing.assert_allclose(float(fast.log_likelihood), float(em.log_likelihood), atol=1e-8)
    assert int(fast.n_evals) * 3 < int(em.n_evals)
    assert int(fast.n_decreases) == 0


def test_quasi_newton_beats_em_on_badly_scaled_old_faithful():
    # Durations (minutes) and waiting times (tens of minutes): L-BFGS in unconstrained
    # coordinates needed more evaluations than plain EM here with a short memory.
    X = jnp.asarray(np.loadtxt(jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1))
    w = jnp.ones(len(X))
    model = jaxem.GaussianMixture(3, reg_covar=1e-6)
    start = model.init_params(jax.random.key(1), X, w, "random_from_data")
    em = run_em(model, start, X, w, max_iter=5000, tol=1e-13)
    qn = run_quasi_newton(model, start, X, w, max_iter=5000, tol=1e-13)
    assert bool(em.converged) and bool(qn.converged)
    np.testing.assert_allclose(float(qn.log_likelihood), float(em.log_likelihood), atol=1e-8)
    assert jaxem.method_name(qn.method) == "quasi-Newton"
    assert int(qn.n_evals) < int(em.n_evals)
    assert int(qn.n_decreases) == 0


@pytest.mark.parametrize("name", ["squarem", "quasi_newton"])
def test_accelerated_run_matches_scikit_learn_optimum(name):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X = overlapping_gaussians(1)
    model = jaxem.GaussianMixture(2, reg_covar=1e-6)
    start = model.init_params(jax.random.key(0), jnp.asarray(X), jnp.ones(len(X)), "kmeans++")
    sk = SkGaussianMixture(
        2, reg_covar=1e-6, tol=1e-14, max_iter=100000, weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means), precisions_init=np.linalg.inv(np.asarray(start.covariances)),
    ).fit(X)
    fast = RUNNERS[name](model, start, jnp.asarray(X), jnp.ones(len(X)), max_iter=3000, tol=1e-14)
    np.testing.assert_allclose(float(fast.log_likelihood), sk.score(X), atol=1e-8)


def numpy_poisson_mixture_em(counts, weights, rates, n_iter=5000):
    """Closed-form EM for a Poisson mixture; returns the mean log-likelihood at the end."""
    weights, rates = np.array(weights, float), np.array(rates, float)
    for _ in range(n_iter):
        log_joint = np.log(weights) + sp_poisson.logpmf(counts[:, None], rates)
        resp = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
        weights, rates = resp.mean(0), (resp * counts[:, None]).sum(0) / resp.sum(0)
    log_joint = np.log(weights) + sp_poisson.logpmf(counts[:, None], rates)
    return np.mean(np.logaddexp.reduce(log_joint, axis=1))


@pytest.mark.parametrize("accelerate", sorted(RUNNERS))
def test_latent_model_with_gradient_m_step_reaches_closed_form_optimum(accelerate):
    rng = np.random.default_rng(0)
    counts = np.concatenate([rng.poisson(2.0, 200), rng.poisson(5.0, 100)]).astype(float)
    model = jaxem.LatentModel(
        lambda params, x: jnp.log(params["weights"]) + poisson.logpmf(x[0], params["rates"]),
        lambda key, X: {"weights": jnp.array([0.5, 0.5]), "rates": jnp.array([1.0, 6.0])},
        constraints={"weights": "simplex", "rates": "positive"},
    )
    result = jaxem.fit(model, counts[:, None], key=jax.random.key(0), max_iter=500, tol=1e-12, accelerate=accelerate)
    assert bool(result.converged)
    assert int(result.n_decreases) == 0
    reference = numpy_poisson_mixture_em(counts, [0.5, 0.5], [1.0, 6.0])
    np.testing.assert_allclose(float(result.log_likelihood), reference, rtol=1e-10)


@pytest.mark.parametrize("accelerate", [None, *sorted(RUNNERS)])
def test_vmapped_restarts_match_a_python_loop(accelerate):
    X = overlapping_gaussians(2, n=200)
    model = jaxem.GaussianMixture(2, covariance_type="diag", reg_covar=1e-6)
    fit = jaxem.fit(model, X, key=jax.random.key(1), n_restarts=3, max_iter=300, tol=1e-9, accelerate=accelerate)
    runner = {None: run_em, **RUNNERS}[accelerate]
    single_run = jax.jit(lambda start: runner(model, start, jnp.asarray(X), jnp.ones(len(X)), max_iter=300, tol=1e-9))
    for r, key in enumerate(jax.random.split(jax.random.key(1), 3)):
        single = single_run(model.init_params(key, jnp.asarray(X), jnp.ones(len(X)), "kmeans++"))
        np.testing.assert_allclose(fit.restarts.log_likelihood[r], single.log_likelihood, rtol=1e-10)
        assert int(fit.restarts.n_evals[r]) == int(single.n_evals)
        assert int(fit.restarts.method[r]) == int(single.method)
        assert int(fit.restarts.n_decreases[r]) == 0


def test_accelerate_is_validated():
    with pytest.raises(ValueError, match="accelerate"):
        jaxem.fit(jaxem.GaussianMixture(2), overlapping_gaussians(), key=jax.random.key(0), accelerate="aitken")


def test_method_names():
    assert [jaxem.method_name(m) for m in jaxem.Method] == ["EM", "SQUAREM", "quasi-Newton"]


def test_auto_ends_where_plain_em_ends_where_quasi_newton_did_not():
    # Three overlapping clusters: EM crosses a plateau to its maximum; quasi-Newton's
    # L-BFGS, switched on after 5 EM iterations, reaches another (-4.786429 per sample).
    X = three_overlapping_gaussians(5, 3500, 1.2)
    model = jaxem.GaussianMixture(3)
    start = model.init_params(jax.random.split(jax.random.key(2), 1)[0], X, jnp.ones(len(X)), "kmeans++")
    em = run_em(model, start, X, jnp.ones(len(X)), max_iter=10000, tol=1e-12)
    fast = run_auto(model, start, X, jnp.ones(len(X)), max_iter=2000, tol=1e-12)
    assert bool(em.converged) and bool(fast.converged)
    np.testing.assert_allclose(float(fast.log_likelihood), float(em.log_likelihood), atol=1e-8)
    assert int(fast.n_evals) * 10 < int(em.n_evals)


@pytest.mark.parametrize("name", ["em", *sorted(RUNNERS)])
def test_a_run_cut_at_max_iter_is_a_prefix_of_a_longer_run(name):
    # benchmarks/bench_accel.evals_to_reach relies on this: the run with max_iter=m ends at
    # the point that entered iteration m of any longer run (for quasi-Newton, two iterations
    # before the end stops inside the L-BFGS phase).
    runner = {"em": run_em, **RUNNERS}[name]
    run = lambda m: jax.jit(
        lambda p: runner(jaxem.PoissonMixture(2), p, LONDON_COUNTS, LONDON_FREQUENCIES, max_iter=m, tol=1e-11)
    )(LONDON_START)
    full = run(200)
    for m in (3, int(full.n_iter) - 2):
        short = run(m)
        assert int(short.n_iter) == m
        np.testing.assert_allclose(short.trace, full.trace[:m], rtol=1e-12)
        np.testing.assert_allclose(float(short.log_likelihood), float(full.trace[m]), rtol=1e-12)
        assert int(short.n_evals) < int(full.n_evals)
    if name == "quasi_newton":
        assert jaxem.method_name(full.method) == jaxem.method_name(short.method) == "quasi-Newton"
