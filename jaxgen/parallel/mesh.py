"""The device mesh, shardings, multi-host start-up and host <-> global array placement.

Everything is `jax.jit` with explicit in/out shardings over one `Mesh` with axes ('data', 'model')
(the modern form of pjit). Batches are split over 'data'; parameters are replicated unless a
method asks otherwise. The mesh uses Auto axis types so XLA's sharding propagation fills in the
intermediates, as big_vision does.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxgen.configlib import validate_mesh

DATA, MODEL = "data", "model"


def initialize_distributed() -> None:
  """Start multi-process JAX when launched on several hosts (TPU pod, SLURM, or explicit env).

  JAX's own runtime finds its peers: a TPU slice's metadata, SLURM's variables, or (the local
  multi-process launch, `python -m jaxgen.launch local --processes=N`) JAX_COORDINATOR_ADDRESS
  with JAX_NUM_PROCESSES and JAX_PROCESS_ID. Single-process runs (a laptop, one GPU, these
  tests) skip it, so it is safe to call always.
  """
  explicit = "JAX_COORDINATOR_ADDRESS" in os.environ or "COORDINATOR_ADDRESS" in os.environ
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]
  if (explicit or slurm or tpu_pod) and not jax.distributed.is_initialized():
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    if explicit and count is not None and index is not None:
      jax.distributed.initialize(num_processes=int(count), process_id=int(index))
    else:
      jax.distributed.initialize()


def make_mesh(mesh_config: ml_collections.ConfigDict, devices: Any = None) -> Mesh:
  """Build the ('data', 'model') mesh the config asks for over `devices` (default: all)."""
  devices = list(devices) if devices is not None else jax.devices()
  data = validate_mesh(ml_collections.ConfigDict({"mesh": mesh_config}), len(devices))
  return jax.make_mesh((data, mesh_config.model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape[DATA]


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
  """Sharding of a batch whose batch axis comes after `leading_axes` (e.g. 1 for [steps, B, ...])."""
  return NamedSharding(mesh, P(*([None] * leading_axes), DATA))


def shard_batch(batch: Any, mesh: Mesh, leading_axes: int = 0) -> Any:
  """Place this process's slice of a global batch on the mesh (multi-host aware).

  Each process passes the examples it loaded (its `1/process_count` share of the global batch);
  `make_array_from_process_local_data` assembles the global array without any cross-host copy.
  """
  sharding = batch_sharding(mesh, leading_axes)

  def place(x):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    global_shape = list(x.shape)
    global_shape[leading_axes] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

  return jax.tree.map(place, batch)


def place_full_batch(batch: Any, mesh: Mesh) -> Any:
  """A batch that every process holds in full, as global arrays split over the data axis: each
  process puts only the rows of its own devices (evaluation inputs, which every host has)."""
  sharding = batch_sharding(mesh)

  def place(x):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, batch)


def place_if_divisible(batch: Any, mesh: Mesh | None) -> Any:
  """`place_full_batch` when a mesh is given and its data axis divides the batch's rows; else the
  batch unchanged (it then runs whole on one device per host). For batches that must not be
  padded (a sampler's noise has the batch's shape) or that already have a fixed size."""
  rows = len(jax.tree.leaves(batch)[0])
  if mesh is None or rows % data_parallel_size(mesh):
    return batch
  return place_full_batch(batch, mesh)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Put a pytree on every device of the mesh (parameters, optimiser state)."""
  return jax.device_put(tree, replicated(mesh))


def to_host(x: Any) -> np.ndarray:
  """The whole value of an array on this host, gathered from the other processes if it spans
  devices of several (np.asarray alone refuses those)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils
  rendezvous("to_host")
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync_processes(tag: str) -> None:
  """Wait until every process reaches this point (no-op in a single process): e.g. after process 0
  wrote a file that the others read next."""
  rendezvous(tag)


# Long enough for process 0 alone to write images and reports while the others wait; a process that
# dies ends the wait sooner (the coordination service's heartbeats fail the barrier).
RENDEZVOUS_TIMEOUT_S = 3600
_rendezvous_count = itertools.count()


def rendezvous(tag: str) -> None:
  """Wait until every process reaches this point, through jax.distributed's coordination service
  (no-op in a single process). Call it before a cross-process collective that the processes may
  reach far apart: XLA:CPU's Gloo collectives give up setting one up after a fixed 30 s
  (`Gloo context initialization failed: DEADLINE_EXCEEDED`), which a barrier with its own timeout
  avoids. Every process must call it the same number of times (the barrier ids count the calls)."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  if client is None:  # multi-process without jax.distributed: nothing to wait on
    return
  client.wait_at_barrier(f"jaxgen/{next(_rendezvous_count)}/{tag}",
                         timeout_in_ms=RENDEZVOUS_TIMEOUT_S * 1000)


def is_main_process() -> bool:
  """Only process 0 writes files (logs, images, results); all processes take part in checkpoints."""
  return jax.process_index() == 0
