"""DIMVIDA (paper 000): MVLD adds generated views to a single-view set, for training and testing.

  python -m jaxgen.main --config=configs/dimvida.py          # embedded renders, ~15 min on 2 CPU cores
  python -m jaxgen.main --config=configs/dimvida.py:tiny     # seconds, for tests
  python -m jaxgen.main --config=configs/dimvida.py:nmr --config.mvld.data.data_dir=/path/to/NMR
  python -m jaxgen.main --config=configs/dimvida.py --config.mvld_workdir=workdirs/mvld-default
                                                             # reuse a trained MVLD run

`mvld` is a complete MVLD config (configs/mvld.py, same preset): its data section is DIMVIDA's
data (NMR_d trains MVLD; NMR_c and NMR_e are the single-view classifier splits) and its sampler
generates the views. `mvld.stages` are the MVLD stages run in WORKDIR/mvld (add
'train_classifier', 'evaluate' for MVLD's own Table I there). `seed` changes the classifiers'
initialisation and batches and the generated views; `mvld.seed` the data render and MVLD.
"""

from __future__ import annotations

import os

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config

PRESETS = ("tiny", "default", "nmr")
ARCHS = ("resnet18", "mobilenet_v3")  # the paper's two architectures (results.json keys)


def _mvld_config(preset: str) -> ml_collections.ConfigDict:
  return configlib.config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "mvld.py"), preset)


def _classifiers(preset: str) -> ml_collections.ConfigDict:
  if preset == "tiny":
    return ml_collections.ConfigDict({
        "resnet18": classifier_config("resnet18", num_steps=6, batch_size=16, lr=1e-3, width=8,
                                      small_input=False),
        "mobilenet_v3": classifier_config("mobilenet_v3_small", num_steps=6, batch_size=16, lr=1e-3,
                                          small_input=False, width_mult=0.25, bn_momentum=0.9),
    })
  if preset == "nmr":  # paper 000 IV-B: Adam, lr 1e-5, batch 128 (steps: not stated)
    return ml_collections.ConfigDict({
        "resnet18": classifier_config("resnet18", num_steps=20_000, batch_size=128, lr=1e-5),
        "mobilenet_v3": classifier_config("mobilenet_v3_large", num_steps=20_000, batch_size=128,
                                          lr=1e-5),
    })
  # The 2-core CPU recipes of docs/classifier_results.md (configs/classifier.py matrix).
  out = ml_collections.ConfigDict({
      "resnet18": classifier_config("resnet18", num_steps=400, batch_size=128, lr=2e-3,
                                    small_input=False, width=16),
      "mobilenet_v3": classifier_config("mobilenet_v3_small", num_steps=200, batch_size=64,
                                        lr=2e-3, small_input=False, bn_momentum=0.9),
  })
  for cfg in out.values():
    cfg.train.optim.schedule = "cosine"
    cfg.train.update(steps_per_call=20, checkpoint_every=cfg.train.num_steps)
  return out


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("dimvida", preset, PRESETS)
  preset = c.preset
  del c["data"]  # the data section is mvld.data (one source of truth)
  c.mvld = _mvld_config(preset)
  del c.mvld["mesh"]  # MVLD runs on this config's mesh
  c.mvld.stages = ("data", "train_autoencoder", "train_diffusion", "sample")
  c.mvld.transmission.enabled = False
  # DIMVIDA's published page (docs/results_dimvida.md) was measured with MVLD's autoencoder
  # trained on eq. 1's L1 alone; MVLD's feature loss is not yet measured for DIMVIDA.
  c.mvld.autoencoder.perceptual_weight = 0.0
  c.mvld_workdir = ""  # a finished MVLD workdir to reuse instead of training one
  c.generate = ml_collections.ConfigDict({
      "num_generated": -1,  # generated views per sample; -1 = V - 1 (paper: 3)
      "shard_size": 256,  # objects per cached shard (a multiple of the data-parallel size)
  })
  c.archs = ARCHS
  c.classifiers = _classifiers(preset)
  c.finetune = ml_collections.ConfigDict({
      "enabled": True,  # Table III
      # torchvision weight files (resnet18-f37072fd.pth, mobilenet_v3_*.pth); when empty a jaxgen
      # classifier is pre-trained on scikit-learn digits (another task and domain, as ImageNet is
      # for NMR) and its backbone fine-tuned.
      "torchvision_paths": ml_collections.ConfigDict({"resnet18": "", "mobilenet_v3": ""}),
      "pretrained_workdir": "",  # reuse the digits pre-training of another DIMVIDA workdir
      "pretrain_steps": 300,
      "pretrain_seed": 0,  # fixed, so every seed fine-tunes the same weights (like torchvision's)
      "lr": 5e-4,  # fine-tuning learning rate (same steps and schedule as from scratch)
  })
  c.evaluate = ml_collections.ConfigDict({
      # How NMR_ea's 1 + G outputs are combined: 'probabilities' (mean softmax, the default) or
      # 'logits' (softmax of the mean logits). The paper says "the mean of the outputs"; both are
      # reported once.
      "average": "probabilities",
      "num_grid_objects": 8,
  })

  c.mvld.data.num_test = 500  # NMR_e objects (also MVLD's unused test split)
  if preset == "tiny":
    c.mvld.data.num_test = 12
    c.generate.shard_size = 8
    c.finetune.pretrain_steps = 4
    c.evaluate.num_grid_objects = 2
  elif preset == "nmr":
    c.mvld.data.num_test = 8762
    c.generate.shard_size = 512
    # The paper fine-tunes torchvision's ImageNet weights: pass finetune.torchvision_paths.<arch>;
    # without them the digits pre-training below stands in.
    c.finetune.pretrain_steps = 2000
    c.finetune.lr = 1e-5
  return c
