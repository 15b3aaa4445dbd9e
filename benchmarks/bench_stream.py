"""Out-of-core EM: memory and time of jaxem.stream against the in-memory jaxem.fit.

Data: N rows (default 10M), D=8 features, float32, drawn from a K=32 Gaussian mixture and
written block by block to a .npy file in a temporary directory (N x D x 4 bytes; 320 MB
at the defaults); the model is a full-covariance GaussianMixture(32).

1. Memory. Each mode (MEMORY_MODES) runs in its own subprocess: "stream" (fit_stream on
   the .npy path, blocks of --block-size rows, one block at a time: prefetch "auto" on CPU),
   "stream_one_arena" (the same with MALLOC_ARENA_MAX=1: glibc's malloc then keeps one
   arena, not one per thread of XLA's pool, each of which holds on to what it once
   allocated), "stream_compile_cache" (the same as "stream" in a second process with JAX's
   persistent compilation cache filled by a first: its first fit reads the block program
   rather than compiling it), "stream_large_block" (blocks of --large-block-size rows) and
   "stream_large_block_prefetch2" (the same with prefetch=2, the accelerators' default:
   two E-steps run while the next block is read), "memory" (np.load of the whole file,
   then jaxem.fit: a writable array, which the fit copies) and "mmap" (np.load(mmap_mode="r"),
   then jaxem.fit: read-only and 64-byte aligned, so the CPU device uses the mapped pages
   in place, validation.to_device; the mapped pages the fit reads count in the resident
   memory). Each reports its peak resident memory (VmHWM, the kernel's high-water mark,
   which resource.getrusage's ru_maxrss also reads) over the whole run, compile included,
   and over each of MEMORY_FITS identical fits after resetting the mark
   (/proc/self/clear_refs), with the resident memory before each fit split into anonymous
   and file-backed pages (RssAnon, RssFile). The first fit compiles; how much of a later
   fit's memory is already resident at its start depends on what malloc kept from the fit
   before, so the later fits show the spread. All relative to the process's memory just
   before the data is touched (Python, JAX and jaxem imported). Compared with one block
   (block_size x D x 4 bytes) plus the model, and with the data size.
2. Time to a log-likelihood. From the same start (k-means++ on the first block), exact EM
   streamed (fit_stream, one pass per iteration) and online EM (fit_online, 1, 2, ...
   passes, each a separate run evaluated exactly at its end): the wall time each needs to
   get within 1e-3 per sample of the best mean log-likelihood any run reached, and the
   time exact EM needs to reach what one pass of online EM reaches.

Run: python benchmarks/bench_stream.py [--rows 10000000] [--block-size 262144]
       [--large-block-size 1048576] [--batch-passes 40] [--online-passes 6] [--out benchmarks/results/stream.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_FEATURES, N_COMPONENTS = 8, 32
WITHIN = 1e-3
# Identical fits per memory run: the first compiles; a later streamed fit peaked 29-92 MiB
# above its start, varying from fit to fit and run to run (N = 10M), so five show the spread.
# (Only with a thread polling /proc every 2 ms, which slows the host's loop, did in-process
# traces settle at one block's mapped pages from the fourth fit on.)
MEMORY_FITS = 5


def write_data(path: Path, n_rows: int, seed: int = 0, piece: int = 1_000_000) -> None:
    """A K-component mixture's rows, float32, written piece by piece into a .npy file."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(N_COMPONENTS, N_FEATURES)) * 3.0
    scales = rng.uniform(0.5, 1.5, size=(N_COMPONENTS, N_FEATURES, N_FEATURES)) * np.eye(N_FEATURES)
    scales += np.triu(rng.normal(scale=0.2, size=scales.shape), 1)
    weights = rng.dirichlet(np.full(N_COMPONENTS, 5.0))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, N_FEATURES))
    for start in range(0, n_rows, piece):
        n = min(piece, n_rows - start)
        z = rng.choice(N_COMPONENTS, n, p=weights)
        noise = np.einsum("nd,nde->ne", rng.normal(size=(n, N_FEATURES)), scales[z])
        out[start : start + n] = (means[z] + noise).astype(np.float32)
    out.flush()
    del out


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# (mode, block size) of the memory runs: "stream" reads one block at a time (prefetch
# "auto" on CPU), "..._prefetch2" lets two E-steps run while the next block is read (the
# default on accelerators); "large" blocks are --large-block-size rows, the others --block-size.
MEMORY_MODES = (
    ("stream", "default"),
    ("stream_one_arena", "default"),
    ("stream_compile_cache", "default"),
    ("stream_large_block", "large"),
    ("stream_large_block_prefetch2", "large"),
    ("memory", "default"),
    ("mmap", "default"),
)


def block_mebibytes(block_size: int) -> float:
    """MiB of a block of block_size float32 rows."""
    return block_size * N_FEATURES * 4 / 2**20


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- subprocess side -----------------------------------------------------------------------------
def worker(mode: str, path: str, start_path: str, block_size: int, max_iter: int) -> dict:
    import resource

    import jax
    import jaxem
    from jaxem import stream

    model = jaxem.GaussianMixture(N_COMPONENTS)
    start = {k: v for k, v in np.load(start_path).items()}
    out = {"mode": mode, "baseline_rss_kib": status_kib("VmRSS"), "peak_reset": reset_peak()}
    X = None
    if mode in ("memory", "mmap"):
        X = np.load(path, mmap_mode="r" if mode == "mmap" else None)  # the whole data set
        out["after_load_rss_kib"] = status_kib("VmRSS")
    runs = []
    for _ in range(MEMORY_FITS):
        before = status_kib("VmRSS")
        before_split = {"anon_kib": status_kib("RssAnon"), "file_kib": status_kib("RssFile")}
        reset_peak()  # the high-water mark restarts from the current RSS
        t0 = time.perf_counter()
        if mode.startswith("stream"):
            prefetch = 2 if mode.endswith("prefetch2") else "auto"
            res = stream.fit_stream(model, path, init=start, max_iter=max_iter, tol=0.0, block_size=block_size, prefetch=prefetch)
        else:
            res = jaxem.fit(model, X, key=jax.random.key(0), init=start, max_iter=max_iter, tol=0.0)
        value = float(res.log_likelihood)
        peak = status_kib("VmHWM")
        runs.append({"wall_s": time.perf_counter() - t0, "rss_before_kib": before, **before_split, "peak_kib": peak,
                     "peak_above_before_mib": (peak - before) / 1024, "log_likelihood": value})
    out["runs"] = runs
    out["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Peak over everything (imports excluded): compile and retained allocator memory included.
    out["peak_above_baseline_mib"] = (max(r["peak_kib"] for r in runs) - out["baseline_rss_kib"]) / 1024
    return out


def measure_memory(mode: str, path: Path, start_path: Path, block_size: int, max_iter: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if mode == "stream_one_arena":  # glibc's malloc with one arena, not one per thread
        env["MALLOC_ARENA_MAX"] = "1"
    cmd = [sys.executable, __file__, "--worker", mode, str(path), str(start_path), str(block_size), str(max_iter)]
    with tempfile.TemporaryDirectory() as cache:
        if mode == "stream_compile_cache":  # JAX's persistent cache, filled by a first process
            env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
            _run_worker(cmd, env)
        return _run_worker(cmd, env)


def _run_worker(cmd: list, env: dict) -> dict:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- time to a log-likelihood --------------------------------------------------------------------
def time_to_target(model, path, start, block_size, batch_passes, online_passes) -> dict:
    from jaxem import stream

    marks = []
    t0 = time.perf_counter()

    def record(n_iter, objective, change):
        marks.append((int(n_iter), float(objective), time.perf_counter() - t0))

    res = stream.fit_stream(model, path, init=start, max_iter=batch_passes, tol=0.0, block_size=block_size, progress=record)
    import jax

    jax.effects_barrier()
    batch_total = time.perf_counter() - t0
    # marks[i]: the objective at the params after i M-steps, known once pass i + 1 ended.
    batch = [{"passes": n, "log_likelihood": value, "wall_s": t} for n, value, t in marks]
    batch.append({"passes": len(marks) + 1, "log_likelihood": float(res.log_likelihood), "wall_s": batch_total})

    online = []
    for n_passes in range(1, online_passes + 1):
        t0 = time.perf_counter()
        r = stream.fit_online(model, path, init=start, n_passes=n_passes, block_size=block_size, total_weight=None)
        online.append({"passes": n_passes, "evaluation_passes": 1, "log_likelihood": float(r.log_likelihood),
                       "wall_s": time.perf_counter() - t0, "streamed_trace": np.asarray(r.trace).tolist()})
    best = max(row["log_likelihood"] for row in batch + online)
    one_pass = online[0]["log_likelihood"]

    def first_reaching(rows, target):
        for row in rows:
            if row["log_likelihood"] >= target:
                return {"passes": row["passes"], "wall_s": row["wall_s"]}
        return None

    return {
        "best_log_likelihood": best,
        "within": WITHIN,
        "online_one_pass_log_likelihood": one_pass,
        "exact_em": {"reached": first_reaching(batch, best - WITHIN), "reached_online_one_pass_value": first_reaching(batch, one_pass),
                     "per_pass": batch},
        "online_em": {"reached": first_reaching(online, best - WITHIN), "runs": online},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--block-size", type=int, default=262_144)
    parser.add_argument("--large-block-size", type=int, default=1_048_576, help="blocks of the large-block stream modes")
    parser.add_argument("--memory-iters", type=int, default=3, help="EM iterations of each memory run")
    parser.add_argument("--batch-passes", type=int, default=40)
    parser.add_argument("--online-passes", type=int, default=6)
    parser.add_argument("--tmp", default=None, help="directory for the data file (default: a new temp dir)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/stream.json"))
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        mode, path, start_path, block_size, max_iter = args.worker
        print(json.dumps(worker(mode, path, start_path, int(block_size), int(max_iter))))
        return

    import jax
    import jax.numpy as jnp

    import jaxem

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "data.npy"
        t0 = time.perf_counter()
        write_data(path, args.rows)
        write_s = time.perf_counter() - t0
        model = jaxem.GaussianMixture(N_COMPONENTS)
        first = jnp.asarray(np.load(path, mmap_mode="r")[: args.block_size])
        params = model.init_params(jax.random.key(0), first, jnp.ones(first.shape[0], first.dtype), "kmeans++", None)
        start = {k: np.asarray(v) for k, v in params._asdict().items()}
        start_path = Path(tmp) / "start.npz"
        np.savez(start_path, **start)

        data_mib = path.stat().st_size / 2**20
        block_mib = block_mebibytes(args.block_size)
        model_kib = sum(v.nbytes for v in start.values()) / 1024
        memory = {}
        for mode, size in MEMORY_MODES:
            block_size = args.large_block_size if size == "large" else args.block_size
            memory[mode] = measure_memory(mode, path, start_path, block_size, args.memory_iters)
            memory[mode]["block_mib"] = block_mebibytes(block_size)
            print(mode, json.dumps(memory[mode]), flush=True)
        timing = time_to_target(model, str(path), start, args.block_size, args.batch_passes, args.online_passes)

    report = {
        "benchmark": "out-of-core EM (jaxem.stream) vs in-memory jaxem.fit",
        "problem": {"n_rows": args.rows, "n_features": N_FEATURES, "n_components": N_COMPONENTS,
                    "covariance_type": "full", "dtype": "float32", "block_size": args.block_size},
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
        "write_data_s": write_s,
        "sizes_mib": {"data": data_mib, "block": block_mib, "model_params_kib": model_kib},
        "memory": memory,
        "summary_mib": {
            mode: {
                "peak_above_imports": memory[mode]["peak_above_baseline_mib"],
                "fit_peaks_above_their_start": [r["peak_above_before_mib"] for r in memory[mode]["runs"]],
                "later_fits_median_in_blocks": float(np.median([r["peak_above_before_mib"] for r in memory[mode]["runs"][1:]]))
                / memory[mode]["block_mib"],
                "last_fit_peak_above_its_start": memory[mode]["runs"][-1]["peak_above_before_mib"],
                "held_before_each_fit": [(r["rss_before_kib"] - memory[mode]["baseline_rss_kib"]) / 1024 for r in memory[mode]["runs"]],
                "held_anon_before_last_fit": (memory[mode]["runs"][-1]["anon_kib"] - memory[mode]["runs"][0]["anon_kib"]) / 1024,
            }
            for mode in memory
        },
        "time_to_within": timing,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("sizes_mib", "summary_mib")}, indent=1))
    print(json.dumps({k: {n: r for n, r in v.items() if n.startswith("reached")} for k, v in timing.items() if isinstance(v, dict) and "reached" in v}, indent=1))


if __name__ == "__main__":
    main()
