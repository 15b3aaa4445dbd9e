"""A larger model trained through a fit: learn a projection W maximising a GMM's held-out likelihood.

Data: 3 classes in 6 dimensions whose class signal lives in two of them, hidden under four
high-variance noise dimensions. A 2-D linear projection W (6 x 2) is trained with optax
Adam; each step fits a K=3 full-covariance Gaussian mixture by EM (jaxem.fit, implicit
gradients, 2 restarts) on the projected training half, Z = X Q with Q = qr(W), and the
loss is minus the mean log-likelihood of the projected test half under the fitted
mixture. Gradients reach W through the converged EM fixed point and through the test data.
The loss falls as W turns from the noise dimensions to the clustered ones.

Run: python benchmarks/example_projection.py [--steps 100]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import jaxem

N_CLASSES = 3


def make_data(key: jax.Array, n_per_class: int = 100) -> tuple[jax.Array, jax.Array]:
    """X: (3 n, 6) with the class signal in features 0-1; labels: (3 n,) int."""
    noise_key, big_key = jax.random.split(key)
    centres = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = jnp.repeat(jnp.arange(N_CLASSES), n_per_class)
    signal = centres[labels] + 0.6 * jax.random.normal(noise_key, (labels.size, 2))
    noise = 3.0 * jax.random.normal(big_key, (labels.size, 4))
    return jnp.concatenate([signal, noise], axis=1), labels


def projected(W: jax.Array, X: jax.Array) -> jax.Array:
    """Z = X Q with Q the orthonormal basis of W's columns: (n, 2), so scale cannot cheat."""
    Q, _ = jnp.linalg.qr(W)
    return X @ Q


def held_out_loss(W: jax.Array, X_train: jax.Array, X_test: jax.Array, model, key: jax.Array) -> jax.Array:
    """Minus the mean log-likelihood of X_test W under the mixture fitted by EM to X_train W."""
    res = jaxem.fit(model, projected(W, X_train), key=key, n_restarts=2, max_iter=300, tol=1e-8)
    return -model.score(res.params, projected(W, X_test))


def train(n_steps: int = 60, learning_rate: float = 0.05, seed: int = 0) -> list[float]:
    """Train W with Adam through the fit; returns the held-out loss at every step."""
    data_key, w_key, fit_key = jax.random.split(jax.random.key(seed), 3)
    X, _ = make_data(data_key)
    X_train, X_test = X[::2], X[1::2]
    model = jaxem.GaussianMixture(N_CLASSES, covariance_type="full", reg_covar=1e-3)
    W = jax.random.normal(w_key, (X.shape[1], 2))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(W)

    @jax.jit
    def step(W, opt_state):
        loss, grads = jax.value_and_grad(held_out_loss)(W, X_train, X_test, model, fit_key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(W, updates), opt_state, loss

    losses = []
    for _ in range(n_steps):
        W, opt_state, loss = step(W, opt_state)
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    losses = train(args.steps)
    for i, loss in enumerate(losses):
        if i % 10 == 0 or i == len(losses) - 1:
            print(f"step {i:3d}  loss {loss:.4f}")


if __name__ == "__main__":
    main()
