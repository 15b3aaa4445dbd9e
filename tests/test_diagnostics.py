"""The bound of docs/design.md: log p(X|θ) = ELBO(q, θ) + KL, KL = 0 at the posterior, the chain."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import entropy as sp_entropy
from scipy.stats import multivariate_normal as sp_mvn

import jaxem
from jaxem.core import em_update


def blobs(seed=0, n=120):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-2, 1, (n // 2, 2)), rng.normal(1.5, 0.7, (n // 2, 2))])


def fitted_gaussian_mixture(X, n_iter=3):
    model = jaxem.GaussianMixture(3)
    result = jaxem.fit(model, X, key=jax.random.key(0), max_iter=n_iter, tol=0.0)
    return model, result.params


def scipy_log_joint(params, X):
    densities = [
        sp_mvn.logpdf(X, mean, cov)
        for mean, cov in zip(np.asarray(params.means), np.asarray(params.covariances))
    ]
    return np.log(np.asarray(params.weights)) + np.stack(densities, axis=1)


@pytest.mark.parametrize("use_jit", [False, True])
def test_elbo_plus_kl_is_the_log_likelihood_for_arbitrary_q(use_jit):
    X = blobs()
    model, params = fitted_gaussian_mixture(X)
    q = np.random.default_rng(1).dirichlet(np.ones(3), size=len(X))
    decompose = jax.jit(jaxem.elbo_decomposition, static_argnums=0) if use_jit else jaxem.elbo_decomposition
    terms = decompose(model, params, X, q)
    log_joint = scipy_log_joint(params, X)
    log_lik = np.sum(np.logaddexp.reduce(log_joint, axis=1))
    np.testing.assert_allclose(terms.log_likelihood, log_lik, rtol=1e-12)
    np.testing.assert_allclose(terms.expected_log_joint, np.sum(q * log_joint), rtol=1e-12)
    np.testing.assert_allclose(terms.entropy, np.sum(sp_entropy(q, axis=1)), rtol=1e-12)
    assert abs(float(terms.elbo + terms.kl - terms.log_likelihood)) < 1e-10
    assert float(terms.kl) > 0


def test_kl_is_zero_at_the_posterior():
    X = blobs()
    model, params = fitted_gaussian_mixture(X)
    terms = jaxem.elbo_decomposition(model, params, X)
    assert abs(float(terms.kl)) < 1e-10
    assert abs(float(terms.elbo - terms.log_likelihood)) < 1e-10


def test_integer_sample_weights_equal_repeated_rows():
    X = blobs(n=40)
    model, params = fitted_gaussian_mixture(X)
    weights = np.random.default_rng(2).integers(0, 4, size=len(X))
    q = np.random.default_rng(3).dirichlet(np.ones(3), size=len(X))
    weighted = jaxem.elbo_decomposition(model, params, X, q, sample_weight=weights)
    repeated = jaxem.elbo_decomposition(model, params, np.repeat(X, weights, axis=0), np.repeat(q, weights, axis=0))
    for name in weighted._fields:
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-12)


def poisson_model():
    from jax.scipy.stats import poisson

    def log_joint(params, x):
        return jnp.log(params["weights"]) + poisson.logpmf(x[0], params["rates"])

    def init(key, X):
        return {"weights": jnp.array([0.5, 0.5]), "rates": jnp.array([1.0, 4.0])}

    return jaxem.LatentModel(
        log_joint, init, constraints={"weights": "simplex", "rates": "positive"},
        optimizer=optax.adam(0.05), n_steps=5,
    )


@pytest.mark.parametrize("kind", ["closed_form", "gradient"])
def test_monotonicity_chain_holds_along_a_fit(kind):
    rng = np.random.default_rng(0)
    if kind == "closed_form":
        X = jnp.asarray(blobs())
        model = jaxem.GaussianMixture(3)
        params = model.init_params(jax.random.key(0), X, jnp.ones(len(X)), "random")
    else:
        X = jnp.asarray(np.concatenate([rng.poisson(2.0, 80), rng.poisson(7.0, 40)]).astype(float)[:, None])
        model = poisson_model()
        params = model.init(None, X)
    weights = jnp.ones(len(X))
    m_state = model.init_m_state(params)
    step = jax.jit(lambda p, s: em_update(model, p, s, X, weights))
    for _ in range(10):
        _, new_params, m_state = step(params, m_state)
        chain = jaxem.monotonicity_chain(model, params, new_params, X)
        slack = 1e-10 * abs(float(chain.log_likelihood_old))
        assert abs(float(chain.log_likelihood_old - chain.elbo_old)) < slack
        assert float(chain.elbo_new) >= float(chain.elbo_old) - slack
        assert float(chain.kl_new) >= -slack
        np.testing.assert_allclose(chain.elbo_new + chain.kl_new, chain.log_likelihood_new, rtol=1e-12)
        assert float(chain.log_likelihood_new) >= float(chain.elbo_new) - slack
        params = new_params


def test_q_that_is_not_a_distribution_is_rejected():
    X = blobs(n=20)
    model, params = fitted_gaussian_mixture(X, n_iter=1)
    with pytest.raises(ValueError, match="shape"):
        jaxem.elbo_decomposition(model, params, X, np.ones((20, 2)) / 2)
    with pytest.raises(ValueError, match="probabilities"):
        jaxem.elbo_decomposition(model, params, X, np.ones((20, 3)))
