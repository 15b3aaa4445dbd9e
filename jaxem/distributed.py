"""Data-parallel EM: the data's units split over devices (and processes), statistics summed.

Statistics add up over data units (docs/design.md), so EM over rows spread across
devices is the same EM: every device computes the E-step statistics of its own rows and
one all-reduce sums them before the M-step, which every device then runs on the same
(replicated) statistics. Nothing here changes the engine; a row-sharded `jax.Array`
passed to `jaxem.fit` *under `jax.jit`* is partitioned by XLA's SPMD partitioner
(GSPMD), which turns the E-step's sums over rows into all-reduces of the statistics:
per EM iteration one all-reduce of about n_restarts x (size of the statistics + 1) numbers
(K + K D + K D^2 + 1 for a full-covariance Gaussian mixture), independent of the number of
rows. The data never moves during the EM loop (`loop_collectives` checks that on the
compiled program); the k-means++ start gathers one (n_restarts, n_units) vector per center
(a cumulative sum over all rows), once per fit.

Single host, several devices::

    X_s, w_s = jaxem.distributed.shard_rows(X)              # over all jax.devices()
    res = jaxem.distributed.fit_sharded(model, X_s, sample_weight=w_s, key=key)

(`fit_sharded` validates each process's rows eagerly, then runs `jaxem.fit` under
`jax.jit` with replicated outputs. An eager `jaxem.fit(model, X_s)` also works, but its
eager validation copies the data to the host and back to one device, so it runs
unsharded; `jax.jit(lambda X, w: jaxem.fit(model, X, sample_weight=w, key=key))(X_s, w_s)`
is the sharded fit without validation.)

Several processes (a cluster, or several processes on one machine): every process runs
the same program and holds only its own rows. `jax.distributed.initialize` must be called
first, before any other JAX call::

    jax.distributed.initialize(coordinator_address="10.0.0.1:1234",  # process 0's host:port
                               num_processes=4, process_id=i)        # i = 0 .. 3
    X_g, w_g = jaxem.distributed.process_rows(my_rows)               # this process's rows
    res = jaxem.distributed.fit_sharded(model, X_g, sample_weight=w_g, key=key)
    params = jaxem.distributed.to_host(res.params)                   # same on every process

(on SLURM or Cloud TPU, `jax.distributed.initialize()` without arguments reads them from
the environment; on CPU set `jax.config.update("jax_cpu_collectives_implementation",
"gloo")` before initializing, as tests/distributed_worker.py does.)

Padding. Both helpers pad the rows to a multiple of the number of shards with copies of
the last row at weight zero: zero-weight rows add nothing to any statistic or to the
log-likelihood, so the fit is that of the unpadded rows (to rounding; a Gaussian
mixture's features are centred on the mean of all rows, padding included, which only
moves the centre). k-means++ and "random_from_data" never pick a zero-weight row, so the
same key gives the same start with or without padding; init="random" draws per-row
numbers and so depends on the padded row count.

Chunks. With a sharded array, use `chunk_size=None` (the default of `fit_sharded`): each
device then evaluates its own rows in one pass, and memory per device is bounded by
n_units / n_devices. jaxem's chunked E-step splits the *global* row axis into chunks and
scans over them, so each chunk lives on one or a few devices: the result is the same
(tested), but the compiled loop then moves chunk-sized arrays between devices every
iteration (collective-permutes and all-reduces of (K, chunk_size) arrays, seen in the HLO
of an 8-device fit) instead of one all-reduce of the statistics.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxem import api, validation
from jaxem.protocol import check_model

__all__ = [
    "Collective",
    "default_mesh",
    "fit_sharded",
    "loop_collectives",
    "process_rows",
    "shard_rows",
    "to_host",
]


def default_mesh(axis_name: str = "rows") -> Mesh:
    """A 1-D mesh over every device of every process (`jax.devices()`, in process order)."""
    return Mesh(np.array(jax.devices()), (axis_name,))


def _weights_dtype(data: Any) -> np.dtype:
    for leaf in jax.tree.leaves(data):
        if np.issubdtype(leaf.dtype, np.floating) and leaf.dtype.itemsize >= 4:
            return leaf.dtype
    return np.dtype(jnp.result_type(float))


def _host_units(X: Any, sample_weight: Any, what: str) -> tuple[Any, np.ndarray, int]:
    """(X as numpy leaves, weights (n,), n) for host data with a leading unit axis."""
    X = jax.tree.map(np.asarray, X)
    leaves = jax.tree.leaves(X)
    if not leaves or any(leaf.ndim == 0 for leaf in leaves):
        raise ValueError(f"{what} must be an array (or pytree of arrays) with a leading axis of rows.")
    lengths = {leaf.shape[0] for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(f"every array of {what} must share its leading (row) axis; got lengths {sorted(lengths)}.")
    n = lengths.pop()
    if n < 1:
        raise ValueError(f"{what} needs at least one row.")
    if sample_weight is None:
        weights = np.ones((n,), _weights_dtype(X))
    else:
        weights = np.asarray(sample_weight)
        if weights.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},) to match the rows, got {weights.shape}.")
        if not np.issubdtype(weights.dtype, np.floating):
            weights = weights.astype(_weights_dtype(X))
    return X, weights, n


def _pad_rows(X: Any, weights: np.ndarray, n_rows: int) -> tuple[Any, np.ndarray]:
    """Rows padded to n_rows with copies of the last row (weights padded with zeros)."""
    n = weights.shape[0]
    if n_rows == n:
        return X, weights

    def pad(leaf):
        return np.concatenate([leaf, np.repeat(leaf[-1:], n_rows - n, axis=0)], axis=0)

    return jax.tree.map(pad, X), np.concatenate([weights, np.zeros(n_rows - n, weights.dtype)])


def _shards(mesh: Mesh, axis_name: str) -> int:
    if axis_name not in mesh.shape:
        raise ValueError(f"mesh has no axis {axis_name!r}; its axes are {tuple(mesh.shape)}.")
    return mesh.shape[axis_name]


def shard_rows(
    X: Any, sample_weight: Any = None, mesh: Mesh | None = None, axis_name: str = "rows"
) -> tuple[Any, jax.Array]:
    """A host array split by rows over the devices of `mesh`'s axis `axis_name`.

    Args:
      X: (n_rows, ...) array (or a pytree of arrays sharing the leading axis), on the host;
        in a multi-process run every process passes the same X (see `process_rows` for
        rows held by each process).
      sample_weight: None (all ones) or (n_rows,).
      mesh: default `default_mesh(axis_name)`, all devices of all processes. Other mesh
        axes replicate the rows.
    Returns:
      (X_sharded, w_sharded): global jax.Arrays of n_pad = n_rows rounded up to a multiple
      of the shard count rows, sharded along their leading axis; the added rows copy the
      last row and have weight 0 (so a fit's result is unchanged). Pass them to
      `fit_sharded` (or `jaxem.fit` under jit) as X and sample_weight.
    """
    mesh = default_mesh(axis_name) if mesh is None else mesh
    n_shards = _shards(mesh, axis_name)
    X, weights, n = _host_units(X, sample_weight, "X")
    X, weights = _pad_rows(X, weights, -(-n // n_shards) * n_shards)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))

    def put(array):
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return jax.tree.map(put, X), put(weights)


def process_rows(
    local_X: Any, local_w: Any = None, mesh: Mesh | None = None, axis_name: str = "rows"
) -> tuple[Any, jax.Array]:
    """The global row-sharded array built from every process's own rows.

    Call `jax.distributed.initialize(...)` first (module docstring). Every process calls
    this with its rows; processes may hold different numbers of rows: each pads its rows
    to the same count (a multiple of its devices on the mesh axis) with zero-weight
    copies of its last row. The global array holds process 0's rows (then its padding),
    then process 1's, and so on. Single-process, it is `shard_rows`.

    Args:
      local_X: (n_local, ...) this process's rows (n_local >= 1), or a pytree of them.
      local_w: None (all ones) or (n_local,) their weights.
      mesh: default `default_mesh(axis_name)`; each process's devices must be contiguous
        along `axis_name` and equally many for every process.
    Returns:
      (X_global, w_global): global jax.Arrays with n_processes * n_per_process rows.
    """
    from jax.experimental import multihost_utils

    mesh = default_mesh(axis_name) if mesh is None else mesh
    n_shards = _shards(mesh, axis_name)
    n_processes = jax.process_count()
    if n_shards % n_processes:
        raise ValueError(f"the mesh axis {axis_name!r} has {n_shards} devices, not a multiple of {n_processes} processes.")
    local_shards = n_shards // n_processes
    X, weights, n_local = _host_units(local_X, local_w, "local_X")
    counts = np.asarray(multihost_utils.process_allgather(np.asarray(n_local, np.int64))).reshape(-1)
    per_process = -(-int(counts.max()) // local_shards) * local_shards
    X, weights = _pad_rows(X, weights, per_process)
    sharding = NamedSharding(mesh, PartitionSpec(axis_name))

    def put(array):
        shape = (per_process * n_processes,) + array.shape[1:]
        return jax.make_array_from_process_local_data(sharding, array, shape)

    return jax.tree.map(put, X), put(weights)


def to_host(tree: Any) -> Any:
    """Numpy copies of a result's (replicated) arrays, readable on every process: a
    multi-process jax.Array cannot be read with np.asarray, its local copy can."""

    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                raise ValueError("to_host reads replicated arrays (results of fit_sharded); got a sharded one.")
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(leaf)

    return jax.tree.map(fetch, tree)


# --- the sharded fit ---------------------------------------------------------------------------
def _local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of a row-sharded array (each row once), on the host."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    pieces = {}
    for shard in array.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        pieces.setdefault(start, shard.data)
    return np.concatenate([np.asarray(pieces[s]) for s in sorted(pieces)], axis=0)


def _validate(model: Any, X: Any, sample_weight: Any) -> None:
    """jaxem.fit's eager checks on this process's rows (X and weights)."""
    model.as_data(jax.tree.map(_local_rows, X))
    if sample_weight is not None:
        weights = _local_rows(sample_weight)
        if not np.all(np.isfinite(weights)):
            raise ValueError("sample_weight contains NaN or infinite values.")
        if np.any(weights < 0):
            raise ValueError("sample_weight must be non-negative.")


def _frozen(init: Any) -> Any:
    """A hashable form of `init` (a method name, or a dict of arrays) for the compile cache."""
    if isinstance(init, dict):
        return tuple(
            (name, np.asarray(value).dtype.str, np.asarray(value).shape, np.asarray(value).tobytes())
            for name, value in sorted(init.items())
        )
    return init


def _thawed(frozen: Any) -> Any:
    if isinstance(frozen, tuple):
        return {name: np.frombuffer(data, np.dtype(dtype)).reshape(shape) for name, dtype, shape, data in frozen}
    return frozen


def _mesh_of(X: Any) -> Mesh | None:
    sharding = getattr(jax.tree.leaves(X)[0], "sharding", None)
    return sharding.mesh if isinstance(sharding, NamedSharding) else None


@functools.lru_cache(maxsize=64)
def _compiled_fit(mesh: Mesh | None, init: Any, options: tuple, key_impl: Any):
    """jaxem.fit under jit for one mesh, start and option set; outputs replicated."""
    start = _thawed(init)

    def run(model, X, sample_weight, key_data, tol):
        key = jax.random.wrap_key_data(key_data, impl=key_impl)
        return api.fit(model, X, key=key, sample_weight=sample_weight, init=start, tol=tol, **dict(options))

    if mesh is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=NamedSharding(mesh, PartitionSpec()))


def fit_sharded(
    model: Any,
    X: Any,
    *,
    key: jax.Array,
    sample_weight: Any = None,
    init: str | dict = "kmeans++",
    tol: float = 1e-3,
    chunk_size: int | None = None,
    validate: bool = True,
    **options,
):
    """`jaxem.fit` on row-sharded data: validated per process, run under jit (GSPMD).

    Args:
      model, key, sample_weight, init, tol, and `options` (n_restarts, max_iter,
        criterion, accelerate, diff, adjoint, progress): as `jaxem.fit`. X and
        sample_weight are the arrays of `shard_rows` / `process_rows` (any jax.Array
        sharded along its leading axis; host arrays give an ordinary single-device fit).
      chunk_size: None (default): every device evaluates its rows in one pass (module
        docstring, "Chunks").
      validate: run jaxem.fit's eager data checks on this process's rows (skipped for
        traced inputs, inside a user's jit/grad).
    Returns:
      jaxem.FitResult with replicated arrays (`to_host` reads them on every process).
      Differentiable like jaxem.fit (jax.grad with respect to X or the weights).
    """
    check_model(model)
    traced = any(validation.is_traced(leaf) for leaf in jax.tree.leaves((X, sample_weight)))
    if validate and not traced:
        _validate(model, X, sample_weight)
    options = tuple(sorted(dict(options, chunk_size=chunk_size).items()))
    key_impl = str(jax.random.key_impl(key))
    program = _compiled_fit(None if traced else _mesh_of(X), _frozen(init), options, key_impl)
    key_data = jax.random.key_data(key)
    if not validation.is_traced(key_data):
        key_data = np.asarray(key_data)  # a host value, replicated on every process
    model = jax.tree.map(lambda leaf: leaf if validation.is_traced(leaf) else np.asarray(leaf), model)
    return program(model, X, sample_weight, key_data, tol)


# --- what the compiled program communicates --------------------------------------------------
class Collective(NamedTuple):
    """One collective op of a compiled HLO program.

    op: "all-reduce", "all-gather", "reduce-scatter", "all-to-all" or
    "collective-permute"; shapes: its result shapes, e.g. (("f64", (2, 3, 2)),);
    n_elements: their total number of elements; computation: the HLO computation that
    holds it.
    """

    op: str
    shapes: tuple
    n_elements: int
    computation: str


_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_CALLEE = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|called_computations)=\{?([^,}\s]+(?:,\s*%[^,}\s]+)*)\}?")


def _computations(hlo: str) -> dict[str, list[str]]:
    """HLO text -> {computation name: its instruction lines}."""
    computations, name = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):
            name = header.group(1)
            computations[name] = []
        elif name is not None and line.startswith(" "):
            computations[name].append(line)
    return computations


def _callees(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        for match in _CALLEE.finditer(line):
            names.update(part.strip().lstrip("%") for part in match.group(1).split(","))
    return names


def _collectives_of(name: str, lines: list[str]) -> list[Collective]:
    found = []
    for line in lines:
        match = _COLLECTIVE.search(line)
        if not match:
            continue
        shapes = tuple((dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(match.group("shape")))
        n_elements = sum(int(np.prod(dims)) for _, dims in shapes)
        found.append(Collective(match.group("op"), shapes, n_elements, name))
    return found


def loop_collectives(hlo: str) -> dict[str, list[Collective]]:
    """The collectives inside every while loop of a compiled program's HLO text.

    `jax.jit(f).lower(*args).compile().as_text()` gives the text. Returns {while body
    computation: the collectives of that body and of every computation it calls,
    nested loops included}, plus the key "<outside>" for those in no loop body.
    """
    computations = _computations(hlo)
    bodies = set()
    for lines in computations.values():
        for line in lines:
            match = re.search(r"\bwhile\(.*\bbody=%?([\w.\-]+)", line)
            if match:
                bodies.add(match.group(1))

    def reachable(root: str) -> set[str]:
        seen, todo = set(), [root]
        while todo:
            name = todo.pop()
            if name in seen or name not in computations:
                continue
            seen.add(name)
            todo.extend(_callees(computations[name]))
        return seen

    result, inside = {}, set()
    for body in sorted(bodies):
        names = reachable(body)
        inside |= names
        result[body] = [c for name in sorted(names) for c in _collectives_of(name, computations[name])]
    result["<outside>"] = [
        c for name, lines in computations.items() if name not in inside for c in _collectives_of(name, lines)
    ]
    return result
