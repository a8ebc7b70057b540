"""The VQ-GAN autoencoder of Esser et al. 2021 ("Taming Transformers for High-Resolution Image
Synthesis", sec. 3.2) in Flax, laid out like the CompVis/taming-transformers `VQModel` so its
checkpoints load with `jaxgen.io.vqgan_import`.

Encoder: 3x3 conv_in, then per level `num_res_blocks` ResNet blocks (each followed by
self-attention when the level's nominal resolution is in `attn_resolutions`) and, except on the
last level, a stride-2 downsampling conv; a middle ResNet-attention-ResNet stack; GroupNorm,
swish and a 3x3 conv_out to `z_channels`. A 1x1 `quant_conv` maps to `embed_dim`. The decoder
mirrors this with `num_res_blocks + 1` blocks per level and nearest-neighbour x2 upsampling,
after a 1x1 `post_quant_conv`. Images are NHWC in [-1, 1].

`VQGANAutoencoder.encode` returns the unquantised latent `quant_conv(encoder(x))` (what the
LR-GMM-NN setting models); `quantize` snaps latents to a codebook when wanted.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.nets.conv import Conv

__all__ = [
    "AttnBlock", "Decoder", "Downsample", "Encoder", "ResnetBlock", "Upsample", "VQGANAutoencoder",
    "VQGANConfig", "quantize", "vqgan_decode", "vqgan_encode",
]

_PAD1 = ((1, 1), (1, 1))


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Sizes of a taming-transformers VQModel (its `ddconfig` plus `embed_dim`/`n_embed`).

  `resolution` is the nominal input size; it fixes where attention sits (levels whose size
  `resolution // 2**level` is in `attn_resolutions`), not the size of the inputs, which may be
  any multiple of the downsampling factor.
  """

  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  z_channels: int = 256
  embed_dim: int = 256
  n_embed: int = 1024
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  num_groups: int = 32

  def __post_init__(self):
    if not self.ch_mult or any(m < 1 for m in self.ch_mult):
      raise ConfigError("vqgan.ch_mult", self.ch_mult, "a non-empty tuple of positive ints")
    for m in self.ch_mult:
      if (self.ch * m) % self.num_groups:
        raise ConfigError("vqgan.ch", self.ch, f"channel counts ch*ch_mult divisible by "
                          f"num_groups={self.num_groups} (GroupNorm)")
    if self.num_res_blocks < 1:
      raise ConfigError("vqgan.num_res_blocks", self.num_res_blocks, "at least 1")

  @classmethod
  def ffhq_f16(cls) -> "VQGANConfig":
    """The FFHQ / CelebA-HQ (faceshq) f=16 VQ-GAN of taming-transformers: 256x256x3 <->
    16x16x256, codebook of 1024 entries."""
    return cls()

  @classmethod
  def tiny(cls) -> "VQGANConfig":
    """Two levels, 32/64 channels, attention at 8x8: 16x16x3 <-> 8x8x8, for tests."""
    return cls(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
               embed_dim=8, n_embed=16, resolution=16)

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  @property
  def downsample_factor(self) -> int:
    """f = 2**(levels - 1): latent height = image height / f."""
    return 2 ** (self.num_levels - 1)

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    """(H, W, embed_dim) of `encode` for a `resolution` x `resolution` image."""
    side = self.resolution // self.downsample_factor
    return (side, side, self.embed_dim)

  def has_attention(self, level: int) -> bool:
    """Whether the blocks of `level` are followed by self-attention (taming's `curr_res` test)."""
    return self.resolution // 2 ** level in self.attn_resolutions


def swish(x: jax.Array) -> jax.Array:
  """x * sigmoid(x) (the SiLU taming calls `nonlinearity`)."""
  return x * jax.nn.sigmoid(x)


def _norm(num_groups: int, name: str) -> nn.GroupNorm:
  # Two-pass variance, as torch.nn.GroupNorm computes it (eps 1e-6, affine).
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, use_fast_variance=False, name=name)


class ResnetBlock(nn.Module):
  """x + conv2(swish(norm2(conv1(swish(norm1(x)))))), with a 1x1 `nin_shortcut` on x when the
  channel count changes (He et al. 2016 pre-activation block; dropout 0, no time embedding)."""

  out_channels: int
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = swish(_norm(self.num_groups, "norm1")(x))
    h = Conv(self.out_channels, (3, 3), padding=_PAD1, name="conv1")(h)
    h = swish(_norm(self.num_groups, "norm2")(h))
    h = Conv(self.out_channels, (3, 3), padding=_PAD1, name="conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, (1, 1), name="nin_shortcut")(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions: x + proj_out(softmax(q k^T / sqrt(C)) v),
  with q, k, v 1x1 convs of GroupNorm(x) (Vaswani et al. 2017 eq. 1)."""

  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, height, width, c = x.shape
    h = _norm(self.num_groups, "norm")(x)
    q, k, v = (Conv(c, (1, 1), name=nm)(h).reshape(n, height * width, c) for nm in "qkv")
    weights = jax.nn.softmax(jnp.einsum("nic,njc->nij", q, k) * c ** -0.5, axis=-1)
    out = jnp.einsum("nij,njc->nic", weights, v).reshape(n, height, width, c)
    return x + Conv(c, (1, 1), name="proj_out")(out)


class Downsample(nn.Module):
  """Zero-pad one row at the bottom and one column at the right, then a 3x3 stride-2 conv
  (taming's asymmetric padding: H -> floor((H - 2) / 2) + 1)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 (each pixel repeated 2x2), then a 3x3 conv."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return Conv(x.shape[-1], (3, 3), padding=_PAD1, name="conv")(x)


class Encoder(nn.Module):
  """Image [N, H, W, in_channels] -> [N, H/f, W/f, z_channels]. Submodule names follow taming's
  with '.' -> '_' (`down_1_block_0` is `encoder.down.1.block.0`). With `double_z` the conv_out
  gives 2 * z_channels (mean and log-variance of a KL autoencoder, ldm's `double_z`)."""

  config: VQGANConfig
  double_z: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    g = cfg.num_groups
    h = Conv(cfg.ch, (3, 3), padding=_PAD1, name="conv_in")(x)
    for level, mult in enumerate(cfg.ch_mult):
      for i in range(cfg.num_res_blocks):
        h = ResnetBlock(cfg.ch * mult, g, name=f"down_{level}_block_{i}")(h)
        if cfg.has_attention(level):
          h = AttnBlock(g, name=f"down_{level}_attn_{i}")(h)
      if level != cfg.num_levels - 1:
        h = Downsample(name=f"down_{level}_downsample")(h)
    h = _middle(h, g)
    h = swish(_norm(g, "norm_out")(h))
    out_channels = 2 * cfg.z_channels if self.double_z else cfg.z_channels
    return Conv(out_channels, (3, 3), padding=_PAD1, name="conv_out")(h)


class Decoder(nn.Module):
  """[N, h, w, z_channels] -> image [N, h*f, w*f, out_ch]. Levels run from the last (coarsest)
  to 0, each with `num_res_blocks + 1` blocks; names as in taming (`up_3_upsample`)."""

  config: VQGANConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    g = cfg.num_groups
    h = Conv(cfg.ch * cfg.ch_mult[-1], (3, 3), padding=_PAD1, name="conv_in")(z)
    h = _middle(h, g)
    for level in reversed(range(cfg.num_levels)):
      for i in range(cfg.num_res_blocks + 1):
        h = ResnetBlock(cfg.ch * cfg.ch_mult[level], g, name=f"up_{level}_block_{i}")(h)
        if cfg.has_attention(level):
          h = AttnBlock(g, name=f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = Upsample(name=f"up_{level}_upsample")(h)
    h = swish(_norm(g, "norm_out")(h))
    return Conv(cfg.out_ch, (3, 3), padding=_PAD1, name="conv_out")(h)


def _middle(h: jax.Array, num_groups: int) -> jax.Array:
  """ResNet block, attention, ResNet block at the coarsest level (called inside a compact
  module, so the submodules belong to the caller)."""
  c = h.shape[-1]
  h = ResnetBlock(c, num_groups, name="mid_block_1")(h)
  h = AttnBlock(num_groups, name="mid_attn_1")(h)
  return ResnetBlock(c, num_groups, name="mid_block_2")(h)


class VQGANAutoencoder(nn.Module):
  """taming's VQModel without its quantiser and losses: `encode` gives the unquantised latent
  quant_conv(encoder(x)), `decode` gives decoder(post_quant_conv(z)); `__call__` does both.

  Variables: `{'params': {'encoder', 'decoder', 'quant_conv', 'post_quant_conv'}}`; use
  `model.apply(variables, x, method='encode')`.
  """

  config: VQGANConfig

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    self.quant_conv = Conv(cfg.embed_dim, (1, 1))
    self.post_quant_conv = Conv(cfg.z_channels, (1, 1))

  def encode(self, x: jax.Array) -> jax.Array:
    """[N, H, W, in_channels] in [-1, 1] -> [N, H/f, W/f, embed_dim] (before quantisation)."""
    return self.quant_conv(self.encoder(x))

  def decode(self, z: jax.Array) -> jax.Array:
    """[N, h, w, embed_dim] -> [N, h*f, w*f, out_ch], images in about [-1, 1] (not clipped)."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))


@functools.partial(jax.jit, static_argnums=2)
def vqgan_encode(variables: dict, images: jax.Array, config: VQGANConfig) -> jax.Array:
  """Jitted `VQGANAutoencoder(config).encode`: float NHWC images in [-1, 1] -> latents."""
  return VQGANAutoencoder(config).apply(variables, images, method="encode")


@functools.partial(jax.jit, static_argnums=2)
def vqgan_decode(variables: dict, latents: jax.Array, config: VQGANConfig) -> jax.Array:
  """Jitted `VQGANAutoencoder(config).decode`: latents -> float NHWC images, about [-1, 1]."""
  return VQGANAutoencoder(config).apply(variables, latents, method="decode")


def quantize(z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Nearest codebook entries in Euclidean distance (van den Oord et al. 2017 eq. 1 / Esser et
  al. 2021 eq. 2): z [..., D], codebook [K, D] -> (indices [...], quantised z [..., D])."""
  flat = z.reshape(-1, z.shape[-1])
  dist = (jnp.sum(flat ** 2, axis=1, keepdims=True) - 2.0 * flat @ codebook.T
          + jnp.sum(codebook ** 2, axis=1)[None, :])
  idx = jnp.argmin(dist, axis=1)
  return idx.reshape(z.shape[:-1]), codebook[idx].reshape(z.shape)
