"""Deterministic convolutional autoencoder shared across views (MVLD, paper 000 sec. II-A).

Each view is encoded on its own to a small latent vector (64 numbers by default, paper 000 IV-A);
the diffusion model then sees the concatenation of the V latents. Images are NHWC in [-1, 1].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.common import group_count
from jaxgen.nets.conv import Conv



class ConvEncoder(nn.Module):
  """Strided 4x4 convolutions (GroupNorm, SiLU) down to a (H / 2^k)^2 map, then a dense latent."""

  latent_dim: int = 64
  channels: Sequence[int] = (32, 64, 128, 256)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Conv(self.channels[0], (3, 3), name="stem")(x)
    for i, c in enumerate(self.channels):
      h = Conv(c, (4, 4), strides=(2, 2), name=f"down{i}")(h)
      h = nn.silu(nn.GroupNorm(num_groups=group_count(c), name=f"norm{i}")(h))
    return nn.Dense(self.latent_dim, name="to_latent")(h.reshape((h.shape[0], -1)))


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling of NHWC maps."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ConvDecoder(nn.Module):
  """Mirror of `ConvEncoder`: dense to a small map, then (upsample x2, 3x3 conv) per level.

  Nearest upsampling + convolution rather than transposed convolutions: no checkerboard
  artefacts, and XLA's CPU backend runs it an order of magnitude faster.
  """

  image_size: int = 64
  out_channels: int = 3
  channels: Sequence[int] = (32, 64, 128, 256)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    size = self.image_size // 2 ** len(self.channels)
    top = self.channels[-1]
    h = nn.Dense(size * size * top, name="from_latent")(z).reshape((z.shape[0], size, size, top))
    for i, c in reversed(list(enumerate(self.channels))):
      h = nn.silu(nn.GroupNorm(num_groups=group_count(h.shape[-1]), name=f"norm{i}")(h))
      h = Conv(c, (3, 3), name=f"up{i}")(upsample_nearest(h))
    h = nn.silu(nn.GroupNorm(num_groups=group_count(h.shape[-1]), name="norm_out")(h))
    return Conv(self.out_channels, (3, 3), name="to_image")(h)


class ViewAutoencoder(nn.Module):
  """e_phi and d_psi of paper 000 eq. 1; `__call__` reconstructs, `encode`/`decode` are separate."""

  image_size: int = 64
  latent_dim: int = 64
  channels: Sequence[int] = (32, 64, 128, 256)

  def setup(self):
    self.encoder = ConvEncoder(self.latent_dim, self.channels)
    self.decoder = ConvDecoder(self.image_size, 3, self.channels)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))


def laplace_reconstruction_loss(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Negative Laplace log-likelihood with unit scale up to a constant: the mean L1 error (eq. 1)."""
  return jnp.mean(jnp.abs(x - x_hat))
