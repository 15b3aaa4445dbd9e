"""Cost of progress= on a 30-iteration fit: N=100k, D=16, K=16 float32, 4 restarts.

The same fit with progress=None and with a callback that counts calls (what progress=True
does before its host-side throttle), alternating in rounds; reports the median per-round
ratio. Run: python benchmarks/bench_progress.py [--rounds 7]
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(16, 16))
    X = jnp.asarray(centres[rng.integers(16, size=100_000)] + rng.normal(size=(100_000, 16)), jnp.float32)
    calls = []
    count = lambda n, value, change: calls.append(1)  # noqa: E731

    def fit(progress):
        return jax.jit(lambda X: jaxem.fit(jaxem.GaussianMixture(16), X, key=jax.random.key(0), n_restarts=4,
                                           max_iter=30, tol=0.0, init="random_from_data", progress=progress).log_likelihood)

    silent, reporting = fit(None), fit(count)
    jax.block_until_ready(silent(X)), jax.block_until_ready(reporting(X))
    ratios, times = [], {"silent": [], "progress": []}
    for _ in range(args.rounds):
        for name, f in (("silent", silent), ("progress", reporting)):
            start = time.perf_counter()
            jax.block_until_ready(f(X))
            times[name].append(time.perf_counter() - start)
        ratios.append(times["progress"][-1] / times["silent"][-1])
    result = dict(silent_ms=1e3 * float(np.median(times["silent"])), progress_ms=1e3 * float(np.median(times["progress"])),
                  ratio_median=float(np.median(ratios)), ratio_range=[min(ratios), max(ratios)],
                  callbacks_per_fit=len(calls) // (args.rounds + 1))
    print(json.dumps(result, indent=1))
    (Path(__file__).parent / "results" / "progress.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
