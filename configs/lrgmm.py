"""LR-GMM-NN (paper 004): autoencoder latents -> P0 -> GMM (EM) -> low-rank sampling -> NN -> decode.

  python -m jaxgen.main --config=configs/lrgmm.py          # embedded registered faces, a few minutes on 2 CPU cores
  python -m jaxgen.main --config=configs/lrgmm.py:tiny     # seconds, for tests
  python -m jaxgen.main --config=configs/lrgmm.py:celebahq \
      --config.data.data_dir=/data/celeba_hq_256 --config.autoencoder.checkpoint_path=/ckpt/vqgan.ckpt \
      --config.evaluate.inception_path=/weights/pt_inception-2015-12-05.pth   # the paper's setting

Presets: `tiny`, `default` (embedded faces: a spatial autoencoder trained on an auxiliary set A,
the target set X disjoint from it, an in-domain classifier for FID features), `celebahq`
(VQ-GAN 16x16x256 latents from a taming-transformers checkpoint, q = 8, K = 1/8/64 for
N = 32/1024/28000, CelebA-HQ 256x256 from an image folder or a prepared TFDS builder).
"""

from __future__ import annotations

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config

PRESETS = ("tiny", "default", "celebahq")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("lrgmm", preset, PRESETS)
  preset = c.preset
  c.data = ml_collections.ConfigDict({
      "name": "faces",  # 'faces' (embedded, registered), 'folder' or 'tfds' (real images on disk)
      "data_dir": "",  # folder root or TFDS data_dir (unused for 'faces')
      "tfds_name": "",  # TFDS builder name when name = 'tfds'
      "seed": 0,  # the data's own seed (faces drawn), separate from config.seed
      "image_size": 32,
      "num_aux": 6000,  # A: trains the autoencoder and the in-domain feature classifier
      "num_target": 4096,  # X: the largest limited set; smaller N take its first N images
      "num_test": 2000,  # real reference images for FID / precision / recall
  })
  c.autoencoder = ml_collections.ConfigDict({
      "kind": "spatial",  # 'spatial' (trained here on A) or 'vqgan' (taming checkpoint)
      "channels": (32, 64),  # spatial: one stride-2 level each -> latent side = image_size / 4
      "latent_channels": 32,  # c
      "checkpoint_path": "",  # vqgan: the taming-transformers .ckpt
      "vqgan_preset": "ffhq_f16",  # vqgan architecture (jaxgen.nets.vqgan.VQGANConfig presets)
      "train": configlib.train_config(1200, 32, lr=2e-3, steps_per_call=25, log_every=100,
                                      checkpoint_every=500),
  })
  c.autoencoder.train.optim.schedule = "cosine"
  c.autoencoder.train.optim.end_lr_factor = 0.05
  c.latent = ml_collections.ConfigDict({"num_channels": 8})  # q of P0 (eq. 1)
  c.gmm = ml_collections.ConfigDict({
      "init": "kmeans",  # 'kmeans' (sklearn's default), 'kmeans++' or 'random_from_data'
      "max_iter": 100,
      "tol": 1e-3,
      "reg_covar": 1e-6,
  })
  c.lowrank = ml_collections.ConfigDict({
      "temperature": 0.12,  # lambda: d_k = max(1, floor(lambda * pi_k * d0)) (paper default)
      "fixed_dim": 0,  # > 0: the same d_k for every component instead
  })
  c.nn = ml_collections.ConfigDict({
      "patch_size": 5,  # omega
      "num_iters": 1,  # the paper uses one
      "same_position": True,  # registered data
      "same_cluster": True,
      "chunk_size": 64,
  })
  # Table 1 columns: N images of X and K components for each (paper: K = 1 at N = 32).
  c.table1 = ml_collections.ConfigDict({"sizes": (32, 512, 4096), "components": (1, 8, 8)})
  # The in-domain network behind FID / precision / recall (no InceptionV3 weights can be
  # downloaded here), trained on A's attribute labels; evaluate.inception_path replaces it.
  c.classifier = classifier_config("resnet18", num_steps=600, batch_size=128, lr=1e-3,
                                   arch_kw={"width": 16, "small_input": False})
  c.evaluate = ml_collections.ConfigDict({
      "num_samples": 2000,  # generated images per method and N
      "batch_size": 250,
      "pr_k": 3,  # k of improved precision/recall (Kynkaanniemi et al., the paper's IPR)
      "inception_path": "",
      "sweep_size": 512,  # N for the d_k sweep (Fig. 8)
      "sweep_temperatures": (0.01, 0.03, 0.12, 0.5, 2.0),
      "num_grid": 8,
  })

  if preset == "tiny":
    c.data.update(image_size=16, num_aux=96, num_target=64, num_test=32)
    c.autoencoder.update(channels=(8, 16), latent_channels=8)
    c.autoencoder.train.update(num_steps=10, batch_size=16, steps_per_call=5, log_every=5,
                               checkpoint_every=10)
    c.latent.num_channels = 4
    c.gmm.max_iter = 10
    c.nn.update(patch_size=3, chunk_size=16)
    c.table1.update(sizes=(8, 64), components=(1, 2))
    c.classifier = classifier_config("resnet18", num_steps=10, batch_size=16, lr=1e-3,
                                     arch_kw={"width": 8})
    c.evaluate.update(num_samples=32, batch_size=16, sweep_size=64, sweep_temperatures=(0.1, 1.0),
                      num_grid=4)
  elif preset == "celebahq":
    c.data.update(name="folder", image_size=256, num_aux=0, num_target=28000, num_test=2000)
    c.autoencoder.update(kind="vqgan", latent_channels=256)
    c.latent.num_channels = 8
    c.table1.update(sizes=(32, 1024, 28000), components=(1, 8, 64))
    c.nn.chunk_size = 16
    c.evaluate.update(num_samples=10000, batch_size=100, sweep_size=1024)
  return c
