"""Checkpoints: save and load a FitResult or a params pytree as a safe .npz file.

A checkpoint is an uncompressed .npz written with NumPy. Its arrays are the pytree's
leaves ("leaf_0", "leaf_1", ... in depth-first order, raw bytes, so a round trip is exact
bit for bit) plus one uint8 entry, HEADER_KEY, holding UTF-8 JSON that describes the
structure:

    {"format": "jaxem-checkpoint", "format_version": 1, "jaxem_version": "0.1.0",
     "tree": NODE}

where a NODE is one of
    {"kind": "array", "leaf": i, "dtype": "float64", "shape": [2, 3]}
    {"kind": "none"}
    {"kind": "namedtuple", "class": "GaussianMixtureParams", "fields": [[name, NODE], ...]}
    {"kind": "dict", "items": [[key, NODE], ...]}         (string keys, insertion order)
    {"kind": "list" | "tuple", "items": [NODE, ...]}

Loading never unpickles (np.load(..., allow_pickle=False)) and never imports a name read
from the file: a NamedTuple class is looked up in `allowed_classes()`, jaxem's own result
and params classes. Loaded leaves are NumPy arrays.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "jaxem-checkpoint"
FORMAT_VERSION = 1
HEADER_KEY = "__jaxem_header__"
LEAF_PREFIX = "leaf_"
# Non-NumPy float dtypes (ml_dtypes, which JAX uses) are stored as raw uint8 bytes.
EXTENDED_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz", "float8_e4m3fnuz", "float8_e5m2fnuz")


class CheckpointError(ValueError):
    """A file that is not a valid jaxem checkpoint, or an object that cannot be saved."""


def allowed_classes() -> dict[str, type]:
    """The NamedTuple classes a checkpoint may name: jaxem.FitResult and every NamedTuple
    exported by jaxem.models (params and statistics of the built-in families)."""
    from jaxem import core, models

    classes = {"FitResult": core.FitResult}
    for name in models.__all__:
        cls = getattr(models, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            classes[name] = cls
    return classes


# --- saving -----------------------------------------------------------------------------
def save(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` (a FitResult, a jaxem params NamedTuple, or dicts / lists / tuples of
    arrays, None allowed) to `path` as a checkpoint; the file is replaced atomically.

    Returns the path written (exactly `path`; no suffix is added).
    Raises CheckpointError for objects outside that format (other classes, non-string
    dict keys, object or string arrays, PRNG key arrays).
    """
    path = Path(path)
    leaves: list[np.ndarray] = []
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "jaxem_version": _jaxem_version(),
        "tree": _encode(obj, leaves, allowed_classes(), "obj"),
    }
    arrays = {f"{LEAF_PREFIX}{i}": leaf for i, leaf in enumerate(leaves)}
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _encode(obj: Any, leaves: list, classes: dict[str, type], where: str) -> dict:
    """The header NODE of `obj`; appends its arrays to `leaves`."""
    if obj is None:
        return {"kind": "none"}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        name = type(obj).__name__
        if classes.get(name) is not type(obj):
            raise CheckpointError(
                f"{where}: cannot save a {type(obj).__module__}.{name}; checkpoints hold only "
                f"jaxem's own classes ({', '.join(sorted(classes))}) and dicts/lists/tuples of "
                "arrays (use ._asdict() for another NamedTuple)"
            )
        fields = [[f, _encode(getattr(obj, f), leaves, classes, f"{where}.{f}")] for f in obj._fields]
        return {"kind": "namedtuple", "class": name, "fields": fields}
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{where}: dict keys must be strings, got {bad[0]!r}")
        items = [[k, _encode(v, leaves, classes, f"{where}[{k!r}]")] for k, v in obj.items()]
        return {"kind": "dict", "items": items}
    if isinstance(obj, (list, tuple)):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {"kind": kind, "items": [_encode(v, leaves, classes, f"{where}[{i}]") for i, v in enumerate(obj)]}
    return _encode_array(obj, leaves, where)


def _encode_array(obj: Any, leaves: list, where: str) -> dict:
    try:
        array = np.asarray(obj)
    except Exception as err:  # e.g. a JAX PRNG key array
        raise CheckpointError(f"{where}: cannot be stored as an array ({type(obj).__name__}: {err})") from None
    dtype = array.dtype
    if dtype.name in EXTENDED_DTYPES:
        stored = np.asarray(array, order="C").reshape(-1).view(np.uint8)
    elif dtype.kind in "biufc" and dtype.isnative:
        stored = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    else:
        raise CheckpointError(f"{where}: dtype {dtype} cannot be checkpointed (numeric arrays only)")
    leaves.append(stored)
    return {"kind": "array", "leaf": len(leaves) - 1, "dtype": dtype.name, "shape": list(array.shape)}


def _jaxem_version() -> str:
    import jaxem

    return jaxem.__version__


# --- loading ----------------------------------------------------------------------------
def load(path: str | os.PathLike) -> Any:
    """Read a checkpoint written by `save`; NumPy arrays in the saved structure.

    Raises FileNotFoundError for a missing file and CheckpointError for a file that is not
    a jaxem checkpoint (not an .npz, no header, pickled objects, an inconsistent header)
    or that names a class outside `allowed_classes()`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CheckpointError(f"{path}: not a jaxem checkpoint (not a readable .npz file: {err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not a jaxem checkpoint (a single .npy array, not an .npz archive)")
    with archive:
        header = _read_header(archive, path)
        names = set(archive.files) - {HEADER_KEY}
        used: set[str] = set()
        tree = _decode(header["tree"], archive, allowed_classes(), used, path, "tree")
        if names - used:
            raise CheckpointError(f"{path}: corrupt checkpoint (arrays not in its header: {sorted(names - used)[:5]})")
    return tree


def _read_header(archive, path: Path) -> dict:
    if HEADER_KEY not in archive.files:
        raise CheckpointError(f"{path}: not a jaxem checkpoint (no {HEADER_KEY} entry)")
    raw = _member(archive, HEADER_KEY, path)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a jaxem checkpoint (header is not a uint8 byte string)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a jaxem checkpoint (header is not JSON: {err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or "tree" not in header:
        raise CheckpointError(f"{path}: not a jaxem checkpoint (header format is not {FORMAT!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('format_version')!r} is not supported "
            f"(this jaxem reads version {FORMAT_VERSION})"
        )
    return header


def _member(archive, name: str, path: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as err:  # object arrays need pickle, which is refused
        raise CheckpointError(f"{path}: refused: entry {name!r} holds pickled objects ({err})") from None
    except (OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{path}: corrupt checkpoint (entry {name!r}: {err})") from None


def _decode(node: Any, archive, classes: dict[str, type], used: set, path: Path, where: str) -> Any:
    """Rebuild the object a header NODE describes."""
    kind = node.get("kind") if isinstance(node, dict) else None
    if kind == "none":
        return None
    if kind == "array":
        return _decode_array(node, archive, used, path, where)
    if kind == "namedtuple":
        return _decode_namedtuple(node, archive, classes, used, path, where)
    if kind == "dict":
        items = _pairs(node.get("items"), path, where)
        return {k: _decode(v, archive, classes, used, path, f"{where}[{k!r}]") for k, v in items}
    if kind in ("list", "tuple"):
        items = node.get("items")
        if not isinstance(items, list):
            raise CheckpointError(f"{path}: corrupt header at {where} (items is not a list)")
        values = [_decode(v, archive, classes, used, path, f"{where}[{i}]") for i, v in enumerate(items)]
        return values if kind == "list" else tuple(values)
    raise CheckpointError(f"{path}: corrupt header at {where} (unknown node {str(node)[:80]})")


def _pairs(items: Any, path: Path, where: str) -> list[tuple[str, Any]]:
    ok = isinstance(items, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in items
    )
    if not ok:
        raise CheckpointError(f"{path}: corrupt header at {where} (expected [name, node] pairs)")
    return [(k, v) for k, v in items]


def _decode_namedtuple(node: dict, archive, classes: dict[str, type], used: set, path: Path, where: str) -> Any:
    name = node.get("class")
    if not isinstance(name, str) or name not in classes:
        raise CheckpointError(
            f"{path}: unknown class {name!r} at {where}; checkpoints may only name "
            f"{', '.join(sorted(classes))}"
        )
    cls = classes[name]
    fields = dict(_pairs(node.get("fields"), path, where))
    unknown = set(fields) - set(cls._fields)
    missing = set(cls._fields) - set(fields) - set(cls._field_defaults)
    if unknown or missing:
        raise CheckpointError(
            f"{path}: {name} at {where} does not match this jaxem's {name} "
            f"(unknown fields {sorted(unknown)}, missing fields {sorted(missing)})"
        )
    return cls(**{f: _decode(v, archive, classes, used, path, f"{where}.{f}") for f, v in fields.items()})


def _decode_array(node: dict, archive, used: set, path: Path, where: str) -> np.ndarray:
    leaf, dtype_name, shape = node.get("leaf"), node.get("dtype"), node.get("shape")
    valid = (
        isinstance(leaf, int) and isinstance(dtype_name, str) and isinstance(shape, list)
        and all(isinstance(s, int) and s >= 0 for s in shape)
    )
    if not valid:
        raise CheckpointError(f"{path}: corrupt header at {where} (bad array entry)")
    name = f"{LEAF_PREFIX}{leaf}"
    if name not in archive.files or name in used:
        raise CheckpointError(f"{path}: corrupt checkpoint ({where}: array {name!r} missing or used twice)")
    used.add(name)
    stored = _member(archive, name, path)
    if dtype_name in EXTENDED_DTYPES:
        import ml_dtypes

        dtype = np.dtype(getattr(ml_dtypes, dtype_name))
        if stored.dtype != np.uint8 or stored.size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError(f"{path}: corrupt checkpoint ({where}: {name} has the wrong size)")
        return stored.view(dtype).reshape(shape)
    if stored.dtype.name != dtype_name or list(stored.shape) != shape:
        raise CheckpointError(
            f"{path}: corrupt checkpoint ({where}: {name} is {stored.dtype}{list(stored.shape)}, "
            f"header says {dtype_name}{shape})"
        )
    return stored
