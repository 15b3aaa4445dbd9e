"""A larger model trained through a fit: learn a projection W so that a GMM on XW separates classes.

Data: 3 classes in 6 dimensions whose class signal lives in two of them, hidden under four
high-variance noise dimensions. A 2-D linear projection W (6 x 2) is trained with optax
Adam; each step fits a K=3 full-covariance Gaussian mixture on Z = X W / ||W|| by EM
(jaxem.run_em, implicit gradients) and scores the cross-entropy between the mixture's
responsibilities and the labels. Component k is tied to class k by starting it at class
k's mean (the start gets no gradient). Gradients reach W through the data of the fit: the
converged EM fixed point, and the responsibilities evaluated on Z.

Run: python benchmarks/example_projection.py [--steps 60]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxem

N_CLASSES = 3


def make_data(key: jax.Array, n_per_class: int = 100) -> tuple[jax.Array, jax.Array]:
    """X: (3 n, 6) float32 with the class signal in features 0-1; labels: (3 n,) int."""
    centre_key, noise_key, big_key = jax.random.split(key, 3)
    centres = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    labels = jnp.repeat(jnp.arange(N_CLASSES), n_per_class)
    signal = centres[labels] + 0.6 * jax.random.normal(noise_key, (labels.size, 2))
    noise = 3.0 * jax.random.normal(big_key, (labels.size, 4))
    return jnp.concatenate([signal, noise], axis=1), labels


def projected(W: jax.Array, X: jax.Array) -> jax.Array:
    """Z = X W / ||W||: (n, 2); normalising keeps the loss scale-invariant in W."""
    return X @ W / jnp.linalg.norm(W)


def classification_loss(W: jax.Array, X: jax.Array, labels: jax.Array, model) -> jax.Array:
    """Cross-entropy of the fitted mixture's responsibilities against the labels."""
    Z = projected(W, X)
    one_hot = jax.nn.one_hot(labels, N_CLASSES, dtype=Z.dtype)
    class_counts = jnp.sum(one_hot, axis=0)
    # Start component k at class k's mean so components and classes correspond.
    means = (one_hot.T @ Z) / class_counts[:, None]
    spread = jnp.cov(Z.T) + 1e-3 * jnp.eye(2, dtype=Z.dtype)
    start = jaxem.GaussianMixtureParams(
        jnp.full((N_CLASSES,), 1.0 / N_CLASSES, Z.dtype), means, jnp.broadcast_to(spread, (N_CLASSES, 2, 2))
    )
    res = jaxem.run_em(model, jax.lax.stop_gradient(start), Z, jnp.ones(Z.shape[0], Z.dtype), max_iter=50, tol=1e-4)
    log_resp = jnp.log(model.predict_proba(res.params, Z) + 1e-12)
    return -jnp.mean(jnp.sum(one_hot * log_resp, axis=1))


def train(n_steps: int = 60, learning_rate: float = 0.02, seed: int = 0) -> list[float]:
    """Train W with Adam through the fit; returns the loss at every step."""
    data_key, w_key = jax.random.split(jax.random.key(seed))
    X, labels = make_data(data_key)
    model = jaxem.GaussianMixture(N_CLASSES, covariance_type="full", reg_covar=1e-3)
    W = jax.random.normal(w_key, (X.shape[1], 2))
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(W)

    @jax.jit
    def step(W, opt_state):
        loss, grads = jax.value_and_grad(classification_loss)(W, X, labels, model)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(W, updates), opt_state, loss

    losses = []
    for _ in range(n_steps):
        W, opt_state, loss = step(W, opt_state)
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    losses = train(args.steps)
    for i, loss in enumerate(losses):
        if i % 10 == 0 or i == len(losses) - 1:
            print(f"step {i:3d}  loss {loss:.4f}")


if __name__ == "__main__":
    main()
