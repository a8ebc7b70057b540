"""Atomic file writes: a killed run never leaves a half-written file that a later stage trusts.

Local paths: a temporary file in the same directory, fsynced, renamed over the target. URLs
(jaxgen.io.paths): the bytes are buffered and uploaded as one object on a clean exit, since an
object store shows an object whole or not at all (and has no rename).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator

import numpy as np

from jaxgen.io import paths


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[BinaryIO]:
  """A binary file object for `path` that appears there only once the block exits cleanly:
  written to a temporary file in the same directory, fsynced, then renamed over `path` (a URL:
  uploaded in one piece)."""
  if paths.is_url(path):
    buffer = io.BytesIO()
    yield buffer
    paths.write_bytes(path, buffer.getvalue())
    return
  path = paths.local(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_writer(path) as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


def _to_json(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
    return _to_json(value.to_dict())
  if isinstance(value, (np.generic, np.ndarray)) or type(value).__module__.startswith("jax"):
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()
  return value


def json_value(value: Any) -> Any:
  """`value` as it reads back from `atomic_write_json` (tuples as lists, numpy as Python)."""
  return json.loads(json.dumps(_to_json(value)))


def json_differences(old: Any, new: Any, missing: Any = None, prefix: str = ""
                     ) -> Iterator[tuple[str, Any, Any]]:
  """(dotted key, old value, new value) of every (sorted, nested) key where two JSON trees differ;
  a key one side lacks reads as `missing` there."""
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, missing), new.get(key, missing)
    if isinstance(a, dict) and isinstance(b, dict):
      yield from json_differences(a, b, missing, f"{prefix}{key}.")
    elif a != b:
      yield f"{prefix}{key}", a, b


def first_json_difference(old: Any, new: Any, missing: Any = None, prefix: str = ""
                          ) -> tuple[str, Any, Any] | None:
  """The first of `json_differences`, or None."""
  return next(json_differences(old, new, missing, prefix), None)


def atomic_write_json(path: str, value: Any) -> None:
  """JSON with numpy/jax scalars and arrays converted to Python numbers and lists."""
  atomic_write_text(path, json.dumps(_to_json(value), indent=2, sort_keys=False) + "\n")


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str) -> Any:
  with paths.open(path, encoding="utf-8") as f:
    return json.load(f)
