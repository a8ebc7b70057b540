"""A latent text-to-image diffusion backbone: the three networks of Stable Diffusion and their math.

`BackboneConfig` bundles the sizes of the KL autoencoder (images <-> latents), the cross-attention
U-Net (noise or velocity prediction on latents) and the CLIP-style text encoder (token ids ->
the states the U-Net cross-attends to), with the DDPM noise schedule as a `DiscreteVPSDE`.
Parameters live in one dict {'vae', 'unet', 'text'} of Flax variables. `sd15()` is Stable
Diffusion 1.5 (weights: `jaxgen.io.stable_diffusion.load_stable_diffusion`); `tiny()` is for
tests; the embedded backbone of `configs/t2i.py` sits in between.

The U-Net is trained on DDPM indices n and predicts epsilon (SD 1.x) or v = a eps - s x0
(SD 2.x "v_prediction"); `noise_prediction` turns either into eps(x, t) on the continuous time
of the SDE, which is what the shared samplers consume through score = -eps / s(t).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.nets import cond_unet, kl_autoencoder
from jaxgen.nets.cond_unet import CondUNet, CondUNetConfig
from jaxgen.nets.kl_autoencoder import KLAutoencoder, KLAutoencoderConfig
from jaxgen.nets.text_encoder import TextEncoder, TextEncoderConfig
from jaxgen.sde.sdes import DiscreteVPSDE
from jaxgen.train.init import compiled_init

Array = jax.Array
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Sizes of the three networks, the noise schedule and what the U-Net predicts."""

  unet: CondUNetConfig = dataclasses.field(default_factory=CondUNetConfig.sd15)
  vae: KLAutoencoderConfig = dataclasses.field(default_factory=KLAutoencoderConfig.sd15)
  text: TextEncoderConfig = dataclasses.field(default_factory=TextEncoderConfig.sd15)
  sde: DiscreteVPSDE = dataclasses.field(default_factory=DiscreteVPSDE)
  prediction_type: str = "epsilon"

  def __post_init__(self):
    if self.prediction_type not in PREDICTION_TYPES:
      raise ConfigError("backbone.prediction_type", self.prediction_type,
                        f"one of {PREDICTION_TYPES}")
    if self.unet.in_channels != self.vae.embed_dim or self.unet.out_channels != self.vae.embed_dim:
      raise ConfigError("backbone.unet.in_channels", self.unet.in_channels,
                        f"the autoencoder's latent channels {self.vae.embed_dim}")
    if self.unet.cross_attention_dim != self.text.width:
      raise ConfigError("backbone.unet.cross_attention_dim", self.unet.cross_attention_dim,
                        f"the text encoder's width {self.text.width}")

  @classmethod
  def sd15(cls) -> "BackboneConfig":
    """Stable Diffusion 1.5: 512x512 images, 64x64x4 latents, CLIP ViT-L/14 text, epsilon."""
    return cls()

  @classmethod
  def tiny(cls) -> "BackboneConfig":
    """32x32 images, 4x4x4 latents, width-32 text: for tests."""
    return cls(unet=CondUNetConfig.tiny(), vae=KLAutoencoderConfig.tiny(),
               text=TextEncoderConfig.tiny())

  @property
  def image_size(self) -> int:
    return self.vae.resolution

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.vae.latent_shape


def init_backbone(config: BackboneConfig, key: Array) -> dict[str, Any]:
  """Random variables {'vae', 'unet', 'text'} (the U-Net by `cond_unet.init_params`, which
  avoids compiling a full forward pass)."""
  k_vae, k_unet, k_text = jax.random.split(key, 3)
  size = config.image_size
  image = jnp.zeros((1, size, size, config.vae.in_channels))
  vae = compiled_init(lambda k: KLAutoencoder(config.vae).init(k, image), k_vae)
  ids = jnp.zeros((1, config.text.max_length), jnp.int32)
  # Eager: compiled, the text encoder's init differs from eager init in last bits, which would
  # move every published t2i / Diff-Mix number (the VAE's is bit-identical).
  text = TextEncoder(config.text).init(k_text, ids)
  return {"vae": vae, "unet": {"params": cond_unet.init_params(config.unet, k_unet)}, "text": text}


def encode_prompts(text_variables: dict, config: BackboneConfig, token_ids: Array) -> Array:
  """Token ids [B, L] -> text states [B, L, width] (the last layer after the final LayerNorm,
  which SD 1.x cross-attends to)."""
  return TextEncoder(config.text).apply(text_variables, token_ids)


def unet_apply(unet_variables: dict, config: BackboneConfig, latents: Array, timesteps: Array,
               context: Array, *, dtype: Any = jnp.float32, attention_impl: str = "jnp") -> Array:
  """The raw U-Net output (eps or v, per `prediction_type`) at DDPM indices `timesteps`.
  `attention_impl='dot_product_attention'` lets XLA pick a fused kernel (GPU)."""
  return CondUNet(config.unet, dtype=dtype, attention_impl=attention_impl).apply(
      unet_variables, latents, timesteps, context)


def noise_prediction(model_output: Array, x: Array, t: Array, config: BackboneConfig) -> Array:
  """eps from the network's output at continuous time t [B]: eps itself, or eps = a v + s x for
  v-prediction (v = a eps - s x0 with x = a x0 + s eps and a^2 + s^2 = 1)."""
  if config.prediction_type == "epsilon":
    return model_output
  shape = (-1,) + (1,) * (x.ndim - 1)
  a = config.sde.mean_coeff(t).reshape(shape)
  s = config.sde.marginal_std(t).reshape(shape)
  return a * model_output + s * x


def training_target(x0: Array, noise: Array, t: Array, config: BackboneConfig) -> Array:
  """What the U-Net regresses on x_t = a x0 + s noise: the noise, or v = a noise - s x0."""
  if config.prediction_type == "epsilon":
    return noise
  shape = (-1,) + (1,) * (x0.ndim - 1)
  a = config.sde.mean_coeff(t).reshape(shape)
  s = config.sde.marginal_std(t).reshape(shape)
  return a * noise - s * x0


def eps_fn(unet_variables: dict, config: BackboneConfig, *, dtype: Any = jnp.float32,
           attention_impl: str = "jnp", apply_fn: Callable[..., Array] | None = None
           ) -> Callable[[Array, Array, Array], Array]:
  """eps(x, t, context) on the SDE's continuous time (t -> DDPM index N t - 1).

  `apply_fn(variables, x, timesteps, context)` replaces the plain U-Net call, e.g. a LoRA-wrapped
  forward (`jaxgen.nets.lora.apply_with_lora`).
  """
  apply_fn = apply_fn or (lambda v, x, n, c: unet_apply(v, config, x, n, c, dtype=dtype,
                                                        attention_impl=attention_impl))

  def fn(x: Array, t: Array, context: Array) -> Array:
    out = apply_fn(unet_variables, x, config.sde.timestep(t), context)
    return noise_prediction(out, x, t, config)

  return fn


def encode_images(vae_variables: dict, config: BackboneConfig, images: Array,
                  key: Array | None = None) -> Array:
  """Images NHWC in [-1, 1] -> scaled latents (posterior mean, or a sample with `key`)."""
  return kl_autoencoder.encode_latents(vae_variables, images, config.vae, key)


def decode_latents(vae_variables: dict, config: BackboneConfig, latents: Array) -> Array:
  """Scaled latents -> images NHWC, about [-1, 1]."""
  return kl_autoencoder.decode_latents(vae_variables, latents, config.vae)


__all__ = ["BackboneConfig", "PREDICTION_TYPES", "decode_latents", "encode_images",
           "encode_prompts", "eps_fn", "init_backbone", "noise_prediction", "training_target",
           "unet_apply"]
