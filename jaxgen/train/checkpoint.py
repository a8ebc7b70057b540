"""Orbax checkpoints of a training stage: state, data-iterator position and metadata.

A checkpoint holds three items: `state` (the TrainState pytree), `data` (the input pipeline's
position, so a resumed run sees exactly the batches the uninterrupted run would have) and `meta`
(step and seed). PRNG keys need no saving: every step's key is `fold_in(root_key, step)`.

Orbax writes into a temporary directory and renames it when complete, so a process killed
mid-save leaves no checkpoint that looks finished. A checkpoint that is finished but later damaged
(truncated file, disk error) fails to restore; `restore_latest` moves it aside (renamed
`corrupt_<step>_<time>`, kept for inspection, reported in one line) and falls back to the previous
one, so work already done is not lost and the run can save that step again when it gets there.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgen.errors import CheckpointError
from jaxgen.io import paths

log = logging.getLogger(__name__)


def _encode_data_state(data_state: Any) -> Any:
  # grain iterators return their state as bytes; JSON needs text.
  if isinstance(data_state, bytes):
    return {"__bytes__": base64.b64encode(data_state).decode("ascii")}
  return data_state


def _host_copies(state: Any) -> Any:
  """Arrays this process can see whole, as host numpy copies.

  orbax's replica-parallel writer splits every replicated or sharded jax.Array with a compiled
  slice per leaf shape: ~0.05-0.15 s per leaf on CPU, seconds per first save of a network. A
  numpy copy (of one replica, or gathered from this process's shards) is written by the primary
  process in one go and restores onto the template's shardings, whatever mesh wrote it
  (tests/test_train_loop.py, tests/test_param_sharding.py). Arrays sharded across processes and
  PRNG keys are left to orbax.
  """
  def leaf(x: Any) -> Any:
    if not isinstance(x, jax.Array) or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return x
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    return x
  return jax.tree.map(leaf, state)


def _decode_data_state(data_state: Any) -> Any:
  if isinstance(data_state, dict) and set(data_state) == {"__bytes__"}:
    return base64.b64decode(data_state["__bytes__"])
  return data_state


class Checkpointer:
  """Periodic, keep-N, optionally asynchronous checkpoints of one training stage."""

  def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
    self.directory = paths.absolute(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any = None, meta: dict | None = None) -> None:
    """Save asynchronously (when enabled); `wait()` blocks until it is on disk."""
    meta = dict(meta or {}, step=int(step))
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_host_copies(state)),
        data=ocp.args.JsonSave({"state": _encode_data_state(data_state)}),
        meta=ocp.args.JsonSave(meta))
    self._manager.save(int(step), args=args, force=True)

  def restore(self, step: int, template: Any) -> tuple[Any, Any, dict]:
    """Restore one step onto the shardings/dtypes of `template`; raises if it is damaged."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                              data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored.state, _decode_data_state(restored.data["state"]), dict(restored.meta)

  def restore_latest(self, template: Any) -> tuple[Any, Any, dict] | None:
    """Restore the newest checkpoint that reads back intact, or None if there is none.

    Damaged checkpoints are reported (one line each) and skipped; if every one is damaged a
    `CheckpointError` names the directory, rather than silently starting over.
    """
    steps = self.all_steps()
    if not steps:
      return None
    for step in reversed(steps):
      try:
        return self.restore(step, template)
      except Exception as err:  # orbax raises many types for a damaged file; any means unusable
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        if step == steps[0]:  # nothing older to fall back to: leave it for the user
          break
        aside = self._move_aside(step)
        log.warning("checkpoint %s/%d is corrupt or unreadable (%s); moved to %s, trying an older one",
                    self.directory, step, reason, aside)
        print(f"warning: checkpoint step {step} in {self.directory} is corrupt ({reason}); moved "
              f"to {os.path.basename(aside)}, falling back to the previous one", flush=True)
    raise CheckpointError(f"every checkpoint in {self.directory} (steps {steps}) is corrupt; "
                          "delete the directory to start this stage over")

  def _move_aside(self, step: int) -> str:
    """Rename a damaged step's directory so orbax no longer lists it (it can be saved again)."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.directory, f"corrupt_{step}_{time.strftime('%Y%m%dT%H%M%S')}")
    if jax.process_index() == 0 and paths.isdir(source):
      paths.rename(source, target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
