"""Every built-in family: its closed-form M-step and the generic gradient M-step (GEM with
L-BFGS on the same log-joint, jaxem.LatentModel) reach the same optimum from the same start."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxem


def poisson_case():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.poisson([1.5, 6.0], (150, 2)), rng.poisson([7.0, 2.0], (100, 2))])
    return jaxem.PoissonMixture(2), X.astype(float)


def bernoulli_case():
    rng = np.random.default_rng(1)
    protos = np.array([[0.9, 0.8, 0.2, 0.1, 0.7], [0.1, 0.3, 0.8, 0.9, 0.4]])
    X = (rng.uniform(size=(300, 5)) < protos[rng.integers(2, size=300)]).astype(float)
    return jaxem.BernoulliMixture(2, pseudo_count=1e-2), X


def categorical_case():
    rng = np.random.default_rng(2)
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]])
    labels = rng.integers(2, size=300)
    X = np.stack([[rng.choice(4, p=probs[z]) for _ in range(3)] for z in labels]).astype(float)
    return jaxem.CategoricalMixture(2, n_categories=4, pseudo_count=1e-2), X


def student_t_case():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.standard_t(4, (150, 2)), rng.standard_t(4, (150, 2)) * 0.7 + [5.0, 2.0]])
    return jaxem.StudentTMixture(2, reg_covar=0.0), X


def regression_case():
    rng = np.random.default_rng(4)
    x = rng.uniform(-2, 2, 300)
    z = rng.integers(2, size=300)
    y = np.where(z == 0, 1.0 + 2.0 * x, -1.0 - 0.5 * x) + rng.normal(scale=0.4, size=300)
    return jaxem.MixtureOfRegressions(2, reg_variance=0.0), np.column_stack([x, y])


CASES = {
    "poisson": poisson_case,
    "bernoulli": bernoulli_case,
    "categorical": categorical_case,
    "student_t": student_t_case,
    "regressions": regression_case,
}


def as_latent_model(family, start):
    """The family's log-joint and log-prior, with a gradient M-step instead of its closed form."""
    return jaxem.LatentModel(
        lambda params, x: family.log_joint(params, x[None, :])[0],
        lambda key, X: start,
        constraints=family.param_constraints(start),
        optimizer=optax.lbfgs(),
        n_steps=10,
        log_prior=family.log_prior,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_m_step_reaches_the_closed_form_optimum(name):
    family, X = CASES[name]()
    X = jnp.asarray(X)
    w = jnp.ones(X.shape[0])
    start = family.init_params(jax.random.key(0), X, w, "kmeans++")
    closed = jaxem.run_em(family, start, X, w, max_iter=3000, tol=1e-12)
    generic = as_latent_model(family, start)
    gradient = jaxem.run_em(generic, start, X, w, max_iter=3000, tol=1e-12)
    assert bool(closed.converged) and bool(gradient.converged)
    assert int(closed.n_decreases) == 0 and int(gradient.n_decreases) == 0
    np.testing.assert_allclose(gradient.log_likelihood, closed.log_likelihood, rtol=1e-7)
    for a, b in zip(jax.tree.leaves(gradient.params), jax.tree.leaves(closed.params)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
