"""Gaussian-mixture EM speed: jaxem against its peers and a GEMM, side by side in one run.

Every fit runs a fixed number of iterations (tol=0) from a cheap random start, so all
libraries do the same work. Reported per configuration: compile time (first call minus
steady state), the median steady-state time of repeats, ms per restart-iteration, GFLOP/s
counting 4 N K D^2 flops per full-covariance restart-iteration (the E-step quadratic forms
plus the M-step second moments), ratios against each peer, the rate of a float32 GEMM
measured in the same run, peak RSS per restart, and a scaling table.

Usage (from the repository root):
  python benchmarks/bench_gmm.py            # full sizes, writes benchmarks/results/gmm_cpu.json
  python benchmarks/bench_gmm.py --quick    # small sizes, seconds; a smoke test
gmmx and pomegranate are measured when importable (see benchmarks/README in the report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jaxem  # noqa: E402

FULL = dict(n=100_000, d=16, k=16, restarts=4, iters=30, diag_d=32, repeats=5, sk_restarts=1,
            scaling=dict(n=50_000, d=16, k=16, restarts=4, iters=10), gemm=2048, chunk="auto")
QUICK = dict(n=2_000, d=4, k=3, restarts=2, iters=5, diag_d=6, repeats=1, sk_restarts=1,
             scaling=dict(n=1_000, d=3, k=2, restarts=2, iters=3), gemm=256, chunk=512)


def blobs(n: int, d: int, k: int, dtype: str, seed: int = 0) -> np.ndarray:
    """(n, d) points around k centres spread 3 apart, unit noise; well conditioned."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(k, d))
    return (centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))).astype(dtype)


def timed(run, repeats: int) -> dict:
    """First-call seconds (compile + run), median steady seconds over repeats, all samples."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    steady = float(np.median(samples))
    return dict(first_s=first, steady_s=steady, compile_s=max(first - steady, 0.0), samples_s=samples)


def per_restart_iteration(result: dict, restarts: int, iters: int, n: int, d: int, k: int, full: bool) -> dict:
    ms = 1e3 * result["steady_s"] / (restarts * iters)
    result.update(restarts=restarts, iters=iters, ms_per_restart_iter=ms)
    if full:
        result["gflops"] = 4 * n * k * d * d / (ms * 1e-3) / 1e9
    return result


def jaxem_fit(X: np.ndarray, k: int, covariance_type: str, restarts: int, iters: int, chunk: int | str):
    model = jaxem.GaussianMixture(k, covariance_type=covariance_type)
    key = jax.random.key(0)

    def run():
        result = jaxem.fit(model, X, key=key, n_restarts=restarts, max_iter=iters, tol=0.0,
                           init="random_from_data", chunk_size=chunk)
        return jax.block_until_ready(result)

    return run


def sklearn_fit(X: np.ndarray, k: int, covariance_type: str, restarts: int, iters: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    def run():
        model = GaussianMixture(k, covariance_type=covariance_type, max_iter=iters, tol=0.0,
                                n_init=restarts, init_params="random_from_data", random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X)

    return run


def gmmx_fit(X: np.ndarray, k: int, iters: int):
    from gmmx import EMFitter, GaussianMixtureModelJax

    rng = np.random.default_rng(0)
    d = X.shape[1]
    means = X[rng.choice(X.shape[0], k, replace=False)]
    covariances = np.broadcast_to(np.cov(X.T).astype(X.dtype), (k, d, d)).copy()
    gmm = GaussianMixtureModelJax.from_squeezed(means, covariances, np.full(k, 1.0 / k, X.dtype))
    fitter = EMFitter(tol=0.0, max_iter=iters, reg_covar=1e-6)
    x = jax.numpy.asarray(X)
    return lambda: jax.block_until_ready(fitter.fit(x, gmm))


def gmmx_in_subprocess(n: int, d: int, k: int, iters: int, repeats: int) -> dict:
    """gmmx's fit timed in a fresh process: gmmx requires jax_enable_x64 off (float32 only)."""
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import benchmarks.bench_gmm as b;"
        "n, d, k, it, rep = map(int, sys.argv[2:]);"
        "print(json.dumps(b.timed(b.gmmx_fit(b.blobs(n, d, k, 'float32'), k, it), rep)))"
    )
    args = [sys.executable, "-c", code, str(ROOT)] + [str(v) for v in (n, d, k, iters, repeats)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise ImportError(done.stderr.strip().splitlines()[-1])
    return json.loads(done.stdout.split("\n")[-2])


def pomegranate_fit(X: np.ndarray, k: int, iters: int):
    import torch
    from pomegranate.distributions import Normal
    from pomegranate.gmm import GeneralMixtureModel

    x = torch.from_numpy(X)

    def run():
        model = GeneralMixtureModel([Normal(covariance_type="full") for _ in range(k)],
                                    max_iter=iters, tol=0.0, init="random", random_state=0)
        model.fit(x)

    return run


def gemm_rate(size: int, repeats: int) -> dict:
    """float32 GFLOP/s of a (size x size) @ (size x size) matmul with XLA and with numpy."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(size, size)).astype(np.float32)
    b = rng.normal(size=(size, size)).astype(np.float32)
    flops = 2 * size**3
    xla_matmul = jax.jit(lambda p, q: p @ q)
    ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
    xla = timed(lambda: xla_matmul(ja, jb).block_until_ready(), repeats + 2)
    numpy = timed(lambda: a @ b, repeats + 2)
    rates = dict(xla=flops / xla["steady_s"] / 1e9, numpy=flops / numpy["steady_s"] / 1e9)
    return dict(size=size, gflops=rates, reference_gflops=max(rates.values()))


def optional_peer(name: str, measure, shape: dict) -> dict | None:
    """A peer's timings when its package imports; None (and a note on stderr) otherwise."""
    try:
        return per_restart_iteration(measure(), **shape)
    except ImportError as error:
        print(f"skipping {name}: {error}", file=sys.stderr)
        return None


def measure_full(cfg: dict) -> dict:
    n, d, k, restarts, iters = cfg["n"], cfg["d"], cfg["k"], cfg["restarts"], cfg["iters"]
    shape = dict(n=n, d=d, k=k, full=True, iters=iters)
    X64, X32 = blobs(n, d, k, "float64"), blobs(n, d, k, "float32")
    rows = {}
    for label, X in (("jaxem float32", X32), ("jaxem float64", X64)):
        run = jaxem_fit(X, k, "full", restarts, iters, cfg["chunk"])
        rows[label] = per_restart_iteration(timed(run, cfg["repeats"]), restarts=restarts, **shape)
    sk = timed(sklearn_fit(X64, k, "full", cfg["sk_restarts"], iters), max(cfg["repeats"] - 2, 0) or 1)
    rows["scikit-learn float64"] = per_restart_iteration(sk, restarts=cfg["sk_restarts"], **shape)
    peers = {
        "gmmx float32": lambda: gmmx_in_subprocess(n, d, k, iters, cfg["repeats"]),
        "pomegranate float64": lambda: timed(pomegranate_fit(X64, k, iters), cfg["repeats"]),
    }
    for label, measure in peers.items():
        measured = optional_peer(label, measure, dict(restarts=1, **shape))
        if measured is not None:
            rows[label] = measured
    return rows


def measure_diag(cfg: dict) -> dict:
    n, d, k, restarts, iters = cfg["n"], cfg["diag_d"], cfg["k"], cfg["restarts"], cfg["iters"]
    shape = dict(n=n, d=d, k=k, full=False, iters=iters)
    rows = {}
    for label, dtype in (("jaxem float32", "float32"), ("jaxem float64", "float64")):
        run = jaxem_fit(blobs(n, d, k, dtype), k, "diag", restarts, iters, cfg["chunk"])
        rows[label] = per_restart_iteration(timed(run, cfg["repeats"]), restarts=restarts, **shape)
    run = sklearn_fit(blobs(n, d, k, "float64"), k, "diag", cfg["sk_restarts"], iters)
    rows["scikit-learn float64"] = per_restart_iteration(timed(run, cfg["repeats"]), restarts=cfg["sk_restarts"], **shape)
    return rows


def measure_scaling(cfg: dict, chunk: int | str, repeats: int) -> list[dict]:
    """ms per iteration (all restarts) as N, D, K and restarts double from a base case."""
    base = cfg["scaling"]
    cases = [("base", dict(base))] + [
        (f"2x {name}", dict(base, **{name: 2 * base[name]})) for name in ("n", "d", "k", "restarts")
    ]
    rows = []
    for label, case in cases:
        X = blobs(case["n"], case["d"], case["k"], "float32")
        run = jaxem_fit(X, case["k"], "full", case["restarts"], case["iters"], chunk)
        steady = timed(run, repeats)["steady_s"]
        rows.append(dict(case=label, **case, ms_per_iter=1e3 * steady / case["iters"]))
    return rows


def peak_rss_probe(n: int, d: int, k: int, restarts: int, iters: int, chunk: int | str) -> int:
    """Peak RSS in bytes of a fresh process that only builds the data and runs one fit."""
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[1]);"
        "import benchmarks.bench_gmm as b;"
        "n, d, k, r, it = map(int, sys.argv[2:7]); c = sys.argv[7]; c = int(c) if c.isdigit() else c;"
        "b.jaxem_fit(b.blobs(n, d, k, 'float32'), k, 'full', r, it, c)();"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    args = [sys.executable, "-c", code, str(ROOT)] + [str(v) for v in (n, d, k, restarts, iters, chunk)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def measure_memory(cfg: dict) -> dict:
    """Peak RSS at 1 and 2x restarts: the slope is the memory one restart adds."""
    n, d, k, restarts = cfg["n"], cfg["d"], cfg["k"], cfg["restarts"]
    counts = (1, 2 * restarts)
    peaks = {r: peak_rss_probe(n, d, k, r, 2, cfg["chunk"]) for r in counts}
    per_restart = (peaks[counts[1]] - peaks[counts[0]]) / (counts[1] - counts[0])
    return dict(
        n=n, d=d, k=k, chunk_size=cfg["chunk"], peak_rss_bytes={str(r): v for r, v in peaks.items()},
        data_bytes=n * d * 4, per_restart_bytes=per_restart,
        n_k_bytes=n * k * 4, n_k_d_bytes=n * k * d * 4,
    )


def ratios(rows: dict, subject: str) -> dict:
    """How many times faster `subject` is than each other row, per restart-iteration."""
    mine = rows[subject]["ms_per_restart_iter"]
    return {label: row["ms_per_restart_iter"] / mine for label, row in rows.items() if label != subject}


def chunk_label(chunk: int | str, n: int) -> str:
    """chunk_size as passed, with the rows "auto" resolves to for n samples."""
    if chunk != "auto":
        return str(chunk)
    return f"auto = {jaxem.api.auto_chunk_size(jaxem.GaussianMixture(1), n)}"


def markdown(report: dict) -> str:
    cfg = report["config"]
    gemm = report["gemm"]["reference_gflops"]
    lines = [
        f"Full covariance, N={cfg['n']}, D={cfg['d']}, K={cfg['k']}, {cfg['iters']} iterations "
        f"(jaxem: {cfg['restarts']} vmapped restarts, chunk_size={chunk_label(cfg['chunk'], cfg['n'])}); "
        f"float32 GEMM in the same run: {gemm:.0f} GFLOP/s.",
        "",
        "| library | ms / restart-iteration | compile s | GFLOP/s | % of GEMM | jaxem float32 is x faster |",
        "|---|---|---|---|---|---|",
    ]
    speedups = report["ratios"]["full_float32"]
    for label, row in report["full"].items():
        vs = "" if label == "jaxem float32" else f"{speedups[label]:.1f}"
        lines.append(
            f"| {label} | {row['ms_per_restart_iter']:.2f} | {row['compile_s']:.1f} | "
            f"{row['gflops']:.1f} | {100 * row['gflops'] / gemm:.0f}% | {vs} |"
        )
    lines += ["", f"Diagonal covariance, N={cfg['n']}, D={cfg['diag_d']}, K={cfg['k']}:", "",
              "| library | ms / restart-iteration | jaxem is x faster than scikit-learn |", "|---|---|---|"]
    sk = report["diag"]["scikit-learn float64"]["ms_per_restart_iter"]
    for label, row in report["diag"].items():
        lines.append(f"| {label} | {row['ms_per_restart_iter']:.2f} | {sk / row['ms_per_restart_iter']:.1f} |")
    lines += ["", "Scaling (jaxem float32, full covariance, all restarts together):", "",
              "| case | N | D | K | restarts | ms / iteration |", "|---|---|---|---|---|---|"]
    for row in report["scaling"]:
        lines.append(f"| {row['case']} | {row['n']} | {row['d']} | {row['k']} | {row['restarts']} | {row['ms_per_iter']:.1f} |")
    memory = report.get("memory")
    if memory:
        mib = 2.0**20
        lines += ["", f"Peak RSS (float32, N={memory['n']}, D={memory['d']}, K={memory['k']}): "
                  + ", ".join(f"{r} restarts {v / mib:.0f} MiB" for r, v in memory["peak_rss_bytes"].items())
                  + f"; each restart adds {memory['per_restart_bytes'] / mib:.1f} MiB "
                  f"(N*K floats = {memory['n_k_bytes'] / mib:.1f} MiB, N*K*D floats = {memory['n_k_d_bytes'] / mib:.1f} MiB)."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/gmm_cpu[_quick].json)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # float32 inputs stay float32
    cfg = QUICK if args.quick else FULL
    out = args.out or ROOT / "benchmarks" / "results" / ("gmm_cpu_quick.json" if args.quick else "gmm_cpu.json")
    report = dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                     jax=jax.__version__, backend=jax.default_backend(), xla_flags=os.environ.get("XLA_FLAGS", "")),
        config={k: v for k, v in cfg.items() if k != "scaling"},
        gemm=gemm_rate(cfg["gemm"], cfg["repeats"]),
    )
    report["full"] = measure_full(cfg)
    report["diag"] = measure_diag(cfg)
    report["ratios"] = dict(
        full_float32=ratios(report["full"], "jaxem float32"),
        full_float64=ratios(report["full"], "jaxem float64"),
        diag_float32=ratios(report["diag"], "jaxem float32"),
    )
    report["fraction_of_gemm"] = report["full"]["jaxem float32"]["gflops"] / report["gemm"]["reference_gflops"]
    report["scaling"] = measure_scaling(cfg, cfg["chunk"], cfg["repeats"])
    if not args.no_memory:
        report["memory"] = measure_memory(cfg)
    report["peak_rss_bytes_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
