"""A `lax.while_loop` that, when vmapped over independent problems, retires finished ones.

Under `jax.vmap`, a while loop runs its body on the whole batch until the slowest member
stops, so a batch of fits costs (batch size) x (largest iteration count). EM's iteration
counts vary widely between data sets (benchmarks/bench_batch.py: 200 small fits, mean
5.5 iterations, slowest 26), so most of that work is spent on fits that have already
stopped.

`while_loop(cond, body, state, data)` computes the same as
`lax.while_loop(cond, lambda s: body(s, data), state)`. Unvmapped it is exactly that.
Vmapped over problems (some leaf of `data` batched), it keeps `slots` problems in flight:
each iteration advances the problems in the slots, writes out those whose `cond` turned
false and loads the next waiting problems into their slots, so the total work is the sum
of the iteration counts rather than batch size x maximum. Once none wait, the last few
move to a quarter of the slots. Vmapped with `data` unbatched
(restarts of one fit), it runs the members in lockstep, as a plain vmap does; a further
vmap of that over problems then schedules whole problems (all their restarts at once).

Each problem's result is the state its own loop ended in: what a plain vmap computes,
up to the rounding of batched versus gathered arithmetic.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

# Problems in flight per batched iteration on CPU when slots="auto": a CPU's cost per
# iteration grows with the number of problems advanced, so few slots waste little on
# finished problems (benchmarks/bench_batch.py: 8 to 32 slots within 5% of each other).
CPU_AUTO_SLOTS = 16

# The last problems in flight run in n_slots // TAIL_FRACTION slots.
TAIL_FRACTION = 4


def auto_slots(batch_size: int) -> int:
    """Slots for `slots="auto"`: CPU_AUTO_SLOTS on CPU; the whole batch (lockstep) on
    accelerators, where a batched iteration costs about the same as a single one."""
    if jax.default_backend() == "cpu":
        return min(batch_size, CPU_AUTO_SLOTS)
    return batch_size


def while_loop(
    cond: Callable[[Any], jax.Array],
    body: Callable[[Any, Any], Any],
    state: Any,
    data: Any,
    *,
    slots: int | str | None = "auto",
) -> Any:
    """`lax.while_loop(cond, lambda s: body(s, data), state)` with a vmap rule that
    retires finished problems (module docstring).

    Args:
      cond: state -> () bool. body: (state, data) -> state of the same structure.
      state, data: pytrees of arrays; data is what differs between vmapped problems.
      slots: problems advanced together when vmapped over problems: an int, "auto"
        (auto_slots), or None for lockstep (plain vmap).
    Returns:
      the final state. Not reverse-differentiable (neither is lax.while_loop).
    """
    # custom_vmap hands its rule the batched flags in the arguments' own pytree structure,
    # which would rebuild (and re-validate) objects such as models with booleans for
    # leaves; flat lists of leaves avoid that.
    state_leaves, state_def = jax.tree.flatten(state)
    data_leaves, data_def = jax.tree.flatten(data)

    def flat_cond(leaves):
        return cond(jax.tree.unflatten(state_def, leaves))

    def flat_body(leaves, data_leaves):
        new = body(jax.tree.unflatten(state_def, leaves), jax.tree.unflatten(data_def, data_leaves))
        return jax.tree.leaves(new)

    final = _flat_while_loop(flat_cond, flat_body, state_leaves, data_leaves, slots)
    return jax.tree.unflatten(state_def, final)


def _flat_while_loop(cond, body, state: list, data: list, slots) -> list:
    """while_loop on flat lists of leaves."""

    @jax.custom_batching.custom_vmap
    def loop(state, data):
        return jax.lax.while_loop(cond, lambda s: body(s, data), state)

    @loop.def_vmap
    def batched_loop(axis_size, in_batched, state, data):
        state_batched, data_batched = in_batched
        state = broadcast_unbatched(state, state_batched, axis_size)
        all_batched = jax.tree.map(lambda _: True, state)
        task_cond, task_body = lockstep_task(cond, body, data_batched, axis_size)
        if not any(jax.tree.leaves(data_batched)):
            # Same data for every member (restarts): one task in lockstep, itself
            # schedulable by an enclosing vmap over problems.
            return _flat_while_loop(task_cond, task_body, state, data, slots), all_batched
        if slots is None:
            n_slots = axis_size
        else:
            n_slots = auto_slots(axis_size) if slots == "auto" else int(slots)
        if n_slots >= axis_size:
            return jax.lax.while_loop(task_cond, lambda s: task_body(s, data), state), all_batched
        return retiring_loop(cond, body, state, data, data_batched, n_slots), all_batched

    return loop(state, data)


def broadcast_unbatched(tree: Any, batched: Any, axis_size: int) -> Any:
    """Give every leaf whose flag in `batched` is False a leading axis of axis_size."""
    return jax.tree.map(
        lambda leaf, is_batched: leaf if is_batched else jnp.broadcast_to(leaf, (axis_size,) + jnp.shape(leaf)),
        tree,
        batched,
    )


def lockstep_task(cond, body, data_batched, axis_size: int):
    """cond and body of a whole batch advanced together, as vmap batches a while loop:
    running while any member runs, stopped members carried unchanged (a lone member never
    runs stopped, so it needs no masking)."""
    data_axes = vmap_axes(data_batched)

    def member_body(member, data):
        if axis_size == 1:
            return body(member, data)
        running = cond(member)
        return jax.tree.map(lambda new, old: jnp.where(running, new, old), body(member, data), member)

    def task_cond(states):
        return jnp.any(jax.vmap(cond)(states))

    def task_body(states, data):
        return jax.vmap(member_body, in_axes=(0, data_axes))(states, data)

    return task_cond, task_body


def take(tree: Any, index: jax.Array) -> Any:
    """Rows `index` of every leaf (leading axis)."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def take_batched(tree: Any, batched: Any, index: jax.Array) -> Any:
    """Rows `index` of the leaves whose flag in `batched` is True; the others as they are."""
    return jax.tree.map(lambda leaf, is_batched: leaf[index] if is_batched else leaf, tree, batched)


def vmap_axes(batched: Any) -> Any:
    """in_axes for jax.vmap from batched flags: 0 where batched, None elsewhere."""
    return jax.tree.map(lambda is_batched: 0 if is_batched else None, batched)


def select_rows(mask: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise where(mask[i], on_true[i], on_false[i]) over the leading axis."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, on_true, on_false)


class Packing:
    """A pytree of (batch, ...) leaves as one (batch, width) array per dtype, so that the
    scheduler's per-slot selects, gathers and scatters are a few ops rather than a few per
    leaf (each op has a fixed cost that dominates for small problems)."""

    def __init__(self, tree: Any):
        leaves, self.treedef = jax.tree.flatten(tree)
        self.shapes = [leaf.shape[1:] for leaf in leaves]
        self.dtypes = sorted({jnp.dtype(leaf.dtype).name for leaf in leaves})
        self.kinds = [self.dtypes.index(jnp.dtype(leaf.dtype).name) for leaf in leaves]

    def pack(self, tree: Any) -> list[jax.Array]:
        leaves = jax.tree.leaves(tree)
        rows = leaves[0].shape[0]
        return [
            jnp.concatenate([leaf.reshape(rows, -1) for leaf, k in zip(leaves, self.kinds) if k == kind], axis=1)
            for kind in range(len(self.dtypes))
        ]

    def unpack(self, buffers: list[jax.Array]) -> Any:
        rows = buffers[0].shape[0]
        offsets = [0] * len(buffers)
        leaves = []
        for shape, kind in zip(self.shapes, self.kinds):
            size = math.prod(shape)
            leaves.append(buffers[kind][:, offsets[kind] : offsets[kind] + size].reshape((rows,) + shape))
            offsets[kind] += size
        return jax.tree.unflatten(self.treedef, leaves)


def retiring_loop(cond, body, states: Any, data: Any, data_batched: Any, n_slots: int) -> Any:
    """Run every problem of the batch to its own stop, n_slots at a time.

    states: leaves (batch, ...); data: leaves (batch, ...) where data_batched says so.
    Returns the final states, (batch, ...) leaves.
    """
    batch = jax.tree.leaves(states)[0].shape[0]
    data_axes = vmap_axes(data_batched)
    packing = Packing(states)
    packed_states = packing.pack(states)

    def step(slots, task_data):
        return packing.pack(jax.vmap(body, in_axes=(0, data_axes))(packing.unpack(slots), task_data))

    def running(slots):
        return jax.vmap(cond)(packing.unpack(slots))

    first = jnp.arange(n_slots)
    # Carry: slot states, the problem in each slot (batch = empty), that problem's data,
    # the next waiting problem, the results so far.
    start = (take(packed_states, first), first, take_batched(data, data_batched, first), jnp.asarray(n_slots), packed_states)

    def any_in_flight(carry):
        return jnp.any(carry[1] < batch)

    def advance(carry):
        slots, task, task_data, next_task, results = carry
        occupied = task < batch
        slots = select_rows(occupied & running(slots), step(slots, task_data), slots)
        finished = occupied & ~running(slots)
        written = jnp.where(finished, task, batch)
        results = jax.tree.map(lambda out, new: out.at[written].set(new, mode="drop"), results, slots)
        # Finished slots take the next waiting problems in order; empty once none wait.
        incoming = next_task + jnp.cumsum(finished) - 1
        task = jnp.where(finished, jnp.minimum(incoming, batch), task)
        refill = finished & (task < batch)
        slots = select_rows(refill, take(packed_states, jnp.minimum(task, batch - 1)), slots)
        task_data = copy_in(task_data, data, data_batched, refill, task)
        return slots, task, task_data, next_task + jnp.sum(finished), results

    # Once no problem waits and few remain (the slowest ones), they move to a quarter of
    # the slots: a step's cost grows with the slots it advances, occupied or not.
    tail_slots = n_slots // TAIL_FRACTION
    if tail_slots < 1:
        return packing.unpack(jax.lax.while_loop(any_in_flight, advance, start)[4])

    def before_tail(carry):
        in_flight = jnp.sum(carry[1] < batch)
        return (in_flight > 0) & ((carry[3] < batch) | (in_flight > tail_slots))

    carry = jax.lax.while_loop(before_tail, advance, start)
    slots, task, task_data, next_task, results = carry
    keep = jnp.argsort(task >= batch, stable=True)[:tail_slots]  # the occupied slots first
    tail = (take(slots, keep), task[keep], take_batched(task_data, data_batched, keep), next_task, results)
    return packing.unpack(jax.lax.while_loop(any_in_flight, advance, tail)[4])


def copy_in(slot_data: Any, data: Any, data_batched: Any, refill: jax.Array, task: jax.Array) -> Any:
    """Slot data with the refilled slots' rows replaced by their new problems' data.

    One in-place row copy per refilled slot, in a loop over those slots only: a gather or
    select over every slot each iteration copies all of them (on XLA:CPU a gather of 16
    problems' features, N=400 D=2, cost more than the EM step itself).
    """
    slots = jnp.argsort(~refill, stable=True)  # the refilled slots first

    def copy_row(j, slot_data):
        slot = slots[j]
        return jax.tree.map(
            lambda current, full, is_batched: (
                jax.lax.dynamic_update_index_in_dim(current, full[task[slot]], slot, 0) if is_batched else current
            ),
            slot_data,
            data,
            data_batched,
        )

    return jax.lax.fori_loop(0, jnp.sum(refill), copy_row, slot_data)
