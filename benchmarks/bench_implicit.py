"""Backward (gradient) cost of a fit against its forward cost.

A loss of the fitted Gaussian-mixture params and log-likelihood is differentiated with
respect to the data. Forward time is one jitted fit; backward time is the jitted
value_and_grad minus the forward time (both medians of repeats, compile excluded). The
implicit backward pass solves the adjoint system with VJPs of one EM step; its cost does
not depend on how many iterations the forward fit took.

Run: python benchmarks/bench_implicit.py [--repeats 7] [--out benchmarks/results/implicit.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxem


def blobs(n_samples: int, n_features: int, n_components: int, seed: int = 0) -> np.ndarray:
    """Overlapping Gaussian blobs: (n_samples, n_features), so EM takes tens of iterations."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.5, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n_samples)
    return (centres[labels] + rng.normal(size=(n_samples, n_features))).astype(np.float32)


def median_seconds(fn, *args, repeats: int) -> float:
    """Median wall time of fn(*args) after one warm-up call (which compiles)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def case(X: jax.Array, model, diff: str, adjoint: str, fit_options: dict, repeats: int) -> dict:
    """Forward and backward times of one differentiation mode."""

    def loss(X):
        res = jaxem.fit(model, X, key=jax.random.key(0), diff=diff, adjoint=adjoint, **fit_options)
        return jnp.sum(res.params.means**2) + res.log_likelihood, res.n_iter

    forward = jax.jit(loss)
    both = jax.jit(jax.value_and_grad(loss, has_aux=True))
    forward_s = median_seconds(forward, X, repeats=repeats)
    both_s = median_seconds(both, X, repeats=repeats)
    n_iter = int(forward(X)[1])
    return dict(
        diff=diff,
        adjoint=adjoint if diff == "implicit" else None,
        n_iter=n_iter,
        forward_ms=1e3 * forward_s,
        backward_ms=1e3 * (both_s - forward_s),
        backward_over_forward=(both_s - forward_s) / forward_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n-samples", type=int, default=5000)
    parser.add_argument("--out", default="benchmarks/results/implicit.json")
    args = parser.parse_args()

    X = jnp.asarray(blobs(args.n_samples, 2, 3))
    model = jaxem.GaussianMixture(3, covariance_type="full")
    rows = []
    for tol in (1e-3, 1e-6):
        fit_options = dict(tol=tol, max_iter=500, criterion="loglik")
        for diff, adjoint in (("implicit", "dense"), ("implicit", "fixed_point"), ("implicit", "gmres"), ("implicit", "bicgstab"), ("unroll", "fixed_point")):
            row = dict(tol=tol, **case(X, model, diff, adjoint, fit_options, args.repeats))
            rows.append(row)
            print(
                f"tol={tol:g} {diff:8s} {str(row['adjoint']):12s} n_iter={row['n_iter']:4d} "
                f"forward {row['forward_ms']:8.2f} ms  backward {row['backward_ms']:8.2f} ms  "
                f"ratio {row['backward_over_forward']:.2f}"
            )
    result = dict(
        benchmark="backward vs forward time of a fit",
        problem=dict(n_samples=args.n_samples, n_features=2, n_components=3, covariance_type="full", dtype="float32"),
        device=str(jax.devices()[0]),
        platform=platform.platform(),
        jax_version=jax.__version__,
        repeats=args.repeats,
        rows=rows,
    )
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
