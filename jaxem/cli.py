"""The `jaxem` command: `jaxem demo` and `jaxem fit FILE -k K [--family F]`.

A thin shell over `jaxem.fit`: it reads data (CSV, .npy, .parquet), calls the library and
prints tables or JSON, optionally writing a plot (jaxem.plot). It turns on JAX's
persistent compilation cache for its own process (`enable_compilation_cache`).
`jaxem fit --missing em` fits NaN entries, and empty CSV fields and Parquet nulls read as
NaN, as missing values (`jaxem.fit(..., missing="em")`, Gaussian mixtures only); without
it they are errors that name the option.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DEMO_DATA = "old_faithful.csv"
DEMO_PLOT = "jaxem_demo.png"
DEMO_COMPONENTS, DEMO_RESTARTS = 2, 16


class DataFileError(ValueError):
    """A data file that cannot be read as a numeric matrix."""


def read_matrix(path: str, missing: bool = False) -> tuple[np.ndarray, list[str]]:
    """Read a CSV, .npy or .parquet file into a float64 (n_samples, n_features) matrix.

    A CSV's first non-blank row is taken as a header when any of its fields is neither a
    number nor empty (a leading "#", as np.savetxt writes it, is dropped from the header);
    blank rows and later "#" comment lines are skipped. Parquet needs pyarrow and numeric
    columns. missing: empty CSV fields and Parquet nulls are read as NaN (missing values);
    otherwise they are errors ("nan" fields are NaN either way). Returns (X, column
    names). Raises DataFileError with the file, line and column at fault.
    """
    file = Path(path)
    if not file.is_file():
        raise DataFileError(f"{path}: no such file")
    if file.suffix == ".npy":
        return _read_npy(file)
    if file.suffix == ".parquet":
        return _read_parquet(file, missing)
    return _read_csv(file, missing)


def _read_npy(file: Path) -> tuple[np.ndarray, list[str]]:
    try:
        X = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise DataFileError(f"{file}: not a readable .npy file ({err})") from None
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if not np.issubdtype(X.dtype, np.number):
        raise DataFileError(f"{file}: array dtype {X.dtype} is not numeric")
    return X.astype(np.float64), [f"x{j}" for j in range(X.shape[1])]


def _read_parquet(file: Path, missing: bool) -> tuple[np.ndarray, list[str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataFileError(f"{file}: reading .parquet files needs pyarrow: pip install jaxem[parquet]") from None
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{file}: not a readable Parquet file ({err})") from None
    if table.num_columns == 0 or table.num_rows == 0:
        raise DataFileError(f"{file}: has no data ({table.num_rows} rows, {table.num_columns} columns)")
    columns = []
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            raise DataFileError(f"{file}: column {name!r} has type {kind}; jaxem fits numeric columns only")
        if column.null_count and not missing:
            raise DataFileError(
                f"{file}: column {name!r} has {column.null_count} missing value(s); "
                f"fit with {MISSING_FLAG} to read them as missing values"
            )
        if column.null_count:  # unsafe: as astype(np.float64) of the column without nulls
            columns.append(column.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy())
        else:
            columns.append(column.to_numpy().astype(np.float64))
    return np.column_stack(columns), [str(name) for name in table.column_names]


CSV_COMMENT = "#"
MISSING_FLAG = "--missing em"


def _is_blank(line: str) -> bool:
    """Rows skipped in CSVs: empty, whitespace or delimiters only."""
    return not line.strip(" \t\r\n,")


def _is_data_line(line: str) -> bool:
    return not _is_blank(line) and not line.lstrip().startswith(CSV_COMMENT)


def _split_fields(line: str) -> list[str]:
    return next(csv.reader([line]))


def _number_or_nan(field: str) -> float:
    """A CSV field as a float, NaN when empty (a missing value)."""
    return float(field) if field.strip() else np.nan


def _read_csv(file: Path, missing: bool) -> tuple[np.ndarray, list[str]]:
    """CSV via np.loadtxt (C parser, no Python work per field; with `missing` a Python
    converter per field, about 1.5x the time); the slow line-by-line diagnosis
    (`_locate_csv_error`) runs only when the parser has already failed."""
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            header, names, data_start = _csv_header(handle)
            if names is None:
                raise DataFileError(f"{file}: is empty")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
                try:
                    X = np.loadtxt(
                        (line for line in handle if not _is_blank(line)), dtype=np.float64, delimiter=",",
                        comments=CSV_COMMENT, quotechar='"', ndmin=2, encoding=None,
                        converters=_number_or_nan if missing else None,
                    )
                    parse_error = None
                except ValueError as err:
                    X, parse_error = None, err
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"{file}: cannot be read as text CSV ({err})") from None
    if X is not None and X.size == 0:
        raise DataFileError(f"{file}: has a header but no data rows")
    if X is None or X.shape[1] != len(names):
        raise DataFileError(_locate_csv_error(file, data_start, names, missing) or f"{file}: {parse_error}")
    return X, names


def _csv_header(handle) -> tuple[bool, list[str] | None, int]:
    """Consume the leading blank lines and the header row, if any, of an open CSV.

    Returns (has header, column names or None for an empty file, 1-based line number of
    the first data line); without a header the first row is pushed back for the parser.
    """
    for number, line in enumerate(iter(handle.readline, ""), start=1):
        if _is_blank(line):
            continue
        text = line.lstrip()
        commented = text.startswith(CSV_COMMENT)
        fields = _split_fields(text[1:] if commented else line)
        if commented or not all(_is_number(field) or not field.strip() for field in fields):
            names = [field.strip() or f"x{j}" for j, field in enumerate(fields)]
            return True, names, number + 1
        handle.seek(0)  # no header: the parser reads from the top (blank lines skipped)
        return False, [f"x{j}" for j in range(len(fields))], 1
    return False, None, 1


def _locate_csv_error(file: Path, data_start: int, names: list[str], missing: bool) -> str | None:
    """Message naming the first ragged row or non-number at or after line `data_start`
    (empty fields are numbers when `missing`)."""
    with file.open(newline="", encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if number < data_start or not _is_data_line(line):
                continue
            fields = _split_fields(line)
            if len(fields) != len(names):
                return f"{file}: line {number} has {len(fields)} fields, expected {len(names)}"
            for name, field in zip(names, fields):
                if field.strip() and not _is_number(field):
                    return (
                        f"{file}: line {number}, column {name!r}: {field.strip()!r} is not a number; "
                        "jaxem fits numeric columns only"
                    )
                if not field.strip() and not missing:
                    return (
                        f"{file}: line {number}, column {name!r}: '' is not a number; fit with "
                        f"{MISSING_FLAG} to read empty fields as missing values"
                    )
    return None


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


# --- families ---------------------------------------------------------------------------
FAMILIES = ("gaussian", "poisson", "bernoulli", "categorical", "student_t", "regression")
FAMILY_TITLES = {
    "gaussian": "Gaussian mixture",
    "poisson": "Poisson mixture",
    "bernoulli": "Bernoulli mixture",
    "categorical": "categorical mixture",
    "student_t": "Student-t mixture",
    "regression": "mixture of regressions (target: last column)",
}
# Constructor options of the families: CLI dest -> (keyword of the model, families it applies to).
FAMILY_OPTIONS = {
    "covariance": ("covariance_type", ("gaussian", "student_t")),
    "reg_covar": ("reg_covar", ("gaussian", "student_t")),
    "min_rate": ("min_rate", ("poisson",)),
    "pseudo_count": ("pseudo_count", ("bernoulli", "categorical")),
    "n_categories": ("n_categories", ("categorical",)),
    "dof": ("dof", ("student_t",)),
    "min_dof": ("min_dof", ("student_t",)),
    "max_dof": ("max_dof", ("student_t",)),
    "fixed_dof": ("learn_dof", ("student_t",)),
    "no_intercept": ("fit_intercept", ("regression",)),
    "reg_variance": ("reg_variance", ("regression",)),
}
NEGATED_FLAGS = {"learn_dof", "fit_intercept"}  # keywords whose flag sets them to False
# Families whose models jaxem.fit(..., missing="em") fits (those with Gaussian components).
MISSING_FAMILIES = ("gaussian",)


def check_missing_option(missing: str | None, family: str) -> str | None:
    """The --missing method for `family`; raises ValueError for a family without one."""
    if missing is not None and family not in MISSING_FAMILIES:
        raise ValueError(
            f"--missing {missing} applies to --family {' / '.join(MISSING_FAMILIES)} only, not {family}"
        )
    return missing


def missing_values_error(file: str, X: np.ndarray) -> str:
    """The error for data with NaN fitted without --missing: where the non-finite values
    are (jaxem.fit's own message, in data rows) and the option that fits them."""
    bad = ~np.isfinite(X)
    rows = np.flatnonzero(bad.any(axis=1))
    return (
        f"{file}: {int(bad.sum())} NaN or infinite value(s) in {rows.size} row(s); the first is data row "
        f"{int(rows[0])}: {X[rows[0]].tolist()}. NaN entries are missing values: fit them with "
        f"{MISSING_FLAG} (--family {' / '.join(MISSING_FAMILIES)}), or remove them"
    )


def model_options(family: str, given: dict, X: np.ndarray) -> dict:
    """Keyword arguments of the family's constructor from the CLI options that were given
    (dest -> value, None = not given). Raises ValueError for an option of another family."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    options = {}
    for dest, value in given.items():
        if value is None or value is False:
            continue
        keyword, families = FAMILY_OPTIONS[dest]
        if family not in families:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} applies to --family {' / '.join(families)} only, not {family}")
        options[keyword] = value
    for keyword in NEGATED_FLAGS.intersection(options):  # --fixed-dof, --no-intercept
        options[keyword] = False
    if family == "student_t" and options.pop("covariance_type", "full") != "full":
        raise ValueError("--family student_t has full scale matrices only: --covariance must be full")
    if family == "gaussian":
        options.setdefault("covariance_type", "full")
    if family == "categorical" and "n_categories" not in options:
        options["n_categories"] = max(2, int(np.nanmax(X)) + 1) if X.size else 2
    return options


def build_model(family: str, n_components: int, options: dict):
    """The jaxem model of a family, e.g. build_model("poisson", 3, {"min_rate": 1e-8})."""
    import jaxem

    classes = {
        "gaussian": jaxem.GaussianMixture,
        "poisson": jaxem.PoissonMixture,
        "bernoulli": jaxem.BernoulliMixture,
        "categorical": jaxem.CategoricalMixture,
        "student_t": jaxem.StudentTMixture,
        "regression": jaxem.MixtureOfRegressions,
    }
    return classes[family](n_components, **options)


def _value_labels(family: str, field: str, shape: tuple, names: list[str], options: dict):
    """(row labels or None, column labels) of one component's value of a params field."""
    if family == "regression" and field == "coefs":
        return None, (["intercept"] if options.get("fit_intercept", True) else []) + names[:-1]
    if family == "categorical" and field == "probs":
        return names, [f"code {c}" for c in range(shape[-1])]
    columns = names if shape and shape[-1] == len(names) else [f"{field}[{i}]" for i in range(shape[-1] if shape else 0)]
    return (names if len(shape) == 2 else None), columns


def format_family_params(params, family: str, names: list[str], options: dict) -> str:
    """A readable table of any family's params: the weight, then every other field, per component."""
    fields = {name: np.asarray(value) for name, value in params._asdict().items()}
    weights = fields.pop("weights")
    labels = {f: _value_labels(family, f, v.shape[1:], names, options) for f, v in fields.items()}
    label_width = 2 + max(len(f) + 1 + max([0] + [len(r) for r in rows or []]) for f, (rows, _) in labels.items())
    width = max([10] + [2 + len(str(c)) for _, columns in labels.values() for c in columns])
    number = lambda v: f"{v:>{width}.4f}"
    lines = []
    for k, weight in enumerate(weights):
        lines.append(f"component {k}: weight {weight:.4f}")
        for field, value in fields.items():
            rows, columns = labels[field]
            value = value[k]
            if value.ndim == 0:
                lines.append("  " + f"{field:<{label_width}}" + number(value))
                continue
            lines.append("  " + " " * label_width + "".join(f"{c:>{width}}" for c in columns))
            for label, row in zip(rows or [""], np.atleast_2d(value)):
                lines.append("  " + f"{(field + ' ' + label).strip():<{label_width}}" + "".join(number(v) for v in row))
    return "\n".join(lines)


def fit_and_report(X, names, n_components, covariance_type, n_restarts, seed, max_iter, tol,
                   family="gaussian", options=None, progress=False, missing=None):
    """Fit a mixture of `family` (Gaussian with `covariance_type` by default) and return
    (result, model, printed report); progress: print the iterations of a running fit to
    stderr (jaxem.fit's progress=True); missing: jaxem.fit's (NaN in X as missing values)."""
    import jax

    import jaxem

    options = dict(options or {})
    if family == "gaussian":
        options.setdefault("covariance_type", covariance_type)
    model = build_model(family, n_components, options)
    # NumPy copies: formatting indexes the result many times, each an XLA dispatch on jax arrays.
    result = jax.device_get(jaxem.fit(
        model, X, key=jax.random.key(seed), n_restarts=n_restarts, max_iter=max_iter, tol=tol, progress=progress or None,
        missing=missing,
    ))
    return result, model, fit_report(result, X, names, n_components, n_restarts, family, options)


def fit_report(result, X, names, n_components, n_restarts, family, options) -> str:
    """The printed report of a fit (host arrays): title, params table, restarts table."""
    if family == "gaussian":
        title = f"Gaussian mixture, K={n_components}, covariance={options['covariance_type']}, "
        table = format_params(result.params, options["covariance_type"], names)
    else:
        extras = "".join(f", {key}={value}" for key, value in options.items())
        title = f"{FAMILY_TITLES[family]}, K={n_components}{extras}, "
        table = format_family_params(result.params, family, names, options)
    n_missing = int(np.isnan(X).sum())
    missing = f", {n_missing} missing entries (fitted as missing at random)" if n_missing else ""
    return "\n".join([
        title + f"{n_restarts} restarts, {X.shape[0]} samples x {X.shape[1]} features{missing}",
        table,
        "",
        format_restarts(result),
    ])


_CRITERIA = None


def information_criteria(model, params, X) -> tuple[float, float]:
    """(BIC, AIC) of params on X, as one compiled program: eager calls of model.bic and
    model.aic dispatch dozens of small programs (0.2 s against 0.04 s with a warm cache).
    With NaN in X, from the log-likelihood of the observed entries (jaxem.missing)."""
    global _CRITERIA
    if np.isnan(X).any():
        from jaxem import missing

        return missing.information_criteria(model, params, X)
    if _CRITERIA is None:
        import jax

        _CRITERIA = jax.jit(lambda m, p, x: (m.bic(p, x), m.aic(p, x)))
    bic, aic = _CRITERIA(model, params, X)
    return float(bic), float(aic)


def select_components(X, k_values, covariance_type, n_restarts, seed, max_iter, tol):
    """jaxem.select over K in k_values (full fits of Gaussian mixtures, all K as one
    compiled program); returns the Selection copied to the host (formatting indexes it
    many times, each an XLA dispatch on jax arrays)."""
    import jax

    import jaxem

    selection = jaxem.select(
        lambda k: jaxem.GaussianMixture(k, covariance_type=covariance_type), X, key=jax.random.key(seed),
        n_components=k_values, n_restarts=n_restarts, max_iter=max_iter, tol=tol,
    )
    return jax.device_get(selection)


def bic_table(selection) -> tuple[str, dict]:
    """BIC (and mean log-likelihood) of the best restart for each K of a Selection.

    Returns (printed table, {K: {"BIC": .., "AIC": ..}}).
    """
    lines = [f"{'K':>3} {'log-lik/sample':>15} {'BIC':>12}"]
    scores = {}
    for k, log_lik, bic, aic in zip(selection.n_components, selection.log_likelihood, selection.bic, selection.aic):
        scores[int(k)] = {"BIC": float(bic), "AIC": float(aic)}
        lines.append(f"{int(k):>3} {float(log_lik):>15.6f} {float(bic):>12.3f}")
    lines.append(f"lowest BIC: K={selection.best_n_components}")
    return "\n".join(lines), scores


# --- JSON -------------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    """Nested lists of an array, with NaN and infinities as None (valid JSON)."""
    array = np.asarray(value)
    if array.dtype.kind in "fc":
        out = array.astype(object)
        out[~np.isfinite(array)] = None
        return out.tolist()
    return array.tolist()


def restart_rows(result) -> list[dict]:
    """One dict per restart: final log-likelihood, iterations, E-steps, converged, status."""
    from jaxem import status_message

    runs, best = result.restarts, int(result.best_restart)
    return [
        {
            "restart": r,
            "log_likelihood": _json_value(runs.log_likelihood[r]),
            "n_iter": int(runs.n_iter[r]),
            "n_evals": int(runs.n_evals[r]),
            "converged": bool(runs.converged[r]),
            "status": int(runs.status[r]),
            "status_message": status_message(runs.status[r]),
            "selected": r == best,
        }
        for r in range(runs.n_iter.shape[0])
    ]


def fit_document(result, model, family: str, options: dict, X: np.ndarray, names: list[str], missing=None) -> dict:
    """The `--json` report of a fit: model, params, status, log-likelihood, criteria, restarts;
    missing: the --missing method, reported with the number of NaN entries of X."""
    from jaxem import status_message

    return {
        "family": family,
        "model": {"class": type(model).__name__, "n_components": model.n_components, **options},
        "columns": names,
        "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "missing": missing,
        "n_missing": int(np.isnan(X).sum()),
        "params": {name: _json_value(value) for name, value in result.params._asdict().items()},
        "log_likelihood": _json_value(result.log_likelihood),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
        "status": int(result.status),
        "status_message": status_message(result.status),
        "best_restart": int(result.best_restart),
        **dict(zip(("bic", "aic"), map(_json_value, information_criteria(model, result.params, X)))),
        "restarts": restart_rows(result),
    }


# --- plots ------------------------------------------------------------------------------
def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_kind(family: str, n_features: int) -> str:
    """"components" (data and ellipses) for Gaussian / Student-t fits of >= 2 features, else "trace"."""
    return "components" if family in ("gaussian", "student_t") and n_features >= 2 else "trace"


def write_fit_plot(path: str, result, model, family: str, X: np.ndarray, names: list[str]) -> str:
    """Save the components plot (or the EM traces) of a fit to `path`; returns the kind drawn.
    The components plot draws the rows without missing entries (NaN) and the fitted
    ellipses; with no such row it falls back to the traces."""
    from matplotlib.figure import Figure

    from jaxem import plot

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    complete = X[~np.isnan(X).any(axis=1)]
    kind = plot_kind(family, X.shape[1]) if complete.shape[0] else "trace"
    if kind == "components":
        plot.plot_components(model, result.params, complete, ax=ax, feature_names=names)
    else:
        plot.plot_trace(result, ax=ax)
    fig.savefig(path, dpi=110)
    return kind


def write_demo_plot(path: str, model, result, X, names, scores) -> str:
    """Save the demo's figure (components, EM traces, BIC/AIC against K); returns a one-line
    note, which says the plot was skipped when matplotlib is missing."""
    if not matplotlib_available():
        return "plot skipped: matplotlib is not installed (pip install jaxem[plot])"
    from matplotlib.figure import Figure

    from jaxem import plot

    fig = Figure(figsize=(16, 4.8))  # fixed margins: a constrained layout costs 0.1 s here
    fig.subplots_adjust(left=0.045, right=0.985, bottom=0.11, top=0.93, wspace=0.2)
    components, traces, criterion = fig.subplots(1, 3)
    plot.plot_components(model, result.params, X, ax=components, feature_names=names)
    plot.plot_trace(result, ax=traces)
    plot.plot_criterion(scores, ax=criterion)
    fig.savefig(path, dpi=100)
    return f"plot written to {path}"


# --- commands ---------------------------------------------------------------------------
def run_demo(args) -> int:
    import jaxem

    start = time.perf_counter()
    X, names = read_matrix(jaxem.data_path(DEMO_DATA))
    print(f"Old Faithful geyser data ({X.shape[0]} eruptions: {', '.join(names)})\n")
    # One compiled program fits every K; the K=2 fit reported first is the sweep's own
    # (equal to jaxem.fit(GaussianMixture(2), ...) from the same key: jaxem.select).
    selection = select_components(X, range(1, 5), "full", DEMO_RESTARTS, args.seed, 100, 1e-3)
    result = selection.fits[list(selection.n_components).index(DEMO_COMPONENTS)]
    model = jaxem.GaussianMixture(DEMO_COMPONENTS, covariance_type="full")
    print(fit_report(result, X, names, DEMO_COMPONENTS, DEMO_RESTARTS, "gaussian", {"covariance_type": "full"}))
    print(f"\nModel selection over K = 1..4 (full covariance, {DEMO_RESTARTS} restarts each, one program):")
    table, scores = bic_table(selection)
    print(table)
    print("\n" + write_demo_plot(args.plot or DEMO_PLOT, model, result, X, names, scores))
    print(f"\ntotal time {time.perf_counter() - start:.1f} s (compilation included)")
    return 0


def run_fit(args) -> int:
    if args.plot and not matplotlib_available():
        raise ValueError("--plot needs matplotlib: pip install jaxem[plot]")
    missing = check_missing_option(args.missing, args.family)
    X, names = read_matrix(args.file, missing=missing is not None)
    incomplete = np.isnan(X).any(axis=1)
    if missing is None and incomplete.any():
        raise ValueError(missing_values_error(args.file, X))
    given = {dest: getattr(args, dest) for dest in FAMILY_OPTIONS}
    options = model_options(args.family, given, X)
    result, model, report = fit_and_report(
        X, names, args.k, options.get("covariance_type"), args.restarts, args.seed, args.max_iter, args.tol,
        family=args.family, options=options, progress=args.progress, missing=missing,
    )
    notes = []
    if args.out:
        notes.append(write_params(args.out, result, model, args.family, options))
    if args.plot:
        kind = write_fit_plot(args.plot, result, model, args.family, X, names)
        note = f"{'components' if kind == 'components' else 'trace'} plot written to {args.plot}"
        if kind == "components" and incomplete.any():
            note += f" (the {int(incomplete.sum())} rows with missing entries are not drawn)"
        elif kind != plot_kind(args.family, X.shape[1]):
            note += " (every row has a missing entry: EM traces in place of the components)"
        notes.append(note)
    if args.json:
        print(json.dumps(fit_document(result, model, args.family, options, X, names, missing), indent=2))
        for note in notes:
            print(note, file=sys.stderr)
        return 0
    print(report)
    bic, aic = information_criteria(model, result.params, X)
    print(f"\nBIC {bic:.3f}   AIC {aic:.3f}")
    for note in notes:
        print(note)
    return 0


def write_params(out: str, result, model, family: str, options: dict) -> str:
    """Write the fitted params: a checkpoint (jaxem.io) for .npz, else JSON. Returns a note."""
    if Path(out).suffix == ".npz":
        from jaxem import io

        io.save(out, result)
        return f"fit result written to {out} (load it with jaxem.io.load)"
    payload = {
        "family": family,
        "n_components": model.n_components,
        **options,
        "log_likelihood": _json_value(result.log_likelihood),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
        **{name: _json_value(value) for name, value in result.params._asdict().items()},
    }
    Path(out).write_text(json.dumps(payload, indent=2))
    return f"params written to {out}"


# --- compilation cache ------------------------------------------------------------------
NO_CACHE_ENV = "JAXEM_NO_COMPILATION_CACHE"


def user_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME, else the platform's per-user cache folder (~/.cache on Linux)."""
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"])
    if sys.platform == "win32" and environ.get("LOCALAPPDATA"):
        return Path(environ["LOCALAPPDATA"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path.home() / ".cache"


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the CLI keeps compiled XLA programs: <user cache dir>/jaxem/xla, or None when
    JAXEM_NO_COMPILATION_CACHE is set to anything but "" or "0"."""
    if environ.get(NO_CACHE_ENV, "") not in ("", "0"):
        return None
    return user_cache_dir(environ) / "jaxem" / "xla"


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process (the CLI only; the
    library never does), caching every program however fast it compiled. A cache folder
    already configured for JAX (e.g. JAX_COMPILATION_CACHE_DIR) is kept. Returns the folder."""
    import jax

    directory = compilation_cache_dir(environ)
    if directory is None:
        return None
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return Path(jax.config.jax_compilation_cache_dir)


CACHE_HELP = f"""\
compilation cache: the jaxem command keeps the programs XLA compiles in
<user cache dir>/jaxem/xla ($XDG_CACHE_HOME or ~/.cache), so a second run with the
same shapes starts in a fraction of the time. Set {NO_CACHE_ENV}=1 to turn it off;
delete the folder to reclaim the space. The Python library never caches on disk."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxem", description="Expectation-Maximization in JAX", epilog=CACHE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit the bundled Old Faithful data", epilog=CACHE_HELP,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", help=f"write the demo's figure here (default: ./{DEMO_PLOT}; needs matplotlib)")
    demo.set_defaults(run=run_demo)
    fit = commands.add_parser("fit", help="fit a mixture to a CSV, .npy or .parquet file", epilog=CACHE_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    fit.add_argument("file", help="CSV (optional header row), .npy or .parquet (needs pyarrow) file, one sample per row")
    fit.add_argument("-k", type=int, required=True, help="number of components")
    fit.add_argument("--family", choices=FAMILIES, default="gaussian",
                     help="model family (regression: covariates first, target in the last column)")
    family = fit.add_argument_group("family options (each only for the families named)")
    family.add_argument("--covariance", choices=["full", "diag", "spherical", "tied"], default=None,
                        help="gaussian: covariance type (default full); student_t: full only")
    family.add_argument("--reg-covar", type=float, help="gaussian, student_t: added to every covariance's diagonal")
    family.add_argument("--min-rate", type=float, help="poisson: floor on the fitted rates")
    family.add_argument("--pseudo-count", type=float, help="bernoulli, categorical: Dirichlet pseudo-count (0 = ML)")
    family.add_argument("--n-categories", type=int, help="categorical: number of codes C (default: largest code + 1)")
    family.add_argument("--dof", type=float, help="student_t: starting degrees of freedom")
    family.add_argument("--min-dof", type=float, help="student_t: lower bound of the degrees of freedom")
    family.add_argument("--max-dof", type=float, help="student_t: upper bound of the degrees of freedom")
    family.add_argument("--fixed-dof", action="store_true", help="student_t: keep the degrees of freedom fixed")
    family.add_argument("--no-intercept", action="store_true", help="regression: no intercept column")
    family.add_argument("--reg-variance", type=float, help="regression: added to every noise variance")
    fit.add_argument("--missing", choices=["em"],
                     help="em: NaN entries, empty CSV fields and Parquet nulls are missing values (missing at "
                          "random), fitted by EM on the observed entries (gaussian only); without it they are errors")
    fit.add_argument("--restarts", type=int, default=8)
    fit.add_argument("--max-iter", type=int, default=100)
    fit.add_argument("--tol", type=float, default=1e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", help="write the fitted params to this JSON file (.npz: a jaxem.io checkpoint)")
    fit.add_argument("--json", action="store_true",
                     help="print a JSON report (params, status, log-likelihood, n_iter, restarts) instead of tables")
    fit.add_argument("--plot", help="write a PNG: data and component ellipses (gaussian, student_t), else EM traces")
    fit.add_argument("--progress", action="store_true",
                     help="print iteration, objective and change of the running fit to stderr (at most once a second)")
    fit.set_defaults(run=run_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `jaxem` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache()
    try:
        return args.run(args)
    except ValueError as err:
        print(f"jaxem: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
