"""Batches from arrays held in memory (the embedded data sets), with a checkpointable position.

`ArrayBatches` samples uniformly, epoch by epoch; `ClassBalancedBatches` draws each example's
class uniformly among the classes present, then the example uniformly within that class.

The embedded sets (rendered multi-view objects, digits) fit in memory, so the per-step cost is
one numpy gather. Each epoch is a permutation drawn from (seed, epoch) alone, and the position
is two integers, so a resumed run continues with exactly the batches it would have seen. With
several processes, every process computes the same global permutation and takes its own
contiguous share of each global batch.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jaxgen.errors import DataError


class ArrayBatches:
  """Endless shuffled batches over the first axis of `arrays` (this process's share of each)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], *, global_batch_size: int, seed: int,
               shuffle: bool = True, process_index: int = 0, process_count: int = 1):
    sizes = {k: len(v) for k, v in arrays.items()}
    self._n = next(iter(sizes.values()))
    if len(set(sizes.values())) != 1:
      raise DataError(f"arrays have different lengths {sizes}; expected one length for all keys")
    if global_batch_size > self._n:
      raise DataError(f"batch size {global_batch_size} exceeds the {self._n} examples available")
    if global_batch_size % process_count:
      raise DataError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    self._arrays = dict(arrays)
    self._batch = global_batch_size
    self._seed, self._shuffle = seed, shuffle
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._epoch, self._index = 0, 0
    self._order = self._permutation(0)

  def _permutation(self, epoch: int) -> np.ndarray:
    if not self._shuffle:
      return np.arange(self._n)
    return np.random.default_rng([self._seed, epoch]).permutation(self._n)

  def __iter__(self) -> "ArrayBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._index + self._batch > self._n:  # drop the remainder, start the next epoch
      self._epoch, self._index = self._epoch + 1, 0
      self._order = self._permutation(self._epoch)
    # The global batch sorted (a faster gather), then this process's rows of it: every process
    # count gives the same global batch in the same order, so per-position draws (augmentation
    # offsets, mixing partners) meet the same examples on 1 or N hosts.
    batch = np.sort(self._order[self._index:self._index + self._batch])
    idx = batch[self._offset:self._offset + self._local]
    self._index += self._batch
    return {k: v[idx] for k, v in self._arrays.items()}

  def get_state(self) -> dict:
    return {"epoch": self._epoch, "index": self._index}

  def set_state(self, state: dict) -> None:
    self._epoch, self._index = int(state["epoch"]), int(state["index"])
    self._order = self._permutation(self._epoch)

  @property
  def steps_per_epoch(self) -> int:
    return self._n // self._batch


class ClassBalancedBatches:
  """Endless batches whose classes are uniform over the classes present (with replacement)."""

  def __init__(self, arrays: Mapping[str, np.ndarray], class_ids: np.ndarray, *,
               global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1):
    class_ids = np.asarray(class_ids, np.int64)
    n = len(class_ids)
    for k, v in arrays.items():
      if len(v) != n:
        raise DataError(f"array '{k}' has {len(v)} rows; expected {n} (one per label)")
    if global_batch_size % process_count:
      raise DataError(f"batch size {global_batch_size} is not divisible by {process_count} processes")
    self._arrays = dict(arrays)
    self._members = [np.flatnonzero(class_ids == c) for c in np.unique(class_ids)]
    self._batch, self._seed = global_batch_size, seed
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local
    self._step = 0

  def __iter__(self) -> "ClassBalancedBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, self._step])
    classes = rng.integers(0, len(self._members), self._batch)
    within = rng.random(self._batch)
    self._step += 1
    sl = slice(self._offset, self._offset + self._local)
    idx = np.asarray([m[int(u * len(m))] for m, u in
                      zip((self._members[c] for c in classes[sl]), within[sl])], np.int64)
    return {k: v[idx] for k, v in self._arrays.items()}

  def get_state(self) -> dict:
    return {"step": self._step}

  def set_state(self, state: dict) -> None:
    self._step = int(state["step"])


def source_arrays(source: Any, image_size: int, limit: int = 0) -> dict[str, np.ndarray]:
  """All records of a source as arrays (in-memory sources directly), resized to image_size."""
  from jaxgen.data.pipeline import resize_center_crop  # pylint: disable=import-outside-toplevel
  if hasattr(source, "arrays"):
    arrays = {k: np.asarray(v) for k, v in source.arrays.items()}
    if limit:
      arrays = {k: v[:limit] for k, v in arrays.items()}
  else:
    n = min(len(source), limit) if limit else len(source)
    records = [source[i] for i in range(n)]
    arrays = {"image": np.stack([resize_center_crop(np.asarray(r["image"]), image_size)
                                 for r in records]),
              "label": np.asarray([int(r["label"]) for r in records], np.int32)}
  image = arrays["image"]
  if image.shape[1:3] != (image_size, image_size):
    arrays["image"] = np.stack([resize_center_crop(x, image_size) for x in image])
  if arrays["image"].shape[-1] == 1:  # every classifier takes RGB
    arrays["image"] = np.repeat(arrays["image"], 3, axis=-1)
  return arrays
