"""Data-parallel EM (jaxem.distributed): row-sharded fits equal single-device fits.

JAX fixes the device count when it starts, so every multi-device check runs in a
subprocess (tests/distributed_worker.py): one with 8 forced host CPU devices for the
sharded-vs-single comparisons and the compiled program's collectives, and two processes
joined by jax.distributed (gloo collectives on the CPU backend, 2 local devices each) that
each hold half of the rows. Everything in float64.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxem
from jaxem import distributed

HERE = Path(__file__).parent
WORKER = str(HERE / "distributed_worker.py")
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402

TIMEOUT_S = 240
ROUNDING = 1e-10


def worker_env(n_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def devices_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "devices.json"
    proc = subprocess.run(
        [sys.executable, WORKER, "devices", str(out)], env=worker_env(8), capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["gmm_full", "gmm_diag", "poisson", "chunked", "weighted", "squarem"])
def test_sharded_fit_equals_single_device_fit(devices_report, case):
    assert devices_report["n_devices"] == 8
    r = devices_report[case]
    assert r["data_sharding"] == "P('rows',)"
    assert r["padded_rows"] > 0  # the zero-weight padding path is exercised
    assert r["converged"]
    assert r["n_iter"][0] == r["n_iter"][1] and r["status"][0] == r["status"][1]
    assert r["params"] < ROUNDING and r["log_likelihood"] < ROUNDING and r["trace"] < ROUNDING


def test_implicit_gradient_through_sharded_fit(devices_report):
    g = devices_report["grad"]
    assert g["max_abs"] > 1e-4  # a gradient worth comparing
    assert g["max_abs_diff"] < 1e-10 * max(1.0, g["max_abs"])
    assert g["grad_sharding"] == "P('rows',)"  # the gradient stays row-sharded


def test_em_loop_all_reduces_statistics_and_never_gathers_data(devices_report):
    h = devices_report["hlo"]
    n, R, K, D = h["n_samples"], h["n_restarts"], h["n_components"], h["n_features"]
    loops = {name: ops for name, ops in h["loops"].items() if name != "<outside>"}
    with_reduce = {name: ops for name, ops in loops.items() if any(op["op"] == "all-reduce" for op in ops)}
    assert len(with_reduce) == 1, with_reduce  # the EM while loop
    (em_ops,) = with_reduce.values()
    # Nothing but all-reduces in any loop: no all-gather (of the data or anything else).
    assert all(op["op"] == "all-reduce" for ops in loops.values() for op in ops), loops
    for ops in loops.values():
        for op in ops:
            assert all(n not in dims for _, dims in op["shapes"]), op
    # Per iteration: the moments of the features phi(x) = triu([y, 1] [y, 1]^T),
    # (D + 1)(D + 2)/2 numbers per component and restart, plus the log-likelihood.
    per_iteration = sum(op["n_elements"] for op in em_ops)
    assert per_iteration == R * (K * (D + 1) * (D + 2) // 2 + 1), em_ops
    # The k-means++ start gathers (n_restarts, n) vectors outside the loop; that is fine.
    outside = h["loops"]["<outside>"]
    assert any(op["op"] == "all-gather" and any(n in dims for _, dims in op["shapes"]) for op in outside)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_fit(tmp_path):
    port = free_port()
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "process", str(i), "2", str(port), str(outs[i])],
            env=worker_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    results = [json.loads(out.read_text()) for out in outs]

    X = distributed_worker.mp_data()
    ref = jaxem.fit(jaxem.GaussianMixture(3), X, key=jax.random.key(0), chunk_size=None, **distributed_worker.MP_OPTIONS)
    for r in results:
        assert r["process_count"] == 2 and r["n_local_devices"] == 2 and r["n_devices"] == 4
        assert r["global_rows"] == 2 * 604  # 600 and 603 rows, each padded to 604
        for name, value in ref.params._asdict().items():
            np.testing.assert_allclose(r["params"][name], np.asarray(value), rtol=0, atol=ROUNDING)
        assert abs(r["log_likelihood"] - float(ref.log_likelihood)) < ROUNDING
        assert r["n_iter"] == int(ref.n_iter)
        np.testing.assert_allclose(r["trace"], np.nan_to_num(np.asarray(ref.trace)), rtol=0, atol=ROUNDING)


# --- in-process checks (one device) -------------------------------------------------------------
def test_shard_rows_pads_with_zero_weight_copies_of_the_last_row():
    X = np.arange(10.0).reshape(5, 2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1] * 1), ("rows",))
    Xs, ws = distributed.shard_rows(X, np.full(5, 2.0), mesh=mesh)
    np.testing.assert_array_equal(np.asarray(Xs), X)
    np.testing.assert_array_equal(np.asarray(ws), np.full(5, 2.0))
    Xp, wp = distributed._pad_rows(X, np.ones(5), 8)
    np.testing.assert_array_equal(Xp[5:], np.repeat(X[-1:], 3, axis=0))
    np.testing.assert_array_equal(wp, [1, 1, 1, 1, 1, 0, 0, 0])


def test_shard_rows_checks_its_inputs():
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        distributed.shard_rows(np.ones((4, 2)), np.ones(3))
    with pytest.raises(ValueError, match="no axis"):
        distributed.shard_rows(np.ones((4, 2)), mesh=distributed.default_mesh("data"))


def test_fit_sharded_validates_rows_eagerly():
    Xs, ws = distributed.shard_rows(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [2.0, 0.5]]))
    with pytest.raises(ValueError, match="NaN"):
        distributed.fit_sharded(jaxem.GaussianMixture(2), Xs, sample_weight=ws, key=jax.random.key(0))
    Xs, ws = distributed.shard_rows(np.array([[0.0, 1.0], [3.0, 2.0], [1.0, 1.0], [2.0, 0.5]]), -np.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        distributed.fit_sharded(jaxem.GaussianMixture(2), Xs, sample_weight=ws, key=jax.random.key(0))


def test_loop_collectives_reads_hlo_text():
    hlo = """HloModule m

%body (p: (f32[4])) -> (f32[4]) {
  %x = f32[4] parameter(0)
  %ar = f32[4]{0} all-reduce(%x), replica_groups={}, to_apply=%add
  ROOT %t = (f32[4]) tuple(%ar)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
}

ENTRY %main (x: f32[8]) -> f32[4] {
  %ag = f32[8,3]{1,0} all-gather(%x), dimensions={0}
  %w = (f32[4]) while(%t0), condition=%cond, body=%body
}
"""
    loops = distributed.loop_collectives(hlo)
    assert [(c.op, c.shapes, c.n_elements) for c in loops["body"]] == [("all-reduce", (("f32", (4,)),), 4)]
    assert [(c.op, c.n_elements) for c in loops["<outside>"]] == [("all-gather", 24)]
