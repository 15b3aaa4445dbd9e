"""Acceleration on problems it was not tuned on: fresh random overlapping Gaussian mixtures.

Every (D, K, covariance type) with D = 1..5, K = 2..4, full and diagonal, SEEDS problems
each (60 in all): N = 1000 points from K components with Dirichlet(5) weights, means drawn
N(0, SPREAD^2 I) (so components overlap and plain EM is slow) and random covariances with
scales in [0.5, 1.5]. Every method starts from the same k-means++ start (the default of
`jaxem.fit`, key = the problem's seed) with the default reg_covar and runs to its own
stopping rule at tol = TOL (float64). Per problem: E-step evaluations, final mean
log-likelihood minus plain EM's, and the median wall time of REPEATS compiled runs.
Summary per method: median and quartiles of plain EM's evaluations over the method's, the
fraction of problems ending more than BELOW per sample under plain EM, and the median wall
time ratio. Writes benchmarks/results/accel_random.json.

Run: python benchmarks/bench_accel_random.py [--methods anderson,squarem] [--seeds 2]
"""

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxem  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.anderson_em import run_anderson  # noqa: E402
from jaxem.accel import RUNNERS  # noqa: E402
from jaxem.core import run_em  # noqa: E402

RUNNERS = {**RUNNERS, "anderson": run_anderson}  # the experiment in anderson_em.py

N = 1000
SPREAD = 1.0
TOL = 1e-12
BELOW = 1e-8
REPEATS = 3
MAX_ITER = {"em": 200_000}
ACCELERATED_MAX_ITER = 20_000


def random_mixture(d: int, k: int, seed: int) -> np.ndarray:
    """N points from a random overlapping K-component Gaussian mixture in d dimensions."""
    rng = np.random.default_rng([d, k, seed])
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(scale=SPREAD, size=(k, d))
    labels = rng.choice(k, size=N, p=weights)
    factors = []
    for _ in range(k):
        rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
        factors.append(rotation * rng.uniform(0.5, 1.5, size=d))
    return means[labels] + np.einsum("nij,nj->ni", np.stack(factors)[labels], rng.normal(size=(N, d)))


def problems(seeds: int):
    for d, k, covariance_type in itertools.product(range(1, 6), range(2, 5), ("full", "diag")):
        yield d, k, covariance_type, list(range(seeds))


def median_seconds(fn, *args) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(RUNNERS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "accel_random.json"))
    args = parser.parse_args()
    methods = {"em": run_em, **{m: RUNNERS[m] for m in args.methods.split(",")}}
    rows = []
    for d, k, covariance_type, seeds in problems(args.seeds):
        model = jaxem.GaussianMixture(k, covariance_type=covariance_type)
        compiled = {
            name: jax.jit(lambda p, X, runner=runner, name=name: runner(
                model, p, X, jnp.ones(N), max_iter=MAX_ITER.get(name, ACCELERATED_MAX_ITER), tol=TOL))
            for name, runner in methods.items()
        }
        for seed in seeds:
            X = jnp.asarray(random_mixture(d, k, seed))
            start = model.init_params(jax.random.key(seed), X, jnp.ones(N), "kmeans++")
            row = dict(d=d, k=k, covariance_type=covariance_type, seed=seed)
            for name, fn in compiled.items():
                result = fn(start, X)
                row[name] = dict(
                    n_evals=int(result.n_evals), loglik=float(result.log_likelihood),
                    status=jaxem.status_message(result.status), n_decreases=int(result.n_decreases),
                    wall_s=median_seconds(fn, start, X),
                )
            for name in methods:
                row[name]["below_em"] = row["em"]["loglik"] - row[name]["loglik"]
            rows.append(row)
            print(f"D={d} K={k} {covariance_type:4s} seed {seed}: " + "  ".join(
                f"{name} {row[name]['n_evals']:6d} ({row[name]['below_em']:+.1e})" for name in methods), flush=True)
    summary = {}
    for name in methods:
        ratios = [r["em"]["n_evals"] / r[name]["n_evals"] for r in rows]
        walls = [r["em"]["wall_s"] / r[name]["wall_s"] for r in rows]
        below = [r[name]["below_em"] for r in rows]
        summary[name] = dict(
            evals_ratio_median=statistics.median(ratios),
            evals_ratio_quartiles=[float(q) for q in np.percentile(ratios, [25, 75])],
            evals_ratio_min=min(ratios),
            n_below=sum(b > BELOW for b in below),
            below_worst=max(below),
            wall_ratio_median=statistics.median(walls),
            n_converged=sum(r[name]["status"].startswith("converged") for r in rows),
        )
        print(name, summary[name], flush=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(
        n=N, spread=SPREAD, tol=TOL, below=BELOW, repeats=REPEATS, device=str(jax.devices()[0]),
        summary=summary, rows=rows), indent=1))


if __name__ == "__main__":
    main()
