"""Softlabel-GAN (paper 003): BigGAN + DiffAugment whose projection discriminator sees a classifier's
class probabilities for real images, on imbalanced data; DiffAug-GAN and Smooth-GAN beside it.

  python -m jaxgen.main --config=configs/softlabel_gan.py          # embedded imbalanced renders, 32x32 (~13 min, 2 CPU cores)
  python -m jaxgen.main --config=configs/softlabel_gan.py:tiny     # seconds, for tests
  python -m jaxgen.main --config=configs/softlabel_gan.py:cifar10_lt \
      --config.data.data_dir=/data/tfds                            # the paper's imbalanced CIFAR-10

Presets:
  tiny          tests.
  default       embedded renders (12 shape classes, 32x32) made imbalanced by the paper's
                recipe; onehot / smooth / soft label sources (Table 2), in-domain judge.
  table3        the ablations of Table 3 (without DiffAugment) on the default data.
  table4        the Mixup and Oversample baselines of Table 4 on the default data.
  table7        Table 7 on the default data: a class-conditional pixel diffusion model with
                classifier-free guidance, with one-hot labels (CFG) and with the classifier's
                soft labels (CFG w/ label augmentation); ~24 min on 2 CPU cores.
  fig5_120, fig5_90, fig5_65
                the minority-size sweep of Fig. 5: the default data with its smallest class
                scaled to 120 / 90 / 65 images.
  cifar10_lt, cifar100_lt
                imbalanced CIFAR-10 / CIFAR-100 through TFDS (batch 128, lr 2e-4, d_z 128).
  tinyimagenet_lt
                imbalanced Tiny ImageNet 64x64 from an image folder (hierarchical latents, G 1e-4 /
                D 4e-4, batch 512).
  oxford102, animeface, cars
                the balanced-recipe sets of Table 1 (their natural imbalance) from TFDS / folders
                at 64x64 (batch 512, G 1e-4 / D 4e-4).
"""

from __future__ import annotations

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config

PRESETS = ("tiny", "default", "table3", "table4", "table7", "fig5_120", "fig5_90", "fig5_65",
           "cifar10_lt", "cifar100_lt", "tinyimagenet_lt", "oxford102", "animeface", "cars")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("softlabel_gan", preset, PRESETS)
  preset = c.preset
  c.data = ml_collections.ConfigDict({
      "name": "multiview",  # 'multiview' (embedded renders), 'tfds' or 'folder'
      "data_dir": "",  # TFDS data_dir / folder root; the render cache for 'multiview' ('' = WORKDIR/data)
      "tfds_name": "",  # builder for name = 'tfds' (e.g. 'cifar10')
      "train_split": "train",
      "test_split": "test",
      "seed": 0,  # the data's own seed (render, imbalance draw), separate from config.seed
      "variant": "plain",  # multiview renders: 'plain' (white background) or 'standard' (random scenes)
      "image_size": 32,
      # Imbalance (paper 003 sec. 5.1): per-class counts floor(samples * diff(CDF(edges))), the
      # classes shuffled by data.seed. 'auto' picks the paper's distribution by class count
      # (lognormal for <= 10, chi2 for <= 100, else Pareto); 'none' keeps the set as it is.
      "imbalance": "lognormal",
      "imbalance_samples": 5000,  # lognormal, 12 classes: 3,209 images, 54-1,610 per class
      "min_class_size": 0,  # > 0: scale the profile so its smallest class has this many (Fig. 5)
      "num_pool": 20000,  # multiview: rendered objects the imbalanced set is drawn from
      "num_test": 1200,  # balanced real reference images (multiview: rendered, disjoint)
      "num_judge": 2400,  # multiview: balanced images the in-domain judge is trained on (disjoint)
  })
  # The pretrained classifier C of the soft labels: SpinalNet head (paper sec. 4.3) on a ResNet-18,
  # trained on the imbalanced training set with the entropy term at the paper's weight 0.3.
  c.classifier = classifier_config("resnet18", num_steps=300, batch_size=64, lr=1e-3,
                                   width=16, head="spinal", spinal_width=64, entropy_weight=0.3,
                                   augment={"crop_padding": 2})
  # The in-domain network behind FID-like metrics when no InceptionV3 file is given: a ResNet-18
  # trained on a balanced, disjoint set (as Inception is trained on data apart from the GAN's).
  c.judge = classifier_config("resnet18", num_steps=300, batch_size=64, lr=1e-3, width=16,
                              augment={"crop_padding": 2})
  c.gan = ml_collections.ConfigDict({
      "g_ch": 8,  # BigGAN's G_ch / D_ch (the paper's 32x32 BigGAN uses 64; 8 fits the CPU budget)
      "d_ch": 8,
      "dim_z": 128,
      "shared_dim": 128,
      "hierarchical": False,  # 20 dims per latent chunk (paper: at 64x64 and 128x128)
      "g_attention": 0,  # resolution of G's self-attention block (0 = none)
      "d_attention": 0,
      # G's upsample + conv and D's conv + avg-pool as one cheaper conv each (same function to
      # float rounding, jaxgen/nets/resample_conv.py; off: the published pages were made without)
      "fused_resample": False,
      "loss": "hinge",  # 'hinge' (paper eqs. 1-3), 'nonsaturating' or 'wasserstein'
      "d_steps": 1,  # discriminator steps per generator step (BigGAN-PyTorch CIFAR: 4)
      "diffaugment": "color,translation,cutout",  # DiffAugment policy for variants with augmentation
      "ema_start": 200,  # generator EMA (params and BatchNorm statistics) from this step on
      # G's steps and optimiser (BigGAN: Adam, beta1 = 0, beta2 = 0.999); batch = per D step.
      "train": configlib.train_config(800, 32, lr=2e-4, optimizer="adam", ema_decay=0.999,
                                      steps_per_call=20, log_every=100, checkpoint_every=400),
      "d_optim": configlib.optim_config("adam", 2e-4, b1=0.0, b2=0.999, eps=1e-6),
  })
  c.gan.train.optim.update(b1=0.0, b2=0.999, eps=1e-6)
  # Table 7's class-conditional diffusion (jaxgen.softlabel_gan.diffusion): a pixel U-Net that
  # cross-attends to one token, the linear embedding of the label vector; VP SDE; CFG.
  c.diffusion = ml_collections.ConfigDict({
      "channels": (16, 32, 32),  # per level (32x32 -> 16 -> 8); sized for the 2-core CPU
      "attention_levels": (False, False, True),  # self + cross-attention there (and the middle)
      "layers_per_block": 1,
      "heads": 4,
      "num_groups": 8,
      "embed_dim": 64,  # the label token's width
      "beta_min": 0.1,  # VP SDE (score_sde's CIFAR-10 values)
      "beta_max": 20.0,
      "t_eps": 1e-3,
      "prediction": "v",  # 'v' (a eps - s x0) or 'eps'; see jaxgen/softlabel_gan/diffusion.py
      "p_uncond": 0.1,  # labels dropped to the null label (Ho & Salimans 2022)
      "guidance_scale": 2.0,  # eps_u + w (eps_c - eps_u); 1 = no guidance
      "sampler": "dpmpp_2m",  # 'dpmpp_2m' or 'ddim' (eta 0)
      "num_steps": 20,
      # ~0.28 s per step at batch 32 on the 2-core CPU
      "train": configlib.train_config(1500, 32, lr=5e-4, optimizer="adam", ema_decay=0.995,
                                      steps_per_call=50, log_every=250, checkpoint_every=500),
  })
  c.diffusion.train.optim.update(schedule="warmup_cosine", warmup_steps=100, end_lr_factor=0.1)
  c.labels = ml_collections.ConfigDict({
      "smooth_alpha": 0.1,  # Smooth-GAN's alpha
      "mixup_alpha": 1.0,  # Mixup baseline: lambda ~ Beta(alpha, alpha)
      "count_threshold": 0.01,  # Table 1: a sample counts for a class it gives more than this
  })
  # Which GANs to train (jaxgen.softlabel_gan.labels.VARIANTS): Table 2's three label sources.
  c.variants = ("onehot", "smooth", "soft")
  c.evaluate = ml_collections.ConfigDict({
      "samples_per_class": 100,  # generated images per class (FID and intra-FID use them all)
      "lpips_per_class": 100,  # paper: 100 per class for (intra-)LPIPS
      "lpips_pairs": 500,  # sampled pairs per class for LPIPS diversity
      "prdc_k": 5,  # k of precision / recall / density / coverage (Naeem et al. 2020)
      "kid_subset_size": 100,
      "batch_size": 256,
      "grid_per_class": 8,
      "inception_path": "",  # FID InceptionV3 weights: FID / KID / PRDC / IS on pool3 / logits
      "lpips_backbone_path": "",  # calibrated LPIPS-SqueezeNet (both files), else in-domain LPIPS
      "lpips_linear_path": "",
  })

  if preset == "tiny":
    c.data.update(image_size=32, imbalance_samples=200, num_pool=800, num_test=48, num_judge=48)
    for section in (c.classifier, c.judge):
      section.train.update(num_steps=4, batch_size=16, steps_per_call=2, log_every=2,
                           checkpoint_every=4)
      section.arch_kw.width = 4
    c.classifier.arch_kw.spinal_width = 8
    c.gan.update(g_ch=4, d_ch=4, dim_z=16, shared_dim=8, d_steps=1, ema_start=2)
    c.gan.train.update(num_steps=4, batch_size=8, steps_per_call=2, log_every=2, checkpoint_every=4)
    c.diffusion.update(channels=(8, 16), attention_levels=(False, True), heads=2, num_groups=4,
                       embed_dim=8, num_steps=3)
    c.diffusion.train.update(num_steps=4, batch_size=8, steps_per_call=2, log_every=2,
                             checkpoint_every=4)
    c.diffusion.train.optim.update(schedule="constant", warmup_steps=0)  # 4 steps: no warm-up
    c.evaluate.update(samples_per_class=4, lpips_per_class=4, lpips_pairs=6, prdc_k=2,
                      kid_subset_size=4, batch_size=16, grid_per_class=2)
  elif preset == "table3":
    c.variants = ("soft", "onehot_noaug", "soft_noaug", "smooth_noaug")
  elif preset == "table4":
    c.variants = ("soft", "mixup", "oversample")
  elif preset == "table7":
    c.variants = ("cfg", "cfg_soft")
    # 50 per class keeps sampling (2 x 20 network calls per image with guidance) to minutes.
    c.evaluate.update(samples_per_class=50, lpips_per_class=50)
  elif preset.startswith("fig5_"):
    c.data.min_class_size = int(preset.split("_")[1])
    c.data.num_pool = 43200  # the largest class then has 3,552 images (of 3,600 per class)
  elif preset in ("cifar10_lt", "cifar100_lt"):
    # Paper sec. 4.3 / 5.1: 32x32, d_z = 128, batch 128, lr 2e-4 for G and D; imbalanced by the
    # lognormal (CIFAR-10) or chi2 (CIFAR-100) recipe from 5000 samples; the full test split as
    # the FID reference, InceptionV3 when its weights are given.
    c.data.update(name="tfds", tfds_name=preset.split("_")[0], imbalance="auto",
                  imbalance_samples=5000, num_test=10000)
    c.gan.update(g_ch=64, d_ch=64, d_steps=4, ema_start=1000)
    c.gan.train.update(num_steps=100000, batch_size=128, ema_decay=0.9999, checkpoint_every=2000,
                       log_every=500)
    c.classifier.update(arch_kw={**c.classifier.arch_kw, "width": 64, "spinal_width": 256})
    c.classifier.train.update(num_steps=10000, batch_size=128)
    c.evaluate.update(samples_per_class=1000 if preset == "cifar10_lt" else 100)
  elif preset in ("tinyimagenet_lt", "oxford102", "animeface", "cars"):
    # 64x64 with hierarchical latents (20 dims per chunk, shared embedding 128), G 1e-4 / D 4e-4,
    # batch 512 (paper sec. 4.3); Tiny ImageNet made imbalanced by the Pareto recipe, the others
    # keep their own imbalance.
    c.data.update(name="folder", image_size=64, imbalance="auto" if preset == "tinyimagenet_lt"
                  else "none", imbalance_samples=100000, num_test=10000)
    if preset == "oxford102":
      c.data.update(name="tfds", tfds_name="oxford_flowers102", train_split="train+validation")
    c.gan.update(g_ch=32, d_ch=32, dim_z=100, hierarchical=True, d_steps=4, ema_start=1000)
    c.gan.train.update(num_steps=50000, batch_size=512, lr=1e-4, ema_decay=0.9999,
                       checkpoint_every=2000, log_every=500)
    c.gan.d_optim.lr = 4e-4
    c.classifier.update(arch_kw={**c.classifier.arch_kw, "width": 64, "spinal_width": 256,
                                 "small_input": False})
    c.classifier.train.update(num_steps=10000, batch_size=128)
    c.evaluate.update(samples_per_class=50, lpips_per_class=50)
  return c
