"""grain input pipelines: shuffle, decode, resize/crop, augment, batch, shard per host, checkpoint.

The pipeline is built on grain's MapDataset API, as a pure function of the global example
position k = step * global_batch_size + j:

  source --shuffle(seed, reshuffled per epoch)--> repeat(num_epochs) --> resize/crop
    --> augment (rng seeded by seed and k) --> host p keeps j in [p*L, (p+1)*L) --> batch(L)

with L = global_batch_size // process_count. The union of the hosts' batches at a step is
exactly the batch a single process would see, so results do not depend on the process count.
The iterator's state (`get_state`) is a JSON-serialisable dict.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Iterator

import grain
import numpy as np
from PIL import Image

from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError

AUGMENTATIONS = (None, "flip", "crop", "flip_crop")
_IMAGE_KEYS = ("image", "images")


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [size, size, C]: bilinear resize of the shorter side to `size` (PIL,
  antialiased when shrinking), then a centre crop of the longer side. No-op if already square
  at `size`."""
  h, w, c = image.shape
  if h == size and w == size:
    return image
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  out = np.asarray(pil.resize((nw, nh), Image.BILINEAR))
  top, left = (nh - size) // 2, (nw - size) // 2
  out = out[top:top + size, left:left + size]
  return out.reshape(size, size, c)


def _resize_record(record: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  out = dict(record)
  if "image" in out:
    out["image"] = resize_center_crop(np.asarray(out["image"]), size)
  if "images" in out:
    out["images"] = np.stack([resize_center_crop(v, size) for v in np.asarray(out["images"])])
  return out


def augment_record(record: dict[str, np.ndarray], rng: np.random.Generator,
                   augment: str) -> dict[str, np.ndarray]:
  """Random horizontal flip (p=1/2) and/or random crop after reflect-padding by size // 8.

  The same flip and crop offsets apply to 'image' and to every view in 'images' of one record,
  so a multi-view record stays one consistent object.
  """
  flip = "flip" in augment and bool(rng.integers(2))
  shape = np.shape(record["image"] if "image" in record else record["images"][0])
  pad = max(1, shape[0] // 8) if "crop" in augment else 0
  dy, dx = (int(rng.integers(2 * pad + 1)), int(rng.integers(2 * pad + 1))) if pad else (0, 0)
  out = dict(record)
  for key in _IMAGE_KEYS:
    if key not in out:
      continue
    x = np.asarray(out[key])
    if flip:
      x = x[..., ::-1, :]
    if pad:
      lead = [(0, 0)] * (x.ndim - 3)
      x = np.pad(x, lead + [(pad, pad), (pad, pad), (0, 0)], mode="reflect")
      x = x[..., dy:dy + shape[0], dx:dx + shape[1], :]
    out[key] = np.ascontiguousarray(x)
  return out


class _HostShard(grain.MapDataset):
  """Global stream -> this host's part: position i maps to step i // L, row p * L + i % L.

  A partial last global batch (drop_remainder=False) is split the same way, so some hosts may
  get fewer rows (or none) at that final step.
  """

  def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int,
               process_index: int, drop_remainder: bool):
    super().__init__(parent)
    self._g, self._l, self._p = global_batch, local_batch, process_index
    total = len(parent)
    full, rem = divmod(total, global_batch)
    tail = 0 if drop_remainder else min(local_batch, max(0, rem - process_index * local_batch))
    self._len = full * local_batch + tail

  def __len__(self) -> int:
    return self._len

  def __str__(self) -> str:
    return f"_HostShard(p={self._p}, local={self._l}, global={self._g})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(int(index), self._l)
    return self._parent[step * self._g + self._p * self._l + row]


def _derived_seed(seed: int, stream: int) -> int:
  """A 32-bit seed per random stream (shuffle, augment) from one user seed."""
  return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


class Loader:
  """Iterator over host-local batches (dict of numpy arrays [L, ...]) with checkpointable state.

  `get_state()` returns a JSON-serialisable dict {'grain': <grain iterator state>,
  'fingerprint': <pipeline settings>}; `set_state(state)` on a loader built with the same
  settings resumes at exactly the next batch (DataError if the settings differ).
  """

  def __init__(self, dataset: grain.IterDataset, fingerprint: dict[str, Any],
               steps_per_epoch: int | None, num_batches: int | None):
    self._dataset, self._fingerprint = dataset, fingerprint
    self._iter = iter(dataset)
    self.steps_per_epoch = steps_per_epoch
    self.num_batches = num_batches  # None when num_epochs is None (endless)

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iter)

  def get_state(self) -> dict[str, Any]:
    """The position as a JSON-serialisable dict (store it next to the model checkpoint)."""
    return {"grain": json.loads(json.dumps(self._iter.get_state())),
            "fingerprint": dict(self._fingerprint)}

  def set_state(self, state: dict[str, Any] | str | bytes) -> None:
    """Resumes from `get_state()` output (dict, or its JSON text / bytes)."""
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if state.get("fingerprint") != self._fingerprint:
      raise DataError(f"loader state was saved with settings {state.get('fingerprint')} but this "
                      f"loader has {self._fingerprint}; rebuild the loader with the saved settings")
    self._iter.set_state(state["grain"])

  def close(self) -> None:
    """Stops worker processes (if any)."""
    close = getattr(self._iter, "close", None)
    if close is not None:
      close()


def _mark_flags_parsed() -> None:
  # grain's worker processes read absl flags; outside absl.app.run they are unparsed and
  # would raise UnparsedFlagAccessError in the workers.
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_loader(source: Source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, image_size: int | None = None,
                augment: str | None = None, process_index: int = 0, process_count: int = 1,
                worker_count: int = 0, drop_remainder: bool = True,
                read_threads: int = 4) -> Loader:
  """A deterministic, host-sharded batch iterator over `source` (see the module docstring).

  Args:
    source: any random-access source (`jaxgen.data.get_source`, `ArraySource`, ...).
    global_batch_size: examples per step over all processes; each process gets
      global_batch_size // process_count of them.
    seed: shuffle order (a new permutation per epoch) and augmentation draws derive from it.
    shuffle: False keeps the source order (evaluation).
    num_epochs: None repeats forever; otherwise the iterator ends after that many epochs.
    image_size: resize (shorter side) + centre crop to image_size x image_size.
    augment: None, 'flip', 'crop' or 'flip_crop' (random horizontal flip / pad-and-crop).
    process_index, process_count: this host and the number of hosts (jax.process_index() /
      jax.process_count() in a multi-host run).
    worker_count: grain worker processes (0: decode in this process with `read_threads`).
    drop_remainder: drop the last partial global batch of a finite run.
  """
  if augment not in AUGMENTATIONS:
    raise ConfigError("data.augment", augment, f"one of {AUGMENTATIONS}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError("process_index", process_index, f"an index in [0, {process_count})")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ConfigError("data.global_batch_size", global_batch_size,
                      f"a positive multiple of the process count {process_count}")
  if num_epochs is not None and num_epochs < 1:
    raise ConfigError("data.num_epochs", num_epochs, "None (endless) or a positive integer")
  if len(source) == 0:
    raise DataError(f"{getattr(source, 'name', 'source')}: has no records")
  shape = tuple(getattr(source, "image_shape", ()))
  if image_size is None and None in shape:
    raise ConfigError("data.image_size", image_size,
                      f"an image size: {getattr(source, 'name', 'source')} images vary in size")
  local = global_batch_size // process_count

  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=_derived_seed(seed, 0))
  ds = ds.repeat(num_epochs)
  if image_size is not None:
    ds = ds.map(functools.partial(_resize_record, size=image_size))
  if augment is not None:
    # partials of module functions (not lambdas) so worker processes can unpickle the pipeline
    ds = ds.random_map(functools.partial(augment_record, augment=augment),
                       seed=_derived_seed(seed, 1))
  ds = _HostShard(ds, global_batch_size, local, process_index, drop_remainder)
  total = None if num_epochs is None else num_epochs * len(source)
  if total is not None and total < global_batch_size and drop_remainder:
    raise DataError(f"{getattr(source, 'name', 'source')}: {num_epochs} epoch(s) of "
                    f"{len(source)} records is fewer than one global batch of {global_batch_size}")
  ds = ds.batch(local, drop_remainder=drop_remainder)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, read_threads),
                                                 prefetch_buffer_size=2 * local))
  if worker_count > 0:
    _mark_flags_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  fingerprint = {"len": len(source), "global_batch_size": global_batch_size, "seed": int(seed),
                 "shuffle": bool(shuffle), "num_epochs": num_epochs, "image_size": image_size,
                 "augment": augment, "process_index": process_index,
                 "process_count": process_count, "drop_remainder": bool(drop_remainder)}
  steps = len(source) // global_batch_size if drop_remainder else -(-len(source) // global_batch_size)
  return Loader(iter_ds, fingerprint, steps_per_epoch=steps,
                num_batches=None if num_epochs is None else len(ds))
