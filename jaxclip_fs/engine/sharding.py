"""Spreading the sweep's cell axis over devices: a 1-D ``Mesh`` and ``NamedSharding`` s.

A program's per-cell arrays have the layout ``[G, T, ...]`` (G fused
datasets, T cells per dataset). The T axis is split over every device of a
one-axis mesh named ``"cells"`` (``PartitionSpec(None, "cells")``) after
padding T to a multiple of the device count; arrays shared by all cells of a
dataset (test set, text classifier, supports) are replicated. ``jax.jit``
with these shardings (GSPMD) runs each device on its own slice of cells --
no ``pmap``, no home-made scheduler. Results are gathered replicated, so
every process can read them.

Inputs are placed with :func:`jax.make_array_from_callback`: every process
builds the same host arrays (deterministically) and hands over only the
slices its devices own, which is what multi-host (``--distributed``) needs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CELL_AXIS = "cells"


def cell_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over ``num_devices`` of ``jax.devices()`` (default: all): the first ones,
    or with several processes the first ``num_devices / processes`` of each process (every
    process must own part of the mesh: it runs the same programs).

    Raises:
      ValueError: more devices asked than exist, or (several processes) a count that is
        not a multiple of the number of processes.
    """
    devices = jax.devices()
    count = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= count <= len(devices):
        raise ValueError(f"asked for {count} devices, {len(devices)} available")
    processes = jax.process_count()
    if processes > 1 and count < len(devices):
        if count % processes:
            raise ValueError(f"asked for {count} devices: with {processes} processes give a "
                             f"multiple of {processes}")
        return sub_mesh(Mesh(np.asarray(devices), (CELL_AXIS,)), count)
    return Mesh(np.asarray(devices[:count]), (CELL_AXIS,))


def sub_mesh(mesh: Mesh, count: int) -> Mesh:
    """A 1-D mesh of about ``count`` devices of ``mesh``: the same number from every process
    that owns part of it (rounded up), so every process keeps a share of the work.

    One process: the first ``count`` devices (all if fewer).
    """
    return Mesh(np.asarray(spread(list(mesh.devices.flat), count)), (CELL_AXIS,))


def spread(devices: Sequence[Any], count: int) -> list:
    """About ``count`` of ``devices``: the first ``ceil(count / owners)`` of each process
    owning some (in order of appearance), so every owner keeps a share."""
    owners = list(dict.fromkeys(d.process_index for d in devices))
    per_process = max(1, -(-count // len(owners)))
    return [d for owner in owners
            for d in [x for x in devices if x.process_index == owner][:per_process]]


def padded_length(length: int, mesh: Mesh) -> int:
    """``length`` rounded up to a multiple of the mesh size (at least one per device)."""
    size = mesh.devices.size
    return max(1, -(-length // size)) * size


def cell_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 1 (cells) split over the mesh, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(None, CELL_AXIS))


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 (tasks) split over the mesh: the layout of one dataset's ``[T, ...]`` arrays."""
    return NamedSharding(mesh, PartitionSpec(CELL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays (numpy leaves) -> global jax arrays laid out by ``sharding``."""
    def put(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])
    return jax.tree.map(put, tree)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: Sequence[int] | None = None,
                           initialize: Callable[..., None] | None = None, **options) -> None:
    """Starts multi-host JAX (``--distributed``): ``jax.distributed.initialize``.

    Every argument is optional: on Cloud TPU pods, SLURM and Open MPI jobs
    JAX finds the coordinator and the process ids from the environment.
    Only the arguments given are passed on, with ``options`` (e.g.
    ``heartbeat_timeout_seconds``). Call it before anything touches the
    devices (:func:`jaxclip_fs.engine.hosts.start` does, and watches the
    processes).
    """
    kwargs = {name: value for name, value in (
        ("coordinator_address", coordinator), ("num_processes", num_processes),
        ("process_id", process_id), ("local_device_ids", local_device_ids)) if value is not None}
    (initialize or jax.distributed.initialize)(**kwargs, **options)


def is_writer() -> bool:
    """True on the one process that writes records, params and reports (process 0)."""
    return jax.process_index() == 0
