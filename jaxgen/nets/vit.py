"""Vision Transformer in Flax, laid out like torchvision's `vit_b_16`.

Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words", eqs. 1-4): a stride-p conv cuts the
image into p x p patches and embeds them, a learned class token is prepended, learned position
embeddings are added, then pre-LN encoder blocks
    x = x + MSA(LN(x)),   x = x + MLP(LN(x))      (eqs. 2-3, MLP = Linear-GELU-Linear),
a final LayerNorm, and a linear head on the class token (eq. 4). Paper 001 fine-tunes ViT-B/16.

Flax names mirror torchvision (class_token, conv_proj, encoder/{pos_embedding, encoder_layer_i/
{ln_1, self_attention/{query,key,value,out}, ln_2, mlp_0, mlp_3}, ln}, head); torchvision's packed
`in_proj_weight` is split into query/key/value on import. Patch size, width, depth, heads and MLP
width are configurable so small variants run on 32x32 / 64x64 images.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError, DataError
from jaxgen.nets.conv import Conv
from jaxgen.nets.spinal import apply_head, torch_linear_kernel_init

Dtype = Any

# torch's nn.MultiheadAttention applies xavier_uniform to the packed (3D, D) in_proj matrix:
# bound sqrt(6 / 4D). Per (D, D) block that is variance_scaling(0.5, fan_avg, uniform).
_in_proj_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


class SelfAttention(nn.Module):
  """Multi-head self-attention, softmax(Q K^T / sqrt(d_head)) V (Vaswani et al. 2017 eq. 1)."""

  num_heads: int
  attention_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    n, length, d = x.shape
    if d % self.num_heads:
      raise ConfigError("num_heads", self.num_heads, f"a divisor of hidden_dim={d}")
    hd = d // self.num_heads
    dense = lambda name, init: nn.Dense(  # noqa: E731
        d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=init,
        bias_init=nn.initializers.zeros, name=name)
    q, k, v = (dense(nm, _in_proj_init)(x).reshape(n, length, self.num_heads, hd)
               for nm in ("query", "key", "value"))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
    w = jax.nn.softmax(logits, axis=-1)
    w = nn.Dropout(self.attention_dropout, deterministic=not train)(w).astype(self.dtype)
    y = jnp.einsum("nhqk,nkhd->nqhd", w, v).reshape(n, length, d)
    return dense("out", torch_linear_kernel_init)(y)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block (Dosovitskiy et al. 2021 eqs. 2-3), LayerNorm eps 1e-6."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    d = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_1")(x)
    y = SelfAttention(self.num_heads, self.attention_dropout, dtype=self.dtype,
                      name="self_attention")(y, train=train)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln_2")(x)
    # torchvision MLPBlock: xavier_uniform weights, N(0, 1e-6) biases, exact (erf) GELU.
    mlp = lambda f, name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32,  # noqa: E731
                                   kernel_init=nn.initializers.xavier_uniform(),
                                   bias_init=nn.initializers.normal(1e-6), name=name)
    y = nn.gelu(mlp(self.mlp_dim, "mlp_0")(y), approximate=False)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(mlp(d, "mlp_3")(y))
    return x + y


class Encoder(nn.Module):
  """Position embedding + dropout + encoder blocks + final LayerNorm (torchvision `Encoder`)."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:], jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(x.dtype))
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                       dtype=self.dtype, name=f"encoder_layer_{i}")(x, train=train)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln")(x)


class VisionTransformer(nn.Module):
  """torchvision-layout ViT classifier on NHWC float32 images of size image_size.

  Attributes:
    num_classes: logits.
    image_size: input height = width (the position embedding has (image_size/patch_size)^2 + 1
      rows; use `interpolate_pos_embedding` / the importer to move a checkpoint to another size).
    patch_size, hidden_dim, num_layers, num_heads, mlp_dim: ViT-B/16 is 16, 768, 12, 12, 3072.
    dropout, attention_dropout: 0.0 in torchvision's vit_b_16.
    head: 'linear' (torchvision heads.head, zero-initialised) or 'spinal'.
    spinal_width, spinal_layers, spinal_dropout: SpinalHead options.
    dtype: compute dtype; parameters and logits are float32.
  """

  num_classes: int
  image_size: int = 224
  patch_size: int = 16
  hidden_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout: float = 0.0
  attention_dropout: float = 0.0
  head: str = "linear"
  spinal_width: int = 512
  spinal_layers: int = 4
  spinal_dropout: float = 0.5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_features: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Returns logits, or (logits, final-LN class-token features (N, hidden_dim))."""
    if self.image_size % self.patch_size:
      raise ConfigError("patch_size", self.patch_size, f"a divisor of image_size={self.image_size}")
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise DataError(f"ViT input of spatial size {tuple(x.shape[1:3])}: expected "
                      f"{self.image_size}x{self.image_size} (set image_size or resize the images)")
    n = x.shape[0]
    p = self.patch_size
    fan_in = x.shape[-1] * p * p
    x = Conv(self.hidden_dim, (p, p), strides=p, padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=nn.initializers.normal(math.sqrt(1.0 / fan_in)),
                name="conv_proj")(x.astype(self.dtype))
    x = x.reshape(n, -1, self.hidden_dim)  # row-major patches, same order as torch's flatten(2)
    cls = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, self.hidden_dim)), x], axis=1)
    x = Encoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout, self.attention_dropout,
                dtype=self.dtype, name="encoder")(x, train=train)
    features = x[:, 0]
    logits = apply_head(features, head=self.head, num_classes=self.num_classes, linear_name="head",
                        train=train, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                        bias_init=nn.initializers.zeros,
                        spinal_kw=dict(layer_width=self.spinal_width, num_layers=self.spinal_layers,
                                       dropout=self.spinal_dropout))
    return (logits, features.astype(jnp.float32)) if return_features else logits


def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of 1-D bicubic interpolation with align_corners=True.

  Keys' cubic convolution kernel with a=-0.75 and border-clamped taps, the definition used by
  torch.nn.functional.interpolate(mode='bicubic', align_corners=True).
  """
  def w_near(t):  # |t| <= 1
    return ((a + 2) * t - (a + 3)) * t * t + 1

  def w_far(t):  # 1 < |t| < 2
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

  m = np.zeros((n_out, n_in), np.float64)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for o in range(n_out):
    src = scale * o
    i0 = int(math.floor(src))
    t = src - i0
    for off, w in zip((-1, 0, 1, 2), (w_far(t + 1), w_near(t), w_near(1 - t), w_far(2 - t))):
      m[o, min(max(i0 + off, 0), n_in - 1)] += w
  return m


def interpolate_pos_embedding(pos: np.ndarray, new_grid: int) -> np.ndarray:
  """Resizes a (1, 1 + g*g, D) position embedding to (1, 1 + new_grid^2, D).

  The class-token row is kept; the g x g grid is resized with bicubic interpolation
  (align_corners=True), as torchvision's `interpolate_embeddings` does when fine-tuning ViT at a
  new resolution (Dosovitskiy et al. 2021 sec. 3.2).
  """
  pos = np.asarray(pos)
  if pos.ndim != 3 or pos.shape[0] != 1:
    raise DataError(f"position embedding of shape {pos.shape}: expected (1, 1 + g*g, D)")
  g = int(round(math.sqrt(pos.shape[1] - 1)))
  if g * g != pos.shape[1] - 1:
    raise DataError(f"position embedding with {pos.shape[1] - 1} patch rows: expected a square")
  if g == new_grid:
    return pos
  grid = pos[0, 1:].reshape(g, g, -1).astype(np.float64)
  m = _bicubic_matrix(g, new_grid)
  grid = np.einsum("ah,bw,hwd->abd", m, m, grid)
  grid = grid.reshape(new_grid * new_grid, -1).astype(pos.dtype)
  out = np.concatenate([pos[0, :1], grid], axis=0)
  return out[None]


def vit_b16(num_classes: int, **kw: Any) -> VisionTransformer:
  """ViT-B/16 (Dosovitskiy et al. 2021 Table 1; torchvision `vit_b_16`: 86,567,656 params)."""
  return VisionTransformer(num_classes=num_classes, **kw)


def vit_tiny(num_classes: int, **kw: Any) -> VisionTransformer:
  """A small preset for 32x32 data: patch 4, width 192, depth 12, 3 heads, MLP 768 (DeiT-Ti)."""
  cfg = dict(image_size=32, patch_size=4, hidden_dim=192, num_layers=12, num_heads=3, mlp_dim=768)
  cfg.update(kw)
  return VisionTransformer(num_classes=num_classes, **cfg)
