"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", sec. 3 and appendix G; Stable Diffusion's first stage,
diffusers' `AutoencoderKL`) in Flax.

It is the ldm Encoder/Decoder of `jaxgen.nets.vqgan` (reused, not rewritten) with a continuous
bottleneck instead of a codebook: the encoder's conv_out gives 2 * z_channels (`double_z`), a 1x1
`quant_conv` maps them to 2 * embed_dim, read as the mean and log-variance of a diagonal Gaussian
posterior q(z|x) (log-variance clipped to [-30, 20] as ldm does, so exp() never over- or
underflows), and a 1x1 `post_quant_conv` maps embed_dim back to z_channels for the decoder.
Training adds a small KL(q(z|x) || N(0, I)) term (`kl_divergence`). The diffusion model works on
latents multiplied by `scaling_factor` (0.18215 for SD 1.x, which gives them about unit variance);
`encode_latents` / `decode_latents` apply and undo it. Images are NHWC in [-1, 1].

Variables are `{'params': {'encoder', 'decoder', 'quant_conv', 'post_quant_conv'}}` with the
VQ-GAN's submodule names, so `jaxgen.io.kl_autoencoder_import` maps CompVis and diffusers
checkpoints onto them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.nets.conv import Conv
from jaxgen.nets.vqgan import Decoder, Encoder, VQGANConfig

__all__ = [
    "KLAutoencoder", "KLAutoencoderConfig", "LOGVAR_RANGE", "decode_latents", "encode_latents",
    "kl_divergence", "sample_posterior",
]

# ldm's DiagonalGaussianDistribution clamps the log-variance to this range.
LOGVAR_RANGE = (-30.0, 20.0)


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass(frozen=True)
class KLAutoencoderConfig:
  """Sizes of an ldm `AutoencoderKL` (its `ddconfig` plus `embed_dim`) and the latent scale.

  Channels per level are ch * ch_mult[level] (diffusers' `block_out_channels`); `num_res_blocks`
  is diffusers' `layers_per_block`; z_channels and embed_dim are both diffusers'
  `latent_channels`. `resolution` is the nominal image size: it only places attention (levels
  whose size `resolution // 2**level` is in `attn_resolutions`); inputs may be any multiple of
  `downsample_factor`. The middle block always has attention.
  """

  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = ()
  z_channels: int = 4
  embed_dim: int = 4
  resolution: int = 512
  in_channels: int = 3
  out_channels: int = 3
  num_groups: int = 32
  scaling_factor: float = 0.18215

  def __post_init__(self):
    # Lists become tuples so the config stays hashable (a static jit argument).
    for name in ("ch_mult", "attn_resolutions"):
      if isinstance(getattr(self, name), list):
        object.__setattr__(self, name, tuple(getattr(self, name)))
    for name in ("ch", "num_res_blocks", "z_channels", "embed_dim", "resolution", "in_channels",
                 "out_channels", "num_groups"):
      if not _positive_int(getattr(self, name)):
        raise ConfigError(f"kl_autoencoder.{name}", getattr(self, name), "a positive int")
    if (not isinstance(self.ch_mult, tuple) or not self.ch_mult
        or not all(_positive_int(m) for m in self.ch_mult)):
      raise ConfigError("kl_autoencoder.ch_mult", self.ch_mult,
                        "a non-empty tuple of positive ints")
    if not isinstance(self.attn_resolutions, tuple) or not all(
        _positive_int(r) for r in self.attn_resolutions):
      raise ConfigError("kl_autoencoder.attn_resolutions", self.attn_resolutions,
                        "a tuple of positive ints (level sizes that get attention)")
    for m in self.ch_mult:
      if (self.ch * m) % self.num_groups:
        raise ConfigError("kl_autoencoder.ch", self.ch, f"channel counts ch*ch_mult divisible by "
                          f"num_groups={self.num_groups} (GroupNorm)")
    if self.resolution % self.downsample_factor:
      raise ConfigError("kl_autoencoder.resolution", self.resolution,
                        f"a multiple of the downsampling factor {self.downsample_factor}")
    if (isinstance(self.scaling_factor, bool) or not isinstance(self.scaling_factor, (int, float))
        or not math.isfinite(self.scaling_factor) or self.scaling_factor <= 0):
      raise ConfigError("kl_autoencoder.scaling_factor", self.scaling_factor,
                        "a finite positive number (0.18215 for SD 1.x)")

  @classmethod
  def sd15(cls) -> "KLAutoencoderConfig":
    """Stable Diffusion 1.x's autoencoder (`kl-f8`, also SD 1.5's `vae/`): 512x512x3 <->
    64x64x4, 128/256/512/512 channels, attention only in the middle blocks, scale 0.18215."""
    return cls()

  @classmethod
  def tiny(cls) -> "KLAutoencoderConfig":
    """Four levels (f = 8) of 8/16/16/32 channels, attention at 4x4 and in the middle, 4 latent
    channels: 32x32x3 <-> 4x4x4, for tests."""
    return cls(ch=8, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,), z_channels=4,
               embed_dim=4, resolution=32, num_groups=4)

  @property
  def downsample_factor(self) -> int:
    """f = 2**(levels - 1): latent height = image height / f."""
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """(H, W, embed_dim) of the latents of a `resolution` x `resolution` image."""
    return self.blocks_config().latent_shape

  def blocks_config(self) -> VQGANConfig:
    """The same sizes as a `VQGANConfig`, which the shared Encoder/Decoder read (its codebook
    size is unused here)."""
    return VQGANConfig(ch=self.ch, ch_mult=self.ch_mult, num_res_blocks=self.num_res_blocks,
                       attn_resolutions=self.attn_resolutions, z_channels=self.z_channels,
                       embed_dim=self.embed_dim, n_embed=1, resolution=self.resolution,
                       in_channels=self.in_channels, out_ch=self.out_channels,
                       num_groups=self.num_groups)


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (the reparameterisation of Kingma and
  Welling 2014, so gradients flow into mean and logvar)."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example: [N, ...] -> [N], summed over all latent
  elements, 0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) (Kingma and Welling 2014, appendix B)."""
  mean = mean.astype(jnp.float32)
  logvar = logvar.astype(jnp.float32)
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms.reshape(terms.shape[0], -1), axis=1)


class KLAutoencoder(nn.Module):
  """ldm's `AutoencoderKL` without its losses: `encode` gives the posterior's (mean, logvar),
  `decode` maps latents back to images, `__call__` does both for training.

  Use `model.apply(variables, x, method='encode')`; latents here are unscaled (see
  `encode_latents` for the diffusion model's scaled ones).
  """

  config: KLAutoencoderConfig

  def setup(self):
    cfg = self.config
    blocks = cfg.blocks_config()
    self.encoder = Encoder(blocks, double_z=True)
    self.decoder = Decoder(blocks)
    self.quant_conv = Conv(2 * cfg.embed_dim, (1, 1))
    self.post_quant_conv = Conv(cfg.z_channels, (1, 1))

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N, H, W, in_channels] in [-1, 1] -> (mean, logvar), each [N, H/f, W/f, embed_dim];
    logvar clipped to `LOGVAR_RANGE`. The first embed_dim channels are the mean (ldm's chunk)."""
    moments = self.quant_conv(self.encoder(x))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """[N, h, w, embed_dim] unscaled latents -> [N, h*f, w*f, out_channels], about [-1, 1]
    (not clipped)."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x: jax.Array, sample: bool = False
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x -> (reconstruction, mean, logvar). With `sample` the decoder sees a posterior sample
    drawn with the 'sample' rng stream (`apply(..., rngs={'sample': key})`), else the mean."""
    mean, logvar = self.encode(x)
    z = sample_posterior(mean, logvar, self.make_rng("sample")) if sample else mean
    return self.decode(z), mean, logvar


@functools.partial(jax.jit, static_argnames=("config",))
def encode_latents(variables: dict, images: jax.Array, config: KLAutoencoderConfig,
                   key: jax.Array | None = None) -> jax.Array:
  """Images NHWC in [-1, 1] -> latents for the diffusion model, `scaling_factor * z` with z a
  posterior sample when `key` is given, else the posterior mean. Jitted, `config` static."""
  mean, logvar = KLAutoencoder(config).apply(variables, images, method="encode")
  z = mean if key is None else sample_posterior(mean, logvar, key)
  return config.scaling_factor * z


@functools.partial(jax.jit, static_argnames=("config",))
def decode_latents(variables: dict, latents: jax.Array, config: KLAutoencoderConfig) -> jax.Array:
  """Scaled latents (as `encode_latents` gives and a diffusion model samples) -> images NHWC,
  about [-1, 1]: divides by `scaling_factor` first. Jitted, `config` static."""
  return KLAutoencoder(config).apply(variables, latents / config.scaling_factor, method="decode")
