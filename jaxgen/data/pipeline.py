"""grain input pipelines: shuffle, decode, resize/crop, augment, batch, shard per host, checkpoint.

The pipeline is built on grain's MapDataset API, as a pure function of the global example
position k = step * global_batch_size + j:

  source --shuffle(seed, reshuffled per epoch)--> repeat(num_epochs) --> resize/crop
    --> augment (rng seeded by seed and k) --> record_fn --> host p keeps j in [p*L, (p+1)*L)
    --> batch(L)

With sampling='class_balanced' the shuffle/repeat pair is replaced by a draw per position k
(a class uniformly among those present, then a record uniformly within it, both from (seed, k)).
Augmentations: 'flip', pad-and-'crop', and 'rrc' (torchvision's RandomResizedCrop: area scale
in (0.08, 1), aspect ratio in (3/4, 4/3) log-uniform, 10 tries then a centre crop; the crop of
the decoded image is resized to image_size, so no separate resize happens first).

with L = global_batch_size // process_count. The union of the hosts' batches at a step is
exactly the batch a single process would see, so results do not depend on the process count.
The iterator's state (`get_state`) is a JSON-serialisable dict.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Iterator

import grain
import numpy as np
from PIL import Image

from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError

AUGMENTATIONS = (None, "flip", "crop", "flip_crop", "rrc", "rrc_flip")
# the same as config values: 'none' for None (`augment_option` maps one to the other)
AUGMENT_NAMES = ("none",) + tuple(a for a in AUGMENTATIONS if a)
SAMPLINGS = ("uniform", "class_balanced")
_IMAGE_KEYS = ("image", "images")


def augment_option(name: str) -> str | None:
  """A config's augmentation name ('none', 'flip', ...) as `make_loader`'s `augment`."""
  return None if name == "none" else name


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [size, size, C]: bilinear resize of the shorter side to `size` (PIL,
  antialiased when shrinking), then a centre crop of the longer side. No-op if already square
  at `size`."""
  h, w, c = image.shape
  if h == size and w == size:
    return image
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  top, left = (nh - size) // 2, (nw - size) // 2
  return _resize_to(image, nh, nw)[top:top + size, left:left + size]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """(top, left, h, w) of torchvision's RandomResizedCrop.get_params: up to 10 draws of an area
  fraction in `scale` and a log-uniform aspect ratio in `ratio`; if none fits, the largest
  centre crop whose aspect ratio is clamped to `ratio`."""
  area = height * width
  log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = float(np.exp(rng.uniform(*log_ratio)))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, C] -> [height, width, C], bilinear (PIL, antialiased when shrinking)."""
  c = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  return np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(height, width, c)


def _resize_record(record: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  out = dict(record)
  if "image" in out:
    out["image"] = resize_center_crop(np.asarray(out["image"]), size)
  if "images" in out:
    out["images"] = np.stack([resize_center_crop(v, size) for v in np.asarray(out["images"])])
  return out


def augment_record(record: dict[str, np.ndarray], rng: np.random.Generator,
                   augment: str, image_size: int | None = None) -> dict[str, np.ndarray]:
  """Random horizontal flip (p=1/2), random crop after reflect-padding by size // 8, or
  ('rrc') a random resized crop of the decoded image to image_size x image_size.

  The same flip and crop apply to 'image' and to every view in 'images' of one record, so a
  multi-view record stays one consistent object.
  """
  shape = np.shape(record["image"] if "image" in record else record["images"][0])
  box = random_resized_crop_box(shape[0], shape[1], rng) if augment.startswith("rrc") else None
  flip = "flip" in augment and bool(rng.integers(2))
  pad = max(1, shape[0] // 8) if augment in ("crop", "flip_crop") else 0
  dy, dx = (int(rng.integers(2 * pad + 1)), int(rng.integers(2 * pad + 1))) if pad else (0, 0)
  out = dict(record)
  for key in _IMAGE_KEYS:
    if key not in out:
      continue
    x = np.asarray(out[key])
    if box is not None:
      top, left, h, w = box
      crop = x[..., top:top + h, left:left + w, :]
      x = (_resize_to(crop, image_size, image_size) if x.ndim == 3
           else np.stack([_resize_to(v, image_size, image_size) for v in crop]))
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


class _ClassBalancedDraws(grain.MapDataset):
  """Position k -> a record of a class drawn uniformly among those present, then a record
  drawn uniformly within it; both draws from (seed, k) alone, so any position can be read
  (and resumed) without the ones before it."""

  def __init__(self, source: Source, class_ids: np.ndarray, seed: int, length: int):
    super().__init__(grain.MapDataset.source(source))
    class_ids = np.asarray(class_ids, np.int64)
    if len(class_ids) != len(source):
      raise DataError(f"{getattr(source, 'name', 'source')}: {len(class_ids)} class ids for "
                      f"{len(source)} records")
    self._members = [np.flatnonzero(class_ids == c) for c in np.unique(class_ids)]
    self._seed, self._len = int(seed), int(length)

  def __len__(self) -> int:
    return self._len

  def __str__(self) -> str:
    return f"_ClassBalancedDraws(classes={len(self._members)})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    rng = np.random.default_rng([self._seed, int(index)])
    members = self._members[int(rng.integers(len(self._members)))]
    return self._parent[int(members[int(rng.random() * len(members))])]


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
                read_threads: int = 4, sampling: str = "uniform",
                class_ids: np.ndarray | None = None,
                record_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
                ) -> Loader:
  """A deterministic, host-sharded batch iterator over `source` (see the module docstring).

  Args:
    source: any random-access source (`jaxgen.data.get_source`, `ArraySource`, ...).
    global_batch_size: examples per step over all processes; each process gets
      global_batch_size // process_count of them.
    seed: shuffle order (a new permutation per epoch) and augmentation draws derive from it.
    shuffle: False keeps the source order (evaluation).
    num_epochs: None repeats forever; otherwise the iterator ends after that many epochs.
    image_size: resize (shorter side) + centre crop to image_size x image_size.
    augment: None, 'flip', 'crop', 'flip_crop' (random horizontal flip / pad-and-crop), 'rrc'
      or 'rrc_flip' (random resized crop to image_size, optionally flipped).
    process_index, process_count: this host and the number of hosts (jax.process_index() /
      jax.process_count() in a multi-host run).
    worker_count: grain worker processes (0: decode in this process with `read_threads`).
    drop_remainder: drop the last partial global batch of a finite run.
    sampling: 'uniform' (epochs of shuffled records) or 'class_balanced' (needs class_ids: a
      class uniformly among those present per example, then a record within it).
    record_fn: maps each (resized, augmented) record to the record that is batched, e.g. to
      select keys or add loss weights; a module-level function or partial of one, so that
      worker processes can unpickle it.
  """
  if augment not in AUGMENTATIONS:
    raise ConfigError("data.augment", augment, f"one of {AUGMENTATIONS}")
  if sampling not in SAMPLINGS:
    raise ConfigError("sampling", sampling, f"one of {SAMPLINGS}")
  if sampling == "class_balanced" and class_ids is None:
    raise ConfigError("sampling", sampling, "'uniform', or class_ids for 'class_balanced'")
  rrc = augment is not None and augment.startswith("rrc")
  if rrc and image_size is None:
    raise ConfigError("data.image_size", image_size, f"an output size for augment={augment!r}")
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

  if sampling == "class_balanced":
    length = sys.maxsize if num_epochs is None else num_epochs * len(source)
    ds = _ClassBalancedDraws(source, class_ids, _derived_seed(seed, 2), length)
  else:
    ds = grain.MapDataset.source(source)
    if shuffle:
      ds = ds.shuffle(seed=_derived_seed(seed, 0))
    ds = ds.repeat(num_epochs)
  if image_size is not None and not rrc:
    ds = ds.map(functools.partial(_resize_record, size=image_size))
  if augment is not None:
    # partials of module functions (not lambdas) so worker processes can unpickle the pipeline
    ds = ds.random_map(functools.partial(augment_record, augment=augment, image_size=image_size),
                       seed=_derived_seed(seed, 1))
  if record_fn is not None:
    ds = ds.map(record_fn)
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
                 "process_count": process_count, "drop_remainder": bool(drop_remainder),
                 "sampling": sampling}
  steps = len(source) // global_batch_size if drop_remainder else -(-len(source) // global_batch_size)
  return Loader(iter_ds, fingerprint, steps_per_epoch=steps,
                num_batches=None if num_epochs is None else len(ds))
