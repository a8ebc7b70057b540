"""The t2i run's data: the embedded sets of `jaxgen.data.t2i_sets`, cached once per workdir.

Pre-training set P (72 colour x solid classes, prompts "a photo of a red cube") and its test
split; the fine-grained target T (K cube classes, unknown to P's prompts), split into the few-shot
images fine-tuning sees, the target judge's training images and a test split. Everything is a
deterministic function of `data.seed`; the rendered arrays are cached in WORKDIR/data/ so later
stages (and Diff-Mix runs that reuse this backbone) read the same bytes.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen.data import t2i_sets
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.text.tokenizers import WordTokenizer
from jaxgen.io import paths

DATA_NAMES = ("renders",)
CACHE_VERSION = 1


def _render(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  d = config.data
  pre = t2i_sets.pretraining_set(d.seed, d.pretrain_per_class, d.image_size)
  pre_test = t2i_sets.pretraining_set(d.seed + 1, d.pretrain_test_per_class, d.image_size)
  k = d.target_classes
  train = t2i_sets.fine_grained_set(d.seed, d.target_shots + d.target_judge_per_class, k,
                                    d.image_size, d.target_metaclass, "train")
  test = t2i_sets.fine_grained_set(d.seed, d.target_test_per_class, k, d.image_size,
                                   d.target_metaclass, "test")
  shots = slice(0, d.target_shots * k)  # object j has class j mod K: the first shots*K objects
  judge = slice(d.target_shots * k, None)
  return {
      "pretrain_images": pre["images"], "pretrain_labels": pre["labels"],
      "pretrain_test_images": pre_test["images"], "pretrain_test_labels": pre_test["labels"],
      "shot_images": train["images"][shots], "shot_labels": train["labels"][shots],
      "judge_images": train["images"][judge], "judge_labels": train["labels"][judge],
      "target_test_images": test["images"], "target_test_labels": test["labels"],
      "_meta": {"class_names": pre["class_names"], "metaclass_names": pre["metaclass_names"],
                "colour_names": pre["colour_names"], "metaclass_word": train["metaclass_name"],
                "num_target_classes": k, "version": CACHE_VERSION},
  }


def load(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The run's arrays and metadata, rendered on first use and cached under WORKDIR/data/."""
  path = os.path.join(workdir, "data", "sets.npz")
  meta_path = os.path.join(workdir, "data", "sets.json")
  if not (paths.exists(path) and paths.exists(meta_path)):
    out = _render(config)
    meta = out.pop("_meta")
    atomic_save_npz(path, **out)
    atomic_write_json(meta_path, {**meta, "data": config.data.to_dict()})
  meta = read_json(meta_path)
  with paths.load_npz(path) as f:
    arrays = {k: f[k] for k in f.files}
  return {**arrays, **meta}


def prompt(class_name: str) -> str:
  return t2i_sets.photo_prompt(class_name)


def build_tokenizer(data: dict) -> WordTokenizer:
  """The word vocabulary of every pre-training prompt (and the empty prompt's specials)."""
  return WordTokenizer([prompt(n) for n in data["class_names"]])


def description(config: ml_collections.ConfigDict, data: dict) -> str:
  d = config.data
  return (f"embedded renders (jaxgen.data.t2i_sets, data seed {d.seed}, {d.image_size}x"
          f"{d.image_size}): pre-training set of {len(data['class_names'])} colour x solid classes, "
          f"{d.pretrain_per_class} images each ({d.pretrain_test_per_class} test); fine-grained "
          f"target of {d.target_classes} '{data['metaclass_word']}' classes: {d.target_shots} "
          f"shots per class for fine-tuning, {d.target_judge_per_class} per class for the judge, "
          f"{d.target_test_per_class} per class test")
