"""Acceleration beyond Gaussian mixtures: every built-in mixture family, same start.

For each problem (synthetic data, fixed seeds), plain EM and each accelerator run from the
same start (`jaxem.fit`'s default k-means++ for the key) with tol 1e-12, float64, to their
own stopping rule. Per method: E-step evaluations, plain EM's over the method's, the end's
mean log-likelihood minus plain EM's, counted decreases, and whether the final params lie
inside the bounds the model's M-step keeps (Student-t dofs in [min_dof, max_dof], Poisson
rates >= min_rate, noise variances >= min_noise). Writes
benchmarks/results/accel_families.json.

`--declare-positive` is an ablation: it declares those bounded leaves "positive" (as
jaxem did before jaxem.constraints.Interval), to measure what declaring the bounds changes.

Run: python benchmarks/bench_accel_families.py [--declare-positive]
"""

import argparse
import json
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

import jaxem  # noqa: E402
from jaxem.models import factor_analysis, mixture_of_factor_analyzers, poisson_mixture, student_t_mixture  # noqa: E402

N = 800
TOL = 1e-12
MAX_ITER = 20_000
METHODS = (None, "squarem", "quasi_newton", "auto", "preconditioned")


def overlapping_gaussians(rng, n_features, n_components, noise="normal"):
    means = rng.normal(size=(n_components, n_features))
    labels = rng.integers(n_components, size=N)
    draws = rng.uniform(-1.7, 1.7, (N, n_features)) if noise == "uniform" else rng.normal(size=(N, n_features))
    return means[labels] + draws


def student_t_rows(rng):
    means = rng.normal(size=(3, 3)) * 1.5
    scale = np.sqrt(rng.chisquare(4, size=(N, 1)) / 4)
    return means[rng.integers(3, size=N)] + rng.normal(size=(N, 3)) / scale


def problems():
    """(name, model, X, fit options, bounds check) for each problem."""
    rng = np.random.default_rng(0)
    rates = np.array([[0.05, 3.0], [2.5, 0.0], [4.0, 4.0]])
    poisson = rng.poisson(rates[rng.integers(3, size=N)]).astype(float)
    yield "Poisson, 3 comp., a rate at its floor", jaxem.PoissonMixture(3), poisson, dict(init="random")
    probs = rng.uniform(0.2, 0.8, size=(3, 8))
    bernoulli = (rng.uniform(size=(N, 8)) < probs[rng.integers(3, size=N)]).astype(float)
    yield "Bernoulli, 3 comp., D=8", jaxem.BernoulliMixture(3), bernoulli, {}
    categorical = rng.integers(4, size=(N, 3))
    categorical[: N // 2, 0] = rng.integers(2, size=N // 2)
    yield "categorical, 3 comp., 3x4", jaxem.CategoricalMixture(3, n_categories=4), categorical, {}
    yield "Student-t, 3 comp., dof-4 data", jaxem.StudentTMixture(3), student_t_rows(rng), {}
    uniform = overlapping_gaussians(rng, 2, 2, noise="uniform")
    yield "Student-t, 2 comp., uniform data (dofs to max)", jaxem.StudentTMixture(2), uniform, {}
    loadings = rng.normal(size=(2, 6))
    factors = rng.normal(size=(N, 2)) @ loadings + rng.normal(size=(N, 6)) * rng.uniform(0.3, 1.0, 6)
    yield "factor analysis, 2 factors, D=6", jaxem.FactorAnalysis(2), factors, {}
    yield "MFA, 2 comp. x 1 factor, D=4", jaxem.MixtureOfFactorAnalyzers(2, n_factors=1), overlapping_gaussians(rng, 4, 2), {}
    holes = overlapping_gaussians(rng, 3, 3)
    holes[rng.uniform(size=holes.shape) < 0.1] = np.nan
    yield "GMM, 3 comp., D=3, 10% missing", jaxem.GaussianMixture(3), holes, dict(missing="em")


def outside_bounds(model, params) -> bool:
    """Whether params leave the bounds the model's own M-step keeps."""
    if isinstance(model, jaxem.StudentTMixture):
        dofs = np.asarray(params.dofs)
        return bool(np.any((dofs < model.min_dof) | (dofs > model.max_dof)))
    if isinstance(model, jaxem.PoissonMixture):
        return bool(np.any(np.asarray(params.rates) < model.min_rate))
    if isinstance(model, jaxem.FactorAnalysis):
        return bool(np.any(np.asarray(params.noise_variances) < model.min_noise))
    if isinstance(model, jaxem.MixtureOfFactorAnalyzers):
        return bool(np.any(np.asarray(params.noise_variances) < model.min_noise))
    return False


def declare_bounded_leaves_positive():
    """The ablation: the constraints jaxem declared before Interval."""
    st, pm = student_t_mixture, poisson_mixture
    st.StudentTMixture.param_constraints = lambda self, params=None: st.StudentTMixtureParams(
        "simplex", "real", "positive_definite", "positive")
    pm.PoissonMixture.param_constraints = lambda self, params=None: pm.PoissonMixtureParams("simplex", "positive")
    factor_analysis.FactorModel.param_constraints = lambda self, params=None: self._make_params("real", "real", "positive")
    mfa = mixture_of_factor_analyzers
    mfa.MixtureOfFactorAnalyzers.param_constraints = lambda self, params=None: mfa.MixtureOfFactorAnalyzersParams(
        "simplex", "real", "real", "positive")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--declare-positive", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.declare_positive:
        declare_bounded_leaves_positive()
    rows = []
    for name, model, X, options in problems():
        plain = None
        for method in METHODS:
            result = jaxem.fit(model, X, key=jax.random.key(1), max_iter=MAX_ITER, tol=TOL, accelerate=method, **options)
            plain = plain or result
            row = dict(
                problem=name, method=method or "EM", n_evals=int(result.n_evals),
                em_over_method=int(plain.n_evals) / int(result.n_evals),
                converged=bool(result.converged), n_decreases=int(result.n_decreases),
                mean_loglik=float(result.log_likelihood),
                minus_em=float(result.log_likelihood - plain.log_likelihood),
                outside_bounds=outside_bounds(model, result.params),
            )
            rows.append(row)
            print(f"{name:48s} {row['method']:13s} evals {row['n_evals']:6d} ({row['em_over_method']:5.1f}x) "
                  f"{'converged' if row['converged'] else 'max_iter':9s} minus EM {row['minus_em']:+.2e} "
                  f"decreases {row['n_decreases']} outside bounds {row['outside_bounds']}", flush=True)
    suffix = "_declared_positive" if args.declare_positive else ""
    out = Path(args.out or Path(__file__).parent / "results" / f"accel_families{suffix}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(dict(tol=TOL, n=N, declare_positive=args.declare_positive,
                                   device=str(jax.devices()[0]), rows=rows), indent=1))


if __name__ == "__main__":
    main()
