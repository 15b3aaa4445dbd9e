"""First contact: wall time of `jaxem demo` in fresh processes, cold and warm compilation cache.

Each round makes an empty temporary cache folder (XDG_CACHE_HOME) and runs the demo three
times as a new subprocess (`python -m jaxem.cli demo`): "cold" (empty cache: every program
compiles and is written), "warm" (the same folder again: programs are read back), and
"no cache" (JAXEM_NO_COMPILATION_CACHE=1, for reference). Reported: the median over rounds
of the subprocess wall time (interpreter start, imports, data, fits, plot, exit) and of the
demo's own "total time" line (from after `import jaxem`), the subprocess's CPU time (user +
system, less sensitive than wall time to other work on a shared machine), the cache's
size, and the load average.

Run: python benchmarks/bench_demo.py [--rounds 3] [--out benchmarks/results/demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"cold": 10.0, "warm": 3.0}
VARIANTS = ("cold", "warm", "no cache")
TOTAL_TIME = re.compile(r"^total time ([0-9.]+) s", re.MULTILINE)


def demo_env(cache_home: Path | None) -> dict[str, str]:
    """The environment of one demo run: cache under `cache_home`, or disabled when None."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXEM_NO_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    if cache_home is None:
        env["JAXEM_NO_COMPILATION_CACHE"] = "1"
    else:
        env["XDG_CACHE_HOME"] = str(cache_home)
    return env


def run_demo(workdir: Path, env: dict[str, str]) -> dict:
    """One `jaxem demo` subprocess: wall seconds and the demo's own reported seconds."""
    command = [sys.executable, "-m", "jaxem.cli", "demo", "--plot", str(workdir / "demo.png")]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"jaxem demo failed ({done.returncode}):\n{done.stderr[-2000:]}")
    match = TOTAL_TIME.search(done.stdout)
    return {"wall_s": wall, "cpu_s": cpu, "demo_s": float(match.group(1)) if match else None,
            "plot": "plot written" in done.stdout}


def folder_size(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) under path."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def one_round() -> dict:
    with tempfile.TemporaryDirectory(prefix="jaxem-bench-demo-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        runs = {"cold": run_demo(tmp, demo_env(cache))}
        n_files, n_bytes = folder_size(cache / "jaxem" / "xla")
        runs["warm"] = run_demo(tmp, demo_env(cache))
        runs["no cache"] = run_demo(tmp, demo_env(None))
        runs["cache"] = {"files": n_files, "bytes": n_bytes}
    return runs


def summarize(rounds: list[dict]) -> dict:
    """Medians (and ranges) over rounds of each variant's wall and demo times."""
    summary = {}
    for variant in VARIANTS:
        walls = [r[variant]["wall_s"] for r in rounds]
        demos = [r[variant]["demo_s"] for r in rounds if r[variant]["demo_s"] is not None]
        summary[variant] = {
            "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
            "cpu_s_median": statistics.median(r[variant]["cpu_s"] for r in rounds),
            "demo_s_median": statistics.median(demos) if demos else None,
        }
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "demo.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rounds = []
    for r in range(args.rounds):
        rounds.append(one_round())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {rounds[-1][v]['wall_s']:.1f} s" for v in VARIANTS), flush=True)
    summary = summarize(rounds)
    import jax

    report = {
        "benchmark": "jaxem demo in fresh subprocesses: cold / warm persistent compilation cache",
        "command": "python -m jaxem.cli demo",
        "rounds": args.rounds,
        "targets_s": TARGETS_S,
        "summary": summary,
        "meets_targets": {v: summary[v]["wall_s_median"] < t for v, t in TARGETS_S.items()},
        "cache_files": [r["cache"]["files"] for r in rounds],
        "cache_bytes": [r["cache"]["bytes"] for r in rounds],
        "runs": [{v: r[v] for v in VARIANTS} for r in rounds],
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
    }
    print(f"\n{'run':<10} {'wall s (median)':>16} {'range':>14} {'demo s':>8} {'CPU s':>7} {'target':>8}")
    for variant in VARIANTS:
        s = summary[variant]
        target = f"< {TARGETS_S[variant]:g}" if variant in TARGETS_S else ""
        demo = f"{s['demo_s_median']:.1f}" if s["demo_s_median"] is not None else "-"
        print(f"{variant:<10} {s['wall_s_median']:>16.1f} {s['wall_s_min']:>6.1f}-{s['wall_s_max']:<7.1f} {demo:>8} "
              f"{s['cpu_s_median']:>7.1f} {target:>8}")
    print(f"cache: {statistics.median(report['cache_files']):.0f} files, "
          f"{statistics.median(report['cache_bytes']) / 2**20:.1f} MiB; load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
