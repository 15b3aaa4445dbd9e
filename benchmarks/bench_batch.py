"""Many small fits in one program: jit(vmap(jaxem.fit)) against a scikit-learn loop.

200 data sets of N=400, D=2 drawn from two Gaussian blobs, each fitted with a K=2 full
Gaussian mixture, k-means++ starts, max_iter=100 and tol=1e-3 on the change of the mean
per-sample log-likelihood in both libraries. jaxem fits all 200 as one jitted, vmapped
program; scikit-learn fits them one after another (BLAS limited to one thread, its best
setting for problems this small). Compile time is reported separately. The two libraries
are timed in alternating rounds (the median of 5 jaxem batches, then one scikit-learn
loop); the speed-up is the median over rounds of the per-round ratio, with its range.

Run: python benchmarks/bench_batch.py [--rounds 11] [--out benchmarks/results/batch.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

import jaxem

N_PROBLEMS, N_SAMPLES, N_FEATURES, N_COMPONENTS = 200, 400, 2, 2
MAX_ITER, TOL = 100, 1e-3
JAXEM_PER_ROUND = 5


def problems(seed: int = 0) -> np.ndarray:
    """(N_PROBLEMS, N_SAMPLES, N_FEATURES) float32: two blobs at a random separation each."""
    rng = np.random.default_rng(seed)
    separation = rng.uniform(2.0, 5.0, size=(N_PROBLEMS, 1, 1))
    labels = rng.integers(2, size=(N_PROBLEMS, N_SAMPLES, 1))
    return (rng.normal(size=(N_PROBLEMS, N_SAMPLES, N_FEATURES)) + labels * separation).astype(np.float32)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds of both libraries")
    parser.add_argument("--repeats", type=int, default=21, help="batches timed for the lockstep comparison")
    parser.add_argument("--sklearn-problems", type=int, default=N_PROBLEMS, help="problems timed in the sklearn loop")
    parser.add_argument("--out", default="benchmarks/results/batch.json")
    args = parser.parse_args()

    data = problems()
    model = jaxem.GaussianMixture(N_COMPONENTS, covariance_type="full")
    batched_fit = jax.jit(
        jax.vmap(lambda X, key: jaxem.fit(model, X, key=key, max_iter=MAX_ITER, tol=TOL).log_likelihood)
    )
    X = jnp.asarray(data)
    keys = jax.random.split(jax.random.key(0), N_PROBLEMS)
    compile_s = timed(lambda: batched_fit.lower(X, keys).compile())
    log_likelihoods = np.asarray(batched_fit(X, keys))
    # The same batch in lockstep (every problem iterates until the slowest stops), and the
    # iteration counts, to show what retiring finished problems saves.
    lockstep_fit = jax.jit(
        jax.vmap(
            lambda X, key: jaxem.fit(model, X, key=key, max_iter=MAX_ITER, tol=TOL, vmap_slots=None).log_likelihood
        )
    )
    lockstep_fit(X, keys).block_until_ready()
    lockstep_s = float(np.median([timed(lambda: lockstep_fit(X, keys).block_until_ready()) for _ in range(args.repeats)]))
    n_iter = np.asarray(jax.jit(jax.vmap(lambda X, key: jaxem.fit(model, X, key=key, max_iter=MAX_ITER, tol=TOL).n_iter))(X, keys))

    n_sk = args.sklearn_problems

    def sklearn_loop():
        with threadpool_limits(limits=1):
            return [
                SkGaussianMixture(N_COMPONENTS, max_iter=MAX_ITER, tol=TOL, init_params="k-means++", random_state=i).fit(
                    data[i].astype(np.float64)
                )
                for i in range(n_sk)
            ]

    # Rounds alternate the two libraries, so that the machine's drift over the run (it is
    # shared) hits both alike; each round's ratio uses the median of JAXEM_PER_ROUND batches.
    jaxem_rounds, sklearn_rounds = [], []
    for _ in range(args.rounds):
        jaxem_rounds.append(
            float(np.median([timed(lambda: batched_fit(X, keys).block_until_ready()) for _ in range(JAXEM_PER_ROUND)]))
        )
        sklearn_rounds.append(timed(sklearn_loop))
    ratios = (np.array(sklearn_rounds) / n_sk) / (np.array(jaxem_rounds) / N_PROBLEMS)
    jaxem_s, sklearn_s = float(np.median(jaxem_rounds)), float(np.median(sklearn_rounds))
    sk_models = sklearn_loop()
    sk_scores = np.array([m.score(data[i]) for i, m in enumerate(sk_models)])
    sk_n_iter = np.array([m.n_iter_ for m in sk_models])

    per_problem_jaxem = jaxem_s / N_PROBLEMS
    per_problem_sklearn = sklearn_s / n_sk
    result = dict(
        benchmark="200 small Gaussian-mixture fits: jit(vmap(jaxem.fit)) vs a scikit-learn loop",
        problem=dict(
            n_problems=N_PROBLEMS, n_samples=N_SAMPLES, n_features=N_FEATURES, n_components=N_COMPONENTS,
            covariance_type="full", max_iter=MAX_ITER, tol=TOL, jaxem_dtype="float32",
        ),
        device=str(jax.devices()[0]),
        platform=platform.platform(),
        jax_version=jax.__version__,
        compile_s=compile_s,
        jaxem_batch_s=jaxem_s,
        jaxem_per_problem_ms=1e3 * per_problem_jaxem,
        sklearn_per_problem_ms=1e3 * per_problem_sklearn,
        speedup_per_problem=float(np.median(ratios)),
        speedup_per_round=dict(min=float(ratios.min()), max=float(ratios.max()), rounds=args.rounds),
        jaxem_lockstep_batch_s=lockstep_s,
        n_iter=dict(
            jaxem_mean=float(n_iter.mean()), jaxem_max=int(n_iter.max()),
            sklearn_mean=float(sk_n_iter.mean()), sklearn_max=int(sk_n_iter.max()),
        ),
        mean_log_likelihood_first_sklearn_problems=dict(
            jaxem=float(log_likelihoods[:n_sk].mean()), sklearn=float(sk_scores.mean())
        ),
    )
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
