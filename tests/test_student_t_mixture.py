"""Student-t mixture: Peel & McLachlan EM parity (scipy), Gaussian limit, stationarity, robustness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import digamma, logsumexp
from scipy.stats import multivariate_t

import jaxem
from jaxem import constraints, parallel
from jaxem.models.student_t_mixture import StudentTMixtureStats
from mixture_checks import (
    as_init,
    assert_monotone,
    assert_predictions_by_hand,
)

MEANS = np.array([[0.0, 0.0], [6.0, 4.0]])
SCALES = np.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, -0.2], [-0.2, 1.2]]])
DOFS = np.array([3.0, 8.0])


def t_data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(2, size=n)
    parts = [
        multivariate_t(MEANS[k], SCALES[k], df=DOFS[k]).rvs(size=n, random_state=rng) for k in range(2)
    ]
    return np.where(labels[:, None] == 0, parts[0], parts[1])


def start(dofs=(5.0, 12.0)):
    return jaxem.StudentTMixtureParams(
        jnp.asarray([0.4, 0.6]),
        jnp.asarray([[0.5, -0.5], [5.0, 5.0]]),
        jnp.asarray(np.stack([np.eye(2), 2 * np.eye(2)])),
        jnp.asarray(dofs),
    )


def reference_log_density(X, means, covariances, dofs):
    return np.stack(
        [multivariate_t(means[k], covariances[k], df=dofs[k]).logpdf(X) for k in range(len(dofs))], 1
    )


def reference_em(X, params, n_iter, learn_dof, reg_covar=1e-6, dof_bounds=(0.1, 1000.0)):
    """Peel & McLachlan (2000) EM with scipy densities and a brentq root for each dof."""
    weights, means, covs, dofs = (np.array(p) for p in params)
    n_features = X.shape[1]
    for _ in range(n_iter):
        log_joint = reference_log_density(X, means, covs, dofs) + np.log(weights)
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        diff = X[:, None, :] - means[None]
        maha = np.einsum("nkd,kde,nke->nk", diff, np.linalg.inv(covs), diff)
        u = (dofs + n_features) / (dofs + maha)
        n_k = resp.sum(0)
        weights = n_k / n_k.sum()
        ru = resp * u
        means = ru.T @ X / ru.sum(0)[:, None]
        centred = X[:, None, :] - means[None]
        covs = np.einsum("nk,nkd,nke->kde", ru, centred, centred) / n_k[:, None, None]
        covs = covs + reg_covar * np.eye(n_features)
        if learn_dof:
            constant = 1 + (resp * (np.log(u) - u)).sum(0) / n_k
            constant += digamma((dofs + n_features) / 2) - np.log((dofs + n_features) / 2)
            dofs = np.array([
                brentq(lambda nu: np.log(nu / 2) - digamma(nu / 2) + c, *dof_bounds, xtol=1e-14, rtol=1e-15)
                for c in constant
            ])
    return weights, means, covs, dofs


@pytest.mark.parametrize("learn_dof", [True, False])
@pytest.mark.parametrize("n_iter", [1, 6])
def test_matches_peel_mclachlan_em_after_same_iterations(n_iter, learn_dof):
    X = t_data()
    model = jaxem.StudentTMixture(2, learn_dof=learn_dof)
    res = jaxem.fit(model, X, key=jax.random.key(0), init=as_init(start()), max_iter=n_iter, tol=0.0)
    reference = reference_em(X, start(), n_iter, learn_dof)
    for name, ours, theirs in zip(res.params._fields, res.params, reference):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, err_msg=name)


def test_huge_fixed_dof_is_the_gaussian_mixture():
    X = t_data()
    init = start(dofs=(1e12, 1e12))
    student = jaxem.fit(
        jaxem.StudentTMixture(2, learn_dof=False), X, key=jax.random.key(0), init=as_init(init), max_iter=10, tol=0
    )
    gaussian_init = {name: np.asarray(getattr(init, name)) for name in ("weights", "means", "covariances")}
    gaussian = jaxem.fit(jaxem.GaussianMixture(2), X, key=jax.random.key(0), init=gaussian_init, max_iter=10, tol=0)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(getattr(student.params, name), getattr(gaussian.params, name), rtol=1e-8, err_msg=name)
    np.testing.assert_allclose(student.trace, gaussian.trace, rtol=1e-10)


def test_converged_fit_is_a_stationary_point_of_the_likelihood():
    X = t_data()
    model = jaxem.StudentTMixture(2, reg_covar=0.0)
    res = jaxem.fit(model, X, key=jax.random.key(0), init=as_init(start()), max_iter=500, tol=1e-15)
    assert bool(res.converged) and int(res.n_decreases) == 0
    assert np.all((0.5 < res.params.dofs) & (res.params.dofs < 100.0))  # interior of the bracket
    names = model.param_constraints()

    def mean_log_lik(unconstrained):
        return model.score(constraints.from_unconstrained(names, unconstrained), X)

    grads = jax.grad(mean_log_lik)(constraints.to_unconstrained(names, res.params))
    for g in jax.tree.leaves(grads):
        np.testing.assert_allclose(g, 0.0, atol=1e-7)


def test_outliers_move_the_t_location_far_less_than_the_gaussian_mean():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)), np.full((10, 2), 30.0)])
    options = dict(key=jax.random.key(0), max_iter=500, tol=1e-10)
    student = jaxem.fit(jaxem.StudentTMixture(1), X, **options)
    gaussian = jaxem.fit(jaxem.GaussianMixture(1), X, **options)
    clean_mean = X[:200].mean(0)
    np.testing.assert_allclose(gaussian.params.means[0], X.mean(0), rtol=1e-10)
    assert np.max(np.abs(student.params.means[0] - clean_mean)) < 0.1
    assert np.min(np.abs(gaussian.params.means[0] - clean_mean)) > 1.0


def test_restarts_are_monotone():
    X = t_data()
    res = jaxem.fit(jaxem.StudentTMixture(2), X, key=jax.random.key(1), n_restarts=3, max_iter=200, tol=1e-10)
    for r in range(3):
        assert_monotone(jax.tree.map(lambda leaf: leaf[r], res.restarts))
    order = np.argsort(np.asarray(res.params.means[:, 0]))
    np.testing.assert_allclose(res.params.means[order], MEANS, atol=0.3)


@pytest.mark.parametrize("learn_dof, n_free", [(True, 1 + 4 + 6 + 2), (False, 1 + 4 + 6)])
def test_predictions_and_criteria_by_hand(learn_dof, n_free):
    X = t_data()
    params = start()
    log_density = reference_log_density(X, *(np.asarray(p) for p in params[1:]))
    assert_predictions_by_hand(jaxem.StudentTMixture(2, learn_dof=learn_dof), params, X, log_density, n_free)


def test_sample_has_the_params_moments():
    params = start(dofs=(8.0, 10.0))
    X, labels = jaxem.StudentTMixture(2).sample(jax.random.key(0), params, 100_000)
    X, labels = np.asarray(X), np.asarray(labels)
    np.testing.assert_allclose(np.bincount(labels) / labels.size, params.weights, atol=1e-2)
    for k in range(2):
        nu = float(params.dofs[k])
        np.testing.assert_allclose(X[labels == k].mean(0), params.means[k], atol=0.03)
        covariance = nu / (nu - 2) * np.asarray(params.covariances[k])
        np.testing.assert_allclose(np.cov(X[labels == k].T), covariance, atol=0.1 * np.max(covariance))


def test_bad_options_and_init_raise():
    with pytest.raises(ValueError, match="min_dof must be < max_dof"):
        jaxem.StudentTMixture(2, min_dof=5.0, max_dof=2.0)
    with pytest.raises(ValueError, match="dof"):
        jaxem.StudentTMixture(2, dof=0.0)
    with pytest.raises(ValueError, match="learn_dof"):
        jaxem.StudentTMixture(2, learn_dof="yes")
    X = t_data()
    bad_dofs = as_init(start()) | dict(dofs=np.array([3.0, -1.0]))
    with pytest.raises(ValueError, match="dofs must be positive"):
        jaxem.fit(jaxem.StudentTMixture(2), X, key=jax.random.key(0), init=bad_dofs)
    bad_cov = as_init(start()) | dict(covariances=np.stack([np.eye(2), -np.eye(2)]))
    with pytest.raises(ValueError, match="positive definite"):
        jaxem.fit(jaxem.StudentTMixture(2), X, key=jax.random.key(0), init=bad_cov)


def test_empty_component_stays_finite():
    X = np.random.default_rng(0).normal(size=(50, 2))
    init = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1e3, 1e3]], covariances=np.stack([np.eye(2)] * 2), dofs=[5.0, 5.0])
    res = jaxem.fit(jaxem.StudentTMixture(2), X, key=jax.random.key(0), init=init, max_iter=5, tol=0)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in res.params)
    assert float(res.params.weights[1]) < 1e-10
    assert bool(jnp.isfinite(res.log_likelihood))


@pytest.mark.parametrize("n_features", [2, 10])  # scalar factors; LAPACK's (more than 8)
def test_component_log_prob_matches_scipy_without_a_triangular_solve_of_the_rows(n_features):
    """scipy's multivariate t densities, and no LAPACK triangular solve whose right-hand
    side is the data (n_samples columns): jaxlib 0.10 splits such solves over XLA's thread
    pool from a pool thread, and the two of an E-step deadlocked 2-core CPUs."""
    rng = np.random.default_rng(1)
    n_samples, factors = 50, rng.normal(size=(3, n_features, n_features))
    covariances = factors @ factors.transpose(0, 2, 1) + n_features * np.eye(n_features)
    means, dofs = rng.normal(size=(3, n_features)), np.array([2.5, 7.0, 40.0])
    X = 2.0 * rng.normal(size=(n_samples, n_features))
    params = jaxem.StudentTMixtureParams(jnp.full(3, 1 / 3), jnp.asarray(means), jnp.asarray(covariances), jnp.asarray(dofs))
    model = jaxem.StudentTMixture(3)
    ours = model.component_log_prob(params, jnp.asarray(X))
    np.testing.assert_allclose(ours, reference_log_density(X, means, covariances, dofs), rtol=1e-12)
    program = jax.jit(model.component_log_prob).lower(params, X).as_text()
    solves = [line for line in program.splitlines() if "trsm" in line]
    assert not [line for line in solves if f"x{n_samples}x" in line], solves


def test_log_gamma_ratio_matches_scipy_from_small_to_huge_dofs():
    """log Gamma(nu/2 + D/2) - log Gamma(nu/2) as scipy's: to 1e-11 up to nu = 1e4 (jax's
    betaln alone was 4e-7 off at nu = 22, D = 4), to betaln's 1e-9 (relative) above."""
    from scipy.special import betaln, gammaln

    from jaxem.models.student_t_mixture import log_gamma_ratio_of_half

    nu = np.geomspace(0.1, 1e13, 200)
    for n_features in (1, 2, 4, 16):
        half_d = n_features / 2
        reference = gammaln(half_d) - betaln(nu / 2, half_d)
        ours = np.asarray(log_gamma_ratio_of_half(jnp.asarray(nu), half_d))
        moderate = nu <= 1e4
        np.testing.assert_allclose(ours[moderate], reference[moderate], rtol=1e-11, atol=1e-11, err_msg=str(n_features))
        np.testing.assert_allclose(ours[~moderate], reference[~moderate], rtol=1e-9, err_msg=str(n_features))


def reference_statistics(X, weights, means, covariances, dofs, sample_weight):
    """Peel & McLachlan's E-step from scipy densities and numpy inverses: the statistics
    centred on the means, and the weighted log-likelihood."""
    log_joint = reference_log_density(X, means, covariances, dofs) + np.log(weights)
    log_norm = logsumexp(log_joint, axis=1)
    resp = np.exp(log_joint - log_norm[:, None]) * sample_weight[:, None]
    diff = X[:, None, :] - means[None]
    maha = np.einsum("nkd,kde,nke->nk", diff, np.linalg.inv(covariances), diff)
    u = (dofs + X.shape[1]) / (dofs + maha)
    ru = resp * u
    stats = StudentTMixtureStats(
        resp.sum(0), ru.sum(0), np.einsum("nk,nkd->kd", ru, diff),
        np.einsum("nk,nkd,nke->kde", ru, diff, diff), (resp * (np.log(u) - u)).sum(0),
    )
    return stats, sample_weight @ log_norm


def test_e_step_matches_scipy_with_one_factorisation_per_e_step():
    """The E-step's statistics and log-likelihood, in one pass and in 3 chunks, against
    scipy densities. The chunked program factorises the scale matrices once, before its
    loop over chunks (whose E-steps run side by side), not once for the densities and once
    for the precision weights inside it (XLA's optimiser hoisted and merged those, but the
    program should not need it to: see jaxem.parallel.e_step_prepared)."""
    rng = np.random.default_rng(2)
    n_samples, n_features = 60, 10
    factors = rng.normal(size=(3, n_features, n_features))
    covariances = factors @ factors.transpose(0, 2, 1) + n_features * np.eye(n_features)
    weights, means, dofs = np.array([0.2, 0.3, 0.5]), rng.normal(size=(3, n_features)), np.array([2.5, 7.0, 40.0])
    X, sample_weight = 2.0 * rng.normal(size=(n_samples, n_features)), rng.uniform(0.5, 2.0, n_samples)
    params = jaxem.StudentTMixtureParams(*(jnp.asarray(a) for a in (weights, means, covariances, dofs)))
    model = jaxem.StudentTMixture(3)
    expected, expected_log_lik = reference_statistics(X, weights, means, covariances, dofs, sample_weight)
    for chunk_size in (None, 21):
        stats, log_lik = parallel.e_step(model, params, jnp.asarray(X), jnp.asarray(sample_weight), chunk_size)
        for name, ours, reference in zip(stats._fields, stats, expected):
            np.testing.assert_allclose(ours, reference, rtol=1e-11, atol=1e-11, err_msg=f"{name}, chunks of {chunk_size}")
        np.testing.assert_allclose(log_lik, expected_log_lik, rtol=1e-12)
    program = jax.make_jaxpr(lambda p, x, w: parallel.e_step(model, p, x, w, 21))(params, X, sample_weight)
    assert sorted(cholesky_loop_depths(program.jaxpr)) == [0]


def cholesky_loop_depths(jaxpr, depth=0):
    """For every Cholesky factorisation in a jaxpr (sub-jaxprs included), how many scan or
    while loops enclose it."""
    depths = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cholesky":
            depths.append(depth)
        inner = depth + (eqn.primitive.name in ("scan", "while"))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    depths += cholesky_loop_depths(sub, inner)
    return depths


def test_accelerators_keep_learned_dofs_inside_the_bracket_and_end_where_em_does():
    # Light-tailed (uniform) components: the likelihood grows with every dof, so EM's
    # M-step takes each to max_dof. With the dofs declared "positive" (measured on these
    # data), SQUAREM extrapolated past max_dof and lowered the likelihood twice coming
    # back; L-BFGS (quasi-Newton, auto) took the dofs to 1e10-1e12 and ended 5.3e-4 per
    # sample above plain EM, outside the model.
    rng = np.random.default_rng(0)
    X = MEANS[rng.integers(2, size=300)] + rng.uniform(-1.7, 1.7, size=(300, 2))
    model = jaxem.StudentTMixture(2)
    options = dict(key=jax.random.key(0), init=as_init(start()), max_iter=5000, tol=1e-12)
    plain = jaxem.fit(model, X, **options)
    assert bool(plain.converged)
    np.testing.assert_allclose(plain.params.dofs, model.max_dof, rtol=1e-12)
    for method in ("squarem", "quasi_newton", "auto", "preconditioned"):
        fast = jaxem.fit(model, X, accelerate=method, **options)
        assert bool(fast.converged) and int(fast.n_decreases) == 0, method
        assert np.all((fast.params.dofs >= model.min_dof) & (fast.params.dofs <= model.max_dof)), method
        np.testing.assert_allclose(fast.params.dofs, model.max_dof, rtol=1e-9, err_msg=method)
        np.testing.assert_allclose(fast.log_likelihood, plain.log_likelihood, rtol=1e-10, err_msg=method)
        assert int(fast.n_evals) < int(plain.n_evals) / 3, method
