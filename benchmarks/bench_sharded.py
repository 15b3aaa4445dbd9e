"""Data-parallel EM (jaxem.distributed): correctness over 8 CPU devices, the per-iteration
all-reduce, and a weak-scaling estimate on paper.

1. Correctness: in a subprocess with 8 forced host CPU devices
   (XLA_FLAGS=--xla_force_host_platform_device_count=8), a row-sharded fit
   (distributed.shard_rows + fit_sharded) of a full-covariance GaussianMixture(K=32) on
   D=8 features against the same fit on one device, float64; and the collectives of the
   compiled EM loop (distributed.loop_collectives): what the while loop's body all-reduces
   per iteration, and that it gathers nothing.
2. Per-device throughput: one device of this CPU (all its cores), float32, N rows per
   device: steady-state seconds per EM iteration (two compiled fits of different
   max_iter, the difference over the extra iterations).
3. Weak scaling, on paper: N rows per device on P = 1, 8, 64 devices; an iteration costs the
   per-device E+M step plus one all-reduce of the statistics. The all-reduce is modelled as
   a ring: 2 (P - 1) steps, each moving bytes / P at the link bandwidth plus a per-step
   latency. Assumed interconnects (stated in the JSON): 100 Gb/s Ethernet (12.5 GB/s, 10
   us per step) and a TPU-class ICI link (100 GB/s, 2 us per step).

The 8 forced devices share this machine's cores, so their wall time says nothing about
scaling; only their results and the compiled program's communication are used.

Run: python benchmarks/bench_sharded.py [--rows-per-device 1000000] [--out benchmarks/results/sharded.json]
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
D, K = 8, 32
INTERCONNECTS = {
    "ethernet_100Gb": {"bandwidth_bytes_per_s": 12.5e9, "latency_s_per_step": 10e-6},
    "tpu_ici_link": {"bandwidth_bytes_per_s": 100e9, "latency_s_per_step": 2e-6},
}


def mixture_data(n: int, dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, D)) * 3.0
    return (means[rng.integers(0, K, n)] + rng.normal(size=(n, D))).astype(dtype)


# --- 1. the 8-device run (subprocess) ---------------------------------------------------------
def devices_worker(n_rows: int, n_restarts: int, max_iter: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jaxem
    from jaxem import distributed

    X = mixture_data(n_rows, np.float64)
    model = jaxem.GaussianMixture(K)
    key = jax.random.key(0)
    options = dict(n_restarts=n_restarts, max_iter=max_iter, tol=0.0)
    Xs, ws = distributed.shard_rows(X)
    t0 = time.perf_counter()
    sharded = distributed.fit_sharded(model, Xs, sample_weight=ws, key=key, **options)
    sharded_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = jaxem.fit(model, X, key=key, chunk_size=None, **options)
    single_s = time.perf_counter() - t0
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)))

    def fit_value(Xs, ws):
        return jaxem.fit(model, Xs, sample_weight=ws, key=key, chunk_size=None, diff=None, **options).log_likelihood

    loops = distributed.loop_collectives(jax.jit(fit_value).lower(Xs, ws).compile().as_text())
    inner = {name: ops for name, ops in loops.items() if name != "<outside>" and ops}
    em_ops = [op for ops in inner.values() for op in ops if op.op == "all-reduce"]
    per_iter = sum(op.n_elements for op in em_ops)
    return {
        "n_devices": jax.device_count(),
        "n_rows": n_rows,
        "padded_rows": int(Xs.shape[0] - n_rows),
        "n_restarts": n_restarts,
        "max_iter": max_iter,
        "max_abs_param_diff": diff,
        "log_likelihood_diff": abs(float(sharded.log_likelihood) - float(single.log_likelihood)),
        "log_likelihood": float(single.log_likelihood),
        "wall_s_sharded_incl_compile": sharded_s,
        "wall_s_single_incl_compile": single_s,
        "loop_collectives": {name: [(op.op, [[t, list(s)] for t, s in op.shapes], op.n_elements) for op in ops] for name, ops in inner.items()},
        "loop_all_gathers": sum(op.op == "all-gather" for ops in inner.values() for op in ops),
        "outside_all_gathers": sum(op.op == "all-gather" for op in loops["<outside>"]),
        "all_reduce_elements_per_iteration": per_iter,
        "all_reduce_elements_per_iteration_per_restart": per_iter / n_restarts,
        "expected_per_restart": K * (D + 1) * (D + 2) // 2 + 1,
    }


def run_devices(args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    cmd = [sys.executable, __file__, "--worker", str(args.check_rows), str(args.check_restarts), str(args.check_iters)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- 2. one device's throughput -------------------------------------------------------------------
def per_device_seconds_per_iteration(n_rows: int, few: int = 2, many: int = 12) -> dict:
    import jax

    import jaxem

    X = mixture_data(n_rows, np.float32, seed=1)
    model = jaxem.GaussianMixture(K)
    start = jaxem.fit(model, X[:100_000], key=jax.random.key(0), max_iter=1).params
    init = {k: np.asarray(v) for k, v in start._asdict().items()}

    def timed(max_iter):
        best = np.inf
        for _ in range(3):  # the first includes compilation
            t0 = time.perf_counter()
            jaxem.fit(model, X, key=jax.random.key(0), init=init, max_iter=max_iter, tol=0.0).log_likelihood.block_until_ready()
            best = min(best, time.perf_counter() - t0)
        return best

    t_few, t_many = timed(few), timed(many)
    per_iter = (t_many - t_few) / (many - few)
    return {"n_rows": n_rows, "dtype": "float32", "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
            "fit_s": {str(few): t_few, str(many): t_many}, "seconds_per_iteration": per_iter,
            "rows_per_second": n_rows / per_iter}


# --- 3. on paper ------------------------------------------------------------------------------------
def ring_all_reduce_s(n_bytes: float, n_devices: int, bandwidth: float, latency: float) -> float:
    if n_devices == 1:
        return 0.0
    steps = 2 * (n_devices - 1)
    return steps * (latency + n_bytes / n_devices / bandwidth)


def weak_scaling(per_iter_s: float, rows_per_device: int, elements: int, itemsize: int = 4) -> dict:
    n_bytes = elements * itemsize
    table = {}
    for name, link in INTERCONNECTS.items():
        rows = []
        for p in (1, 8, 64):
            comm = ring_all_reduce_s(n_bytes, p, link["bandwidth_bytes_per_s"], link["latency_s_per_step"])
            step = per_iter_s + comm
            rows.append({"devices": p, "rows": p * rows_per_device, "compute_s": per_iter_s, "all_reduce_s": comm,
                         "iteration_s": step, "efficiency": per_iter_s / step, "rows_per_s": p * rows_per_device / step})
        table[name] = {"assumption": link, "rows": rows}
    return {"all_reduce_bytes": n_bytes, "model": "ring: 2 (P-1) x (latency + bytes / P / bandwidth)", "table": table}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-device", type=int, default=1_000_000)
    parser.add_argument("--check-rows", type=int, default=40_003)
    parser.add_argument("--check-restarts", type=int, default=2)
    parser.add_argument("--check-iters", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/sharded.json"))
    parser.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(devices_worker(*args.worker)))
        return
    import jax

    devices = run_devices(args)
    print(json.dumps(devices, indent=1), flush=True)
    throughput = per_device_seconds_per_iteration(args.rows_per_device)
    print(json.dumps(throughput, indent=1), flush=True)
    per_restart = devices["all_reduce_elements_per_iteration_per_restart"]
    paper = weak_scaling(throughput["seconds_per_iteration"], args.rows_per_device, int(per_restart))
    report = {
        "benchmark": "row-sharded EM: 8-device correctness, per-iteration all-reduce, weak scaling on paper",
        "problem": {"n_features": D, "n_components": K, "covariance_type": "full"},
        "platform": platform.platform(), "jax_version": jax.__version__,
        "devices_check": devices,
        "all_reduce_per_iteration": {
            "elements_per_restart": per_restart,
            "formula": "K (D + 1)(D + 2) / 2 + 1: the raw moments of phi(x) = triu([y, 1][y, 1]^T) per component, plus the log-likelihood",
            "K_D2": K * D * D,
            "bytes_float32": per_restart * 4,
        },
        "per_device": throughput,
        "weak_scaling_on_paper": paper,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    for name, t in paper["table"].items():
        print(name, [(r["devices"], round(r["all_reduce_s"] * 1e3, 3), round(r["efficiency"], 4)) for r in t["rows"]])


if __name__ == "__main__":
    main()
