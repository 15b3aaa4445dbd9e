"""Gaussian-HMM Baum-Welch speed: jaxem (float32, float64) against hmmlearn in one run.

Configuration (the issue's): full covariances, K=8 states, D=4 features, 50 sequences of
length 1000, a fixed number of EM iterations (tol=0) from one fixed start, so every library
does the same work. Reported:
  * per-iteration time of each library, the same way for all: fits of n and 2n
    iterations (n = 50 for jaxem, 10 for the slower others), median wall time of each
    over alternating rounds (jaxem float32, jaxem float64, hmmlearn, ...), per iteration
    = (median(2n) - median(n)) / n, so a library's fixed cost per call (validation, data
    transfer, dynamax's recompilation on every fit_em call) is reported apart
    ("fixed ms") rather than spread over the iterations. hmmlearn runs its default
    log-space forward-backward (the reference of the ratios) and, as a second row, its
    implementation="scaling" (probabilities rescaled per step: no exp/log per entry).
    Compile time is reported separately.
  * 16 restarts (kmeans++ starts) as one vmapped jaxem program against 1 restart: the
    per-iteration ratio (same differencing) and the ratio of whole fits.
  * the E-step (forward-backward on every sequence plus the statistics) as the sequence
    length T doubles from 250 to 4000, with method="auto" (on CPU the scaled scan:
    probability space, forward and backward in one lax.scan), method="sequential"
    (log-space lax.scan) and method="parallel" (log-space associative scan, O(T K^3)
    work), float32, the three alternating per repeat.
  * dynamax (optional, not a jaxem dependency): GaussianHMM.fit_em from the same start,
    float32, in a separate process of another Python environment that has dynamax and
    jaxem's dependencies (--dynamax-python), measured after the others. Its default
    priors make its M-step a MAP estimate; the work per iteration is the same.

Usage (from the repository root):
  python benchmarks/bench_hmm.py           # full sizes, writes benchmarks/results/hmm_cpu.json
  python benchmarks/bench_hmm.py --quick   # small sizes, seconds; a smoke test
  python benchmarks/bench_hmm.py --dynamax-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxem  # noqa: E402

FULL = dict(k=8, d=4, n_sequences=50, length=1000, iters=10, jaxem_iters=50, rounds=5, restarts=16,
            lengths=[250, 500, 1000, 2000, 4000], estep_repeats=5)
QUICK = dict(k=3, d=2, n_sequences=4, length=100, iters=3, jaxem_iters=3, rounds=1, restarts=4,
             lengths=[50, 100], estep_repeats=1)


def problem(k: int, d: int, n_sequences: int, length: int, seed: int = 0):
    """Sequences from a sticky K-state Gaussian HMM (numpy), and a fixed perturbed start."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    transition = 0.9 * np.eye(k) + 0.1 / k
    states = np.zeros((n_sequences, length), int)
    states[:, 0] = rng.integers(k, size=n_sequences)
    cumulative = np.cumsum(transition, axis=1)
    for t in range(1, length):
        u = rng.uniform(size=n_sequences)
        states[:, t] = np.minimum((u[:, None] > cumulative[states[:, t - 1]]).sum(axis=1), k - 1)
    X = means[states] + rng.normal(size=(n_sequences, length, d))
    start = dict(
        initial=np.full(k, 1.0 / k),
        transition=0.5 * np.eye(k) + 0.5 / k,
        means=means + rng.normal(scale=0.5, size=(k, d)),
        covariances=np.broadcast_to(2.0 * np.eye(d), (k, d, d)).copy(),
    )
    return X, start


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def jaxem_runner(X: np.ndarray, start: dict, k: int, iters: int, dtype: str):
    model = jaxem.GaussianHMM(k, covariance_type="full")
    data = (X.astype(dtype), None)
    init = {name: value.astype(dtype) for name, value in start.items()}
    return lambda: jax.block_until_ready(
        jaxem.fit(model, data, key=jax.random.key(0), init=init, max_iter=iters, tol=0.0, diff=None)
    )


def hmmlearn_runner(X: np.ndarray, start: dict, k: int, iters: int, implementation: str = "log"):
    import logging

    from hmmlearn import hmm

    logging.getLogger("hmmlearn").setLevel(logging.ERROR)
    flat, lengths = X.reshape(-1, X.shape[-1]), np.full(X.shape[0], X.shape[1])

    def run():
        ref = hmm.GaussianHMM(
            k, covariance_type="full", init_params="", n_iter=iters, tol=-np.inf, implementation=implementation
        )
        ref.startprob_, ref.transmat_ = start["initial"], start["transition"]
        ref.means_, ref.covars_ = start["means"], start["covariances"]
        return ref.fit(flat, lengths)

    return run


def dynamax_runner(X: np.ndarray, start: dict, k: int, iters: int):
    """dynamax's GaussianHMM.fit_em from the same start, float32 (run with x64 disabled)."""
    from dynamax.hidden_markov_model import GaussianHMM

    model = GaussianHMM(k, X.shape[-1])
    params, props = model.initialize(
        jax.random.key(0), method="prior",
        initial_probs=jnp.asarray(start["initial"], jnp.float32),
        transition_matrix=jnp.asarray(start["transition"], jnp.float32),
        emission_means=jnp.asarray(start["means"], jnp.float32),
        emission_covariances=jnp.asarray(start["covariances"], jnp.float32),
    )
    emissions = jnp.asarray(X, jnp.float32)
    return lambda: jax.block_until_ready(model.fit_em(params, props, emissions, num_iters=iters, verbose=False))


def differenced(runs: dict, rounds: int) -> dict:
    """Time fits of n and 2n iterations, runs = {n: run, 2n: run} (already compiled),
    alternating over `rounds`; per iteration = difference of the medians / n."""
    samples = {n: [] for n in runs}
    for _ in range(rounds):
        for n, run in runs.items():
            samples[n].append(seconds(run))
    (iters, one), (_, two) = sorted((n, float(np.median(samples[n]))) for n in runs)
    per_iter = max(two - one, 1e-9) / iters
    return dict(per_iter_s=per_iter, fixed_s=one - iters * per_iter, samples=samples)


def timing_row(first: float, measured: dict, iters: int) -> dict:
    samples = measured["samples"]
    return dict(
        first_s=first, compile_s=max(first - float(np.median(samples[iters])), 0.0),
        samples_s=samples[iters], samples_2x_s=samples[2 * iters], iters=iters,
        ms_per_iter=1e3 * measured["per_iter_s"], fixed_ms=1e3 * measured["fixed_s"],
    )


def measure_libraries(cfg: dict) -> dict:
    """Each library's fits of n and 2n iterations (n = cfg["jaxem_iters"] for jaxem, whose
    iterations are short enough that 10 more would drown in the noise of a fit's fixed
    cost, cfg["iters"] for the others), alternating round by round."""
    X, start = problem(cfg["k"], cfg["d"], cfg["n_sequences"], cfg["length"])
    makers = {
        "jaxem float32": (cfg["jaxem_iters"], lambda n: jaxem_runner(X, start, cfg["k"], n, "float32")),
        "jaxem float64": (cfg["jaxem_iters"], lambda n: jaxem_runner(X, start, cfg["k"], n, "float64")),
        "hmmlearn float64": (cfg["iters"], lambda n: hmmlearn_runner(X, start, cfg["k"], n)),
        "hmmlearn float64 scaling": (cfg["iters"], lambda n: hmmlearn_runner(X, start, cfg["k"], n, "scaling")),
    }
    runs = {(name, n): make(n) for name, (iters, make) in makers.items() for n in (iters, 2 * iters)}
    first = {key: seconds(run) for key, run in runs.items()}
    samples = {key: [] for key in runs}
    for _ in range(cfg["rounds"]):  # alternate libraries round by round
        for key, run in runs.items():
            samples[key].append(seconds(run))
    rows = {}
    for name, (iters, _) in makers.items():
        medians = {n: float(np.median(samples[(name, n)])) for n in (iters, 2 * iters)}
        per_iter = max(medians[2 * iters] - medians[iters], 1e-9) / iters
        measured = dict(per_iter_s=per_iter, fixed_s=medians[iters] - iters * per_iter,
                        samples={n: samples[(name, n)] for n in (iters, 2 * iters)})
        rows[name] = timing_row(first[(name, iters)], measured, iters)
    return rows


def measure_dynamax_here(cfg: dict) -> dict:
    """The --dynamax-only mode: dynamax timings in this process (x64 off), differenced as
    the others (fit_em jit-compiles its EM scan on every call: that lands in fixed_ms)."""
    X, start = problem(cfg["k"], cfg["d"], cfg["n_sequences"], cfg["length"])
    iters = cfg["iters"]
    runs = {n: dynamax_runner(X, start, cfg["k"], n) for n in (iters, 2 * iters)}
    first = seconds(runs[iters])
    runs[2 * iters]()
    return timing_row(first, differenced(runs, cfg["rounds"]), iters)


def measure_dynamax(python: str, quick: bool) -> dict | None:
    """dynamax timings from `python` (another environment), or None if that fails."""
    command = [python, str(Path(__file__).resolve()), "--dynamax-only"] + (["--quick"] if quick else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"dynamax run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_restarts(cfg: dict) -> dict:
    X, _ = problem(cfg["k"], cfg["d"], cfg["n_sequences"], cfg["length"])
    data = (X.astype("float32"), None)
    model = jaxem.GaussianHMM(cfg["k"], covariance_type="full")
    iters = cfg["jaxem_iters"]

    def runner(n_restarts, n_iters):
        return lambda: jax.block_until_ready(
            jaxem.fit(model, data, key=jax.random.key(0), n_restarts=n_restarts, max_iter=n_iters, tol=0.0, diff=None)
        )

    rows = {}
    for r in (1, cfg["restarts"]):
        runs = {n: runner(r, n) for n in (iters, 2 * iters)}
        first = seconds(runs[iters])
        runs[2 * iters]()
        measured = differenced(runs, cfg["rounds"])
        rows[f"{r} restarts"] = dict(
            first_s=first, fit_s=float(np.median(measured["samples"][iters])),
            ms_per_iter=1e3 * measured["per_iter_s"], fixed_ms=1e3 * measured["fixed_s"],
            samples_s=measured["samples"][iters], samples_2x_s=measured["samples"][2 * iters],
        )
    one, many = rows["1 restarts"], rows[f"{cfg['restarts']} restarts"]
    return dict(
        dtype="float32", iters=iters, rows=rows, time_ratio=many["ms_per_iter"] / one["ms_per_iter"],
        fit_time_ratio=many["fit_s"] / one["fit_s"],
        per_restart_speedup=cfg["restarts"] * one["ms_per_iter"] / many["ms_per_iter"],
    )


def measure_lengths(cfg: dict) -> list[dict]:
    """E-step time (jit of model.e_step) against T, scaled (auto) vs log-space sequential vs
    parallel, float32, the methods alternating within each repeat."""
    table = []
    methods = {"scaled": "auto", "sequential": "sequential", "parallel": "parallel"}
    for length in cfg["lengths"]:
        X, start = problem(cfg["k"], cfg["d"], cfg["n_sequences"], length, seed=1)
        row = dict(length=length, n_sequences=cfg["n_sequences"])
        runs = {}
        for name, method in methods.items():
            model = jaxem.GaussianHMM(cfg["k"], covariance_type="full", method=method)
            data = model.as_data((X.astype("float32"), None))
            params = model.start_params({n: v.astype("float32") for n, v in start.items()}, data)
            w = jnp.ones(cfg["n_sequences"], jnp.float32)
            e_step = jax.jit(model.e_step)
            runs[name] = lambda e_step=e_step, params=params, data=data, w=w: jax.block_until_ready(e_step(params, data, w))
            runs[name]()
        times = {name: [] for name in runs}
        for _ in range(cfg["estep_repeats"]):
            for name, run in runs.items():
                times[name].append(seconds(run))
        for name in runs:
            row[f"{name}_ms"] = 1e3 * float(np.median(times[name]))
            row[f"{name}_range_ms"] = [1e3 * min(times[name]), 1e3 * max(times[name])]
        row["parallel_over_sequential"] = row["parallel_ms"] / row["sequential_ms"]
        row["sequential_over_scaled"] = row["sequential_ms"] / row["scaled_ms"]
        row["parallel_over_scaled"] = row["parallel_ms"] / row["scaled_ms"]
        table.append(row)
    return table


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"Gaussian HMM, full covariances, K={cfg['k']}, D={cfg['d']}, {cfg['n_sequences']} sequences "
        f"x {cfg['length']} steps, per iteration from fits of n and 2n iterations (tol=0; n = {cfg['jaxem_iters']} for jaxem, "
        f"{cfg['iters']} for the others), {report['machine']['cpu_count']} CPU cores",
        "",
        "| library | ms / iteration | fixed ms per fit | compile s | hmmlearn / this | this / jaxem float32 |",
        "|---|---|---|---|---|---|",
    ]
    jaxem32 = report["libraries"]["jaxem float32"]["ms_per_iter"]
    for name, row in report["libraries"].items():
        ratio = report["hmmlearn_over"].get(name)
        lines.append(
            f"| {name} | {row['ms_per_iter']:.1f} | {row['fixed_ms']:.0f} | {row['compile_s']:.2f} "
            f"| {'' if ratio is None else f'{ratio:.1f}x'} | {row['ms_per_iter'] / jaxem32:.2f}x |"
        )
    restarts = report["restarts"]
    lines += [
        "",
        f"{cfg['restarts']} restarts in one program: {restarts['time_ratio']:.1f}x the time per iteration of 1 restart "
        f"({restarts['fit_time_ratio']:.1f}x per fit of {restarts['iters']} iterations, k-means++ starts included; "
        f"throughput per restart {restarts['per_restart_speedup']:.2f}x that of separate runs), float32",
        "",
        "| T | scaled (auto) ms / E-step | log-space sequential ms | parallel ms | sequential / scaled | parallel / scaled |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["lengths"]:
        lines.append(
            f"| {row['length']} | {row['scaled_ms']:.1f} | {row['sequential_ms']:.1f} | {row['parallel_ms']:.1f} "
            f"| {row['sequential_over_scaled']:.1f}x | {row['parallel_over_scaled']:.1f}x |"
        )
    if "dynamax float32" not in report["libraries"]:
        lines += ["", "dynamax: not measured (pass --dynamax-python)."]
    else:
        lines += ["", "dynamax ran in its own process after the alternating rounds of the others."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/hmm_cpu[_quick].json)")
    parser.add_argument("--dynamax-python", default=None, help="a Python with dynamax and jaxem's dependencies")
    parser.add_argument("--dynamax-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.dynamax_only:
        print(json.dumps(measure_dynamax_here(cfg)))
        return {}
    jax.config.update("jax_enable_x64", True)  # the float64 runs; float32 data keeps float32
    out = args.out or ROOT / "benchmarks" / "results" / ("hmm_cpu_quick.json" if args.quick else "hmm_cpu.json")
    report = dict(
        machine=dict(
            platform=platform.platform(), cpu_count=os.cpu_count(), jax=jax.__version__,
            backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", ""),
        ),
        config=cfg,
    )
    libraries = measure_libraries(cfg)
    if args.dynamax_python:
        dynamax = measure_dynamax(args.dynamax_python, args.quick)
        if dynamax is not None:
            libraries["dynamax float32"] = dynamax
    hmmlearn = libraries["hmmlearn float64"]["ms_per_iter"]
    report["libraries"] = libraries
    report["hmmlearn_over"] = {name: hmmlearn / row["ms_per_iter"] for name, row in libraries.items() if name != "hmmlearn float64"}
    report["restarts"] = measure_restarts(cfg)
    report["lengths"] = measure_lengths(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
