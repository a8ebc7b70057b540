"""The text-to-image latent diffusion backbone (the "vanilla SD" of Diff-Mix, paper 001 sec. 3.3).

  python -m jaxgen.main --config=configs/t2i.py          # embedded renders: pre-train, fine-tune, report (25-30 min, 2 CPU cores)
  python -m jaxgen.main --config=configs/t2i.py:tiny     # seconds, for tests
  python -m jaxgen.main --config=configs/t2i.py:sd15 --config.backbone.weights_path=/models/stable-diffusion-v1-5
                                                         # real Stable Diffusion 1.5 weights: sample + fine-tune

Stages: data (embedded renders), train_autoencoder (KL autoencoder), train_denoiser (U-Net + text
encoder, prompt dropout for guidance), train_judges (in-domain classifiers: the FID features and
the class-fidelity judges), sample (prompt-conditioned samples of the pre-training classes),
finetune (textual inversion + DreamBooth-LoRA on the fine-grained target, one run per seed in
`finetune.seeds`), evaluate, report. `sd15` skips the two training stages and loads the weights.
"""

from __future__ import annotations

import ml_collections

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config

PRESETS = ("tiny", "default", "sd15")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  c = configlib.base_config("t2i", preset, PRESETS)
  preset = c.preset
  c.data = ml_collections.ConfigDict({
      "name": "renders",  # the embedded sets of jaxgen.data.t2i_sets
      "seed": 0,  # the data's own seed
      "image_size": 32,
      "pretrain_per_class": 40,  # 72 colour x shape classes
      "pretrain_test_per_class": 10,
      "target_classes": 10,  # fine-grained cube classes
      "target_metaclass": "cube",
      "target_shots": 5,  # images per class the fine-tuning sees (Diff-Mix's 5-shot)
      "target_judge_per_class": 40,  # the target judge's training images (not the shots)
      "target_test_per_class": 20,
  })
  c.backbone = ml_collections.ConfigDict({
      "weights_path": "",  # sd15: a diffusers folder or a single-file SD 1.x checkpoint
      "tokenizer_path": "",  # a single file's CLIP tokenizer folder (diffusers folders have one)
      "prediction_type": "epsilon",
      # KL autoencoder (jaxgen.nets.kl_autoencoder): f = 2 ** (len(ch_mult) - 1)
      "vae_ch": 16, "vae_ch_mult": (1, 2, 2), "vae_num_res_blocks": 1, "vae_latent_channels": 4,
      "vae_attn_resolutions": (), "vae_num_groups": 8,
      # U-Net (jaxgen.nets.cond_unet): cross-attention on every level but the last
      "unet_channels": (32, 64), "unet_layers_per_block": 1, "unet_heads": 4,
      "unet_num_groups": 8,
      # text encoder (jaxgen.nets.text_encoder)
      "text_width": 64, "text_layers": 2, "text_heads": 4, "text_max_length": 10,
  })
  c.autoencoder = ml_collections.ConfigDict({
      "kl_weight": 1e-6,  # LDM's KL-reg weight on the summed KL
      "train": configlib.train_config(600, 32, lr=1e-3, steps_per_call=25, log_every=100,
                                      checkpoint_every=300),
  })
  c.autoencoder.train.optim.schedule = "cosine"
  c.autoencoder.train.optim.end_lr_factor = 0.05
  c.denoiser = ml_collections.ConfigDict({
      "p_uncond": 0.1,  # prompt dropout: trains the unconditional branch of guidance
      # No EMA: started at the initial weights, a 0.999 EMA still held 8% of them after 2,500
      # steps and drew the solids at 0.16 against the raw weights' 0.47 (docs/t2i.md)
      "train": configlib.train_config(2500, 64, lr=5e-4, steps_per_call=50, log_every=100,
                                      checkpoint_every=500, ema_decay=0.0),
  })
  c.denoiser.train.optim.update(schedule="warmup_cosine", warmup_steps=200, end_lr_factor=0.1)
  c.sampler = ml_collections.ConfigDict({
      "name": "dpmpp_2m",  # 'dpmpp_2m' or 'ddim' (jaxgen.t2i.schedules)
      "num_steps": 25,
      "guidance_scale": 3.0,  # SD uses 7.5; 5 draws the solids a little better, FID worse (docs/t2i.md)
      "eta": 0.0,
      "timestep_spacing": "",  # '' = the scheduler's diffusers default
  })
  c.finetune = ml_collections.ConfigDict({
      "strategy": "ti_db",  # 'ti', 'db' or 'ti_db' (paper Table 5)
      "lora_rank": 10,
      "lora_alpha": 0.0,  # 0 = rank (scale 1)
      "lr_lora": 1e-3,
      "lr_ti": 5e-3,
      "seeds": (0, 1, 2),  # one fine-tuning run (and its samples) per seed, same backbone
      "train": configlib.train_config(400, 25, lr=1e-3, steps_per_call=50, log_every=50,
                                      checkpoint_every=200),
  })
  c.judge = classifier_config("resnet18", num_steps=500, batch_size=128, lr=1e-3,
                              arch_kw={"width": 16, "small_input": True})
  c.evaluate = ml_collections.ConfigDict({
      "samples_per_class": 10,  # pre-training prompts
      "target_samples_per_class": 20,  # fine-grained prompts
      "batch_size": 200,
      "num_grid": 8,
      "inception_path": "",  # InceptionV3 FID weights; '' = the in-domain judges' features
  })

  if preset == "tiny":
    c.data.update(image_size=16, pretrain_per_class=2, pretrain_test_per_class=1,
                  target_classes=3, target_shots=3, target_judge_per_class=4,
                  target_test_per_class=2)
    c.backbone.update(vae_ch=8, vae_ch_mult=(1, 2), vae_num_groups=4, unet_channels=(16, 32),
                      unet_heads=2, unet_num_groups=8, text_width=16, text_layers=1,
                      text_heads=2)
    c.autoencoder.train.update(num_steps=4, batch_size=8, steps_per_call=2, log_every=2,
                               checkpoint_every=4)
    c.denoiser.train.update(num_steps=4, batch_size=8, steps_per_call=2, log_every=2,
                            checkpoint_every=4)
    c.denoiser.train.optim.warmup_steps = 1
    c.sampler.num_steps = 3
    c.finetune.update(lora_rank=2, seeds=(0,))
    c.finetune.train.update(num_steps=4, batch_size=8, steps_per_call=2, log_every=2,
                            checkpoint_every=4)
    c.judge = classifier_config("resnet18", num_steps=4, batch_size=8, lr=1e-3,
                                arch_kw={"width": 8, "small_input": True})
    c.evaluate.update(samples_per_class=2, target_samples_per_class=2, batch_size=16, num_grid=2)
  elif preset == "sd15":
    c.data.image_size = 256  # the renderer's largest size; SD 1.5 works best at 512
    c.backbone.text_max_length = 77
    c.sampler.guidance_scale = 7.5
    c.evaluate.update(batch_size=8, samples_per_class=2, target_samples_per_class=4)
    c.finetune.train.update(num_steps=2000, batch_size=4)
  return c
