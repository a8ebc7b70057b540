"""A pixel-space U-Net conditioned on a class-probability vector: class-conditional diffusion with
classifier-free guidance (Ho & Salimans 2022) that accepts soft labels.

The label vector y (K class probabilities) is extended by one "null" slot, classifier-free
guidance's unconditional input ([0..0, 1]; a conditional label has 0 there), and mapped by a
bias-free linear layer to the one token the cross-attention U-Net of `jaxgen.nets.cond_unet`
attends to. The map is linear, so a soft label embeds as the probability-weighted mean of the
class embeddings (as BigGAN's shared class embedding does in the GAN) and a one-hot label picks
one class's embedding; the null label has its own learned embedding.

Time: t in (0, 1] of the continuous SDE enters the U-Net's sinusoidal embedding as 999 t, the DDPM
index scale it was built for.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets import cond_unet
from jaxgen.nets.cond_unet import CondUNet, CondUNetConfig

Array = jax.Array
TIME_SCALE = 999.0  # t = 1 -> the last DDPM index


@dataclasses.dataclass(frozen=True)
class LabelUNetConfig:
  """The U-Net's sizes (its cross-attention width is the label embedding's) and the class count."""

  unet: CondUNetConfig
  num_classes: int


def with_null_slot(labels: Array) -> Array:
  """Conditional label vectors [B, K] -> [B, K + 1] with a 0 null slot."""
  return jnp.pad(labels, ((0, 0), (0, 1)))


def null_labels(batch: int, num_classes: int) -> Array:
  """The unconditional input [B, K + 1]: the null slot only."""
  return jnp.zeros((batch, num_classes + 1), jnp.float32).at[:, -1].set(1.0)


class LabelUNet(nn.Module):
  """eps(x_t, t, y): noise prediction [B, H, W, C] of images x_t at times t [B] given extended
  label vectors y [B, K + 1] (`with_null_slot` / `null_labels`)."""

  config: LabelUNetConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, t: Array, labels: Array) -> Array:
    cfg = self.config
    if labels.shape[-1] != cfg.num_classes + 1:
      raise ValueError(f"label vectors of width {labels.shape[-1]}; expected K + 1 = "
                       f"{cfg.num_classes + 1} (K classes and the null slot)")
    token = nn.Dense(cfg.unet.cross_attention_dim, use_bias=False, name="label_embedding")(labels)
    return CondUNet(cfg.unet, dtype=self.dtype, name="unet")(x, TIME_SCALE * t, token[:, None, :])


def init_params(config: LabelUNetConfig, key: Array) -> dict:
  """Random parameters: the U-Net by `cond_unet.init_params` (no compiled init), the label
  embedding N(0, 1) per entry, so every class token starts at the scale of a unit vector."""
  k_unet, k_emb = jax.random.split(key)
  emb = jax.random.normal(k_emb, (config.num_classes + 1, config.unet.cross_attention_dim))
  return {"unet": cond_unet.init_params(config.unet, k_unet),
          "label_embedding": {"kernel": emb.astype(jnp.float32)}}


__all__ = ["LabelUNet", "LabelUNetConfig", "TIME_SCALE", "init_params", "null_labels",
           "with_null_slot"]
