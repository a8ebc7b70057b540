"""TensorFlow Datasets as random-access sources (`tfds.data_source`), without TensorFlow.

`tfds.data_source` reads the ArrayRecord files of a prepared data set and decodes features
with NumPy/PIL, so no TensorFlow is needed. Nothing is ever downloaded here: a data set that
is not prepared under `data_dir` is a DataError telling the user the command to prepare it.
Examples of names: cifar10, cifar100, oxford_flowers102, cars196, caltech_birds2011,
stanford_dogs, celeb_a, celeb_a_hq (the last two have no class label: label 0, one class).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError
from jaxgen.io import paths


def _prepare_hint(name: str, data_dir: str | None) -> str:
  where = f" --data_dir={data_dir}" if data_dir else ""
  return (f"run `tfds build {name}{where} --file_format=array_record` yourself (manual-download "
          f"data sets need --manual_dir too); jaxgen never downloads data")


class TFDSSource(Source):
  """Records {'image' uint8 [H, W, C], 'label' int32} from a TFDS random-access source.

  Only 'image' and the label feature are returned (other features such as bbox or file names
  are dropped so records batch cleanly). Variable-size data sets (flowers, cars, birds, dogs)
  have image_shape (None, None, 3): give the pipeline an image_size.
  """

  def __init__(self, data_source: Any, info: Any, *, tfds_name: str, split: str,
               image_key: str, label_key: str | None):
    self._ds, self.name = data_source, f"tfds:{tfds_name}/{split}"
    features = info.features
    if image_key not in features:
      raise DataError(f"{self.name}: no image feature '{image_key}' (features: "
                      f"{sorted(features.keys())})")
    self._image_key, self._label_key = image_key, label_key
    if label_key is None:
      self.num_classes, self.class_names = 1, (tfds_name,)
    else:
      if label_key not in features:
        raise DataError(f"{self.name}: no label feature '{label_key}' (features: "
                        f"{sorted(features.keys())}); pass label_key=None for unlabeled sets")
      label_feature = features[label_key]
      self.num_classes = int(label_feature.num_classes)
      self.class_names = tuple(label_feature.names)
    shape = tuple(features[image_key].shape)
    self.image_shape = shape
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i = self._index(index)
    example = self._ds[i]
    image = np.asarray(example[self._image_key])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise DataError(f"{self.name}[{i}]: image has shape {image.shape} and dtype {image.dtype};"
                      " expected uint8 [H, W, 1|3]")
    label = 0 if self._label_key is None else example[self._label_key]
    return {"image": image, "label": self._check_label(label, f"{self.name}[{i}]")}

  def labels(self) -> np.ndarray:
    # TFDS decodes whole examples, so the labels are read once and cached.
    if self._labels is None:
      if self._label_key is None:
        self._labels = np.zeros(len(self), np.int32)
      else:
        self._labels = np.asarray(
            [int(self._ds[i][self._label_key]) for i in range(len(self))], np.int32)
        bad = np.flatnonzero((self._labels < 0) | (self._labels >= self.num_classes))
        if bad.size:
          raise DataError(f"{self.name}[{int(bad[0])}]: label {int(self._labels[bad[0]])} is "
                          f"outside [0, {self.num_classes})")
    return self._labels


_UNLABELED = ("celeb_a", "celeb_a_hq")


def tfds_source(split: str, *, data_dir: str | None = None, tfds_name: str = "cifar10",
                image_key: str = "image", label_key: str | None = "label") -> TFDSSource:
  """Split `split` (any TFDS split string, e.g. 'train', 'test', 'train[:90%]') of `tfds_name`.

  data_dir: the TFDS data directory (default: TFDS's own, ~/tensorflow_datasets or
  $TFDS_DATA_DIR). label_key: the class-label feature (None: unlabeled, all labels 0; the
  default for celeb_a / celeb_a_hq). Raises ConfigError for an unknown builder name and
  DataError (with the prepare command) when the data set is not prepared.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if data_dir is not None and not paths.isdir(data_dir):
    raise DataError(f"{data_dir}: TFDS data_dir does not exist; {_prepare_hint(tfds_name, data_dir)}")
  base_name = tfds_name.split("/")[0].split(":")[0]
  if base_name in _UNLABELED and label_key == "label":
    label_key = None
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError("data.tfds_name", tfds_name,
                      "a TFDS builder name such as cifar10, cifar100, oxford_flowers102, "
                      "cars196, caltech_birds2011, stanford_dogs, celeb_a") from None
  try:
    data_source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as err:  # pylint: disable=broad-except
    # tfds raises assorted types here (assertions, an unsupported-format error for TFRecord-only
    # preparations, ValueError for unknown splits); all mean the same thing to a user.
    if not builder.is_prepared():
      raise DataError(f"TFDS data set {tfds_name} is not prepared under {builder.data_dir}; "
                      f"{_prepare_hint(tfds_name, data_dir)}") from None
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise DataError(f"TFDS data set {tfds_name} split {split!r} under {builder.data_dir} cannot "
                    f"be opened for random access ({first}); {_prepare_hint(tfds_name, data_dir)}"
                    ) from None
  return TFDSSource(data_source, builder.info, tfds_name=tfds_name, split=split,
                    image_key=image_key, label_key=label_key)
