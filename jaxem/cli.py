"""The `jaxem` command: `jaxem demo` and `jaxem fit FILE -k K`.

A thin shell over `jaxem.fit`: it reads data, calls the library and prints tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

DEMO_DATA = "old_faithful.csv"


class DataFileError(ValueError):
    """A data file that cannot be read as a numeric matrix."""


def read_matrix(path: str) -> tuple[np.ndarray, list[str]]:
    """Read a .npy or CSV file into a float64 (n_samples, n_features) matrix.

    A CSV's first row is taken as a header when any of its fields is not a number.
    Returns (X, column names). Raises DataFileError with the file, row and column at fault.
    """
    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"{path}: no such file")
    if file.suffix == ".npy":
        try:
            X = np.load(file, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataFileError(f"{path}: not a readable .npy file ({err})") from None
        if X.ndim == 1:
            X = X.reshape(-1, 1)
        if not np.issubdtype(X.dtype, np.number):
            raise DataFileError(f"{path}: array dtype {X.dtype} is not numeric")
        return X.astype(np.float64), [f"x{j}" for j in range(X.shape[1])]
    return _read_csv(file)


def _read_csv(file: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with file.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(field.strip() for field in row)]
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"{file}: cannot be read as text CSV ({err})") from None
    if not rows:
        raise DataFileError(f"{file}: is empty")
    header = None
    if not all(_is_number(field) for field in rows[0]):
        header, rows = [field.strip() for field in rows[0]], rows[1:]
    if not rows:
        raise DataFileError(f"{file}: has a header but no data rows")
    n_cols = len(header or rows[0])
    names = header or [f"x{j}" for j in range(n_cols)]
    values = np.empty((len(rows), n_cols))
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != n_cols:
            raise DataFileError(f"{file}: line {line} has {len(row)} fields, expected {n_cols}")
        for j, field in enumerate(row):
            if not _is_number(field):
                raise DataFileError(
                    f"{file}: line {line}, column {names[j]!r}: {field.strip()!r} is not a number; "
                    "jaxem fits numeric columns only"
                )
            values[i, j] = float(field)
    return values, names


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def format_params(params, covariance_type: str, names: list[str]) -> str:
    """A readable table of weights, means and covariances, one block per component."""
    lines = []
    width = max(10, 4 + max(len(n) for n in names))
    for k, weight in enumerate(np.asarray(params.weights)):
        lines.append(f"component {k}: weight {weight:.4f}")
        lines.append("  " + " " * width + "".join(f"{n:>{width + 2}}" for n in names))
        lines.append("  " + f"{'mean':<{width}}" + "".join(f"{m:>{width + 2}.4f}" for m in np.asarray(params.means[k])))
        cov = _full_covariance(np.asarray(params.covariances), covariance_type, k, len(names))
        for name, row in zip(names, cov):
            lines.append("  " + f"{'cov ' + name:<{width}}" + "".join(f"{v:>{width + 2}.4f}" for v in row))
    return "\n".join(lines)


def _full_covariance(cov: np.ndarray, covariance_type: str, k: int, n_features: int) -> np.ndarray:
    if covariance_type == "full":
        return cov[k]
    if covariance_type == "tied":
        return cov
    if covariance_type == "diag":
        return np.diag(cov[k])
    return np.eye(n_features) * cov[k]


def format_restarts(result) -> str:
    """One line per restart: final log-likelihood, iterations, converged, status."""
    from jaxem import status_message

    runs = result.restarts
    best = int(result.best_restart)
    lines = [f"{'restart':>7} {'log-lik/sample':>15} {'iters':>6} {'converged':>9}  status"]
    for r in range(runs.n_iter.shape[0]):
        mark = " *" if r == best else ""
        lines.append(
            f"{r:>7} {float(runs.log_likelihood[r]):>15.6f} {int(runs.n_iter[r]):>6} "
            f"{str(bool(runs.converged[r])):>9}  {status_message(runs.status[r])}{mark}"
        )
    lines.append("(* = selected: highest final log-likelihood among finite runs)")
    return "\n".join(lines)


def fit_and_report(X, names, n_components, covariance_type, n_restarts, seed, max_iter, tol):
    """Fit a Gaussian mixture and return (result, model, printed report)."""
    import jax

    import jaxem

    model = jaxem.GaussianMixture(n_components, covariance_type=covariance_type)
    result = jaxem.fit(model, X, key=jax.random.key(seed), n_restarts=n_restarts, max_iter=max_iter, tol=tol)
    report = "\n".join([
        f"Gaussian mixture, K={n_components}, covariance={covariance_type}, "
        f"{n_restarts} restarts, {X.shape[0]} samples x {X.shape[1]} features",
        format_params(result.params, covariance_type, names),
        "",
        format_restarts(result),
    ])
    return result, model, report


def bic_table(X, k_values, covariance_type, n_restarts, seed, max_iter, tol) -> str:
    """BIC (and mean log-likelihood) of the best restart for each K."""
    import jax

    import jaxem

    lines = [f"{'K':>3} {'log-lik/sample':>15} {'BIC':>12}"]
    scores = {}
    for k in k_values:
        model = jaxem.GaussianMixture(k, covariance_type=covariance_type)
        res = jaxem.fit(model, X, key=jax.random.key(seed), n_restarts=n_restarts, max_iter=max_iter, tol=tol)
        scores[k] = float(model.bic(res.params, X))
        lines.append(f"{k:>3} {float(res.log_likelihood):>15.6f} {scores[k]:>12.3f}")
    lines.append(f"lowest BIC: K={min(scores, key=scores.get)}")
    return "\n".join(lines)


def run_demo(args) -> int:
    import jaxem

    start = time.perf_counter()
    X, names = read_matrix(jaxem.data_path(DEMO_DATA))
    print(f"Old Faithful geyser data ({X.shape[0]} eruptions: {', '.join(names)})\n")
    _, _, report = fit_and_report(X, names, 2, "full", 16, args.seed, 100, 1e-3)
    print(report)
    print("\nModel selection over K (full covariance, 16 restarts each):")
    print(bic_table(X, range(1, 5), "full", 16, args.seed, 100, 1e-3))
    print(f"\ntotal time {time.perf_counter() - start:.1f} s (compilation included)")
    return 0


def run_fit(args) -> int:
    X, names = read_matrix(args.file)
    result, model, report = fit_and_report(
        X, names, args.k, args.covariance, args.restarts, args.seed, args.max_iter, args.tol
    )
    print(report)
    print(f"\nBIC {float(model.bic(result.params, X)):.3f}   AIC {float(model.aic(result.params, X)):.3f}")
    if args.out:
        payload = {
            "n_components": args.k,
            "covariance_type": args.covariance,
            "log_likelihood": float(result.log_likelihood),
            "n_iter": int(result.n_iter),
            "converged": bool(result.converged),
            **{name: np.asarray(value).tolist() for name, value in result.params._asdict().items()},
        }
        Path(args.out).write_text(json.dumps(payload, indent=2))
        print(f"params written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxem", description="Expectation-Maximization in JAX")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit the bundled Old Faithful data")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)
    fit = commands.add_parser("fit", help="fit a Gaussian mixture to a CSV or .npy file")
    fit.add_argument("file", help="CSV (optional header row) or .npy file, one sample per row")
    fit.add_argument("-k", type=int, required=True, help="number of components")
    fit.add_argument("--covariance", choices=["full", "diag", "spherical", "tied"], default="full")
    fit.add_argument("--restarts", type=int, default=8)
    fit.add_argument("--max-iter", type=int, default=100)
    fit.add_argument("--tol", type=float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", help="write the fitted params to this JSON file")
    fit.set_defaults(run=run_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxem` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        return args.run(args)
    except ValueError as err:
        print(f"jaxem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
