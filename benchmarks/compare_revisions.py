"""The same jaxem workloads at two git revisions, in alternating processes.

For a change that should not move performance (a refactor), this times the workloads of
bench_gmm (one 4-restart fit), bench_batch (200 vmapped fits), bench_implicit (a fit's
value and gradient) and counts bench_accel's E-step evaluations at a base revision and at
the working tree, alternating fresh processes round by round so that drift of a shared
machine hits both alike. Reported: the median per-round ratio new/old with its range.

Run: python benchmarks/compare_revisions.py --base 6d8c214 [--rounds 5]
     [--out benchmarks/results/compare_revisions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the tree under test (PYTHONPATH points at it); prints one JSON line.
WORKLOAD = r"""
import json, time
import jax, jax.numpy as jnp, numpy as np
import jaxem
from jaxem.accel import run_squarem
from jaxem.core import run_em

def median_ms(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); jax.block_until_ready(fn(*args)); times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))

rng = np.random.default_rng(0)
centres = rng.normal(scale=3.0, size=(16, 16))
X = jnp.asarray(centres[rng.integers(16, size=100_000)] + rng.normal(size=(100_000, 16)), jnp.float32)
gmm = jax.jit(lambda X: jaxem.fit(jaxem.GaussianMixture(16), X, key=jax.random.key(0), n_restarts=4,
                                   max_iter=30, tol=0.0, init="random_from_data").log_likelihood)
out = {"gmm_fit_ms": median_ms(gmm, X, repeats=3)}

separation = rng.uniform(2.0, 5.0, size=(200, 1, 1))
batch = (rng.normal(size=(200, 400, 2)) + rng.integers(2, size=(200, 400, 1)) * separation).astype(np.float32)
keys = jax.random.split(jax.random.key(0), 200)
fit_batch = jax.jit(jax.vmap(lambda X, k: jaxem.fit(jaxem.GaussianMixture(2), X, key=k, max_iter=100, tol=1e-3).log_likelihood))
out["batch_200_ms"] = median_ms(fit_batch, jnp.asarray(batch), keys, repeats=9)

centres = rng.normal(scale=2.5, size=(3, 2))
Xi = jnp.asarray(centres[rng.integers(3, size=5000)] + rng.normal(size=(5000, 2)), jnp.float32)
def loss(X):
    res = jaxem.fit(jaxem.GaussianMixture(3), X, key=jax.random.key(0), max_iter=500, tol=1e-6)
    return jnp.sum(res.params.means ** 2) + res.log_likelihood
out["implicit_value_and_grad_ms"] = median_ms(jax.jit(jax.value_and_grad(loss)), Xi, repeats=5)
print(json.dumps(out))
"""

# E-step evaluations to convergence (float64; deterministic, so equal unless behaviour moved).
COUNTS = r"""
import json
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np
import jaxem
from jaxem.accel import run_quasi_newton, run_squarem
from jaxem.core import run_em
X = np.random.default_rng(1).normal(size=(1000, 2)); X[:500] += 1.0
X = jnp.asarray(X); w = jnp.ones(1000)
model = jaxem.GaussianMixture(2, reg_covar=0.0)
start = model.init_params(jax.random.key(3), X, w, "random_from_data")
out = {name: int(run(model, start, X, w, max_iter=5000, tol=1e-10).n_evals)
       for name, run in [("em_evals", run_em), ("squarem_evals", run_squarem), ("quasi_newton_evals", run_quasi_newton)]}
print(json.dumps(out))
"""


def run_script(tree: Path, script: str) -> dict:
    """Run `script` in a fresh process importing jaxem from `tree`; its last line's JSON."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-c", script], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"workload failed in {tree}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_workload(tree: Path) -> dict:
    return {**run_script(tree, WORKLOAD), **run_script(tree, COUNTS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare the working tree against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/compare_revisions.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True, capture_output=True)
        try:
            rounds = []
            for r in range(args.rounds):
                order = [("old", base_tree), ("new", ROOT)] if r % 2 == 0 else [("new", ROOT), ("old", base_tree)]
                rounds.append({name: run_workload(tree) for name, tree in order})
                print(f"round {r + 1}: {rounds[-1]}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=True)
    summary = {}
    for metric in rounds[0]["old"]:
        old = [r["old"][metric] for r in rounds]
        new = [r["new"][metric] for r in rounds]
        ratios = [n / o for n, o in zip(new, old)]
        summary[metric] = dict(old_median=float(np.median(old)), new_median=float(np.median(new)),
                               ratio_median=float(np.median(ratios)), ratio_min=min(ratios), ratio_max=max(ratios))
        print(f"{metric:28s} old {np.median(old):10.2f}  new {np.median(new):10.2f}  new/old {np.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})")
    Path(args.out).write_text(json.dumps(dict(base=args.base, rounds=rounds, summary=summary), indent=2) + "\n")


if __name__ == "__main__":
    main()
