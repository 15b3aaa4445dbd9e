"""Missing values: the cost of jaxem.fit(..., missing="em") against the same fit of the
complete data, in one run.

Gaussian mixtures (full covariances unless stated) on N rows, float32 and float64, with a
fraction of entries deleted at random (MCAR); the same start, a case's number of iterations (tol 0)
for every fit, auto chunks. Reported: ms per iteration (the marginal cost of an iteration, from
fits of n and 2 n iterations, compile time and the rest of a call apart; median of `repeats`
rounds, each running every fit of the case in turn), the ratio to the faster of the
complete-data fits with auto chunks and in one pass (the median of the rounds' ratios; a
missing="em" fit runs in one pass, its incomplete rows in blocks of one missingness pattern
or per row), and the share of rows
with a missing entry (only those take the conditional E-step). For context, the same
complete-data fit in scikit-learn (which rejects NaN), ms per iteration.

Writes benchmarks/results/missing.json.
Run: python benchmarks/bench_missing.py [--quick | --d16]

--stream: the same comparison for jaxem.fit_stream (float32, N rows in blocks of STREAM_BLOCK
rows, seconds per pass over the data at the same params, median of STREAM_REPEATS passes):
the complete data, missing values with the default chunk_size ("auto": blocks beyond the
tabulated patterns are regrouped by how many entries a row misses) and with an explicit
chunk_size of a quarter block (chunks take the per-row E-step, not regrouped). Beside them:
the host's share of a regrouped pass (blocks read, checked, regrouped and put on the device,
no E-step), and the yardstick, an iteration of jaxem.fit on the same rows in memory
(complete and missing; `*_vs_in_memory`: a pass over an in-memory iteration).
Writes benchmarks/results/missing_stream.json.
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import jaxem  # noqa: E402
from jaxem import stream  # noqa: E402
from benchmarks.bench_factor_analysis import median_time  # noqa: E402

# (D, K, covariance type, fraction of entries deleted, iterations per timed fit)
# Alternating rounds, and iterations enough that an iteration outweighs the call's varying
# rest (grouping the rows alone takes 0.05-0.45 s): with each fit's calls timed apart, three
# repeats and 200 / 5 iterations, this machine's noise gave marginal costs off by 2x and, for
# the fastest fits, below zero.
FULL = dict(repeats=7, n=100_000, cases=[
    (5, 4, "full", 0.1, 1000), (5, 4, "full", 0.02, 1000), (5, 4, "diag", 0.1, 1000), (16, 8, "full", 0.1, 20),
])
SKLEARN_ITERS = 100  # scikit-learn's iteration costs 20-200 ms here: its mean over 100 is steady
QUICK = dict(repeats=2, n=5_000, cases=[(5, 4, "full", 0.1, 5)])
# The largest case alone (the one issue #15 targets), at full size.
D16 = dict(FULL, cases=FULL["cases"][-1:])


def mixture_rows(seed, n, d, k):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(k, d))
    labels = rng.integers(k, size=n)
    mixing = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    return centres[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mixing[labels])


def delete_entries(X, fraction, seed):
    rng = np.random.default_rng(seed)
    holes = X.copy()
    holes[rng.random(X.shape) < fraction] = np.nan
    empty = np.isnan(holes).all(axis=1)
    holes[empty, 0] = X[empty, 0]
    return holes


def fit_runner(model, X, start, missing, **options):
    """n_iter -> the fit of X from start with n_iter iterations (tol 0)."""

    def run(n_iter):
        return jaxem.fit(
            model, X, key=jax.random.key(0), init=start, max_iter=n_iter, tol=0.0, diff=None, missing=missing, **options
        )

    return run


def timed_fits(runs, iters, repeats):
    """{name: (result, timings)} for the fits runs {name: n_iter -> result}: each compiled
    and run once, then `repeats` rounds in which every fit runs with iters and 2 iters
    iterations in turn, so that the machine's drift falls on all of them alike. ms_per_iter:
    the median over rounds of the marginal cost (2 iters - iters) / iters; call_overhead_ms:
    the median of the rest of an iters call (validation, preparing the data, dispatch);
    per_round_ms: each round's marginal cost, for ratios within a round."""
    results, firsts, rounds = {}, {}, {name: [] for name in runs}
    for name, run in runs.items():
        t = time.perf_counter()
        results[name] = jax.block_until_ready(run(iters))
        firsts[name] = time.perf_counter() - t
        jax.block_until_ready(run(2 * iters))
    for _ in range(repeats):
        for name, run in runs.items():
            short, long = median_time(lambda: run(iters), 1), median_time(lambda: run(2 * iters), 1)
            rounds[name].append((short, long))
    out = {}
    for name, pairs in rounds.items():
        per_round = [(long - short) / iters for short, long in pairs]
        per_iter = statistics.median(per_round)
        overhead = statistics.median(short - iters * per_iter for short, _ in pairs)
        out[name] = (results[name], dict(
            ms_per_iter=1e3 * per_iter, call_overhead_ms=1e3 * overhead, first_call_s=firsts[name],
            per_round_ms=[1e3 * t for t in per_round],
        ))
    return out


def sklearn_ms_per_iter(X, k, cov_type, start, iters, repeats):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            SklearnGaussianMixture(
                k, covariance_type=cov_type, max_iter=iters, tol=0.0, weights_init=start["weights"],
                means_init=start["means"], precisions_init=np.linalg.inv(start["covariances"])
                if cov_type == "full" else 1.0 / start["covariances"],
            ).fit(X)

    return 1e3 * median_time(run, repeats) / iters


STREAM_BLOCK = 50_000
STREAM_CASES = [(5, 4, 0.1), (16, 8, 0.1)]  # (D, K, fraction of entries deleted)
STREAM_REPEATS = 9
STREAM_FIT_ITERS, STREAM_FIT_REPEATS = 10, 5  # the in-memory yardstick (in_memory_s_per_pass)


def stream_seconds_per_pass(model, X, start, repeats, **options):
    """(seconds per pass over X in blocks of STREAM_BLOCK rows, median of `repeats` passes
    at the start params after one warm-up pass (compiles, capacities grown), the stream's
    objective there). A pass is what each iteration of jaxem.fit_stream costs: the
    blocks read, prepared on the host and put on the device, and the block E-steps."""
    passes = stream._Stream(model, stream.Source(X, STREAM_BLOCK), options.pop("chunk_size", "auto"), **options)
    params = stream._start(passes, start, None)
    stats, log_lik, weight = jax.block_until_ready(passes.e_pass(params))
    return median_time(lambda: passes.e_pass(params), repeats), float(log_lik / weight)


def stream_host_seconds_per_pass(model, X, repeats, **options):
    """Seconds per pass of the host's share of a streamed pass alone (median of `repeats`):
    the blocks read, checked, arranged and put on the device, no E-step."""
    passes = stream._Stream(model, stream.Source(X, STREAM_BLOCK), "auto", **options)
    passes.first_block()
    list(passes.blocks())  # capacities grown
    return median_time(lambda: jax.block_until_ready(list(passes.blocks())), repeats)


def in_memory_s_per_pass(model, X, start, missing, repeats):
    """Seconds per iteration of jaxem.fit on all of X in memory from start (the marginal
    cost of STREAM_FIT_ITERS more iterations, timed_fits), the yardstick of a streamed pass:
    the same E-step work once the rows sit in one array, grouped over the whole data."""
    timed = timed_fits(dict(fit=fit_runner(model, X, start, missing)), STREAM_FIT_ITERS, repeats)
    return timed["fit"][1]["ms_per_iter"] / 1e3


def stream_rows(n, repeats):
    rows = []
    for d, k, fraction in STREAM_CASES:
        X = mixture_rows(0, n, d, k).astype(np.float32)
        holes = delete_entries(X, fraction, 1).astype(np.float32)
        model = jaxem.GaussianMixture(k, "full")
        start = jaxem.fit(model, X.astype(np.float64), key=jax.random.key(1), max_iter=2, tol=0.0, diff=None).params
        start = {name: np.asarray(v, np.float32) for name, v in start._asdict().items()}
        start["covariances"] = (start["covariances"] + np.swapaxes(start["covariances"], 1, 2)) / 2
        complete, _ = stream_seconds_per_pass(model, X, start, repeats)  # auto chunks
        regrouped, value = stream_seconds_per_pass(model, holes, start, repeats, missing="em")
        per_row, value_rows = stream_seconds_per_pass(model, holes, start, repeats, missing="em", chunk_size=STREAM_BLOCK // 4)
        host = stream_host_seconds_per_pass(model, holes, repeats, missing="em")
        memory_complete = in_memory_s_per_pass(model, X, start, None, STREAM_FIT_REPEATS)
        memory_missing = in_memory_s_per_pass(model, holes, start, "em", STREAM_FIT_REPEATS)
        row = dict(
            n=n, block_size=STREAM_BLOCK, d=d, k=k, missing_fraction=fraction, dtype="float32", repeats=repeats,
            complete_s_per_pass=complete, missing_s_per_pass=regrouped, missing_chunked_s_per_pass=per_row,
            ratio=regrouped / complete, chunked_ratio=per_row / complete,
            missing_host_s_per_pass=host, in_memory_complete_s_per_iter=memory_complete,
            in_memory_missing_s_per_iter=memory_missing,
            complete_vs_in_memory=complete / memory_complete, missing_vs_in_memory=regrouped / memory_missing,
            missing_log_likelihood=value, missing_chunked_log_likelihood=value_rows,
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--d16", action="store_true", help="only the D = 16, K = 8 case (not written to the results file)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "missing.json"))
    parser.add_argument("--stream", action="store_true", help="fit_stream instead (missing_stream.json)")
    args = parser.parse_args(argv)
    if args.stream:
        report = dict(command="python benchmarks/bench_missing.py --stream", devices=[str(dev) for dev in jax.devices()],
                      rows=stream_rows(FULL["n"], STREAM_REPEATS))
        Path(args.out).with_name("missing_stream.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    cfg = QUICK if args.quick else D16 if args.d16 else FULL
    n, repeats = cfg["n"], cfg["repeats"]
    rows = []
    for d, k, cov_type, fraction, iters in cfg["cases"]:
        X = mixture_rows(0, n, d, k)
        holes = delete_entries(X, fraction, 1)
        model = jaxem.GaussianMixture(k, cov_type)
        start = jaxem.fit(model, X, key=jax.random.key(1), max_iter=2, tol=0.0, diff=None).params
        start = {name: np.asarray(v) for name, v in start._asdict().items()}
        row = dict(n=n, d=d, k=k, covariance_type=cov_type, missing_fraction=fraction,
                   rows_with_missing=float(np.isnan(holes).any(axis=1).mean()), iters=iters)
        for dtype in ("float64", "float32"):
            Xd, Hd = jnp.asarray(X, dtype), jnp.asarray(holes, dtype)
            s = {name: v.astype(dtype) for name, v in start.items()}
            timed = timed_fits(dict(
                complete=fit_runner(model, Xd, s, None), one_pass=fit_runner(model, Xd, s, None, chunk_size=None),
                missing=fit_runner(model, Hd, s, "em"),
            ), iters, repeats)
            (complete, complete_t), (_, one_pass_t), (missing, missing_t) = timed.values()
            per_round = zip(complete_t["per_round_ms"], one_pass_t["per_round_ms"], missing_t["per_round_ms"])
            row[dtype] = dict(
                complete=complete_t, complete_one_pass=one_pass_t, missing=missing_t,
                ratio=statistics.median(m / min(c, o) for c, o, m in per_round),
                complete_log_likelihood=float(complete.log_likelihood),
                missing_log_likelihood=float(missing.log_likelihood),
                missing_n_decreases=int(missing.n_decreases),
            )
        row["sklearn_complete_ms_per_iter"] = sklearn_ms_per_iter(X, k, cov_type, start, min(iters, SKLEARN_ITERS), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = dict(
        command="python benchmarks/bench_missing.py" + (" --quick" if args.quick else ""),
        devices=[str(dev) for dev in jax.devices()], rows=rows,
    )
    if args.d16:
        return report
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
