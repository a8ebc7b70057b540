"""Diff-Mix (paper 001): a fine-tuned text-to-image backbone translates images between classes;
the synthetic images, with soft labels, enlarge a fine-grained classification set.

  python -m jaxgen.main --config=configs/diffmix.py        # embedded 5-shot cubes: backbone + comparison
  python -m jaxgen.main --config=configs/diffmix.py --config.t2i_workdir=workdirs/t2i-default
                                                           # reuse a finished t2i run's backbone (~25 min beyond it)
  python -m jaxgen.main --config=configs/diffmix.py:tiny   # seconds, for tests

`t2i` is a complete text-to-image config (configs/t2i.py, same preset): its data section renders
the fine-grained target and its backbone / autoencoder / denoiser / judge sections pre-train the
backbone and the in-domain judges (FID features), in WORKDIR/t2i or the checked `t2i_workdir`.
`seeds` are the comparison's seeds: each seed fine-tunes its own backbone (TI+DB), draws its own
synthetic sets and trains its own classifiers. `data.shots` picks the real training set (shots
per class of the t2i run's target images; 0 = all of them).

Study presets (`few_shot`, `conventional`, `long_tail`, `finetune_strategy`, `s_gamma`,
`background_shift`, `size`;
jaxgen/diffmix/studies.py) run the paper's studies as several default-sized runs on one backbone
(hours on 2 CPU cores: meant for a GPU; `--config.study_runs=...` picks some):

  python -m jaxgen.main --config=configs/diffmix.py:s_gamma --config.t2i_workdir=workdirs/t2i
"""

from __future__ import annotations

import os

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config
from jaxgen.diffmix.data import PAPER_SETS
from jaxgen.diffmix.studies import REPLACE_PROB_BY_SHOTS, STUDIES

STUDY_PRESETS = tuple(STUDIES)  # few_shot, conventional, long_tail, finetune_strategy, s_gamma,
#                                 background_shift, size
# The paper's Table 1 sets: `cub`, `aircraft`, `flowers`, `cars`, `dogs` (ResNet50 at 448) and
# `<set>_vit` (ViT-B/16 at 384), on SD 1.5 weights (`t2i.backbone.weights_path`).
PAPER_PRESETS = tuple(PAPER_SETS) + tuple(f"{name}_vit" for name in PAPER_SETS)
PRESETS = ("tiny", "default") + STUDY_PRESETS + PAPER_PRESETS


def _t2i_config(preset: str) -> ml_collections.ConfigDict:
  return configlib.config_from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "t2i.py"), preset)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("diffmix", preset, PRESETS)
  preset = c.preset
  paper = preset in PAPER_PRESETS
  t2i = _t2i_config("tiny" if preset == "tiny" else "sd15" if paper else "default")
  c.t2i = t2i
  del c.t2i["mesh"]  # the backbone trains on this config's mesh
  c.t2i_workdir = ""  # a finished t2i run to reuse ('' = train one in WORKDIR/t2i)
  c.data = ml_collections.ConfigDict({
      "shots": 5,  # per class; 0 = every target training image
      "imbalance_factor": 0.0,  # > 0: a long-tailed subset (largest / smallest class count)
      "target": "fine_grained",  # or 'background_shift' (Waterbirds-like, paper Table 4), 'source'
      "minority_fraction": 0.05,  # background_shift: training objects on the other background
      # target 'source' only (a real data set, e.g. the paper presets):
      "source": "",  # 'tfds' or 'folder'
      "tfds_name": "",  # e.g. caltech_birds2011
      "data_dir": "",  # TFDS data dir ('' = TFDS's default) or the image folder
      "train_split": "train",
      "test_split": "test",
      "image_size": 0,  # fine-tuning, synthesis and classifier resolution (centre crop)
      "num_classes": 0,
      "metaclass": "",  # the word of "a photo of a <v_i> bird"
      # the classifiers' real training images stream from the source through the grain
      # pipeline: decode-time augmentation ('none' = resize + centre crop, 'flip', 'crop',
      # 'flip_crop', 'rrc' = RandomResizedCrop, 'rrc_flip') and worker processes
      "augment": "none",
      "workers": 0,
  })
  c.study = ""  # a name of jaxgen.diffmix.studies.STUDIES: run its runs on one backbone
  c.study_runs = ()  # only these runs of the study (empty = all)
  c.strategies = ("none", "real_mix", "diff_gen", "diff_aug", "diff_mix")
  c.seeds = (0, 1, 2)
  c.finetune = ml_collections.ConfigDict(t2i.finetune.to_dict())  # TI + DB, as the t2i run's
  del c.finetune["seeds"], c.t2i["finetune"]  # one fine-tuning section: this one, per seed
  for key in ("samples_per_class", "target_samples_per_class", "num_grid"):
    del c.t2i.evaluate[key]  # the t2i run's own sampling stages, which Diff-Mix does not run
  c.synthesis = ml_collections.ConfigDict({
      "multiplier": 5,  # synthetic images per real image
      "strengths": (0.5, 0.7, 0.9),  # SDEdit strength, drawn per image (one value = fixed)
      "gamma": 0.5,  # soft label (1 - s^gamma) y_ref + s^gamma y_target
      "target_sampling": "uniform",  # or 'tail': p(c) proportional to 1 / (n_c + 1)
      "guidance_scale": t2i.sampler.guidance_scale,
      "shard_size": 50,  # images per cached shard and sampler call (split over the devices when
                         # a multiple of the data-parallel size)
      "referable_classes": 0,  # > 0: each target takes references from only this many classes
      # True: the synthetic sets stay in their shard caches on disk (memory-mapped; filtering and
      # evaluation one batch at a time, training reads each step's picks); same numbers as False,
      # which loads each set whole (fine for the embedded sets; 5x CUB at 448 px is ~18 GB)
      "stream": False,
  })
  c.filter = ml_collections.ConfigDict({
      "scorer": "classifier",  # 'classifier' (trained on the real set), 'backbone' or 'none'
      "drop_fraction": 0.1,  # the lowest-scoring fraction of each synthetic set is dropped
      "num_times": 5,  # the backbone scorer's timesteps
  })
  c.classifier = classifier_config("resnet18", num_steps=300, batch_size=32, lr=1e-3,
                                   width=16, small_input=True,
                                   synthetic_replace_prob=REPLACE_PROB_BY_SHOTS[5],
                                   augment={"flip": True, "crop_padding": 2})
  c.classifier.train.optim.schedule = "cosine"
  c.evaluate = ml_collections.ConfigDict({
      "batch_size": 200,
      "num_grid": 6,  # reference images in the example grid
  })

  if preset == "tiny":
    c.data.shots = 3
    c.seeds = (0,)
    c.synthesis.update(multiplier=2, shard_size=8)
    c.filter.num_times = 2
    c.classifier = classifier_config("resnet18", num_steps=4, batch_size=8, lr=1e-3, width=8,
                                     small_input=True, synthetic_replace_prob=0.5)
    c.evaluate.update(batch_size=16, num_grid=2)
  elif preset in STUDY_PRESETS:
    c.study = preset
  elif paper:
    _paper(c, preset)
  return c


def _paper(c: ml_collections.ConfigDict, preset: str) -> None:
  """Table 1 (all shots): the set through TFDS / an image folder, SD 1.5 fine-tuned with TI+DB,
  Diff-Mix with s in {0.5, 0.7, 0.9} and gamma 0.5, p = 0.1, label smoothing 0.1; an
  ImageNet-pre-trained ResNet50 at 448 (or ViT-B/16 at 384) fine-tuned by SGD (momentum 0.9,
  weight decay 5e-4, cosine). Steps, batch and learning rates are this library's choice (the
  paper's main text does not give them)."""
  vit = preset.endswith("_vit")
  source, tfds_name, num_classes, word = PAPER_SETS[preset.removesuffix("_vit")]
  size = 384 if vit else 448
  c.data.update(target="source", source=source, tfds_name=tfds_name, image_size=size,
                num_classes=num_classes, metaclass=word, shots=0, augment="rrc_flip", workers=4)
  c.strategies = ("none", "diff_mix")
  c.synthesis.update(shard_size=16, stream=True)
  arch = dict(arch="vit_b16") if vit else dict(arch="resnet50", small_input=False)
  c.classifier = classifier_config(arch.pop("arch"), num_steps=6000, batch_size=32,
                                   lr=0.01 if vit else 0.02, optimizer="sgd",
                                   label_smoothing=0.1, normalization="imagenet",
                                   synthetic_replace_prob=REPLACE_PROB_BY_SHOTS[0],
                                   augment={"flip": False, "crop_padding": 0}, **arch)
  c.classifier.train.optim.update(schedule="cosine", weight_decay=5e-4, momentum=0.9)
  c.classifier.train.update(steps_per_call=50, log_every=100, checkpoint_every=1000)
  c.evaluate.update(batch_size=32)
