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
