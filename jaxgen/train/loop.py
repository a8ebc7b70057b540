"""The one training loop every method uses.

A method supplies a pure `step_fn(state, batch, key) -> (state, metrics)`; the loop owns the rest:
fusing `steps_per_call` steps into one jitted `lax.scan` with explicit shardings (batch split over
the mesh's 'data' axis, state replicated or split by the parameter rules), per-step PRNG keys
`fold_in(stage_key, step)` (so a resumed or re-sharded run draws the same numbers), a NaN/Inf guard, periodic orbax checkpoints
with the data iterator's position, metric writing and a progress line.

The only host synchronisation is one `device_get` of the block's metrics per call. On CPU the
steps compile with the convolution route chosen by JAXGEN_XLA_CPU_CONV (`jaxgen.train.xla_cpu`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxgen.errors import TrainingDivergedError
from jaxgen.faults import kill_if_requested
from jaxgen.parallel.mesh import batch_sharding, is_main_process, replicated, shard_batch
from jaxgen.parallel.partitioning import state_shardings
from jaxgen.train.checkpoint import Checkpointer
from jaxgen.train.progress import Progress
from jaxgen.train.writers import MetricWriter
from jaxgen.train.xla_cpu import step_compiler_options

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, dict]]


class BatchIterator(Protocol):
  """Host-side batches (this process's share of the global batch) with a checkpointable position."""

  def __next__(self) -> Any: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


def make_multi_step(step_fn: StepFn, key: jax.Array, mesh: Mesh,
                    state_sharding: Any = None) -> Callable[[Any, Any], tuple[Any, dict]]:
  """jit(scan(step_fn)) over a block of stacked batches [steps, global_batch, ...].

  The state is donated (updated in place on device) and keeps `state_sharding` (default:
  replicated); the batch block arrives sharded over 'data' along its second axis; metrics come
  back replicated, one value per step.
  """
  state_sharding = replicated(mesh) if state_sharding is None else state_sharding

  def block(state, batches):
    def body(state, batch):
      state, metrics = step_fn(state, batch, jax.random.fold_in(key, state.step))
      return state, metrics

    return jax.lax.scan(body, state, batches)

  return jax.jit(block, in_shardings=(state_sharding, batch_sharding(mesh, leading_axes=1)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,),
                 compiler_options=step_compiler_options())


def make_single_step(step_fn: StepFn, key: jax.Array, mesh: Mesh,
                     state_sharding: Any = None) -> Callable[[Any, Any], tuple[Any, dict]]:
  """jit(step_fn) for one batch [global_batch, ...], with the same shardings and keys."""
  state_sharding = replicated(mesh) if state_sharding is None else state_sharding

  def single(state, batch):
    return step_fn(state, batch, jax.random.fold_in(key, state.step))

  return jax.jit(single, in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,),
                 compiler_options=step_compiler_options())


def use_scan(mode: str) -> bool:
  """Whether to fuse a block of steps into one `lax.scan`.

  'auto' fuses on GPU/TPU, where it removes per-step dispatch, but not on CPU: XLA:CPU runs
  convolutions inside a while-loop body without its fast path (measured here: an autoencoder
  step took 0.28 s alone and 5.8 s inside a scan). On CPU the steps of a block are dispatched
  one jitted call each, asynchronously, still with one host sync per block.
  """
  if mode == "auto":
    return jax.default_backend() != "cpu"
  return mode == "always"


def _first_nonfinite(metrics: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
  for name, values in metrics.items():
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    bad = ~np.all(np.isfinite(values), axis=1)
    if bad.any():
      i = int(np.argmax(bad))
      return i, name, float(values[i][~np.isfinite(values[i])][0])
  return None


def _stack(batches: list[Any]) -> Any:
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def train(*, name: str, state: Any, step_fn: StepFn, batches: BatchIterator, cfg: ml_collections.ConfigDict,
          workdir: str, mesh: Mesh, key: jax.Array, writer: MetricWriter | None = None,
          on_block: Callable[[Any, int], None] | None = None, verbose: bool = True) -> Any:
  """Run (or resume) the training stage `name` until `cfg.num_steps`; returns the final state.

  Checkpoints go to `workdir/checkpoints/<name>`; if any exist, training resumes from the newest
  intact one (state, data position), skipping a corrupt newest checkpoint. During training the
  state is placed by the parameter rules in force; the returned state is replicated. A non-finite
  metric stops training with `TrainingDivergedError` naming the step; the last good checkpoint stays.
  `on_block(state, step)` runs on the host after each block (e.g. to write sample images).
  """
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), max_to_keep=cfg.keep_checkpoints,
                      async_save=cfg.async_checkpoints)
  # Parameters, moments and EMA are placed by the parameter rules in force (replicated unless
  # the mesh has a model axis; jaxgen.parallel.partitioning); a checkpoint written under another
  # mesh restores onto these shardings.
  sharding = state_shardings(state, mesh)
  state = jax.device_put(state, sharding)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, data_state, meta = restored
    batches.set_state(data_state)
    if verbose and is_main_process():
      print(f"[{name}] resumed from checkpoint at step {meta['step']}", flush=True)
  step = int(jax.device_get(state.step))
  if step >= cfg.num_steps:
    ckpt.close()
    return _for_evaluation(state, sharding, mesh)

  fused = use_scan(cfg.get("scan_steps", "auto"))
  multi_step = make_multi_step(step_fn, key, mesh, sharding) if fused else None
  single_step = None if fused else make_single_step(step_fn, key, mesh, sharding)
  progress = Progress(name, total=cfg.num_steps, start=step, enabled=verbose and is_main_process())
  try:
    while step < cfg.num_steps:
      # Blocks end exactly on checkpoint multiples, so checkpoints (and resumes) land on the same
      # steps however often the run was interrupted.
      length = min(cfg.steps_per_call, cfg.num_steps - step,
                   cfg.checkpoint_every - step % cfg.checkpoint_every)
      host = [next(batches) for _ in range(length)]
      if fused:
        state, metrics = multi_step(state, shard_batch(_stack(host), mesh, leading_axes=1))
      else:
        per_step = []
        for batch in host:
          state, m = single_step(state, shard_batch(batch, mesh))
          per_step.append(m)
        metrics = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *per_step)
      metrics = jax.device_get(metrics)
      bad = _first_nonfinite(metrics)
      if bad is not None:
        i, metric, value = bad
        raise TrainingDivergedError(step + i + 1, metric, value)
      for i in range(length):
        s = step + i + 1
        if s % cfg.log_every == 0 or s == cfg.num_steps:
          if writer is not None:
            writer.write_scalars(s, {f"{name}/{k}": v[i] for k, v in metrics.items()})
      step += length
      progress.update(step, {k: float(np.mean(v)) for k, v in metrics.items()})
      if step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
        ckpt.save(step, state, batches.get_state(), meta={"stage": name})
      if on_block is not None:
        on_block(state, step)
      kill_if_requested(name, step)
  finally:
    # Finish any in-flight asynchronous save so the last good checkpoint is complete on disk.
    ckpt.close()
    if writer is not None:
      writer.flush()
  progress.done()
  return _for_evaluation(state, sharding, mesh)


def _for_evaluation(state: Any, sharding: Any, mesh: Mesh) -> Any:
  """The trained state replicated, as every method's evaluation and sampling code expects (they
  jit with replicated parameters, as in a data-parallel run); only training holds the state
  split by the parameter rules (`sharding`), where the optimiser moments and gradients make it
  largest."""
  if all(s.is_fully_replicated for s in jax.tree.leaves(sharding)):
    return state
  return jax.device_put(state, replicated(mesh))


def count_params(tree: Any) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def iterate_forever(make_iter: Callable[[], Iterator[Any]]) -> Iterator[Any]:
  """Restart a finite iterator factory endlessly (for sources that end after one epoch)."""
  while True:
    yield from make_iter()
