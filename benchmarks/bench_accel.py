"""Plain EM vs SQUAREM vs quasi-Newton vs auto vs preconditioned: E-step evaluations and wall
time, one run.

Problems: the London deaths two-Poisson mixture (Varadhan & Roland's start), four poorly
separated Gaussian mixtures, and Old Faithful (3 full-covariance components). Wall time is
the median of REPEATS runs of the compiled program (compile time reported separately).
Writes benchmarks/results/accel.json.  Run: python benchmarks/bench_accel.py
"""

import json
import statistics
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxem  # noqa: E402
from jaxem.accel import run_auto, run_preconditioned, run_quasi_newton, run_squarem  # noqa: E402
from jaxem.core import run_em  # noqa: E402
LONDON = np.loadtxt(jaxem.data_path("london_deaths.csv"), delimiter=",", skiprows=1)
LONDON_COUNTS, LONDON_FREQUENCIES = jnp.asarray(LONDON[:, :1]), jnp.asarray(LONDON[:, 1])
LONDON_OPTIMUM_NEG_LOGLIK = 1989.945859883  # published optimum (Varadhan & Roland 2008)

REPEATS = 5
RUNNERS = {
    "EM": run_em, "SQUAREM": run_squarem, "quasi-Newton": run_quasi_newton, "auto": run_auto,
    "preconditioned": run_preconditioned,
}


def overlapping_gaussians(seed, n, d, shift):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[: n // 2] += shift
    return jnp.asarray(X)


def three_overlapping_gaussians(seed, n, shift):
    """n points in 3D, thirds shifted by +shift (1, 1, 1), -shift (1, -1, 0) and 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    X[: n // 3] += shift
    X[n // 3 : 2 * n // 3] -= shift * np.array([1.0, -1.0, 0.0])
    return jnp.asarray(X)


def gmm_problem(name, X, model, seed):
    start = model.init_params(jax.random.key(seed), X, jnp.ones(len(X)), "random_from_data")
    return name, model, start, X, jnp.ones(len(X))


def problems():
    faithful = jnp.asarray(np.loadtxt(jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1))
    yield ("London deaths, 2 Poisson", jaxem.PoissonMixture(2),
           jaxem.PoissonMixtureParams(jnp.array([0.3, 0.7]), jnp.array([[1.0], [2.5]])), LONDON_COUNTS, LONDON_FREQUENCIES)
    yield gmm_problem("GMM 2D full, shift 1 (n=1000)", overlapping_gaussians(0, 1000, 2, 1.0),
                      jaxem.GaussianMixture(2, reg_covar=0.0), 3)
    yield gmm_problem("GMM 5D diag, shift 0.8 (n=2000)", overlapping_gaussians(1, 2000, 5, 0.8),
                      jaxem.GaussianMixture(2, covariance_type="diag", reg_covar=0.0), 0)
    yield gmm_problem("GMM 3D full, 3 comp, shift 1.2 (n=1500)", three_overlapping_gaussians(5, 1500, 1.2),
                      jaxem.GaussianMixture(3, reg_covar=0.0), 2)
    yield gmm_problem("GMM 1D, shift 1.5 (n=1000)", overlapping_gaussians(7, 1000, 1, 1.5),
                      jaxem.GaussianMixture(2, reg_covar=0.0), 4)
    yield gmm_problem("Old Faithful, 3 full", faithful, jaxem.GaussianMixture(3, reg_covar=1e-6), 1)


REACH = 1e-8  # "reach plain EM's converged log-likelihood within 1e-8 per sample"


def reaches(loglik, target):
    """Whether a mean log-likelihood is within REACH of target (or above it)."""
    return float(loglik) >= target - REACH


def evals_to_reach(run, full, target):
    """E-step evaluations of the shortest run of a method that ends within REACH of target.

    run(m) is the method's FitResult with max_iter=m, full its converged run. A run with
    max_iter=m is a prefix of any longer one (tests/test_accel.py), so it ends at the point
    that entered iteration m of `full`, whose objective is full.trace[m]: the shortest run is
    m = the first index where the trace reaches (at least 1), or full.n_iter when only the
    final point does. Checked here: run(m) reaches and run(m - 1) does not. The same rule
    for every method, whatever one iteration costs. None when `full` never reaches.
    """
    trace = np.nan_to_num(np.asarray(full.trace), nan=-np.inf)
    reached = np.flatnonzero(trace >= target - REACH)
    if reached.size:
        m = max(int(reached[0]), 1)
    elif reaches(full.log_likelihood, target):
        m = int(full.n_iter)
    else:
        return None
    shortest = run(m)
    if not reaches(shortest.log_likelihood, target) or (m > 1 and reaches(run(m - 1).log_likelihood, target)):
        raise RuntimeError(f"the run with max_iter={m} is not the shortest to reach {target}: not a prefix")
    return int(shortest.n_evals)


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def main():
    rows = []
    for name, model, start, X, w in problems():
        em_converged = None
        for method, runner in RUNNERS.items():
            run_to = lambda m: jax.jit(lambda p: runner(model, p, X, w, max_iter=m, tol=1e-13))
            run = run_to(50000 if method == "EM" else 5000)
            result, compile_s = timed(run, start)
            seconds = statistics.median(timed(run, start)[1] for _ in range(REPEATS))
            loglik = float(result.log_likelihood)
            row = dict(problem=name, method=method, n_evals=int(result.n_evals), n_iter=int(result.n_iter),
                       status=jaxem.status_message(result.status), finished_by=jaxem.method_name(result.method),
                       mean_loglik=loglik, wall_s_median=seconds, first_call_s=compile_s,
                       n_decreases=int(result.n_decreases))
            if method == "EM":
                em_converged = loglik
            row["evals_to_reach_em_optimum"] = evals_to_reach(lambda m: run_to(m)(start), result, em_converged)
            if name.startswith("London"):
                row["neg_loglik_minus_published"] = -loglik * float(jnp.sum(w)) - LONDON_OPTIMUM_NEG_LOGLIK
            rows.append(row)
            print(f"{name:40s} {method:13s} evals {row['n_evals']:6d} (reach {row['evals_to_reach_em_optimum']})  {seconds*1e3:9.2f} ms  "
                  f"loglik/n {loglik:.12f}  {row['status']}, by {row['finished_by']}", flush=True)
    out = Path(__file__).parent / "results" / "accel.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(tol=1e-13, repeats=REPEATS, device=str(jax.devices()[0]), rows=rows), indent=1))


if __name__ == "__main__":
    main()
