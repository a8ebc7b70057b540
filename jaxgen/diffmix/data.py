"""A Diff-Mix run's real training set and test set.

`fine_grained` (default): the t2i run's fine-grained target images (its fine-tuning shots, then
its judge split), `shots` per class (0 = all), optionally long-tailed (CUB-LT's recipe), and its
test split. `background_shift` (paper Table 4, Waterbirds-like): `jaxgen.data.t2i_sets.
background_shift_set` with the t2i run's classes, metaclass, size and data seed: training objects
lie on their class group's background (land classes on land, water classes on water) but for a
`minority_fraction`; test backgrounds are balanced and independent of the class, with a group id
per test image (class group x background) for the four-group and worst-group accuracies. The
renders are cached in WORKDIR/data/. `source` (the paper presets): a real data set through
`jaxgen.data.sources` (`tfds`: e.g. caltech_birds2011, or an image `folder`), its train and test
splits resized (centre crop) to `data.image_size` once and cached; the vanilla backbone's prompts
name the classes ("a photo of a <class name>, a type of <metaclass>").
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen.data.memory import source_arrays
from jaxgen.data.sources import get_source, subset
from jaxgen.errors import DataError
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.data import t2i_sets
from jaxgen.data.imbalance import long_tail_indices
from jaxgen.io.files import atomic_save_npz
from jaxgen.io import paths

TARGETS = ("fine_grained", "background_shift", "source")
SOURCES = ("tfds", "folder")
# The paper's data sets (Table 1): preset -> (source, TFDS name, classes, metaclass word).
# FGVC-Aircraft is not in TFDS: its preset reads an image folder (data.data_dir).
PAPER_SETS = {"cub": ("tfds", "caltech_birds2011", 200, "bird"),
              "aircraft": ("folder", "", 100, "aircraft"),
              "flowers": ("tfds", "oxford_flowers102", 102, "flower"),
              "cars": ("tfds", "cars196", 196, "car"),
              "dogs": ("tfds", "stanford_dogs", 120, "dog")}
GROUP_NAMES = tuple(t2i_sets.GROUP_NAMES)


def real_training_set(data: dict, shots: int, imbalance_factor: float = 0.0, seed: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The first `shots` images of each class from the t2i run's target training images (its
  fine-tuning shots, then its judge split); 0 = all of them. With an imbalance factor, the
  long-tailed subset of those (`jaxgen.data.imbalance.long_tail_indices`, CUB-LT's recipe)."""
  images = np.concatenate([data["shot_images"], data["judge_images"]])
  labels = np.concatenate([data["shot_labels"], data["judge_labels"]]).astype(np.int32)
  if shots:
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:shots]
                                   for c in range(data["num_target_classes"])]))
    images, labels = images[keep], labels[keep]
  if imbalance_factor:
    keep = np.sort(long_tail_indices(labels, seed=seed, imbalance_factor=imbalance_factor,
                                     num_classes=data["num_target_classes"]).indices)
    images, labels = images[keep], labels[keep]
  return images, labels


def _background_shift(config: ml_collections.ConfigDict, per_class: int, workdir: str) -> dict:
  t, d = config.t2i.data, config.data
  path = os.path.join(workdir, "data", "background_shift.npz")
  if not paths.exists(path):
    kw = dict(num_classes=t.target_classes, image_size=t.image_size, metaclass=t.target_metaclass)
    train = t2i_sets.background_shift_set(t.seed, per_class, "train",
                                          minority_fraction=d.minority_fraction, **kw)
    test = t2i_sets.background_shift_set(t.seed, t.target_test_per_class, "test", **kw)
    atomic_save_npz(path, real_images=train["images"], real_labels=train["labels"],
                    real_groups=train["groups"], target_test_images=test["images"],
                    target_test_labels=test["labels"], target_test_groups=test["groups"])
  with paths.load_npz(path) as f:
    return {k: f[k] for k in f.files}


def first_shots(labels: np.ndarray, shots: int, num_classes: int) -> np.ndarray:
  """Sorted indices of the first `shots` examples of each class (0 = all)."""
  if not shots:
    return np.arange(len(labels))
  return np.sort(np.concatenate([np.flatnonzero(labels == c)[:shots] for c in range(num_classes)]))


def open_source(config: ml_collections.ConfigDict, split: str):
  """The `split` of a real source (DataError / ConfigError when it is missing)."""
  d = config.data
  options = {"tfds_name": d.tfds_name} if d.source == "tfds" else {}
  return get_source(d.source, split, data_dir=d.data_dir or None, **options)


def source_training_size(config: ml_collections.ConfigDict) -> int:
  """How many real training images a source target gives (checked before anything trains)."""
  train = open_source(config, config.data.train_split)
  if not config.data.shots:
    return len(train)
  return int(np.minimum(np.bincount(np.asarray(train.labels())), config.data.shots).sum())


def _source(config: ml_collections.ConfigDict, workdir: str) -> dict:
  d = config.data
  path = os.path.join(workdir, "data", "source.npz")
  meta_path = os.path.join(workdir, "data", "source.json")
  if not (paths.exists(path) and paths.exists(meta_path)):
    train = open_source(config, d.train_split)
    test = open_source(config, d.test_split)
    tr, te = source_arrays(train, d.image_size), source_arrays(test, d.image_size)
    atomic_save_npz(path, real_images=tr["image"], real_labels=tr["label"],
                    target_test_images=te["image"], target_test_labels=te["label"])
    atomic_write_json(meta_path, {"class_names": list(train.class_names),
                                  "name": train.name, "data": d.to_dict()})
  meta = read_json(meta_path)
  with paths.load_npz(path) as f:
    out = {k: f[k] for k in f.files}
  k = len(meta["class_names"])
  if k != d.num_classes:
    raise DataError(f"{meta['name']}: {k} classes; config.data.num_classes={d.num_classes}")
  keep = first_shots(out["real_labels"], d.shots, k)
  out["real_images"], out["real_labels"] = out["real_images"][keep], out["real_labels"][keep]
  out["real_index"] = keep  # records of the training split (its classifiers stream them)
  return {**out, "num_target_classes": k, "class_names": meta["class_names"],
          "metaclass_word": d.metaclass, "source_name": meta["name"]}


def streamed_real_set(config: ml_collections.ConfigDict, data: dict):
  """The real training set of a source target as the source's records (decoded, resized or
  augmented per step by the grain pipeline); the same records as data['real_images']."""
  return subset(open_source(config, config.data.train_split), data["real_index"])


def vanilla_prompts(data: dict) -> list[str]:
  """The vanilla backbone's prompt per class: the class name for a real source (what vanilla SD
  was prompted with), the bare metaclass for the embedded renders (their classes have no name)."""
  word = data["metaclass_word"]
  if "class_names" in data and "source_name" in data:
    return [f"a photo of a {n.replace('_', ' ')}, a type of {word}" for n in data["class_names"]]
  return [t2i_sets.photo_prompt(word)] * data["num_target_classes"]


def load(config: ml_collections.ConfigDict, t2i_data, workdir: str) -> dict:
  """The run's sets: for the embedded targets, t2i_data() (the t2i run's cached sets) plus
  'real_images', 'real_labels' and, for background_shift, its own test split with
  'target_test_groups'; for a real source, that source's sets."""
  d = config.data
  if d.target == "source":
    return _source(config, workdir)
  t2i_data = t2i_data()
  if d.target == "background_shift":
    per_class = d.shots or (config.t2i.data.target_shots + config.t2i.data.target_judge_per_class)
    return {**t2i_data, **_background_shift(config, per_class, workdir)}
  images, labels = real_training_set(t2i_data, d.shots, d.imbalance_factor, config.t2i.data.seed)
  return {**t2i_data, "real_images": images, "real_labels": labels}
