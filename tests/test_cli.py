"""The `jaxem` command: demo, fit on CSV / .npy / .parquet, families, JSON, plots, cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxem
from jaxem import cli
from jaxem import io as jio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No persistent compilation cache (it would be process-wide and in the user's home)
    and a scratch working directory (the demo writes its plot there)."""
    monkeypatch.setenv(cli.NO_CACHE_ENV, "1")
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_demo_prints_params_restarts_and_bic(capsys, tmp_path):
    status, out, _ = run(capsys, "demo")
    assert status == 0
    assert f"plot written to {cli.DEMO_PLOT}" in out
    assert (tmp_path / cli.DEMO_PLOT).read_bytes().startswith(PNG_MAGIC)
    assert out.count("component ") == 2
    restart_lines = [line for line in out.splitlines() if "converged: " in line or "max_iter" in line]
    assert len(restart_lines) == 16
    assert "lowest BIC: K=2" in out
    # The selected fit matches scikit-learn's best of many restarts on the same data.
    X = np.loadtxt(jaxem.data_path("old_faithful.csv"), delimiter=",", skiprows=1)
    sk = SkGaussianMixture(2, n_init=8, random_state=0).fit(X)
    best_line = next(line for line in restart_lines if line.endswith("*"))
    assert abs(float(best_line.split()[1]) - sk.score(X)) < 1e-5


def test_fit_csv_with_header_writes_json(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(60, 2)) + np.repeat([[0, 0], [6, 6]], 30, axis=0)
    path = tmp_path / "data.csv"
    np.savetxt(path, X, delimiter=",", header="a,b", comments="")
    out_json = tmp_path / "params.json"
    status, out, _ = run(capsys, "fit", str(path), "-k", "2", "--covariance", "diag", "--restarts", "2", "--out", str(out_json))
    assert status == 0 and "BIC" in out
    saved = json.loads(out_json.read_text())
    assert saved["covariance_type"] == "diag"
    assert np.asarray(saved["covariances"]).shape == (2, 2)
    np.testing.assert_allclose(sorted(np.asarray(saved["means"])[:, 0]), [X[:30, 0].mean(), X[30:, 0].mean()], atol=0.3)


def test_fit_npy(tmp_path, capsys):
    path = tmp_path / "data.npy"
    np.save(path, np.random.default_rng(1).normal(size=(50, 3)))
    status, out, _ = run(capsys, "fit", str(path), "-k", "1", "--covariance", "spherical")
    assert status == 0 and "component 0: weight 1.0000" in out


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n3,x\n", "line 3, column 'b': 'x' is not a number"),
        ("a,b\n1,2\n3\n", "line 3 has 1 fields, expected 2"),
        ("", "is empty"),
        ("a,b\n", "no data rows"),
        ("1,2\nnan,4\n1,1\n", "NaN or infinite"),
    ],
)
def test_fit_reports_bad_files(tmp_path, capsys, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    status, _, err = run(capsys, "fit", str(path), "-k", "1")
    assert status == 2
    assert message in err


def test_fit_reports_missing_and_unreadable_files(tmp_path, capsys):
    status, _, err = run(capsys, "fit", str(tmp_path / "nope.csv"), "-k", "2")
    assert status == 2 and "no such file" in err
    binary = tmp_path / "junk.npy"
    binary.write_bytes(b"\x00\x01garbage")
    status, _, err = run(capsys, "fit", str(binary), "-k", "2")
    assert status == 2 and "not a readable .npy file" in err


# --- CSV --------------------------------------------------------------------------------
def exact_csv(X, header=None, newline="\n", prefix=""):
    """CSV text whose numbers round-trip exactly (17 significant digits)."""
    rows = [",".join(f"{v:.17g}" for v in row) for row in X]
    return prefix + newline.join(([header] if header is not None else []) + rows) + newline


@pytest.mark.parametrize(
    "header, prefix, newline, names",
    [
        ("a,b,c", "", "\n", ["a", "b", "c"]),
        ('"first col","b",c', "\ufeff", "\r\n", ["first col", "b", "c"]),  # quoted names, BOM, CRLF
        ("# a,b,c", "", "\n", ["a", "b", "c"]),  # np.savetxt's default header
        (None, "\n  \n", "\n", ["x0", "x1", "x2"]),  # no header, leading blank lines
    ],
)
def test_csv_headers_and_exact_values(tmp_path, header, prefix, newline, names):
    X = np.random.default_rng(0).normal(size=(25, 3)) * 10.0 ** np.arange(-3, 6, 3)
    path = tmp_path / "data.csv"
    path.write_bytes(exact_csv(X, header, newline, prefix).encode("utf-8"))
    values, read_names = cli.read_matrix(str(path))
    assert read_names == names
    assert values.dtype == np.float64 and values.tobytes() == X.tobytes()


def test_csv_skips_blank_and_comment_rows(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("a,b\n1,2\n\n   \n,\n# a comment\n3,4.5\n")
    values, names = cli.read_matrix(str(path))
    assert names == ["a", "b"]
    np.testing.assert_array_equal(values, [[1, 2], [3, 4.5]])


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n\n\n3,x\n", "line 5, column 'b': 'x' is not a number"),  # physical line numbers
        ("a,b\n1,2,3\n", "line 2 has 3 fields, expected 2"),  # wider than the header
        ("1,2\n3,\n", "line 2, column 'x1': '' is not a number"),
        ("a,b\n" + "1,2\n" * 5000 + "1;2\n", "line 5002 has 1 fields, expected 2"),
    ],
)
def test_csv_errors_name_line_and_column(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(cli.DataFileError, match=message):
        cli.read_matrix(str(path))


# --- Parquet ----------------------------------------------------------------------------
def test_parquet_numeric_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    floats, ints, flags = rng.normal(size=30), rng.integers(-5, 5, size=30), rng.random(30) < 0.5
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"f": floats, "i": ints.astype(np.int32), "flag": flags}), path)
    X, names = cli.read_matrix(str(path))
    assert names == ["f", "i", "flag"]
    assert X[:, 0].tobytes() == floats.tobytes()
    np.testing.assert_array_equal(X[:, 1:], np.column_stack([ints, flags]).astype(float))
    pq.write_table(pa.table({"f": floats, "name": [f"s{i}" for i in range(30)]}), path)
    with pytest.raises(cli.DataFileError, match="column 'name' has type string"):
        cli.read_matrix(str(path))
    pq.write_table(pa.table({"f": pa.array([1.0, None, 3.0])}), path)
    with pytest.raises(cli.DataFileError, match="column 'f' has 1 missing value"):
        cli.read_matrix(str(path))


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(cli.DataFileError, match=r"pip install jaxem\[parquet\]"):
        cli.read_matrix(str(path))


# --- families and JSON ------------------------------------------------------------------
def fit_json(capsys, path, *options):
    status, out, err = run(capsys, "fit", str(path), "--json", *options)
    assert status == 0, err
    doc = json.loads(out)
    rows = doc["restarts"]
    assert [row["restart"] for row in rows] == list(range(len(rows)))
    assert [row["selected"] for row in rows].count(True) == 1 and rows[doc["best_restart"]]["selected"]
    for row in rows + [doc]:
        assert row["status_message"] == jaxem.status_message(row["status"])
    return doc


def write_csv(tmp_path, X, name="data.csv"):
    path = tmp_path / name
    path.write_text(exact_csv(X))
    return path


def student_t_reference(X, dof, reg_covar=1e-6, n_iter=2000):
    """Textbook EM for one multivariate t with fixed dof (Peel & McLachlan 2000)."""
    mean, cov = X.mean(0), np.cov(X.T, bias=True)
    for _ in range(n_iter):
        diff = X - mean
        delta = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
        u = (dof + X.shape[1]) / (dof + delta)
        mean = (u[:, None] * X).sum(0) / u.sum()
        diff = X - mean
        cov = (u[:, None, None] * diff[:, :, None] * diff[:, None, :]).sum(0) / len(X) + reg_covar * np.eye(X.shape[1])
    return mean, cov


def test_one_component_fits_of_every_family_match_closed_forms(tmp_path, capsys):
    rng = np.random.default_rng(2)
    n = 200
    real = rng.normal(size=(n, 2)) @ np.array([[1.0, 0.4], [0.0, 0.7]]) + [3.0, -1.0]
    doc = fit_json(capsys, write_csv(tmp_path, real), "-k", "1", "--restarts", "2")
    assert doc["family"] == "gaussian" and doc["model"]["covariance_type"] == "full"
    np.testing.assert_allclose(doc["params"]["means"][0], real.mean(0), rtol=1e-10)
    np.testing.assert_allclose(doc["params"]["covariances"][0], np.cov(real.T, bias=True) + 1e-6 * np.eye(2), rtol=1e-8)

    counts = rng.poisson([1.5, 7.0], size=(n, 2)).astype(float)
    doc = fit_json(capsys, write_csv(tmp_path, counts), "-k", "1", "--family", "poisson", "--restarts", "1")
    np.testing.assert_allclose(doc["params"]["rates"][0], counts.mean(0), rtol=1e-12)

    binary = (rng.random((n, 3)) < [0.1, 0.5, 0.8]).astype(float)
    doc = fit_json(capsys, write_csv(tmp_path, binary), "-k", "1", "--family", "bernoulli", "--pseudo-count", "0.5",
                   "--restarts", "1")
    assert doc["model"]["pseudo_count"] == 0.5
    np.testing.assert_allclose(doc["params"]["probs"][0], (binary.sum(0) + 0.5) / (n + 1.0), rtol=1e-12)

    codes = rng.integers(0, 3, size=(n, 2)).astype(float)  # code 3 of the 4 never occurs
    doc = fit_json(capsys, write_csv(tmp_path, codes), "-k", "1", "--family", "categorical", "--n-categories", "4",
                   "--pseudo-count", "0.25", "--restarts", "1")
    frequencies = np.stack([[(codes[:, d] == c).sum() for c in range(4)] for d in range(2)])
    np.testing.assert_allclose(doc["params"]["probs"][0], (frequencies + 0.25) / (n + 4 * 0.25), rtol=1e-12)

    x = rng.normal(size=n)
    y = 0.5 - 2.0 * x + 0.3 * rng.normal(size=n)
    doc = fit_json(capsys, write_csv(tmp_path, np.column_stack([x, y])), "-k", "1", "--family", "regression",
                   "--restarts", "1")
    design = np.column_stack([np.ones(n), x])
    coefs, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(doc["params"]["coefs"][0], coefs, rtol=1e-10)
    np.testing.assert_allclose(doc["params"]["variances"][0], rss[0] / n + 1e-6, rtol=1e-10)

    heavy = rng.standard_t(3.0, size=(n, 2)) + [1.0, 2.0]
    doc = fit_json(capsys, write_csv(tmp_path, heavy), "-k", "1", "--family", "student_t", "--fixed-dof", "--dof", "3",
                   "--restarts", "1", "--tol", "1e-14", "--max-iter", "2000")
    assert doc["model"]["learn_dof"] is False and doc["params"]["dofs"] == [3.0]
    mean, cov = student_t_reference(heavy, 3.0)
    np.testing.assert_allclose(doc["params"]["means"][0], mean, atol=1e-8)
    np.testing.assert_allclose(doc["params"]["covariances"][0], cov, atol=1e-8)


def test_json_report_is_consistent_with_the_model(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(70, 2)), rng.normal(size=(50, 2)) + 5.0])
    doc = fit_json(capsys, write_csv(tmp_path, X), "-k", "2", "--restarts", "3", "--max-iter", "3", "--tol", "0")
    assert len(doc["restarts"]) == 3 and doc["n_iter"] == 3 and doc["converged"] is False
    assert doc["status_message"] == jaxem.status_message(jaxem.Status.MAX_ITER)
    finite = [row["log_likelihood"] if row["log_likelihood"] is not None else -np.inf for row in doc["restarts"]]
    assert doc["best_restart"] == int(np.argmax(finite))
    params = jaxem.GaussianMixtureParams(*(np.asarray(doc["params"][f]) for f in ("weights", "means", "covariances")))
    model = jaxem.GaussianMixture(2)
    score = float(model.score(params, X))
    np.testing.assert_allclose(doc["log_likelihood"], score, rtol=1e-10)
    n_params = 1 + 2 * 2 + 2 * 3  # weights, means, full 2x2 covariances
    np.testing.assert_allclose(doc["bic"], -2 * len(X) * score + n_params * np.log(len(X)), rtol=1e-10)
    np.testing.assert_allclose(doc["aic"], -2 * len(X) * score + 2 * n_params, rtol=1e-10)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--family", "poisson", "--covariance", "diag"], "--covariance applies to --family gaussian / student_t only"),
        (["--family", "student_t", "--covariance", "tied"], "full scale matrices only"),
        (["--pseudo-count", "1"], "--pseudo-count applies to --family bernoulli / categorical only, not gaussian"),
        (["--family", "regression", "--fixed-dof"], "--fixed-dof applies to --family student_t only"),
    ],
)
def test_family_options_of_other_families_are_refused(tmp_path, capsys, options, message):
    path = write_csv(tmp_path, np.arange(20.0).reshape(10, 2))
    status, _, err = run(capsys, "fit", str(path), "-k", "1", *options)
    assert status == 2 and message in err


def test_text_report_of_a_non_gaussian_family(tmp_path, capsys):
    rng = np.random.default_rng(4)
    counts = np.concatenate([rng.poisson([1.0, 2.0], (60, 2)), rng.poisson([9.0, 6.0], (40, 2))]).astype(float)
    path = tmp_path / "counts.csv"
    np.savetxt(path, counts, delimiter=",", header="calls,visits", comments="", fmt="%d")
    status, out, _ = run(capsys, "fit", str(path), "-k", "2", "--family", "poisson", "--restarts", "2")
    assert status == 0 and out.startswith("Poisson mixture, K=2, 2 restarts, 100 samples x 2 features")
    assert out.count("component ") == 2 and out.count("  rates ") == 2 and "calls" in out and "visits" in out


# --- outputs: checkpoint, plots ---------------------------------------------------------
def test_out_npz_is_a_checkpoint_of_the_fit(tmp_path, capsys):
    X = np.random.default_rng(5).normal(size=(40, 2))
    ckpt = tmp_path / "fit.npz"
    doc = fit_json(capsys, write_csv(tmp_path, X), "-k", "2", "--restarts", "2", "--out", str(ckpt))
    loaded = jio.load(ckpt)
    assert type(loaded) is jaxem.FitResult and loaded.restarts.n_iter.shape == (2,)
    for field in ("weights", "means", "covariances"):
        assert np.asarray(doc["params"][field]).tobytes() == getattr(loaded.params, field).tobytes()


@pytest.mark.parametrize("family, kind", [("gaussian", "components"), ("poisson", "trace")])
def test_plot_option_writes_a_png(tmp_path, capsys, family, kind):
    pytest.importorskip("matplotlib")
    counts = np.random.default_rng(6).poisson(3.0, size=(40, 2)).astype(float)
    out_png = tmp_path / "fit.png"
    status, out, _ = run(capsys, "fit", str(write_csv(tmp_path, counts)), "-k", "2", "--family", family,
                         "--restarts", "2", "--plot", str(out_png))
    assert status == 0 and f"{kind} plot written to {out_png}" in out
    assert out_png.read_bytes().startswith(PNG_MAGIC)


def test_plot_kind():
    assert cli.plot_kind("gaussian", 2) == cli.plot_kind("student_t", 5) == "components"
    assert cli.plot_kind("gaussian", 1) == cli.plot_kind("bernoulli", 3) == cli.plot_kind("regression", 2) == "trace"


def test_without_matplotlib_fit_refuses_plot_and_demo_skips_it(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    status, _, err = run(capsys, "fit", str(write_csv(tmp_path, np.ones((5, 2)))), "-k", "1", "--plot", "x.png")
    assert status == 2 and "pip install jaxem[plot]" in err
    note = cli.write_demo_plot(str(tmp_path / "demo.png"), None, None, None, None, None)
    assert note == "plot skipped: matplotlib is not installed (pip install jaxem[plot])"
    assert not (tmp_path / "demo.png").exists()


# --- compilation cache ------------------------------------------------------------------
def test_compilation_cache_folder_and_opt_out(tmp_path, monkeypatch):
    assert cli.compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxem" / "xla"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):
        assert cli.compilation_cache_dir({}) == tmp_path / "home" / ".cache" / "jaxem" / "xla"
    assert cli.compilation_cache_dir({cli.NO_CACHE_ENV: "1", "XDG_CACHE_HOME": str(tmp_path)}) is None
    assert cli.compilation_cache_dir({cli.NO_CACHE_ENV: "0", "XDG_CACHE_HOME": str(tmp_path)}) is not None


def test_help_documents_the_cache(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    out = capsys.readouterr().out
    assert cli.NO_CACHE_ENV in out and "jaxem/xla" in out


def test_cli_process_writes_its_cache_only_where_told(tmp_path):
    path = write_csv(tmp_path, np.random.default_rng(7).normal(size=(12, 1)))
    env = {k: v for k, v in os.environ.items() if k not in (cli.NO_CACHE_ENV, "JAX_COMPILATION_CACHE_DIR")}
    command = [sys.executable, "-m", "jaxem.cli", "fit", str(path), "-k", "1", "--restarts", "1", "--max-iter", "2"]
    cached = tmp_path / "cached"
    subprocess.run(command, env={**env, "XDG_CACHE_HOME": str(cached)}, check=True, capture_output=True)
    assert any((cached / "jaxem" / "xla").iterdir())
    opted_out = tmp_path / "opted_out"
    subprocess.run(command, env={**env, "XDG_CACHE_HOME": str(opted_out), cli.NO_CACHE_ENV: "1"}, check=True,
                   capture_output=True)
    assert not opted_out.exists()


def test_fit_progress_prints_iterations_to_stderr(tmp_path, capsys):
    path = tmp_path / "data.csv"
    np.savetxt(path, np.random.default_rng(0).normal(size=(60, 2)), delimiter=",")
    status, out, err = run(capsys, "fit", str(path), "-k", "2", "--restarts", "2", "--max-iter", "5", "--tol", "0", "--progress")
    assert status == 0
    assert "iter      1  objective" in err
    assert "iter      1  objective" not in out
