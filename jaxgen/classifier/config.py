"""Classifier config sections: `classifier_config` (architecture, training recipe, loss options),
their validation and the network they build (`jaxgen.nets.classifiers`)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.errors import ConfigError
from jaxgen.nets.classifiers import build_classifier, classifier_names
from jaxgen.io import paths

SAMPLING = ("uniform", "class_balanced", "reweighted")
NORMALIZATIONS = ("minus_one_one", "imagenet")
DTYPES = ("float32", "bfloat16")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Architecture options a config may set (see jaxgen.nets.classifiers); each arch has a subset.
_ARCH_KEYS = ("small_input", "head", "width", "width_mult", "dropout", "spinal_width",
              "spinal_layers", "spinal_dropout", "image_size", "patch_size", "hidden_dim",
              "num_layers", "num_heads", "mlp_dim", "attention_dropout", "bn_momentum")


def default_arch_kw(arch: str) -> dict[str, Any]:
  """The options of `arch` with their defaults; CNNs get small_input=True (32-64 px images) and
  ViTs image_size=0, meaning the training images' size."""
  model = build_classifier(arch, 1)
  kw = {k: getattr(model, k) for k in _ARCH_KEYS if hasattr(model, k)}
  if "small_input" in kw:
    kw["small_input"] = True
  if "image_size" in kw:
    kw["image_size"] = 0
  return kw


def classifier_config(arch: str = "resnet18", *, num_steps: int = 1000, batch_size: int = 128,
                      lr: float = 1e-3, optimizer: str = "adam", **overrides: Any
                      ) -> ml_collections.ConfigDict:
  """A classifier section: architecture, `train` (configlib.train_config) and the loss recipe.

  `overrides` may set any top-level key (e.g. label_smoothing=0.1), an architecture option
  directly (e.g. width=8, head='spinal', stored under `arch_kw`), or update a nested section key
  by key (e.g. augment={'crop_padding': 4}).
  """
  arch_kw = default_arch_kw(arch)
  cfg = ml_collections.ConfigDict({
      "arch": arch,
      "arch_kw": arch_kw,
      "dtype": "float32",  # compute dtype; 'bfloat16' on GPU/TPU, parameters stay float32
      "normalization": "minus_one_one",  # 'imagenet' when fine-tuning torchvision weights
      "pretrained_path": "",  # torchvision state-dict file to start from
      "train": configlib.train_config(num_steps, batch_size, lr=lr, optimizer=optimizer,
                                      log_every=20, checkpoint_every=max(num_steps, 1)),
      "label_smoothing": 0.0,
      "mixup_alpha": 0.0,
      "cutmix_alpha": 0.0,
      "mix_prob": 1.0,
      "cmo": False,
      "drw_start": 0.0,  # > 0: from this fraction of the steps on, class-balanced loss weights
      "drw_beta": 0.9999,  # DRW's effective-number weights (1 - b) / (1 - b^n_c) (Cui et al. 2019)  # CutMix pastes class-balanced (minority-oversampled) images (Park et al. 2022)
      "entropy_weight": 0.0,
      "synthetic_replace_prob": 0.0,
      "sampling": "uniform",
      "augment": {"flip": True, "crop_padding": 0},
      "eval_batch_size": 256,
  })
  for key, value in overrides.items():
    if key in _ARCH_KEYS:
      cfg.arch_kw[key] = value
    elif isinstance(value, dict) and key in cfg:
      cfg[key].update(value)
    else:
      cfg[key] = value
  return cfg


def validate_classifier_config(config: ml_collections.ConfigDict, prefix: str,
                               data_parallel: int) -> None:
  """Check a `classifier_config` section found at `prefix` ('' for the top level)."""
  cfg = configlib.get_path(config, prefix) if prefix else config
  p = f"{prefix}." if prefix else ""
  configlib.require(cfg.arch in classifier_names(), f"{p}arch", cfg.arch,
                    "one of " + ", ".join(classifier_names()))
  configlib.validate_train(config, f"{p}train", data_parallel)
  configlib.require_choice(config, f"{p}sampling", SAMPLING)
  configlib.require_choice(config, f"{p}normalization", NORMALIZATIONS)
  configlib.require_choice(config, f"{p}dtype", DTYPES)
  configlib.require_range(config, f"{p}label_smoothing", 0.0, 0.999)
  for key in ("mixup_alpha", "cutmix_alpha"):
    configlib.require_range(config, f"{p}{key}", 0.0, 1e6)
  configlib.require_range(config, f"{p}mix_prob", 0.0, 1.0)
  configlib.require(isinstance(cfg.cmo, bool) and (not cfg.cmo or cfg.cutmix_alpha > 0), f"{p}cmo",
                    cfg.cmo, f"false, or true with {p}cutmix_alpha > 0 (CMO pastes by CutMix)")
  configlib.require_range(config, f"{p}entropy_weight", 0.0, 1e6)
  configlib.require(0.0 <= cfg.drw_start < 1.0, f"{p}drw_start", cfg.drw_start,
                    "a fraction of the steps in [0, 1) (0 = no deferred re-weighting)")
  configlib.require(0.0 < cfg.drw_beta < 1.0, f"{p}drw_beta", cfg.drw_beta, "a number in (0, 1)")
  configlib.require_range(config, f"{p}synthetic_replace_prob", 0.0, 1.0)
  configlib.require_positive_int(config, f"{p}augment.crop_padding", allow_zero=True)
  configlib.require_positive_int(config, f"{p}eval_batch_size")
  configlib.require(not cfg.pretrained_path or paths.isfile(cfg.pretrained_path),
                    f"{p}pretrained_path", cfg.pretrained_path,
                    "an existing torchvision weight file, or '' to start from scratch")
  for key, value in cfg.arch_kw.items():
    if isinstance(value, float):  # width_mult, dropouts, bn_momentum: finite, in range
      fraction = "dropout" in key or key == "bn_momentum"
      configlib.require(0.0 <= value < 1.0 if fraction else 0.0 < value < math.inf,
                        f"{p}arch_kw.{key}", value,
                        "a number in [0, 1)" if fraction else "a positive number")
  # Building the module (shapes only) rejects options the architecture does not accept.
  try:
    build_model(cfg, 2, image_size=224 if cfg.arch.startswith("vit") else 32)
  except ConfigError as err:  # the builder names the option alone; name it where it is set
    option = err.key.split(".")[-1]
    if option not in cfg.arch_kw:
      raise
    raise ConfigError(f"{p}arch_kw.{option}", err.value, err.expected) from None


def build_model(cfg: ml_collections.ConfigDict, num_classes: int, *, image_size: int) -> nn.Module:
  """The `build_classifier` network of `cfg` (ViTs get `image_size` unless set explicitly)."""
  kw = dict(cfg.arch_kw)
  if kw.get("image_size", None) == 0:
    kw["image_size"] = int(image_size)
  kw["dtype"] = cfg.dtype
  return build_classifier(cfg.arch, num_classes, **kw)


# --------------------------------------------------------------------------- loss
