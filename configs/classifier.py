"""Image classifiers (papers 000, 001, 003): train, evaluate (incl. multi-view), report.

  python -m jaxgen.main --config=configs/classifier.py              # ResNet18, rendered multi-view data, 32x32, minutes on CPU
  python -m jaxgen.main --config=configs/classifier.py:tiny         # seconds, for tests
  python -m jaxgen.main --config=configs/classifier.py:finetune --config.init_from.workdir=workdirs/classifier-default

Presets:
  tiny                          a 1-layer ViT on 16x16 renders, seconds
  default                       ResNet18 (torchvision stem, width 16) on 32x32 renders, one view
                                per training object, evaluated single- and multi-view
  <arch>_multiview, <arch>_digits   the architecture matrix on small CPU budgets (32x32, a few
                                hundred steps, reduced widths; docs/classifier_results.md), for
                                arch in resnet18, resnet50, mobilenet_v3_large, mobilenet_v3_small,
                                vit_tiny (a reduced ViT standing in for ViT-B/16)
  resnet18_multiview_paper      paper 000 sec. IV: ResNet18, Adam lr 1e-5, batch 128, 64x64
  mobilenet_v3_small_multiview_paper  paper 000 sec. IV with MobileNetV3-Small
  mobilenet_v3_large_multiview_paper  paper 000 sec. IV with MobileNetV3-Large
  resnet18_digits_longtail      long-tail digits (IF 10) with class-balanced sampling
  resnet18_spinal_entropy       paper 003 sec. 4.3: SpinalNet head + entropy term, w = 0.3
  resnet50_cifar10              paper 001 recipe: SGD momentum 0.9, wd 5e-4, cosine, label
                                smoothing 0.1, CutMix; CIFAR-10 from TFDS (prepared on disk)
  resnet18_torchvision          fine-tune torchvision weights (--config.classifier.pretrained_path)
  finetune                      continue from another jaxgen run's classifier checkpoint
"""

from __future__ import annotations

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config

MATRIX_ARCHS = ("resnet18", "resnet50", "mobilenet_v3_large", "mobilenet_v3_small", "vit_tiny")
MATRIX = tuple(f"{a}_{d}" for a in MATRIX_ARCHS for d in ("multiview", "digits"))
PAPER_MULTIVIEW = ("resnet18_multiview_paper", "mobilenet_v3_small_multiview_paper",
                   "mobilenet_v3_large_multiview_paper")
PRESETS = ("tiny", "default") + MATRIX + PAPER_MULTIVIEW + (
    "resnet18_digits_longtail", "resnet18_spinal_entropy", "resnet50_cifar10",
    "resnet18_torchvision", "finetune")


def _data(**overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict({
      "name": "multiview",  # 'multiview' | 'digits' | 'tfds' | 'folder'
      "data_dir": "",  # render cache (multiview; '' = WORKDIR/data), TFDS dir, or image folder root
      "seed": 0,  # data seed: renders and splits, independent of the training seed
      "image_size": 32,
      "num_train": 2000,  # multiview: training objects; tfds/folder: cap on images (0 = all)
      "num_test": 400,
      "num_views": 4,  # multiview: views per object (test-time multi-view evaluation)
      "variant": "standard",  # multiview renderer variant
      "train_views": "single",  # multiview: 'single' view per object (NMR_c) or 'all' views
      "test_fraction": 0.2,  # digits / folder without split folders
      "tfds_name": "cifar10",
      "train_split": "train",
      "test_split": "test",
      "imbalance_factor": 0,  # > 1: exponential long-tail training subset (paper 001 sec. 4.3)
      "shots": 0,  # > 0: k-shot training subset (paper 001 sec. 4.1)
      # tfds / folder stream through the grain pipeline: decode-time augmentation ('none',
      # 'flip', 'crop', 'flip_crop', 'rrc' = RandomResizedCrop, 'rrc_flip') and worker processes
      "augment": "none",
      "workers": 0,
  })
  d.update(overrides)
  return d


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("classifier", preset, PRESETS)
  preset = c.preset
  c.data = _data()
  c.init_from = ml_collections.ConfigDict({"workdir": "", "name": "classifier"})
  c.evaluate = ml_collections.ConfigDict({"num_train_examples": 1000})

  _PRESETS[preset](c, preset)
  return c


# The architecture matrix on this project's 2-core CPU budget (docs/classifier_results.md). Every
# run is 32x32 (paper 000: 64x64), a few hundred steps (paper 000: 20k) at Adam with a higher lr
# and cosine decay (paper 000: lr 1e-5 constant), and XLA:CPU-friendly reduced sizes:
#   resnet18          torchvision stem (7x7/2 + max-pool), width 16 (paper: 64)
#   resnet50          torchvision stem, width 16 (paper: 64), batch 64: a REDUCED-WIDTH ResNet-50
#   mobilenet_v3_large  torchvision stem, width_mult 0.5 (paper: 1.0), batch 32
#   mobilenet_v3_small  torchvision stem, width_mult 1.0, batch 64
#                     (both with bn_momentum 0.9: torchvision's 0.99 running-average memory lags
#                     weights this short run moves fast, and evaluation-mode accuracy then stays at
#                     chance although training-mode accuracy is far above it;
#                     docs/classifier_results.md)
#   vit_tiny          patch 8, hidden 96, 6 layers, 3 heads, MLP 384 (ViT-Tiny: patch 4, 192, 12
#                     layers; ViT-B/16: 768, 12 layers), AdamW with warm-up and cosine decay
# (the 3x3 stride-1 'small_input' stems and depthwise convolutions are 5-20x slower per step on
# XLA:CPU, hence the torchvision stems). Multi-view runs train on one view per object (NMR_c).
_MATRIX_RECIPES = {  # arch -> (num_steps, batch_size, lr, arch options)
    "resnet18": (400, 128, 2e-3, dict(small_input=False, width=16)),
    "resnet50": (300, 64, 2e-3, dict(small_input=False, width=16)),
    "mobilenet_v3_large": (400, 32, 2e-3, dict(small_input=False, width_mult=0.5,
                                                bn_momentum=0.9)),
    "mobilenet_v3_small": (200, 64, 2e-3, dict(small_input=False, bn_momentum=0.9)),
    "vit_tiny": (300, 128, 1e-3, dict(patch_size=8, hidden_dim=96, num_layers=6, num_heads=3,
                                      mlp_dim=384)),
}


def _matrix_preset(c: ml_collections.ConfigDict, preset: str) -> None:
  """`<arch>_multiview` / `<arch>_digits`: one architecture on one embedded data set, minutes."""
  arch, data = preset.rsplit("_", 1)
  steps, batch, lr, kw = _MATRIX_RECIPES[arch]
  c.data.update(image_size=32)
  if data == "digits":
    c.data.name = "digits"
  optimizer = "adamw" if arch.startswith("vit") else "adam"
  c.classifier = classifier_config(arch, num_steps=steps, batch_size=batch, lr=lr,
                                   optimizer=optimizer, **kw)
  if arch.startswith("vit"):
    c.classifier.train.optim.update(schedule="warmup_cosine", warmup_steps=steps // 10,
                                    weight_decay=0.05, clip_norm=1.0)
  else:
    c.classifier.train.optim.schedule = "cosine"
  c.classifier.train.update(steps_per_call=20, log_every=20, checkpoint_every=steps)
  if data == "digits":
    c.classifier.augment.update(flip=False, crop_padding=2)  # digits are not mirror-symmetric


# --------------------------------------------------------------------------- presets, one builder each


def _tiny(c: ml_collections.ConfigDict, preset: str) -> None:
  c.data.update(image_size=16, num_train=48, num_test=16, num_views=2)
  c.classifier = classifier_config("vit_tiny", num_steps=20, batch_size=16, lr=3e-3,
                                   patch_size=4, hidden_dim=16, num_layers=1, num_heads=2,
                                   mlp_dim=32)
  c.classifier.train.update(steps_per_call=10, log_every=10, checkpoint_every=10)
  c.classifier.eval_batch_size = 64
  c.evaluate.num_train_examples = 48


def _default(c: ml_collections.ConfigDict, preset: str) -> None:
  # ResNet-18 depth at a quarter of the width (16 stem channels): XLA:CPU trains it ~20x
  # faster than width 64, which keeps this preset within minutes on 2 cores.
  c.classifier = classifier_config("resnet18", num_steps=500, batch_size=128, lr=2e-3,
                                   small_input=False, width=16)
  c.classifier.train.optim.schedule = "cosine"
  c.classifier.train.update(steps_per_call=20, checkpoint_every=200)


def _finetune(c: ml_collections.ConfigDict, preset: str) -> None:
  """From the default preset's run, at a tenth of the learning rate."""
  _default(c, preset)
  c.init_from.workdir = "workdirs/classifier-default"
  c.classifier.train.num_steps = 200
  c.classifier.train.optim.lr = 1e-4


def _paper_multiview(c: ml_collections.ConfigDict, preset: str) -> None:
  # Paper 000 sec. IV: torchvision networks from scratch, Adam lr 1e-5, batch 128 on 64x64 renders.
  c.data.update(image_size=64, num_train=5000, num_test=1000)
  arch = preset[:-len("_multiview_paper")]
  c.classifier = classifier_config(arch, num_steps=20_000, batch_size=128, lr=1e-5,
                                   small_input=False)
  c.classifier.train.update(steps_per_call=50, checkpoint_every=2000, log_every=100)


def _digits_resnet18(c: ml_collections.ConfigDict) -> None:
  c.data.update(name="digits", image_size=32)
  c.classifier = classifier_config("resnet18", num_steps=400, batch_size=64, lr=1e-3, width=32)
  c.classifier.train.optim.schedule = "cosine"
  c.classifier.train.update(steps_per_call=20, checkpoint_every=200)
  c.classifier.augment.update(flip=False, crop_padding=2)  # digits are not mirror-symmetric


def _digits_longtail(c: ml_collections.ConfigDict, preset: str) -> None:
  _digits_resnet18(c)
  c.data.imbalance_factor = 10
  c.classifier.sampling = "class_balanced"


def _spinal_entropy(c: ml_collections.ConfigDict, preset: str) -> None:
  _digits_resnet18(c)
  c.classifier.arch_kw.update(head="spinal", spinal_width=64)
  c.classifier.entropy_weight = 0.3  # paper 003 sec. 4.3


def _resnet50_cifar10(c: ml_collections.ConfigDict, preset: str) -> None:
  # Paper 001 sec. 4: SGD(0.9), wd 5e-4, cosine, label smoothing (confidence 0.9), CutMix.
  c.data.update(name="tfds", tfds_name="cifar10", image_size=32, num_train=0, num_test=0)
  c.classifier = classifier_config("resnet50", num_steps=39_000, batch_size=128, lr=0.1,
                                   optimizer="sgd", label_smoothing=0.1, cutmix_alpha=1.0,
                                   mix_prob=0.5)
  c.classifier.train.optim.update(schedule="cosine", weight_decay=5e-4, momentum=0.9)
  c.classifier.train.update(steps_per_call=50, checkpoint_every=3900, log_every=100)
  c.classifier.augment.crop_padding = 4


def _resnet18_torchvision(c: ml_collections.ConfigDict, preset: str) -> None:
  # ImageNet weights (e.g. torchvision's resnet18-f37072fd.pth) fine-tuned on 64x64 renders.
  c.data.update(image_size=64)
  c.classifier = classifier_config("resnet18", num_steps=1000, batch_size=128, lr=1e-4,
                                   small_input=False, normalization="imagenet",
                                   pretrained_path="resnet18-f37072fd.pth")
  c.classifier.train.optim.schedule = "cosine"
  c.classifier.train.update(steps_per_call=20, checkpoint_every=500)


_PRESETS = {"tiny": _tiny, "default": _default, "finetune": _finetune,
            **{name: _matrix_preset for name in MATRIX},
            **{name: _paper_multiview for name in PAPER_MULTIVIEW},
            "resnet18_digits_longtail": _digits_longtail, "resnet18_spinal_entropy": _spinal_entropy,
            "resnet50_cifar10": _resnet50_cifar10, "resnet18_torchvision": _resnet18_torchvision}
assert set(_PRESETS) == set(PRESETS), "every preset has one builder"
