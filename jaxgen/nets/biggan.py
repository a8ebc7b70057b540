"""BigGAN generator and projection discriminator (Brock et al. 2019, "Large Scale GAN Training for
High Fidelity Natural Image Synthesis", sec. 3 and appendix B) at 32, 64 and 128 pixels.

The layout follows BigGAN-PyTorch's `G_arch` / `D_arch` tables: G starts from a 4x4 map and
doubles it in each residual up-block; D runs preactivated residual down-blocks (the first one not
preactivated) with avg-pool downsampling. Every conv and linear layer of both networks is
spectrally normalised (`jaxgen.nets.spectral_norm`) except G's shared class embedding, which
BigGAN-PyTorch leaves plain ("SN on G's embedding seems to randomly cripple G"). Weights use
orthogonal init. Images are NHWC in [-1, 1].

Class inputs are float vectors y [B, K] (one-hot or any probability vector) instead of ids, so
soft labels work (Softlabel-GAN, paper 003 Fig. 3b): G's shared embedding and D's projection
matrix V are bias-free linear maps of y, equal to an embedding lookup for one-hot y.

`fused_resample=True` runs G's upsample + conv and D's conv + avg-pool as one cheaper convolution
each (`jaxgen.nets.resample_conv`): the same networks and parameters, float rounding apart.

Collections: "params"; "batch_stats" (G's BatchNorm running statistics); "spectral" (the u
vectors). `train=True` uses batch statistics, updates the running ones and runs one power
iteration per SN layer (mutable=["batch_stats", "spectral"] for G, ["spectral"] for D);
`train=False` reads everything and mutates nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.resample_conv import avg_pool_2x2
from jaxgen.nets.spectral_norm import SNConv, SNDense

SUPPORTED_RESOLUTIONS = (32, 64, 128)
BOTTOM_WIDTH = 4  # G's first feature map is 4x4 at every resolution
Z_CHUNK = 20  # hierarchical latent: dims per chunk (BigGAN's 120 = 6 x 20 at 128x128)

# Channel multipliers of BigGAN-PyTorch's G_arch (in, out per block) and D_arch (in without the
# RGB input, out, downsample per block).
_G_ARCH = {32: ([4, 4, 4], [4, 4, 4]),
           64: ([16, 16, 8, 4], [16, 8, 4, 2]),
           128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1])}
_D_ARCH = {32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False]),
           64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True] * 4 + [False]),
           128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True] * 5 + [False])}


def arch_channels(resolution: int, ch: int) -> dict[str, list]:
  """Per-block layout at `resolution` with width `ch`: G's in/out channels and output resolution,
  D's in/out channels, downsampling flags and output resolution (BigGAN-PyTorch G_arch/D_arch)."""
  if resolution not in SUPPORTED_RESOLUTIONS:
    raise ValueError(f"BigGAN resolution={resolution}: expected one of {SUPPORTED_RESOLUTIONS}")
  g_in, g_out = _G_ARCH[resolution]
  d_in, d_out, d_down = _D_ARCH[resolution]
  d_res, r = [], resolution
  for down in d_down:
    r = r // 2 if down else r
    d_res.append(r)
  return {"g_in": [ch * m for m in g_in], "g_out": [ch * m for m in g_out],
          "g_res": [BOTTOM_WIDTH * 2 ** (i + 1) for i in range(len(g_out))],
          "d_in": [3] + [ch * m for m in d_in], "d_out": [ch * m for m in d_out],
          "d_down": list(d_down), "d_res": d_res}


def _attention_index(attention: int, block_res: list[int], who: str) -> int | None:
  """The block after which self-attention runs: the first whose output is attention x attention.

  BigGAN-PyTorch attaches it to every block whose table entry matches; its D_arch[32] labels all
  four blocks 16 although they output 16, 8, 8, 8, so we key on the real map size and add one
  attention block, as the paper (and SA-GAN) describe."""
  if attention == 0:
    return None
  if attention not in block_res:
    raise ValueError(f"BigGAN {who} attention={attention}: expected 0 or one of "
                     f"{sorted(set(block_res))}")
  return block_res.index(attention)


class SelfAttention(nn.Module):
  """SA-GAN's non-local block with SN 1x1 convs and phi/g max-pooled 2x2; x + gamma * o with
  gamma starting at 0 (Zhang et al. 2019 eq. 3; BigGAN-PyTorch `Attention`)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    conv = functools.partial(SNConv, kernel_size=(1, 1), use_bias=False, dtype=self.dtype)
    pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2))  # noqa: E731
    theta = conv(c // 8, name="theta")(x, update_stats).reshape(b, h * w, c // 8)
    phi = pool(conv(c // 8, name="phi")(x, update_stats)).reshape(b, -1, c // 8)
    g = pool(conv(c // 2, name="g")(x, update_stats)).reshape(b, -1, c // 2)
    logits = jnp.einsum("bnc,bmc->bnm", theta, phi).astype(jnp.float32)
    beta = jax.nn.softmax(logits, axis=-1).astype(g.dtype)
    o = jnp.einsum("bnm,bmc->bnc", beta, g).reshape(b, h, w, c // 2)
    o = conv(c, name="o")(o, update_stats)
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    return x + gamma.astype(o.dtype) * o


class ConditionalBatchNorm(nn.Module):
  """BN(x) * (1 + W_g c) + W_b c with bias-free SN linear maps of the condition c (BigGAN sec. 3;
  BigGAN-PyTorch `ccbn`). Running statistics as flax's BatchNorm keeps them (biased variance;
  torch keeps the unbiased one, which only matters for the first few hundred steps)."""

  eps: float = 1e-5
  momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    h = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.eps,
                     use_scale=False, use_bias=False, use_fast_variance=False, dtype=self.dtype,
                     name="bn")(x)
    gain = 1.0 + SNDense(c, use_bias=False, dtype=self.dtype, name="gain")(cond, train)
    bias = SNDense(c, use_bias=False, dtype=self.dtype, name="bias")(cond, train)
    return h * gain[:, None, None, :] + bias[:, None, None, :]


class GBlock(nn.Module):
  """cBN -> ReLU -> up x2 -> conv3x3 -> cBN -> ReLU -> conv3x3, plus up x2 -> conv1x1 shortcut
  (BigGAN Fig. 15b; every G block upsamples, so the shortcut is always learnable)."""

  out_ch: int
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  fused_resample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(SNConv, self.out_ch, dtype=self.dtype)
    up_conv = functools.partial(conv, resample="up", fused_resample=self.fused_resample)
    cbn = functools.partial(ConditionalBatchNorm, eps=self.bn_eps, momentum=self.bn_momentum,
                            dtype=self.dtype)
    h = up_conv(name="conv1")(nn.relu(cbn(name="bn1")(x, cond, train)), train)
    h = conv(name="conv2")(nn.relu(cbn(name="bn2")(h, cond, train)), train)
    return h + up_conv(kernel_size=(1, 1), name="conv_sc")(x, train)


class Generator(nn.Module):
  """BigGAN generator G(z, y) -> images [B, H, W, 3] in [-1, 1] (Brock et al. 2019 Fig. 15a).

  `y` [B, num_classes] is a label vector; the shared embedding (a plain bias-free linear map to
  `shared_dim`) conditions every BatchNorm. With `hierarchical=True`, z is split into chunks of
  20: the first feeds the 4x4 linear layer, one chunk per block joins the shared embedding, and
  `dim_z` must be 20 * (blocks + 1). `bn_momentum` uses flax's convention (0.9 = torch's 0.1).
  """

  num_classes: int
  resolution: int = 32
  ch: int = 64
  dim_z: int = 128
  shared_dim: int = 128
  hierarchical: bool = False
  attention: int = 0
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  fused_resample: bool = False  # upsample + conv as one cheaper conv (jaxgen.nets.resample_conv)

  def __post_init__(self):
    # Fail at construction, before anything is traced.
    arch = arch_channels(self.resolution, self.ch)
    _attention_index(self.attention, arch["g_res"], "G")
    slots = len(arch["g_out"]) + 1
    if self.hierarchical and self.dim_z != Z_CHUNK * slots:
      raise ValueError(f"BigGAN G dim_z={self.dim_z}: hierarchical=True at {self.resolution}x"
                       f"{self.resolution} needs dim_z = {Z_CHUNK} * {slots} = {Z_CHUNK * slots}")
    super().__post_init__()

  @nn.compact
  def __call__(self, z: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    arch = arch_channels(self.resolution, self.ch)
    n_blocks = len(arch["g_out"])
    attn_at = _attention_index(self.attention, arch["g_res"], "G")
    if z.shape[-1] != self.dim_z:
      raise ValueError(f"BigGAN G: z has {z.shape[-1]} dims, expected dim_z={self.dim_z}")
    shared = nn.Dense(self.shared_dim, use_bias=False, kernel_init=nn.initializers.orthogonal(),
                      dtype=self.dtype, name="shared")(y)
    if self.hierarchical:
      zs = jnp.split(z, n_blocks + 1, axis=-1)
      z0, conds = zs[0], [jnp.concatenate([shared, zi.astype(shared.dtype)], -1) for zi in zs[1:]]
    else:
      z0, conds = z, [shared] * n_blocks
    c0 = arch["g_in"][0]
    h = SNDense(c0 * BOTTOM_WIDTH ** 2, dtype=self.dtype, name="linear")(z0, train)
    # torch's view(B, C, 4, 4) order, so BigGAN-PyTorch linear weights carry over unpermuted.
    h = h.reshape(-1, c0, BOTTOM_WIDTH, BOTTOM_WIDTH).transpose(0, 2, 3, 1)
    for i, out_ch in enumerate(arch["g_out"]):
      h = GBlock(out_ch, self.bn_eps, self.bn_momentum, self.dtype, self.fused_resample,
                 name=f"blocks_{i}")(h, conds[i], train)
      if i == attn_at:
        h = SelfAttention(self.dtype, name="attention")(h, train)
    h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_eps, use_fast_variance=False, dtype=self.dtype,
                     name="out_bn")(h)
    h = SNConv(3, dtype=self.dtype, name="out_conv")(nn.relu(h), train)
    return jnp.tanh(h.astype(jnp.float32))


class DBlock(nn.Module):
  """[ReLU ->] conv3x3 -> ReLU -> conv3x3 [-> avg-pool], plus a 1x1 conv shortcut where the
  channels change or the block downsamples (BigGAN Fig. 15c; BigGAN-PyTorch `DBlock`)."""

  out_ch: int
  downsample: bool
  preactivation: bool
  dtype: Any = jnp.float32
  fused_resample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool) -> jax.Array:
    conv = functools.partial(SNConv, self.out_ch, dtype=self.dtype)
    h = nn.relu(x) if self.preactivation else x
    h = conv(name="conv1")(h, update_stats)
    h = conv(name="conv2", resample="down" if self.downsample else None,
             fused_resample=self.fused_resample)(nn.relu(h), update_stats)
    # Pooling before the 1x1 conv in both orders BigGAN-PyTorch uses: the two linear maps
    # commute, and pooling first costs a quarter of the shortcut's FLOPs.
    sc = avg_pool_2x2(x) if self.downsample else x
    if self.downsample or x.shape[-1] != self.out_ch:
      sc = conv(kernel_size=(1, 1), name="conv_sc")(sc, update_stats)
    return h + sc


class Discriminator(nn.Module):
  """Projection discriminator D(x, y) = phi(x) . (V y) + psi(phi(x)) -> logits [B] float32
  (Miyato & Koyama 2018 eq. 3; Softlabel-GAN paper 003 Fig. 3b).

  phi = BigGAN D blocks -> ReLU -> sum over positions (sown as intermediates/"phi"), psi an SN
  linear map to 1 and V a bias-free SN linear map of the label vector y [B, K] (BigGAN-PyTorch's
  SN embedding, applied to y as a matrix so soft labels work; for one-hot y it is the row)."""

  num_classes: int
  resolution: int = 32
  ch: int = 64
  attention: int = 0
  dtype: Any = jnp.float32
  fused_resample: bool = False  # conv + avg-pool as one cheaper conv (jaxgen.nets.resample_conv)

  def __post_init__(self):
    _attention_index(self.attention, arch_channels(self.resolution, self.ch)["d_res"], "D")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
    arch = arch_channels(self.resolution, self.ch)
    attn_at = _attention_index(self.attention, arch["d_res"], "D")
    h = x.astype(self.dtype)
    for i, (out_ch, down) in enumerate(zip(arch["d_out"], arch["d_down"])):
      h = DBlock(out_ch, down, preactivation=i > 0, dtype=self.dtype,
                 fused_resample=self.fused_resample, name=f"blocks_{i}")(h, train)
      if i == attn_at:
        h = SelfAttention(self.dtype, name="attention")(h, train)
    # The head runs in float32: the sum over positions can exceed bfloat16's precision.
    phi = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    self.sow("intermediates", "phi", phi)
    psi = SNDense(1, dtype=jnp.float32, name="linear")(phi, train)[:, 0]
    proj = SNDense(phi.shape[-1], use_bias=False, dtype=jnp.float32, name="embed")(
        y.astype(jnp.float32), train)
    return psi + jnp.sum(proj * phi, axis=-1)
