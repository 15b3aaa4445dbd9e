"""Subprocess side of tests/test_distributed.py (the device count is fixed when JAX starts).

    python tests/distributed_worker.py devices OUT.json
        with XLA_FLAGS=--xla_force_host_platform_device_count=8: sharded fits over 8 CPU
        devices and the same fits on one device, their differences, and the collectives
        of the compiled EM loop, written to OUT.json.
    python tests/distributed_worker.py process ID N PORT OUT.json
        process ID of N (jax.distributed over gloo on the CPU backend, 2 local devices via
        XLA_FLAGS): holds its own rows of `mp_data()`, runs fit_sharded, writes its result.

Everything runs in float64.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def gaussian_data(n=1203, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    X = centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 2)) @ np.array([[1.0, 0.3], [0.0, 0.8]])
    return X


def poisson_data(n=1001, seed=1):
    rng = np.random.default_rng(seed)
    rates = np.array([[1.0, 4.0], [6.0, 0.5]])
    return rng.poisson(rates[rng.integers(0, 2, n)]).astype(np.float64)


def mp_data():
    return gaussian_data(1203, seed=3)


MP_SPLIT = 600  # process 0 holds rows [0, 600), process 1 rows [600, 1203)
MP_OPTIONS = dict(n_restarts=2, max_iter=200, tol=1e-9)


def max_diff(a, b):
    import jax

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0)) for x, y in zip(la, lb))


def compare(sharded, single):
    return {
        "params": max_diff(sharded.params, single.params),
        "log_likelihood": abs(float(sharded.log_likelihood) - float(single.log_likelihood)),
        "trace": max_diff(np.nan_to_num(np.asarray(sharded.trace)), np.nan_to_num(np.asarray(single.trace))),
        "n_iter": [int(sharded.n_iter), int(single.n_iter)],
        "status": [int(sharded.status), int(single.status)],
        "converged": bool(single.converged),
    }


def run_devices(out_path):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jaxem
    from jaxem import distributed

    assert jax.device_count() == 8, jax.devices()
    key = jax.random.key(0)
    report = {"n_devices": jax.device_count()}
    X = gaussian_data()
    rng = np.random.default_rng(5)
    weights = rng.uniform(0.2, 2.0, X.shape[0])
    counts = poisson_data()

    cases = {
        "gmm_full": (jaxem.GaussianMixture(3), X, None, dict(n_restarts=2)),
        "gmm_diag": (jaxem.GaussianMixture(3, covariance_type="diag"), X, None, dict(n_restarts=2)),
        "poisson": (jaxem.PoissonMixture(2), counts, None, dict(n_restarts=2)),
        "chunked": (jaxem.GaussianMixture(3), X, None, dict(n_restarts=2, chunk_size=200)),
        "weighted": (jaxem.GaussianMixture(3), X, weights, dict(n_restarts=2)),
        "squarem": (jaxem.GaussianMixture(3), X, None, dict(n_restarts=2, accelerate="squarem")),
    }
    for name, (model, data, w, options) in cases.items():
        options = dict(max_iter=300, tol=1e-9, **options)
        Xs, ws = distributed.shard_rows(data, w)
        sharded = distributed.fit_sharded(model, Xs, sample_weight=ws, key=key, **options)
        single = jaxem.fit(model, data, sample_weight=w, key=key, chunk_size=options.pop("chunk_size", None), **options)
        report[name] = compare(sharded, single)
        report[name]["padded_rows"] = int(Xs.shape[0] - data.shape[0])
        report[name]["data_sharding"] = str(Xs.sharding.spec)

    # jax.grad of the fitted mean log-likelihood with respect to X, through the fixed point.
    model = jaxem.GaussianMixture(3)
    Xg = X[:1200]
    init = {k: np.asarray(v) for k, v in jaxem.fit(model, Xg, key=key, max_iter=5).params._asdict().items()}
    fit_options = dict(init=init, max_iter=300, tol=1e-10, diff="implicit")
    Xs, ws = distributed.shard_rows(Xg)

    def sharded_loss(Xs):
        return distributed.fit_sharded(model, Xs, sample_weight=ws, key=key, **fit_options).log_likelihood

    def single_loss(X):
        return jaxem.fit(model, X, key=key, chunk_size=None, **fit_options).log_likelihood

    grad_sharded = jax.jit(jax.grad(sharded_loss))(Xs)
    grad_single = jax.jit(jax.grad(single_loss))(Xg)
    report["grad"] = {
        "max_abs_diff": max_diff(grad_sharded, grad_single),
        "max_abs": float(np.max(np.abs(np.asarray(grad_single)))),
        "grad_sharding": str(grad_sharded.sharding.spec) if hasattr(grad_sharded.sharding, "spec") else str(grad_sharded.sharding),
    }

    # What the compiled EM fit communicates, inside its while loops and outside.
    n_restarts = 2
    Xs, ws = distributed.shard_rows(X)

    def fit_value(Xs, ws):
        return jaxem.fit(jaxem.GaussianMixture(3), Xs, sample_weight=ws, key=key, n_restarts=n_restarts,
                         chunk_size=None, max_iter=100, diff=None).log_likelihood

    hlo = jax.jit(fit_value).lower(Xs, ws).compile().as_text()
    loops = distributed.loop_collectives(hlo)
    report["hlo"] = {
        "n_samples": int(Xs.shape[0]),
        "n_restarts": n_restarts,
        "n_components": 3,
        "n_features": 2,
        "loops": {
            name: [{"op": c.op, "shapes": [[dtype, list(dims)] for dtype, dims in c.shapes], "n_elements": c.n_elements} for c in ops]
            for name, ops in loops.items()
        },
    }
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


def run_process(process_id, n_processes, port, out_path):
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=n_processes, process_id=process_id,
        initialization_timeout=60,
    )
    import jaxem
    from jaxem import distributed

    X = mp_data()
    bounds = [0, MP_SPLIT, X.shape[0]]
    local = X[bounds[process_id] : bounds[process_id + 1]]
    Xg, wg = distributed.process_rows(local)
    res = distributed.fit_sharded(jaxem.GaussianMixture(3), Xg, sample_weight=wg, key=jax.random.key(0), **MP_OPTIONS)
    host = distributed.to_host(res)
    out = {
        "process_id": process_id,
        "process_count": jax.process_count(),
        "n_local_devices": jax.local_device_count(),
        "n_devices": jax.device_count(),
        "global_rows": int(Xg.shape[0]),
        "local_rows": int(local.shape[0]),
        "params": {k: np.asarray(v).tolist() for k, v in host.params._asdict().items()},
        "log_likelihood": float(host.log_likelihood),
        "n_iter": int(host.n_iter),
        "trace": np.nan_to_num(np.asarray(host.trace)).tolist(),
    }
    with open(out_path, "w") as f:
        json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        run_devices(sys.argv[2])
    elif sys.argv[1] == "process":
        run_process(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(__doc__)
