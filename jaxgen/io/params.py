"""Trained parameters handed from one stage to the next (msgpack, written atomically).

Training checkpoints (orbax) hold the whole TrainState for resuming; once a stage is finished its
evaluation parameters are exported here, small and framework-neutral, for later stages, the
Python API and users' own code.
"""

from __future__ import annotations

from typing import Any

import flax.serialization
import jax
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.files import atomic_write_bytes
from jaxgen.io import paths


def save_params(path: str, tree: Any) -> None:
  atomic_write_bytes(path, flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, jax.device_get(tree))))


def load_params(path: str) -> Any:
  """Load a tree saved by `save_params`; a missing or corrupt file is a one-line DataError."""
  if not paths.exists(path):
    raise DataError(f"{path}: no such parameter file; run the stage that writes it first")
  with paths.open(path, "rb") as f:
    data = f.read()
  try:
    return flax.serialization.msgpack_restore(data)
  except Exception as err:
    raise DataError(f"{path}: corrupt parameter file ({type(err).__name__}); delete it and re-run "
                    "the stage that writes it") from None
