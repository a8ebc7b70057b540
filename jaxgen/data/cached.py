"""A `Source` over a finished shard cache (`jaxgen.io.shard_cache`): generated sets that stay on
disk, e.g. Diff-Mix's synthetic set at a paper preset (5x CUB at 448 px is ~18 GB).

Record i is item i of the cache: {'image': uint8 [H, W, C], 'label': int32 [], and, when the
cache holds soft labels, 'soft_label': float32 [K]} (the label is the soft label's argmax, the
class an in-memory caller derives from it too). Images are read per record: memory-mapped from
each shard's uncompressed .npz member on local disk (`shard_cache.open_member`), so a random
read touches only its own bytes and nothing is held beyond the page cache; shards on a URL are
read whole when first touched. The other per-item arrays are small (labels, the synthesis plan)
and are read once when the source opens: `column(name)`.
"""

from __future__ import annotations

import collections
import threading
from typing import Iterator

import numpy as np

from jaxgen.data.sources import Record, Source
from jaxgen.errors import DataError
from jaxgen.io import paths, shard_cache

MAX_OPEN_SHARDS = 64  # shard maps kept open per source (least recently used closed first)
_OPEN_MAPS_LOCK = threading.Lock()  # grain's read threads share a source's maps


class CachedSource(Source):
  """Random access to the items of a finished shard cache without loading its images.

  Args:
    cache_dir: the cache (`shard_cache.build_shards` wrote it; every item exactly once).
    num_items: how many items it must hold.
    num_classes: K; labels must lie in [0, K).
    image_key: the cache's image array.
    label_key: an int class array, or a float [N, K] soft-label array (then the record's 'label'
      is its argmax and 'soft_label' the vector).
  """

  def __init__(self, cache_dir: str, num_items: int, *, num_classes: int,
               image_key: str = "images", label_key: str = "soft_label"):
    self.cache_dir, self._image_key, self._label_key = cache_dir, image_key, label_key
    self.name = f"cache {cache_dir}"
    self.num_classes = int(num_classes)
    self.class_names = tuple(str(c) for c in range(self.num_classes))
    files = shard_cache.shard_files(cache_dir, num_items)
    self._paths = [p for p, _ in files]
    index = np.concatenate([i for _, i in files])
    # item -> (shard, row): the shards hold fixed item ranges, but their index arrays decide
    self._shard = np.empty(num_items, np.int64)
    self._row = np.empty(num_items, np.int64)
    for s, (_, items) in enumerate(files):
      self._shard[items], self._row[items] = s, np.arange(len(items))
    order = np.argsort(index)
    parts: dict[str, list[np.ndarray]] = {}
    for path in self._paths:
      with paths.load_npz(path, allow_pickle=False) as f:
        if image_key not in f.files or label_key not in f.files:
          raise DataError(f"{path}: holds {sorted(f.files)}; expected {image_key!r} and "
                          f"{label_key!r}")
        for k in f.files:
          if k != image_key:
            parts.setdefault(k, []).append(np.asarray(f[k]))
    self._columns = {k: np.concatenate(v)[order] for k, v in parts.items()}
    self._images: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    first = self._shard_images(0)
    if first.dtype != np.uint8 or first.ndim != 4:
      raise DataError(f"{self._paths[0]}: {image_key!r} is {first.dtype} {first.shape}; expected "
                      "uint8 [n, H, W, C]")
    self.image_shape = tuple(int(n) for n in first.shape[1:])
    labels = self._columns[label_key]
    self._soft = labels.ndim == 2
    self._labels = (np.argmax(labels, axis=1) if self._soft else labels).astype(np.int32)
    if labels.ndim == 2 and labels.shape[1] != self.num_classes:
      raise DataError(f"{cache_dir}: soft labels have {labels.shape[1]} classes; expected "
                      f"{self.num_classes}")
    if self._labels.size and (self._labels.min() < 0 or self._labels.max() >= self.num_classes):
      raise DataError(f"{cache_dir}: label {int(self._labels.max())} is outside "
                      f"[0, {self.num_classes})")

  def __getstate__(self) -> dict:  # grain worker processes open their own maps
    return {**self.__dict__, "_images": collections.OrderedDict()}

  def _shard_images(self, shard: int) -> np.ndarray:
    """The shard's images, from the most recently used open maps (each map holds a file
    descriptor, and a paper-scale set has thousands of shards)."""
    with _OPEN_MAPS_LOCK:
      images = self._images.get(shard)
      if images is None:
        images = self._images[shard] = shard_cache.open_member(self._paths[shard],
                                                               self._image_key)
        if len(self._images) > MAX_OPEN_SHARDS:
          self._images.popitem(last=False)
      else:
        self._images.move_to_end(shard)
      return images

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> Record:
    i = self._index(index)
    record = {"image": np.array(self._shard_images(int(self._shard[i]))[self._row[i]]),
              "label": self._labels[i]}
    if self._soft:
      record["soft_label"] = self._columns[self._label_key][i].astype(np.float32)
    return record

  def labels(self) -> np.ndarray:
    return self._labels.copy()

  def column(self, name: str) -> np.ndarray:
    """The cache's per-item array `name` (not the images), in item order."""
    if name not in self._columns:
      raise DataError(f"{self.cache_dir}: no array {name!r}; it holds {sorted(self._columns)}")
    return self._columns[name]

  def images(self, start: int, stop: int) -> np.ndarray:
    """Images of items [start, stop) as one array (read from the shards that hold them)."""
    items = np.arange(max(start, 0), min(stop, len(self)))
    out = np.empty((len(items),) + self.image_shape, np.uint8)
    for s in np.unique(self._shard[items]):
      mine = self._shard[items] == s
      out[mine] = self._shard_images(int(s))[self._row[items[mine]]]
    return out

  def image_chunks(self, size: int) -> Iterator[np.ndarray]:
    """All images in item order, `size` at a time (the last chunk may be short)."""
    for start in range(0, len(self), size):
      yield self.images(start, start + size)
