"""A convolutional autoencoder to a spatial latent map (LR-GMM-NN's E and D, paper 004 sec. 3.1).

LR-GMM-NN needs latents that keep a coarse spatial grid (h x w x c, h << H), because its
nearest-neighbour step copies latent *pixels* between registered images. The paper uses a
pretrained VQ-GAN (`jaxgen.nets.vqgan`, 256x256 -> 16x16x256); this is the embedded stand-in that
jaxgen trains on the auxiliary set A: residual blocks (GroupNorm, SiLU) and strided convolutions,
no dense bottleneck, so the latent is a map. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jaxgen.nets.autoencoder import upsample_nearest
from jaxgen.nets.common import group_count
from jaxgen.nets.conv import Conv


class ResBlock(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(nn.GroupNorm(num_groups=group_count(x.shape[-1]), name="norm1")(x))
    h = Conv(self.channels, (3, 3), name="conv1")(h)
    h = nn.silu(nn.GroupNorm(num_groups=group_count(self.channels), name="norm2")(h))
    h = Conv(self.channels, (3, 3), name="conv2")(h)
    if x.shape[-1] != self.channels:
      x = Conv(self.channels, (1, 1), name="skip")(x)
    return x + h


class SpatialEncoder(nn.Module):
  """[B, H, W, 3] -> [B, H / 2^L, W / 2^L, latent_channels], L = len(channels)."""

  latent_channels: int = 32
  channels: Sequence[int] = (32, 64)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Residual blocks only after downsampling: full-resolution 3x3 convolutions dominate the
    # cost on CPU and add little to a 4x-downsampling autoencoder.
    h = Conv(self.channels[0], (3, 3), name="stem")(x)
    for i, c in enumerate(self.channels):
      h = Conv(c, (4, 4), strides=(2, 2), name=f"down{i}")(h)
      h = ResBlock(c, name=f"block{i}")(h)
    h = nn.silu(nn.GroupNorm(num_groups=group_count(h.shape[-1]), name="norm_out")(h))
    return Conv(self.latent_channels, (1, 1), name="to_latent")(h)


class SpatialDecoder(nn.Module):
  """Mirror of `SpatialEncoder` with nearest upsampling + 3x3 convolutions."""

  channels: Sequence[int] = (32, 64)
  out_channels: int = 3

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = Conv(self.channels[-1], (3, 3), name="from_latent")(z)
    for i, c in reversed(list(enumerate(self.channels))):
      h = ResBlock(c, name=f"block{i}")(h)
      h = Conv(c, (3, 3), name=f"up{i}")(upsample_nearest(h))
    h = nn.silu(nn.GroupNorm(num_groups=group_count(h.shape[-1]), name="norm_out")(h))
    return Conv(self.out_channels, (3, 3), name="to_image")(h)


class SpatialAutoencoder(nn.Module):
  """E and D of paper 004 sec. 3.1; `encode` / `decode` separately, `__call__` reconstructs."""

  latent_channels: int = 32
  channels: Sequence[int] = (32, 64)

  def setup(self):
    self.encoder = SpatialEncoder(self.latent_channels, self.channels)
    self.decoder = SpatialDecoder(self.channels)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))


def latent_shape(image_size: int, channels: Sequence[int], latent_channels: int) -> tuple[int, int, int]:
  """(h, w, c) of the latent map for square images of `image_size`."""
  side = image_size // 2 ** len(channels)
  return side, side, latent_channels

