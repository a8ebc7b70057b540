"""Diff-Mix's config checks: every impossible value of `configs/diffmix.py` fails here, before
anything is rendered, trained or sampled (a study validates each of its runs), and the t2i
backbone run a Diff-Mix run builds on or reuses (`t2i_workdir`) is checked against the config."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.diffmix import data as dm_data
from jaxgen.diffmix import filtering
from jaxgen.diffmix import studies, synthesis
from jaxgen.data.imbalance import long_tail_indices
from jaxgen.data.pipeline import AUGMENT_NAMES
from jaxgen.errors import ConfigError
from jaxgen.io import paths
from jaxgen.io.files import read_json
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import stage_done
from jaxgen.t2i import finetune as ft
from jaxgen.t2i import main as t2i_main

# What Diff-Mix needs of a t2i run, and the sections a reused run must share with `config.t2i`.
T2I_STAGES = ("data", "train_autoencoder", "train_denoiser", "train_judges")


def t2i_stages(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The t2i stages this run needs: a real source brings its own test set and judges (the
  real-set classifier, or InceptionV3), so the embedded judges are not trained."""
  return T2I_STAGES[:3] if config.data.target == "source" else T2I_STAGES
_T2I_SECTIONS = ("data", "backbone", "autoencoder", "denoiser", "judge", "seed")
T2I_UNUSED_EVALUATE_KEYS = ("samples_per_class", "target_samples_per_class", "num_grid")


def t2i_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete t2i config of the backbone run: config.t2i on this run's mesh, with this run's
  fine-tuning section and seeds (the t2i run itself stops before fine-tuning)."""
  t = ml_collections.ConfigDict(config.t2i.to_dict())
  t.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  t.finetune = ml_collections.ConfigDict({**config.finetune.to_dict(), "seeds": tuple(config.seeds)})
  # counts of the t2i run's own sample / finetune stages, which a Diff-Mix run does not run
  t.evaluate.update({k: 1 for k in T2I_UNUSED_EVALUATE_KEYS})
  return t


def _first_difference(theirs, ours, prefix: str, added: list[str]) -> tuple[str, object, object] | None:
  """The first key whose value differs; keys the reused run's config lacks (added to the library
  since, with defaults that keep the old behaviour) are collected in `added`, not compared."""
  if isinstance(theirs, dict) and isinstance(ours, dict):
    for key in sorted(set(theirs) | set(ours)):
      if key not in theirs:
        added.append(f"{prefix}.{key}")
        continue
      found = _first_difference(theirs.get(key), ours.get(key), f"{prefix}.{key}", added)
      if found:
        return found
    return None
  if isinstance(theirs, list) or isinstance(ours, (list, tuple)):
    theirs, ours = list(theirs or []), list(ours or [])
  return None if theirs == ours else (prefix, ours, theirs)


def _check_t2i_workdir(config: ml_collections.ConfigDict) -> None:
  path = config.t2i_workdir
  cfg_path = os.path.join(path, "config.json")
  configlib.require(paths.exists(cfg_path), "t2i_workdir", path,
                    "the workdir of a t2i run (with config.json)")
  for stage in t2i_stages(config):
    configlib.require(stage_done(path, stage), "t2i_workdir", path,
                      f"a t2i workdir whose {stage} stage finished (stages/{stage}.json is missing)")
  try:
    theirs = read_json(cfg_path)
  except ValueError:
    raise ConfigError("t2i_workdir", path, "a readable config.json (it is corrupt)") from None
  if theirs.get("method") != "t2i":
    raise ConfigError("t2i_workdir", path, f"a t2i workdir (its method is {theirs.get('method')!r})")
  ours = config.t2i.to_dict()
  added: list[str] = []
  for section in _T2I_SECTIONS:
    found = _first_difference(theirs.get(section), ours.get(section), f"t2i.{section}", added)
    if found:
      key, mine, other = found
      raise ConfigError(key, mine, f"{other!r}, as in the reused {cfg_path}")
  if added and is_main_process():
    print(f"[diffmix] {cfg_path} predates the config keys {', '.join(added)}; reusing it with "
          "their current values (new keys default to the old behaviour)", flush=True)


def training_images_per_class(config: ml_collections.ConfigDict) -> int:
  d = config.t2i.data
  return d.target_shots + d.target_judge_per_class


def num_real(config: ml_collections.ConfigDict) -> int:
  """The real training set's size (a real source is opened to count it)."""
  if config.data.target == "source":
    return dm_data.source_training_size(config)
  shots = config.data.shots or training_images_per_class(config)
  return shots * config.t2i.data.target_classes


def _validate_source(config: ml_collections.ConfigDict) -> None:
  """A real data set: its source, splits, size, classes and the prompt's metaclass word."""
  d = config.data
  configlib.require_choice(config, "data.source", dm_data.SOURCES)
  configlib.require(isinstance(d.shots, int) and d.shots >= 0, "data.shots", d.shots,
                    "an integer >= 0 (0 = every training image)")
  configlib.require(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", d.tfds_name,
                    "a TFDS name such as caltech_birds2011")
  configlib.require(d.source != "folder" or paths.isdir(d.data_dir), "data.data_dir",
                    d.data_dir, "an image folder (<split>/<class_name>/*.png)")
  configlib.require(not d.data_dir or paths.isdir(d.data_dir), "data.data_dir", d.data_dir,
                    "an existing folder, or '' for TFDS's default data directory")
  for key in ("train_split", "test_split", "metaclass"):
    configlib.require(bool(d[key]), f"data.{key}", d[key], "a non-empty string")
  configlib.require_positive_int(config, "data.image_size")
  configlib.require_choice(config, "data.augment", AUGMENT_NAMES)
  configlib.require_positive_int(config, "data.workers", allow_zero=True)
  configlib.require(isinstance(d.num_classes, int) and d.num_classes >= 2, "data.num_classes",
                    d.num_classes, "the data set's number of classes (>= 2)")
  if config.preset.removesuffix("_vit") in dm_data.PAPER_SETS:
    configlib.require(bool(config.classifier.pretrained_path), "classifier.pretrained_path",
                      config.classifier.pretrained_path,
                      "torchvision ImageNet weights for the paper's pre-trained classifier")


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    check_backbone: bool = True) -> None:
  """Every impossible value fails here, before anything is rendered, trained or sampled; a study
  validates each of its runs' configs (the shared backbone's once)."""
  if config.study or tuple(config.study_runs):
    configlib.require(bool(config.study), "study_runs", tuple(config.study_runs),
                      "empty unless `study` names a study")
    validate_config(studies.run_config(config, {}, config.t2i_workdir), num_devices,
                    check_backbone)
    for name, overrides in studies.study_runs(config):
      try:
        validate_config(studies.run_config(config, overrides, config.t2i_workdir), num_devices,
                        check_backbone=False)
      except ConfigError as err:
        raise ConfigError(err.key, err.value,
                          f"{err.expected} (run {name!r} of study {config.study!r})") from None
    return
  dp = configlib.validate_base(config, num_devices)
  seeds = list(config.seeds)
  configlib.require(bool(seeds) and len(set(seeds)) == len(seeds) and all(
      isinstance(x, int) and x >= 0 for x in seeds), "seeds", seeds,
      "distinct non-negative integers")
  # the t2i data keys this config's checks build on (the rest of t2i is checked last)
  k = config.t2i.data.target_classes
  configlib.require(isinstance(k, int) and 2 <= k <= 16, "t2i.data.target_classes", k,
                    "an integer in [2, 16]")
  for key in ("target_shots", "target_judge_per_class", "target_test_per_class"):
    configlib.require_positive_int(config, f"t2i.data.{key}")
  per_class = training_images_per_class(config)
  shots = config.data.shots
  configlib.require_choice(config, "data.target", dm_data.TARGETS)
  if config.data.target == "source":
    _validate_source(config)
  else:
    for key, default in (("source", ""), ("tfds_name", ""), ("data_dir", ""),
                         ("train_split", "train"), ("test_split", "test"), ("image_size", 0),
                         ("num_classes", 0), ("metaclass", ""), ("augment", "none"),
                         ("workers", 0)):
      configlib.require(config.data[key] == default, f"data.{key}", config.data[key],
                        f"{default!r}: it applies only with data.target='source'")
    configlib.require(isinstance(shots, int) and 0 <= shots <= per_class, "data.shots", shots,
                      f"an integer in [0, {per_class}] (0 = all {per_class} target training "
                      "images per class)")
  f_imb = config.data.imbalance_factor
  configlib.require(isinstance(f_imb, (int, float)) and (f_imb == 0 or f_imb >= 1),
                    "data.imbalance_factor", f_imb, "0 (balanced) or a factor >= 1")
  configlib.require_range(config, "data.minority_fraction", 0.0, 0.5)
  configlib.require(config.data.target == "fine_grained" or f_imb == 0, "data.imbalance_factor",
                    f_imb, "0 with data.target='background_shift' (a balanced set)")
  strategies = tuple(config.strategies)
  configlib.require(len(set(strategies)) == len(strategies) and set(strategies) <= set(
      synthesis.STRATEGIES) and "none" in strategies, "strategies", strategies,
      f"distinct names among {synthesis.STRATEGIES}, including 'none' (the baseline)")
  n = num_real(config)
  if config.data.target == "source":
    k = config.data.num_classes
  if f_imb:  # the long tail keeps at least one image per class of the smallest classes
    n = int(long_tail_indices(np.repeat(np.arange(k), n // k), seed=0,
                              imbalance_factor=f_imb).indices.size)
  ft.validate_config(config, "finetune", dp)
  s = config.synthesis
  configlib.require_positive_int(config, "synthesis.multiplier")
  strengths = tuple(s.strengths)
  configlib.require(bool(strengths) and all(isinstance(v, (int, float)) and 0 < v <= 1
                                            for v in strengths), "synthesis.strengths", strengths,
                    "one or more SDEdit strengths in (0, 1]")
  configlib.require(s.gamma >= 0, "synthesis.gamma", s.gamma, "a number >= 0")
  configlib.require_choice(config, "synthesis.target_sampling", synthesis.TARGET_SAMPLING)
  configlib.require(s.guidance_scale >= 0, "synthesis.guidance_scale", s.guidance_scale, ">= 0")
  configlib.require_positive_int(config, "synthesis.shard_size")
  r = s.referable_classes
  configlib.require(isinstance(r, int) and 0 <= r <= k, "synthesis.referable_classes", r,
                    f"0 (all) or an integer in [1, {k}]")
  configlib.require_choice(config, "filter.scorer", filtering.SCORERS)
  configlib.require(0 <= config.filter.drop_fraction < 1, "filter.drop_fraction",
                    config.filter.drop_fraction, "a number in [0, 1)")
  configlib.require_positive_int(config, "filter.num_times")
  validate_classifier_config(config, "classifier", dp)
  configlib.require_range(config, "classifier.synthetic_replace_prob", 0.0, 1.0)
  for key in ("finetune.train.batch_size", "classifier.train.batch_size"):
    value = configlib.get_path(config, key)
    configlib.require(value <= n, key, value, f"at most the {n} real training images")
  for key in ("batch_size", "num_grid"):
    configlib.require_positive_int(config, f"evaluate.{key}")
  if check_backbone:  # last: it builds the networks abstractly
    with configlib.nested_section("t2i", from_parent=("mesh", "finetune")):
      t2i_main.validate_config(t2i_config(config), num_devices, finetune=False)
    if config.t2i_workdir:
      _check_t2i_workdir(config)
