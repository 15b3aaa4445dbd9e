"""`jaxem fit --missing em`: empty / "nan" CSV fields and Parquet nulls read as NaN, the fit
is jaxem.fit(..., missing="em") with the same options, BIC from the observed entries (scipy
reference); without the flag the errors name it."""

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jax
import jaxem
from jaxem import cli
from test_cli import PNG_MAGIC, isolated, run  # noqa: F401 (isolated: an autouse fixture)

MISSING_FIELDS = ("", "nan", "NaN", " ")


def holed_data(n=120, seed=0):
    """Two clusters in 3-D with 15% of the entries missing (no row missing all three)."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(size=(n // 2, 3)), rng.normal(size=(n - n // 2, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]] + 4])
    X[rng.random(X.shape) < 0.15] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 1.0
    return X


def holed_csv(X, seed=1):
    """CSV text of X with a header, exact numbers, each NaN written as one of MISSING_FIELDS."""
    rng = np.random.default_rng(seed)
    field = lambda v: MISSING_FIELDS[rng.integers(len(MISSING_FIELDS))] if np.isnan(v) else f"{v:.17g}"
    return "a,b,c\n" + "".join(",".join(field(v) for v in row) + "\n" for row in X)


def observed_log_density(X, weights, means, covariances):
    """log p(x_o) of every row under a Gaussian mixture, by scipy on the observed coordinates."""
    rows = []
    for x in X:
        o = ~np.isnan(x)
        rows.append(logsumexp([np.log(w) + multivariate_normal(m[o], c[np.ix_(o, o)]).logpdf(x[o])
                               for w, m, c in zip(weights, means, covariances)]))
    return np.array(rows)


def test_csv_with_blanks_is_jaxem_fit_with_missing_em(tmp_path, capsys):
    X = holed_data()
    path = tmp_path / "holes.csv"
    path.write_text(holed_csv(X))
    read, names = cli.read_matrix(str(path), missing=True)
    assert names == ["a", "b", "c"] and read.tobytes() == X.tobytes()  # NaN where missing, exact elsewhere

    options = ("-k", "2", "--restarts", "2", "--max-iter", "30", "--tol", "1e-6", "--seed", "3")
    status, out, err = run(capsys, "fit", str(path), *options, "--missing", "em", "--json", "--plot", "fit.png")
    assert status == 0
    document = json.loads(out)
    separate = jaxem.fit(jaxem.GaussianMixture(2, covariance_type="full"), X, key=jax.random.key(3), n_restarts=2,
                         max_iter=30, tol=1e-6, missing="em")
    for field in ("weights", "means", "covariances"):
        np.testing.assert_array_equal(document["params"][field], np.asarray(getattr(separate.params, field)))
    assert document["log_likelihood"] == float(separate.log_likelihood)
    assert document["n_iter"] == int(separate.n_iter)
    assert document["missing"] == "em" and document["n_missing"] == int(np.isnan(X).sum())

    params = {field: np.asarray(document["params"][field]) for field in ("weights", "means", "covariances")}
    log_lik = observed_log_density(X, **params).sum()
    n_params = 1 + 2 * 3 + 2 * 6
    np.testing.assert_allclose(document["bic"], -2 * log_lik + n_params * np.log(len(X)), rtol=1e-9)
    np.testing.assert_allclose(document["aic"], -2 * log_lik + 2 * n_params, rtol=1e-9)

    incomplete = int(np.isnan(X).any(axis=1).sum())
    assert (tmp_path / "fit.png").read_bytes().startswith(PNG_MAGIC)
    assert f"components plot written to fit.png (the {incomplete} rows with missing entries are not drawn)" in err

    # with no row free of missing entries the plot is the EM traces
    every_row = X.copy()
    every_row[np.arange(len(X)), np.arange(len(X)) % 3] = np.nan
    model = jaxem.GaussianMixture(2, covariance_type="full")
    assert cli.write_fit_plot("rows.png", jax.device_get(separate), model, "gaussian", every_row, names) == "trace"
    assert (tmp_path / "rows.png").read_bytes().startswith(PNG_MAGIC)

    status, out, _ = run(capsys, "fit", str(path), *options, "--missing", "em")  # the text report
    assert status == 0
    assert f"{document['n_missing']} missing entries (fitted as missing at random)" in out
    assert f"BIC {document['bic']:.3f}" in out


@pytest.mark.parametrize("field", MISSING_FIELDS)
def test_without_the_flag_missing_values_are_errors_naming_it(tmp_path, capsys, field):
    path = tmp_path / "holes.csv"
    path.write_text(f"a,b\n1,2\n{field},3\n4,5\n")
    status, _, err = run(capsys, "fit", str(path), "-k", "1")
    assert status == 2 and "--missing em" in err
    assert ("line 3, column 'a'" if not field.strip() else "1 NaN or infinite value(s)") in err


def test_headerless_csv_whose_first_row_misses_an_entry(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("1,,3\n4,5,6\n")
    X, names = cli.read_matrix(str(path), missing=True)
    assert names == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(X, [[1, np.nan, 3], [4, 5, 6]])
    with pytest.raises(cli.DataFileError, match="line 1, column 'x1': '' is not a number; fit with --missing em"):
        cli.read_matrix(str(path))


def test_parquet_nulls_are_missing_values_with_the_flag(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "holes.parquet"
    pq.write_table(pa.table({"f": pa.array([1.5, None, 3.0]), "i": pa.array([1, 2, None], pa.int32()),
                             "flag": pa.array([True, None, False])}), path)
    X, names = cli.read_matrix(str(path), missing=True)
    assert names == ["f", "i", "flag"]
    np.testing.assert_array_equal(X, [[1.5, 1, 1], [np.nan, 2, np.nan], [3, np.nan, 0]])
    with pytest.raises(cli.DataFileError, match="column 'f' has 1 missing value.*--missing em"):
        cli.read_matrix(str(path))


def test_missing_applies_to_gaussian_only(tmp_path, capsys):
    path = tmp_path / "holes.csv"
    path.write_text("a,b\n1,2\n,3\n4,5\n")
    status, _, err = run(capsys, "fit", str(path), "-k", "1", "--family", "poisson", "--missing", "em")
    assert status == 2 and "--missing em applies to --family gaussian only, not poisson" in err
