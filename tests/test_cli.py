"""The `jaxem` command: demo, fit on CSV / .npy, readable errors."""

import json

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import jaxem
from jaxem import cli


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_demo_prints_params_restarts_and_bic(capsys):
    status, out, _ = run(capsys, "demo")
    assert status == 0
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
