"""The MLD authors' CUB image autoencoder (`autoencoder.kind=mld_cub`), drop-in for ViewAutoencoder.

Paper 000 (sec. IV-A) reuses "the architecture used in [12] (MLD) for the CUB dataset" with a
64-number latent. In the public MLD code that is the `resnet="resnet"` image modality of the CUB
experiments, `src/unimodal/CUB/image_resnet_limit.py` (a GAN-style pre-activation ResNet with
0.1-scaled residual branches); this is an independent re-implementation of its deterministic path.

Elements (defaults: nf=64, bottom_size=16, image_size=64, latent_dim=64):
  encoder: 3x3 conv 3->nf; ResBlock(nf, nf); then per level [3x3/2 average pool (zero padding 1,
    padding counted: always divided by 9), ResBlock(c, 2c)] down to bottom_size^2 (16x16x256);
    LeakyReLU; Dense to the latent (the authors' `fc_mu`).
  decoder: Dense latent -> bottom_size^2 x c0; per level [ResBlock(c, c/2), nearest x2 upsample];
    ResBlock(nf, nf); LeakyReLU; 3x3 conv nf->3, no output squashing (the authors' sigmoid is
    commented out: the output is the mean of their Laplace likelihood).
  ResBlock(fin, fout): x_s + 0.1 * conv3x3(act(conv3x3(act(x)))), hidden width min(fin, fout),
    x_s = x, or a bias-free 1x1 conv when fin != fout (applied to the raw, unactivated x).
  act = LeakyReLU with slope 0.2 everywhere (the authors' `actvn`). No normalisation layers at all
  (no BatchNorm, no GroupNorm), so there is no mutable state and `apply({"params": ...})` suffices.
  Channel widths c = min(nf * 2^i, nf_max) with nf_max 1024 in the encoder, 512 in the decoder.

Pixel range. Their images are torchvision `ToTensor` output in [0, 1] and the decoder returns
[0, 1]-scaled values; ours are in [-1, 1]. `encode(x)` is their encoder applied to (x + 1) / 2 and
`decode(z)` is 2 * (their decoder output) - 1, so reconstructions are theirs up to that affine
change of pixel range and their weights load unchanged. The map is applied explicitly rather than
folded into the first conv because the zero padding of that conv would then pad with the wrong
pixel value (their 0 is our -1). Both maps live inside the encoder/decoder submodules, so callers
that reach them as `self.encoder` / `self.decoder` (e.g. `method=ViewAutoencoder.encode`) get them.

Differences from `ViewAutoencoder`: ResNet blocks instead of strided convs, average pooling and
nearest upsampling, LeakyReLU(0.2) instead of SiLU, no GroupNorm, the dense layers act on a
16x16x256 map (4.2M weights each) instead of a 4x4 one. Deliberate differences from the authors'
code: the unused variational head `fc_logvar` is omitted (deterministic AE); the dense layers
flatten NHWC maps, so their `fc_mu`/`fc` weights need a row/column permutation from PyTorch's NCHW
flattening (see `benchmarks/torch_mld_cub.py`); image_size is a field (their code hard-codes 64)
following their own level count log2(image_size / bottom_size).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax

from jaxgen.nets.autoencoder import upsample_nearest
from jaxgen.nets.conv import Conv

LEAKY_SLOPE = 0.2  # the authors' actvn, not PyTorch's 0.01 default
RESIDUAL_SCALE = 0.1
_PAD1 = ((1, 1), (1, 1))  # PyTorch padding=1 on a stride-1 3x3 conv


def act(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, LEAKY_SLOPE)


def num_levels(image_size: int, bottom_size: int) -> int:
  """Pool/upsample levels between image_size and bottom_size (a power-of-two ratio is required)."""
  levels = round(math.log2(image_size / bottom_size)) if image_size >= bottom_size > 0 else -1
  if levels < 0 or bottom_size * 2 ** levels != image_size:
    raise ValueError(f"MLD CUB autoencoder: image_size {image_size} must be bottom_size "
                     f"{bottom_size} times a power of two (the authors use 64 = 16 * 4)")
  return levels


def widths(nf: int, nf_max: int, levels: int) -> list[int]:
  """Channel count at each resolution level 0 (full size) .. levels (bottom)."""
  return [min(nf * 2 ** i, nf_max) for i in range(levels + 1)]


class ResBlock(nn.Module):
  """Pre-activation residual block; the residual branch is scaled by 0.1 (no normalisation)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fin = x.shape[-1]
    hidden = min(fin, self.features)
    shortcut = x if fin == self.features else Conv(
        self.features, (1, 1), use_bias=False, name="conv_s")(x)
    dx = Conv(hidden, (3, 3), padding=_PAD1, name="conv_0")(act(x))
    dx = Conv(self.features, (3, 3), padding=_PAD1, name="conv_1")(act(dx))
    return shortcut + RESIDUAL_SCALE * dx


def avg_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """PyTorch AvgPool2d(3, stride=2, padding=1) with its default count_include_pad=True."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=_PAD1, count_include_pad=True)


class MLDCubEncoder(nn.Module):
  """[B, H, W, 3] in [-1, 1] -> [B, latent_dim]: the authors' EncoderImg (deterministic) on
  (x + 1) / 2, their [0, 1] pixel range."""

  image_size: int = 64
  latent_dim: int = 64
  nf: int = 64
  nf_max: int = 1024
  bottom_size: int = 16

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    levels = num_levels(self.image_size, self.bottom_size)
    c = widths(self.nf, self.nf_max, levels)
    x = (x + 1.0) * 0.5  # our [-1, 1] -> their [0, 1], before the conv's zero padding
    h = Conv(self.nf, (3, 3), padding=_PAD1, name="conv_img")(x)
    h = ResBlock(self.nf, name="block0")(h)
    for i in range(levels):
      h = ResBlock(c[i + 1], name=f"block{i + 1}")(avg_pool_3x3_s2(h))
    # NHWC flattening; PyTorch's NCHW order is a fixed permutation of the kernel rows.
    return nn.Dense(self.latent_dim, name="fc_mu")(act(h).reshape((h.shape[0], -1)))


class MLDCubDecoder(nn.Module):
  """[B, latent_dim] -> [B, H, W, 3]: 2 v - 1 with v the authors' DecoderImg output (their [0, 1]
  pixel scale, unsquashed), i.e. our [-1, 1] scale."""

  image_size: int = 64
  nf: int = 64
  nf_max: int = 512
  bottom_size: int = 16

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    levels = num_levels(self.image_size, self.bottom_size)
    c = widths(self.nf, self.nf_max, levels)
    s = self.bottom_size
    h = nn.Dense(s * s * c[-1], name="fc")(z).reshape((z.shape[0], s, s, c[-1]))
    for i in range(levels):
      h = upsample_nearest(ResBlock(c[levels - i - 1], name=f"block{i}")(h))
    h = ResBlock(self.nf, name=f"block{levels}")(h)
    return Conv(3, (3, 3), padding=_PAD1, name="conv_img")(act(h)) * 2.0 - 1.0


class MLDCubAutoencoder(nn.Module):
  """e_phi / d_psi of paper 000 eq. 1 with the MLD CUB architecture; images NHWC in [-1, 1]."""

  image_size: int = 64
  latent_dim: int = 64
  nf: int = 64                # the authors' nfilter
  nf_max_encoder: int = 1024  # their EncoderImg nfilter_max
  nf_max_decoder: int = 512   # their DecoderImg nfilter_max
  bottom_size: int = 16       # their s0: the encoder's last map / the decoder's first map

  def setup(self):
    num_levels(self.image_size, self.bottom_size)  # fail at init time with a clear message
    self.encoder = MLDCubEncoder(self.image_size, self.latent_dim, self.nf, self.nf_max_encoder,
                                 self.bottom_size)
    self.decoder = MLDCubDecoder(self.image_size, self.nf, self.nf_max_decoder, self.bottom_size)

  def encode(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))

