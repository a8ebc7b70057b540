"""The text-conditioned U-Net of Stable Diffusion 1.x (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", sec. 3.3 and appendix E.2) in Flax, laid out like
diffusers' `UNet2DConditionModel` so its weights load with `jaxgen.io.cond_unet_import`.

Structure: sinusoidal timestep features -> `time_embedding`; a 3x3 `conv_in`; down levels of
ResNet blocks (followed, on cross-attention levels, by a transformer of self-attention,
cross-attention over the text states and a GEGLU feed-forward) and a stride-2 conv; a middle
ResNet-transformer-ResNet block; up levels that concatenate the skips and end in a nearest x2 +
conv upsampler; GroupNorm, SiLU and a 3x3 `conv_out`.

Flax submodule names are diffusers' module names with '.' before a list index replaced by '_'
(`down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q` is
`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), so the key mapping is mechanical.
Inputs are NHWC latents [B, H, W, in_channels], timesteps [B] on the DDPM index scale (0..999,
int or float) and text states [B, L, cross_attention_dim]. `dtype` sets the compute dtype
(e.g. bfloat16) with float32 parameters; softmax and norm statistics stay in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import ConfigError
from jaxgen.nets.conv import Conv

__all__ = [
    "ATTENTION_PROJECTIONS", "Attention", "BasicTransformerBlock", "CondUNet", "CondUNetConfig",
    "DownBlock", "FeedForward", "GEGLU", "MidBlock", "Resample", "ResnetBlock2D",
    "TimestepEmbedding", "Transformer2DModel", "UpBlock", "attention_projection_paths",
    "init_params", "param_shapes", "timestep_embedding",
]

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
ATTENTION_IMPLS = ("jnp", "dot_product_attention")
# Names of the attention projections LoRA adapts by default (to_out_0 is diffusers' to_out.0).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out_0")
_PAD1 = ((1, 1), (1, 1))


@dataclasses.dataclass(frozen=True)
class CondUNetConfig:
  """Sizes of a `UNet2DConditionModel` (diffusers' config.json names where they exist).

  `num_attention_heads` is the number of heads per level (an int for all levels); diffusers' SD
  1.x config stores this count under the misnomer `attention_head_dim` (8: head size = channels /
  8), which `jaxgen.io.cond_unet_import.config_from_diffusers` accounts for. `sample_size` is the
  nominal latent side (64 for 512x512 images); inputs may have any size.
  """

  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  num_attention_heads: int | tuple[int, ...] = 8
  cross_attention_dim: int = 768
  transformer_layers_per_block: int = 1
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embed_dim: int | None = None
  use_linear_projection: bool = False
  sample_size: int = 64

  def __post_init__(self):
    # Lists (as read from JSON/YAML) become tuples so the config stays hashable.
    for key in ("block_out_channels", "down_block_types", "up_block_types", "num_attention_heads"):
      if isinstance(getattr(self, key), list):
        object.__setattr__(self, key, tuple(getattr(self, key)))
    for key in ("in_channels", "out_channels", "layers_per_block", "cross_attention_dim",
                "transformer_layers_per_block", "norm_num_groups", "sample_size", "time_embed_dim"):
      value = getattr(self, key)
      if not (isinstance(value, int) and value >= 1 or key == "time_embed_dim" and value is None):
        raise ConfigError(f"cond_unet.{key}", value, "a positive int")
    chans = self.block_out_channels
    if not chans or any(not isinstance(c, int) or c < 1 for c in chans):
      raise ConfigError("cond_unet.block_out_channels", chans, "a non-empty tuple of positive ints")
    levels = len(chans)
    for key in ("down_block_types", "up_block_types"):
      types, allowed = getattr(self, key), DOWN_TYPES if key[0] == "d" else UP_TYPES
      if len(types) != levels or any(t not in allowed for t in types):
        raise ConfigError(f"cond_unet.{key}", types,
                          f"{levels} entries (one per level) from {allowed}")
    heads = self.heads
    if (len(heads) != levels or any(not isinstance(h, int) or h < 1 for h in heads)
        or any(c % h for c, h in zip(chans, heads))):
      raise ConfigError("cond_unet.num_attention_heads", self.num_attention_heads,
                        f"a positive int or {levels} (one per level) dividing the channels {chans}")
    if any(c % self.norm_num_groups for c in chans):
      raise ConfigError("cond_unet.block_out_channels", chans, f"channel counts divisible by "
                        f"norm_num_groups={self.norm_num_groups} (GroupNorm)")
    if not self.norm_eps > 0:
      raise ConfigError("cond_unet.norm_eps", self.norm_eps, "a positive float")

  @classmethod
  def sd15(cls) -> "CondUNetConfig":
    """Stable Diffusion 1.5 (and 1.1-1.4): 320-640-1280-1280, 8 heads, CLIP ViT-L text states of
    width 768, 64x64x4 latents; 859,520,964 parameters."""
    return cls()

  @classmethod
  def tiny(cls) -> "CondUNetConfig":
    """Two levels of 32/64 channels, cross-attention on the first level and in the middle, text
    width 32, 16x16x4 latents: for tests and CPU training."""
    return cls(block_out_channels=(32, 64), layers_per_block=1,
               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), num_attention_heads=4,
               cross_attention_dim=32, norm_num_groups=8, sample_size=16)

  @property
  def num_levels(self) -> int:
    return len(self.block_out_channels)

  @property
  def heads(self) -> tuple[int, ...]:  # per level
    h = self.num_attention_heads
    return (h,) * self.num_levels if isinstance(h, int) else tuple(h)

  @property
  def temb_dim(self) -> int:
    return self.time_embed_dim or 4 * self.block_out_channels[0]

  def down_attention(self, level: int) -> bool:
    return self.down_block_types[level] == "CrossAttnDownBlock2D"

  def up_attention(self, index: int) -> bool:
    """Whether up block `index` (0 = coarsest, as diffusers numbers them) has cross-attention."""
    return self.up_block_types[index] == "CrossAttnUpBlock2D"


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features [B, dim] of timesteps [B] (Vaswani et al. 2017 sec. 3.5, as diffusers'
  `get_timestep_embedding`): frequencies exp(-ln(max_period) * i / (dim/2 - freq_shift)),
  i < dim/2; [sin, cos] or, with `flip_sin_to_cos` (SD), [cos, sin]; a zero column if dim is odd."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
  parts = (jnp.cos(args), jnp.sin(args)) if flip_sin_to_cos else (jnp.sin(args), jnp.cos(args))
  emb = jnp.concatenate(parts, axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _group_norm(groups: int, eps: float, dtype: Any, name: str) -> nn.GroupNorm:
  # Two-pass variance as torch.nn.GroupNorm computes it.
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                      name=name)


class TimestepEmbedding(nn.Module):
  """linear_2(SiLU(linear_1(features))): the time embedding every ResNet block receives."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.silu(nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x))
    return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(x)


class ResnetBlock2D(nn.Module):
  """shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))) + time_emb_proj(SiLU(temb))))), with a
  1x1 `conv_shortcut` when the channel count changes (dropout 0)."""

  out_channels: int
  groups: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    c, dt = self.out_channels, self.dtype
    h = nn.silu(_group_norm(self.groups, self.eps, dt, "norm1")(x))
    h = Conv(c, (3, 3), padding=_PAD1, dtype=dt, name="conv1")(h)
    h = h + nn.Dense(c, dtype=dt, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(self.groups, self.eps, dt, "norm2")(h))
    h = Conv(c, (3, 3), padding=_PAD1, dtype=dt, name="conv2")(h)
    if x.shape[-1] != c:
      x = Conv(c, (1, 1), dtype=dt, name="conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """to_out_0(softmax(q k^T / sqrt(d)) v) over `heads` heads of q = to_q(x), k = to_k(ctx),
  v = to_v(ctx) (ctx = x for self-attention); q/k/v without bias (diffusers' `Attention`)."""

  heads: int
  dtype: Any = jnp.float32
  impl: str = "jnp"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    ctx = x if context is None else context
    (b, lq, c), dt = x.shape, self.dtype
    q, k, v = (nn.Dense(c, use_bias=False, dtype=dt, name=f"to_{n}")(y).reshape(
        b, y.shape[1], self.heads, c // self.heads) for n, y in (("q", x), ("k", ctx), ("v", ctx)))
    if self.impl == "dot_product_attention":
      out = jax.nn.dot_product_attention(q, k, v)
    else:  # logits and softmax in float32 also under bfloat16 compute
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits * (c // self.heads) ** -0.5, axis=-1).astype(v.dtype)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.Dense(c, dtype=dt, name="to_out_0")(out.reshape(b, lq, c))


class GEGLU(nn.Module):
  """a * GELU(b) for [a, b] = proj(x) split in halves (Shazeer 2020); exact (erf) GELU."""

  inner: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    a, b = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    return a * nn.gelu(b, approximate=False)


class FeedForward(nn.Module):
  """net_2(GEGLU net_0(x)) with inner width 4 * dim (net_1 is diffusers' dropout, no params)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = GEGLU(4 * x.shape[-1], self.dtype, name="net_0")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  """Pre-LayerNorm residual self-attention (attn1), cross-attention over the text (attn2) and
  GEGLU feed-forward (ff)."""

  heads: int
  dtype: Any = jnp.float32
  impl: str = "jnp"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    dt = self.dtype
    attn = lambda name: Attention(self.heads, dt, self.impl, name=name)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dt, name=name)
    x = x + attn("attn1")(norm("norm1")(x))
    x = x + attn("attn2")(norm("norm2")(x), context)
    return x + FeedForward(dt, name="ff")(norm("norm3")(x))


class Transformer2DModel(nn.Module):
  """x + proj_out(blocks(proj_in(GroupNorm(x)))) over the H*W positions as tokens; proj_in/out
  are 1x1 convs (SD 1.x) or linear layers (`use_linear_projection`, SD 2.x)."""

  heads: int
  groups: int
  depth: int = 1
  use_linear_projection: bool = False
  dtype: Any = jnp.float32
  impl: str = "jnp"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    dt = self.dtype
    # A Dense on the channel axis computes what the 1x1 conv does; only the kernel shape differs.
    proj = lambda name: (nn.Dense(c, dtype=dt, name=name) if self.use_linear_projection
                         else Conv(c, (1, 1), dtype=dt, name=name))
    h = proj("proj_in")(_group_norm(self.groups, 1e-6, dt, "norm")(x)).reshape(b, -1, c)
    for i in range(self.depth):
      block = BasicTransformerBlock(self.heads, dt, self.impl, name=f"transformer_blocks_{i}")
      h = block(h, context)
    return x + proj("proj_out")(h.reshape(b, height, width, c))


class Resample(nn.Module):
  """`up`: nearest-neighbour resize to `size` (x2 for even inputs) then a 3x3 conv (diffusers'
  Upsample2D); else a 3x3 conv with stride 2, padding 1 (Downsample2D, downsample_padding=1)."""

  channels: int
  up: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    size = size or (2 * x.shape[1], 2 * x.shape[2])
    # Source index floor(i * in / out) in float32, as torch's F.interpolate(mode='nearest').
    for axis, out in ((1, size[0]), (2, size[1])) if self.up else ():
      n = x.shape[axis]
      idx = np.floor(np.arange(out, dtype=np.float32) * (np.float32(n) / np.float32(out)))
      x = jnp.take(x, np.minimum(idx.astype(np.int32), n - 1), axis=axis)
    return Conv(self.channels, (3, 3), strides=(1, 1) if self.up else (2, 2), padding=_PAD1,
                dtype=self.dtype, name="conv")(x)


class _Stage(nn.Module):
  """Fields and layer factories shared by the down, mid and up blocks."""

  config: CondUNetConfig
  dtype: Any = jnp.float32
  impl: str = "jnp"

  def resnet(self, channels: int, name: str) -> ResnetBlock2D:
    return ResnetBlock2D(channels, self.config.norm_num_groups, self.config.norm_eps, self.dtype,
                         name=name)

  def transformer(self, heads: int, name: str) -> Transformer2DModel:
    cfg = self.config
    return Transformer2DModel(heads, cfg.norm_num_groups, cfg.transformer_layers_per_block,
                              cfg.use_linear_projection, self.dtype, self.impl, name=name)


class DownBlock(_Stage):
  """diffusers' CrossAttnDownBlock2D or DownBlock2D at `level`: ResNet blocks (each followed by
  a transformer on cross-attention levels) and, except on the last level, `downsamplers_0`.
  Returns the output and the skips (after every ResNet/transformer and the downsampler)."""

  level: int = 0

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array) -> tuple:
    cfg, lv = self.config, self.level
    c, skips = cfg.block_out_channels[lv], []
    for i in range(cfg.layers_per_block):
      h = self.resnet(c, f"resnets_{i}")(h, temb)
      if cfg.down_attention(lv):
        h = self.transformer(cfg.heads[lv], f"attentions_{i}")(h, context)
      skips.append(h)
    if lv != cfg.num_levels - 1:
      h = Resample(c, False, self.dtype, name="downsamplers_0")(h)
      skips.append(h)
    return h, skips


class MidBlock(_Stage):
  """resnets_1(attentions_0(resnets_0(h))): diffusers' UNetMidBlock2DCrossAttn, one layer."""

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    c = self.config.block_out_channels[-1]
    h = self.resnet(c, "resnets_0")(h, temb)
    h = self.transformer(self.config.heads[-1], "attentions_0")(h, context)
    return self.resnet(c, "resnets_1")(h, temb)


class UpBlock(_Stage):
  """diffusers' CrossAttnUpBlock2D / UpBlock2D number `index` (0 = coarsest): each of the
  `layers_per_block + 1` ResNet blocks takes concat([h, skip]) (last skip first), then a
  transformer when cross-attending; with `out_size` (all but the last block) `upsamplers_0`
  resizes to it (the next skip's size)."""

  index: int = 0

  @nn.compact
  def __call__(self, h: jax.Array, skips: list, temb: jax.Array, context: jax.Array,
               out_size: tuple[int, int] | None = None) -> jax.Array:
    cfg = self.config
    level = cfg.num_levels - 1 - self.index
    c = cfg.block_out_channels[level]
    for j, skip in enumerate(reversed(skips)):
      h = self.resnet(c, f"resnets_{j}")(jnp.concatenate([h, skip], axis=-1), temb)
      if cfg.up_attention(self.index):
        h = self.transformer(cfg.heads[level], f"attentions_{j}")(h, context)
    if out_size is not None:
      h = Resample(c, True, self.dtype, name="upsamplers_0")(h, out_size)
    return h


class CondUNet(nn.Module):
  """Noise (epsilon) prediction [B, H, W, out_channels] (float32) of latents [B, H, W,
  in_channels] at DDPM timesteps [B] (or a scalar) given text states [B, L, cross_attention_dim].

  `attention_impl` 'jnp' is einsum + softmax in float32; 'dot_product_attention' uses
  `jax.nn.dot_product_attention` (which may pick a fused kernel on GPU).
  """

  config: CondUNetConfig
  dtype: Any = jnp.float32
  attention_impl: str = "jnp"

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array,
               encoder_hidden_states: jax.Array) -> jax.Array:
    cfg, dt, impl = self.config, self.dtype, self.attention_impl
    if impl not in ATTENTION_IMPLS:
      raise ConfigError("cond_unet.attention_impl", impl, f"one of {ATTENTION_IMPLS}")
    batch = sample.shape[0]
    t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
    feats = timestep_embedding(t, cfg.block_out_channels[0], flip_sin_to_cos=cfg.flip_sin_to_cos,
                               freq_shift=cfg.freq_shift)
    temb = TimestepEmbedding(cfg.temb_dim, dt, name="time_embedding")(feats.astype(dt))
    context = encoder_hidden_states.astype(dt)
    h = Conv(cfg.block_out_channels[0], (3, 3), padding=_PAD1, dtype=dt,
             name="conv_in")(sample.astype(dt))
    skips = [h]
    for level in range(cfg.num_levels):
      h, new = DownBlock(cfg, dt, impl, level, name=f"down_blocks_{level}")(h, temb, context)
      skips += new
    h = MidBlock(cfg, dt, impl, name="mid_block")(h, temb, context)
    n = cfg.layers_per_block + 1
    for i in range(cfg.num_levels):
      mine, skips = skips[-n:], skips[:-n]
      out_size = tuple(skips[-1].shape[1:3]) if i != cfg.num_levels - 1 else None
      h = UpBlock(cfg, dt, impl, i, name=f"up_blocks_{i}")(h, mine, temb, context, out_size)
    h = nn.silu(_group_norm(cfg.norm_num_groups, cfg.norm_eps, dt, "conv_norm_out")(h))
    h = Conv(cfg.out_channels, (3, 3), padding=_PAD1, dtype=dt, name="conv_out")(h)
    return h.astype(jnp.float32)


def param_shapes(config: CondUNetConfig) -> dict:
  """The parameter tree of `CondUNet(config)` as `jax.ShapeDtypeStruct`s (no allocation)."""
  s, f32 = config.sample_size, jnp.float32
  inputs = (jax.ShapeDtypeStruct((1, s, s, config.in_channels), f32),
            jax.ShapeDtypeStruct((1,), f32),
            jax.ShapeDtypeStruct((1, 8, config.cross_attention_dim), f32))
  return jax.eval_shape(CondUNet(config).init, jax.random.key(0), *inputs)["params"]


def init_params(config: CondUNetConfig, key: jax.Array) -> dict:
  """Random parameters with Flax's default distributions (kernels LeCun truncated normal with
  variance 1/fan_in, biases 0, norm scales 1), drawn as one vector and cut to shape on the host
  (not jittable): XLA:CPU takes tens of seconds to compile `model.init`'s ~200 random ops."""
  flat = traverse_util.flatten_dict(param_shapes(config))
  kernels = [(p, s.shape) for p, s in flat.items() if p[-1] == "kernel"]
  total = sum(math.prod(s) for _, s in kernels)
  z = np.asarray(jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32))
  out, start = {}, 0
  for path, shape in kernels:
    size = math.prod(shape)
    # 0.8796: std of a unit normal truncated to [-2, 2] (as flax's variance_scaling corrects).
    std = np.float32((1.0 / math.prod(shape[:-1])) ** 0.5 / 0.87962566103423978)
    out[path] = jnp.asarray(z[start:start + size].reshape(shape) * std)
    start += size
  for path, s in flat.items():
    if path[-1] != "kernel":
      out[path] = jnp.asarray(np.full(s.shape, 1.0 if path[-1] == "scale" else 0.0, np.float32))
  return traverse_util.unflatten_dict({p: out[p] for p in flat})


def attention_projection_paths(params_or_config: Mapping | CondUNetConfig,
                               names: tuple[str, ...] = ATTENTION_PROJECTIONS
                               ) -> list[tuple[str, ...]]:
  """Module paths (tuples of names, without the 'kernel' leaf) of every attention projection
  Dense layer (to_q, to_k, to_v, to_out_0 of each attn1/attn2) in the params tree, in tree
  order; LoRA targets these by default. Accepts a params tree or a config."""
  params = (param_shapes(params_or_config) if isinstance(params_or_config, CondUNetConfig)
            else params_or_config)
  params = params.get("params", params)
  return [path[:-1] for path in traverse_util.flatten_dict(params)
          if path[-1] == "kernel" and len(path) >= 3 and path[-2] in names
          and path[-3] in ("attn1", "attn2")]
