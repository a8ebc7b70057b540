"""One interface for every data set: random-access sources and the `get_source` registry.

A source follows grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__(i)`) and
returns records `dict[str, np.ndarray]`: 'image' uint8 [H, W, C] (or 'images' uint8 [V, H, W, C]
for multi-view records) and 'label' int32 []. Metadata: `num_classes`, `class_names`,
`image_shape` (shape of the record's `image_key` entry; None for a size that varies) and
`labels()` (all labels without decoding images, for the imbalance builders). In-memory sources
(multiview, digits) also expose `.arrays`, the full numpy arrays keyed like the records.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxgen.errors import ConfigError, DataError

Record = dict[str, np.ndarray]


class Source:
  """Base class of all sources (grain RandomAccessDataSource protocol plus metadata)."""

  name: str = "source"
  num_classes: int = 0
  class_names: tuple[str, ...] = ()
  image_shape: tuple[int | None, ...] = ()
  image_key: str = "image"

  def __len__(self) -> int:
    raise TypeError(f"{type(self).__name__} does not define __len__")

  def __getitem__(self, index: int) -> Record:
    raise TypeError(f"{type(self).__name__} does not define __getitem__")

  def labels(self) -> np.ndarray:
    """All labels as int32 [N], in record order (subclasses avoid decoding images)."""
    return np.asarray([int(self[i]["label"]) for i in range(len(self))], np.int32)

  def _index(self, index: int) -> int:
    """Checks a record index (grain passes Python ints) and maps negatives like a list."""
    n = len(self)
    i = int(index)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"index {index} out of range for {self.name} with {n} records")
    return i

  def _check_label(self, label: Any, where: str) -> np.ndarray:
    """Returns the label as int32 [] or raises DataError naming `where` if out of range."""
    value = int(np.asarray(label))
    if not 0 <= value < self.num_classes:
      raise DataError(f"{where}: label {value} is outside [0, {self.num_classes})")
    return np.asarray(value, np.int32)

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(name={self.name!r}, len={len(self)}, "
            f"num_classes={self.num_classes}, image_shape={self.image_shape})")


def _check_uint8_images(name: str, key: str, array: np.ndarray) -> None:
  if array.dtype != np.uint8:
    raise DataError(f"{name}: '{key}' has dtype {array.dtype}; expected uint8 in [0, 255]")
  if array.shape[-1] not in (1, 3):
    raise DataError(f"{name}: '{key}' has {array.shape[-1]} channels; expected 1 or 3")


class ArraySource(Source):
  """A source over in-memory numpy arrays of equal length (one record per row).

  Args:
    arrays: must hold 'label' [N] and 'image' [N, H, W, C] and/or 'images' [N, V, H, W, C] uint8;
      any other [N, ...] arrays are passed through in the records.
    num_classes: labels must lie in [0, num_classes); default max label + 1.
    class_names: one name per class; default the class index as a string.
    name: used in error messages.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], *, num_classes: int | None = None,
               class_names: Sequence[str] | None = None, name: str = "arrays"):
    self.name = name
    if "label" not in arrays:
      raise DataError(f"{name}: arrays have no 'label' entry (keys: {sorted(arrays)})")
    if "image" not in arrays and "images" not in arrays:
      raise DataError(f"{name}: arrays have neither 'image' nor 'images' (keys: {sorted(arrays)})")
    # Views, so marking them read-only below leaves the caller's arrays writable.
    arrs = {k: np.asarray(v).view() for k, v in arrays.items()}
    n = len(arrs["label"])
    for k, v in arrs.items():
      if v.ndim == 0 or len(v) != n:
        raise DataError(f"{name}: '{k}' has {len(v) if v.ndim else 0} rows; 'label' has {n}")
    arrs["label"] = arrs["label"].astype(np.int32)
    self.image_key = "image" if "image" in arrs else "images"
    for key, ndim in (("image", 4), ("images", 5)):
      if key in arrs:
        if arrs[key].ndim != ndim:
          raise DataError(f"{name}: '{key}' has shape {arrs[key].shape}; expected {ndim} dims")
        _check_uint8_images(name, key, arrs[key])
    labels = arrs["label"]
    self.num_classes = int(num_classes if num_classes is not None
                           else (labels.max() + 1 if n else 0))
    if n and (labels.min() < 0 or labels.max() >= self.num_classes):
      bad = int(np.flatnonzero((labels < 0) | (labels >= self.num_classes))[0])
      raise DataError(f"{name}: label {int(labels[bad])} at index {bad} is outside "
                      f"[0, {self.num_classes})")
    self.class_names = tuple(class_names) if class_names is not None else tuple(
        str(c) for c in range(self.num_classes))
    if len(self.class_names) != self.num_classes:
      raise DataError(f"{name}: {len(self.class_names)} class names for "
                      f"{self.num_classes} classes")
    for v in arrs.values():
      v.setflags(write=False)  # shared by every record view; must not be mutated in place
    self.arrays = arrs
    self.image_shape = tuple(arrs[self.image_key].shape[1:])

  def __len__(self) -> int:
    return len(self.arrays["label"])

  def __getitem__(self, index: int) -> Record:
    i = self._index(index)
    return {k: v[i] for k, v in self.arrays.items()}

  def labels(self) -> np.ndarray:
    return self.arrays["label"]


class SubsetSource(Source):
  """The records of `parent` at `indices` (e.g. from `jaxgen.data.imbalance`), in that order."""

  def __init__(self, parent: Source, indices: Sequence[int] | np.ndarray):
    idx = np.asarray(indices, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(parent)):
      raise DataError(f"{parent.name}: subset index {int(idx.max())} / {int(idx.min())} is "
                      f"outside [0, {len(parent)})")
    self.parent, self.indices = parent, idx
    self.name = f"{parent.name}[subset of {idx.size}]"
    self.num_classes, self.class_names = parent.num_classes, parent.class_names
    self.image_shape, self.image_key = parent.image_shape, parent.image_key
    if hasattr(parent, "arrays"):
      self.arrays = {k: v[idx] for k, v in parent.arrays.items()}

  def __len__(self) -> int:
    return int(self.indices.size)

  def __getitem__(self, index: int) -> Record:
    return self.parent[int(self.indices[self._index(index)])]

  def labels(self) -> np.ndarray:
    return self.parent.labels()[self.indices]


def subset(source: Source, indices: Sequence[int] | np.ndarray) -> Source:
  """Restricts a source to `indices` (keeps metadata and `.arrays` when the parent has them)."""
  return SubsetSource(source, indices)


class FieldsSource(Source):
  """The records of `parent` with per-record fields added or replaced, e.g. each image's soft label
  vector as its 'label' (`fields[k][i]` goes into record i); metadata and labels() are the parent's."""

  def __init__(self, parent: Source, fields: Mapping[str, np.ndarray]):
    for key, values in fields.items():
      if len(values) != len(parent):
        raise DataError(f"{parent.name}: field {key!r} has {len(values)} rows for {len(parent)} "
                        "records; expected one per record")
    self.parent, self.fields = parent, {k: np.asarray(v) for k, v in fields.items()}
    self.name = f"{parent.name}[+{','.join(fields)}]"
    self.num_classes, self.class_names = parent.num_classes, parent.class_names
    self.image_shape, self.image_key = parent.image_shape, parent.image_key

  def __len__(self) -> int:
    return len(self.parent)

  def __getitem__(self, index: int) -> Record:
    i = self._index(index)
    return {**self.parent[i], **{k: v[i] for k, v in self.fields.items()}}

  def labels(self) -> np.ndarray:
    return self.parent.labels()


def with_fields(source: Source, **fields: np.ndarray) -> Source:
  """`source` whose record i also carries `fields[k][i]` under each key k."""
  return FieldsSource(source, fields)


# --------------------------------------------------------------------------- multiview renderer

@functools.lru_cache(maxsize=4)
def _multiview_splits(data_dir: str | None, seed: int, num_train: int, num_test: int,
                      num_views: int, image_size: int, variant: str) -> dict[str, dict]:
  # Cached because every split comes from one render; get_source('multiview', 'test') right
  # after 'train' must not render the whole set again.
  from jaxgen.data import multiview  # pylint: disable=import-outside-toplevel
  return multiview.build_multiview_splits(
      data_dir, seed=seed, num_train=num_train, num_test=num_test, num_views=num_views,
      image_size=image_size, variant=variant)


def multiview_source(split: str, *, data_dir: str | None = None, seed: int = 0,
                     num_train: int = 1000, num_test: int = 200, num_views: int = 4,
                     image_size: int = 64, variant: str = "standard") -> ArraySource:
  """The procedural multi-view renderer (`jaxgen.data.multiview.build_multiview_splits`).

  Splits 'train'/'test' give records {'images' [V,H,W,3], 'label'} (paper 000's NMR_d role);
  'classifier_train'/'classifier_eval' give {'image', 'view', 'label', 'images'} (one view per
  object, the NMR_c / NMR_e roles); variant 'background_shift' adds 'background'.
  """
  splits = _multiview_splits(data_dir, int(seed), int(num_train), int(num_test), int(num_views),
                             int(image_size), str(variant))
  if split not in splits:
    raise ConfigError("data.split", split, f"one of {sorted(splits)} for source 'multiview'")
  arrays = {("label" if k == "labels" else k): v for k, v in splits[split].items()}
  num_classes = 1 + max(int(np.max(s.get("labels", s.get("label")))) for s in splits.values())
  from jaxgen.data import multiview  # pylint: disable=import-outside-toplevel
  names = getattr(multiview, "CLASS_NAMES", None) or getattr(multiview, "SHAPE_CLASSES", None)
  if names is not None and len(names) < num_classes:
    names = None  # fewer names than labels: fall back to indices rather than fail
  return ArraySource(arrays, num_classes=len(names) if names is not None else num_classes,
                     class_names=names, name=f"multiview/{split}")


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, str | Callable[..., Source]] = {
    "multiview": "jaxgen.data.sources:multiview_source",
    "digits": "jaxgen.data.digits:digits_source",
    "faces": "jaxgen.data.faces:faces_source",
    "tfds": "jaxgen.data.tfds_source:tfds_source",
    "folder": "jaxgen.data.folder:folder_source",
    "nmr": "jaxgen.data.nmr:nmr_source",
}


def known_sources() -> tuple[str, ...]:
  """Names accepted by `get_source`."""
  return tuple(sorted(_REGISTRY))


def register_source(name: str, factory: Callable[..., Source]) -> None:
  """Adds a source factory `factory(split, *, data_dir=None, **options) -> Source`."""
  _REGISTRY[name] = factory


def _resolve(name: str) -> Callable[..., Source]:
  target = _REGISTRY[name]
  if callable(target):
    return target
  module, attr = target.split(":")
  # Imported lazily: tfds and PIL-heavy modules cost seconds that most runs never need.
  return getattr(importlib.import_module(module), attr)


def get_source(name: str, split: str, *, data_dir: str | None = None, **options: Any) -> Source:
  """Returns the `split` of data set `name` as a random-access `Source`.

  Names: 'multiview', 'digits', 'tfds', 'folder', 'nmr' (options per source in docs/data.md).
  Raises ConfigError for an unknown name or option, DataError for missing or bad data.
  """
  if name not in _REGISTRY:
    raise ConfigError("data.name", name, f"one of {', '.join(known_sources())}")
  factory = _resolve(name)
  params = inspect.signature(factory).parameters
  allowed = sorted(p for p in params if p not in ("split", "data_dir"))
  for key, value in options.items():
    if key not in params or key in ("split", "data_dir"):
      raise ConfigError(f"data.{key}", value, f"an option of source '{name}': {', '.join(allowed)}")
  return factory(split, data_dir=data_dir, **options)
