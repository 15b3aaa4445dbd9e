"""The benchmark script runs end to end at --quick sizes and writes consistent JSON."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_gmm  # noqa: E402


def test_quick_benchmark_writes_consistent_report(tmp_path):
    out = tmp_path / "gmm.json"
    bench_gmm.main(["--quick", "--no-memory", "--out", str(out)])
    report = json.loads(out.read_text())
    full = report["full"]
    assert {"jaxem float32", "jaxem float64", "scikit-learn float64"} <= set(full)
    for row in list(full.values()) + list(report["diag"].values()):
        assert np.isfinite(row["ms_per_restart_iter"]) and row["ms_per_restart_iter"] > 0
    sk, mine = full["scikit-learn float64"], full["jaxem float32"]
    expected_ratio = (sk["steady_s"] / (sk["restarts"] * sk["iters"])) / (mine["steady_s"] / (mine["restarts"] * mine["iters"]))
    np.testing.assert_allclose(report["ratios"]["full_float32"]["scikit-learn float64"], expected_ratio, rtol=1e-12)
    assert [row["case"] for row in report["scaling"]] == ["base", "2x n", "2x d", "2x k", "2x restarts"]


def test_accel_evals_to_reach_counts_e_steps_like_the_trace():
    # EM: the objective at trace[i] is known after i + 1 E-steps; SQUAREM: after 1 + 2 i
    # (two per cycle). evals_to_reach, from the shortest run, must give the same counts.
    import jax

    from benchmarks import bench_accel
    from jaxem.accel import run_squarem
    from jaxem.core import run_em

    (name, model, start, X, w), *_ = bench_accel.problems()
    run_to = lambda runner, m: jax.jit(lambda p: runner(model, p, X, w, max_iter=m, tol=1e-13))(start)
    em = run_to(run_em, 5000)
    target = float(em.log_likelihood) - 1e-6  # a target both runs reach inside their traces
    for runner, evals_at in [(run_em, lambda i: i + 1), (run_squarem, lambda i: 1 + 2 * i)]:
        full = em if runner is run_em else run_to(runner, 5000)  # each run_to compiles
        first = int(np.argmax(np.asarray(full.trace) >= target - bench_accel.REACH))
        assert first > 1
        assert bench_accel.evals_to_reach(lambda m: run_to(runner, m), full, target) == evals_at(first)
