"""Checkpoints (jaxem.io): exact round trips, and files that must be refused."""

import json
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.scipy.special import i0e

import jaxem
from jaxem import io as jio


def assert_same_tree_bits(original, loaded):
    """Same pytree structure, and every leaf has the same dtype, shape and bytes."""
    leaves, treedef = jax.tree.flatten(original)
    loaded_leaves, loaded_treedef = jax.tree.flatten(loaded)
    assert loaded_treedef == treedef
    for a, b in zip(leaves, loaded_leaves):
        a = np.asarray(a)
        assert isinstance(b, np.ndarray)
        assert (b.dtype, b.shape) == (a.dtype, a.shape)
        assert b.tobytes() == a.tobytes()


@pytest.fixture(scope="module")
def gmm_fit():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(60, 2)), rng.normal(size=(40, 2)) + 4.0])
    model = jaxem.GaussianMixture(2, covariance_type="full")
    result = jaxem.fit(model, X, key=jax.random.key(0), n_restarts=3, max_iter=30)
    return model, X, result


def test_gaussian_fit_result_round_trip_is_exact(tmp_path, gmm_fit):
    model, X, result = gmm_fit
    path = jio.save(tmp_path / "fit.ckpt", result)
    assert path == tmp_path / "fit.ckpt" and path.is_file()  # no suffix appended
    loaded = jio.load(path)
    assert type(loaded) is jaxem.FitResult and type(loaded.restarts) is jaxem.FitResult
    assert type(loaded.params) is jaxem.GaussianMixtureParams
    assert loaded.restarts.restarts is None and loaded.restarts.best_restart is None
    assert loaded.restarts.trace.shape == (3, 30) and np.isnan(loaded.restarts.trace).any()
    assert_same_tree_bits(result, loaded)
    assert float(model.score(loaded.params, X)) == float(model.score(result.params, X))
    best = int(loaded.best_restart)
    assert float(model.score(jax.tree.map(lambda a: a[best], loaded.restarts.params), X)) == float(
        model.score(result.params, X)
    )


def von_mises_model(n_components=2):
    def log_joint(params, x):
        kappa = params["concentrations"]
        log_norm = jnp.log(2 * jnp.pi * i0e(kappa)) + kappa
        return jnp.log(params["weights"]) + kappa * jnp.cos(x[0] - params["locs"]) - log_norm

    def init(key, X):
        locs = jax.random.choice(key, X[:, 0], (n_components,), replace=False)
        return {"weights": jnp.full(n_components, 1 / n_components), "locs": locs, "concentrations": jnp.ones(n_components)}

    constraints = {"weights": "simplex", "concentrations": "positive"}
    return jaxem.LatentModel(log_joint, init, constraints=constraints, n_steps=2)


def test_dict_params_fit_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.vonmises(-2.0, 4.0, 80), rng.vonmises(1.0, 8.0, 60)])[:, None]
    model = von_mises_model()
    result = jaxem.fit(model, X, key=jax.random.key(0), n_restarts=2, max_iter=4, diff=None)
    loaded = jio.load(jio.save(tmp_path / "vm.npz", result))
    assert isinstance(loaded.params, dict) and list(loaded.params) == list(result.params)
    assert_same_tree_bits(result, loaded)
    assert float(model.score(loaded.params, X)) == float(model.score(result.params, X))


def test_mixed_dtypes_nesting_and_none_round_trip(tmp_path):
    tree = {
        "f32": jnp.linspace(-1, 1, 7, dtype=jnp.float32),
        "bf16": jnp.asarray([1.5, -2.25, np.inf], dtype=jnp.bfloat16),
        "scalar": np.float64(np.pi),
        "int": np.arange(6, dtype=np.int16).reshape(2, 3),
        "bool": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "empty": np.zeros((0, 3)),
        "nested": [np.array(np.nan), (np.int64(-7), None)],
        "params": jaxem.PoissonMixtureParams(weights=np.array([0.25, 0.75]), rates=np.array([[1.0], [3.0]])),
    }
    loaded = jio.load(jio.save(tmp_path / "tree", tree))
    assert_same_tree_bits(tree, loaded)
    assert loaded["bf16"].dtype == ml_dtypes.bfloat16
    assert isinstance(loaded["nested"], list) and isinstance(loaded["nested"][1], tuple)
    assert loaded["nested"][1][1] is None
    assert type(loaded["params"]) is jaxem.PoissonMixtureParams


def rewrite(path, header_edit=None, extra=None):
    """Rewrite a checkpoint with its JSON header edited and extra entries added."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays[jio.HEADER_KEY].tobytes())
    if header_edit is not None:
        header_edit(header)
    arrays[jio.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    arrays.update(extra or {})
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def test_header_naming_an_unknown_class_is_refused(tmp_path, gmm_fit):
    path = jio.save(tmp_path / "fit.npz", gmm_fit[2])
    jio.load(path)  # loads before tampering

    def rename(header):
        header["tree"]["fields"][0][1]["class"] = "subprocess.Popen"

    rewrite(path, rename)
    with pytest.raises(jio.CheckpointError, match="unknown class 'subprocess.Popen'"):
        jio.load(path)


def test_header_with_fields_a_class_lacks_is_refused(tmp_path, gmm_fit):
    path = jio.save(tmp_path / "fit.npz", gmm_fit[2])
    rewrite(path, lambda h: h["tree"]["fields"][0][1]["fields"].append(["__class__", {"kind": "none"}]))
    with pytest.raises(jio.CheckpointError, match="unknown fields"):
        jio.load(path)


def test_header_disagreeing_with_stored_array_is_refused(tmp_path):
    path = jio.save(tmp_path / "t.npz", {"a": np.zeros((2, 3))})
    rewrite(path, lambda h: h["tree"]["items"][0][1].update(shape=[3, 2]))
    with pytest.raises(jio.CheckpointError, match="header says float64"):
        jio.load(path)


class WritesFileWhenUnpickled:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_bearing_npz_is_refused_without_unpickling(tmp_path):
    path = jio.save(tmp_path / "t.npz", {"a": np.ones(2)})
    marker = tmp_path / "unpickled"
    payload = np.array([WritesFileWhenUnpickled(marker)], dtype=object)
    rewrite(path, lambda h: h["tree"]["items"].append(["b", {"kind": "array", "leaf": 1, "dtype": "object", "shape": [1]}]),
            extra={"leaf_1": payload})
    with zipfile.ZipFile(path) as archive:  # the file really carries a pickle
        assert "leaf_1.npy" in archive.namelist()
    with pytest.raises(jio.CheckpointError, match="pickled objects"):
        jio.load(path)
    assert not marker.exists()


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        jio.load(tmp_path / "absent.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, weights=np.ones(2))
    with pytest.raises(jio.CheckpointError, match="not a jaxem checkpoint"):
        jio.load(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(jio.CheckpointError, match="not a jaxem checkpoint"):
        jio.load(text)
    single = tmp_path / "array.npy"
    np.save(single, np.ones(3))
    with pytest.raises(jio.CheckpointError, match="not a jaxem checkpoint"):
        jio.load(single)


def test_save_refuses_what_it_could_not_load(tmp_path):
    from typing import NamedTuple

    class GaussianMixtureParams(NamedTuple):  # same name as jaxem's, another class
        weights: np.ndarray

    with pytest.raises(jio.CheckpointError, match="cannot save"):
        jio.save(tmp_path / "a.npz", GaussianMixtureParams(np.ones(2)))
    with pytest.raises(jio.CheckpointError, match="dict keys must be strings"):
        jio.save(tmp_path / "b.npz", {1: np.ones(2)})
    with pytest.raises(jio.CheckpointError, match="numeric arrays only"):
        jio.save(tmp_path / "c.npz", {"names": np.array(["a", "b"])})
    assert not list(tmp_path.iterdir())  # nothing half-written
