"""A mixture of von Mises distributions, which jaxem does not ship, fitted from its log-density.

The von Mises concentration has no closed-form M-step (it needs the inverse of a ratio of
Bessel functions), so this is the GEM case: jaxem derives responsibilities and Q from the
log-joint by autodiff and takes guarded L-BFGS steps on Q in unconstrained coordinates.
The script prints the bound of docs/design.md along the fit: log p(X|θ_t) = ELBO(q_t, θ_t), then
ELBO(q_t, θ_{t+1}) >= ELBO(q_t, θ_t), and log p(X|θ_{t+1}) = ELBO(q_t, θ_{t+1}) + KL.

Run: python benchmarks/example_von_mises.py
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import i0e

import jaxem
from jaxem.core import em_update

TRUE_PARAMS = {
    "weights": np.array([0.5, 0.3, 0.2]),
    "locs": np.array([-2.0, 0.5, 2.5]),
    "concentrations": np.array([4.0, 8.0, 2.0]),
}


def log_joint(params, x):
    """log p(x, z=k) = log w_k + log VonMises(x | loc_k, kappa_k): one angle x (1,) -> (K,)."""
    kappa = params["concentrations"]
    # log I0(kappa) = log(i0e(kappa)) + kappa, stable for large kappa.
    log_normaliser = jnp.log(2 * jnp.pi * i0e(kappa)) + kappa
    return jnp.log(params["weights"]) + kappa * jnp.cos(x[0] - params["locs"]) - log_normaliser


def init(key, X):
    """Equal weights, locations at random data points, moderate concentrations."""
    locs = jax.random.choice(key, X[:, 0], (3,), replace=False)
    return {"weights": jnp.full(3, 1 / 3, X.dtype), "locs": locs, "concentrations": jnp.ones(3, X.dtype)}


def make_model():
    return jaxem.LatentModel(
        log_joint, init,
        constraints={"weights": "simplex", "concentrations": "positive"},  # locs: "real"
        optimizer=optax.lbfgs(), n_steps=10,
    )


def sample(seed, n_samples):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n_samples, p=TRUE_PARAMS["weights"])
    angles = rng.vonmises(TRUE_PARAMS["locs"][labels], TRUE_PARAMS["concentrations"][labels])
    return angles[:, None]


def bound_trace(model, params, X, n_iter):
    """The monotonicity chain for n_iter EM steps from params: list of MonotonicityChain."""
    weights = jnp.ones(X.shape[0], X.dtype)
    m_state = model.init_m_state(params)
    step = jax.jit(lambda p, s: em_update(model, p, s, X, weights))
    chains = []
    for _ in range(n_iter):
        _, new_params, m_state = step(params, m_state)
        chains.append(jaxem.monotonicity_chain(model, params, new_params, X))
        params = new_params
    return chains


def main(n_samples=1000, n_iter=15, n_restarts=8, seed=0):
    """Fit with restarts, print the fitted params, then the ELBO/KL trace from the best start."""
    X = jnp.asarray(sample(seed, n_samples))
    model = make_model()
    key = jax.random.key(seed)
    result = jaxem.fit(model, X, key=key, n_restarts=n_restarts, max_iter=200, tol=1e-8)
    fitted = {name: np.asarray(value) for name, value in result.params.items()}
    fitted["locs"] = np.angle(np.exp(1j * fitted["locs"]))  # the same angles, in (-pi, pi]
    order = np.argsort(fitted["locs"])
    print(f"best of {n_restarts} restarts: {jaxem.status_message(result.status)} after {int(result.n_iter)} iterations, "
          f"mean log-likelihood {float(result.log_likelihood):.6f}, decreases {int(result.n_decreases)}")
    for name in ("weights", "locs", "concentrations"):
        print(f"  {name:15s} fitted {np.round(fitted[name][order], 3)}  true {TRUE_PARAMS[name]}")

    start = init(jax.random.split(key, n_restarts)[int(result.best_restart)], X)
    chains = bound_trace(model, start, X, n_iter)
    print("\n iter   log p(X|θ_t)   ELBO(q_t,θ_t+1)   KL(q_t||p(Z|X,θ_t+1))   log p(X|θ_t+1)")
    for t, chain in enumerate(chains):
        print(f"{t:5d} {float(chain.log_likelihood_old):14.6f} {float(chain.elbo_new):17.6f} "
              f"{float(chain.kl_new):23.3e} {float(chain.log_likelihood_new):16.6f}")
    return result, chains


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-iter", type=int, default=15)
    parser.add_argument("--n-restarts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    main(args.n_samples, args.n_iter, args.n_restarts, args.seed)
