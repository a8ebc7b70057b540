"""Score networks over the concatenated latents of V views, conditioned on the multi-time tau.

`ResidualMLPScoreNet` is the default: the residual MLP "U-Net" of multi-modal latent diffusion
(GroupNorm-SiLU-Dense blocks, skip connections from the down to the up path, an embedding of
the per-view times tau, a zero-initialised output so training starts from eps_hat = 0).
`ViewAttentionScoreNet` treats each view's latent as a token and mixes views by self-attention,
for many views or larger latents. Both predict eps for every coordinate: [B, V * L].
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.common import group_count
from jaxgen.nets.mixed_precision import dense_in


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Transformer-style embedding of continuous times t in [0, 1] (scaled by 1000 as in DDPM)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t[..., None].astype(jnp.float32) * freqs
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)



class MultiTimeEmbedding(nn.Module):
  """Embed tau = [t_1..t_V] (0 for observed views, paper 000 sec. II-B) into one vector."""

  dim: int = 128
  dot_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tau: jax.Array) -> jax.Array:
    dense = dense_in(self.dot_dtype)
    per_view = sinusoidal_embedding(tau, self.dim // 2)  # [B, V, dim/2]
    h = per_view.reshape((tau.shape[0], -1))
    h = nn.silu(dense(self.dim)(h))
    return dense(self.dim)(h)


class ResidualBlock(nn.Module):
  width: int
  dot_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    dense = dense_in(self.dot_dtype)
    skip = x if x.shape[-1] == self.width else dense(self.width, name="skip")(x)
    h = dense(self.width)(nn.silu(nn.GroupNorm(num_groups=group_count(x.shape[-1]))(x)))
    h = h + dense(self.width)(nn.silu(temb))
    h = dense(self.width)(nn.silu(nn.GroupNorm(num_groups=group_count(self.width))(h)))
    return skip + h


class ResidualMLPScoreNet(nn.Module):
  """eps_hat(x, tau) for x of shape [B, V * latent_dim] and tau of shape [B, V]."""

  widths: Sequence[int] = (1024, 512, 256)
  blocks_per_level: int = 1
  time_embed_dim: int = 128
  dot_dtype: Any = jnp.float32  # matmul operands of the blocks and the in/out layers

  @nn.compact
  def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
    dense = dense_in(self.dot_dtype)
    block = functools.partial(ResidualBlock, dot_dtype=self.dot_dtype)
    temb = MultiTimeEmbedding(self.time_embed_dim, dot_dtype=self.dot_dtype)(tau)
    h = dense(self.widths[0], name="in")(x)
    skips = []
    for w in self.widths:
      for _ in range(self.blocks_per_level):
        h = block(w)(h, temb)
      skips.append(h)
    h = block(self.widths[-1])(h, temb)
    for w in reversed(self.widths):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      for _ in range(self.blocks_per_level):
        h = block(w)(h, temb)
    h = nn.silu(nn.GroupNorm(num_groups=group_count(h.shape[-1]))(h))
    return dense(x.shape[-1], kernel_init=nn.initializers.zeros, name="out")(h)


class ViewAttentionScoreNet(nn.Module):
  """Tokens = views: per-view latent + its time embedding + a learned view embedding."""

  num_views: int = 4
  width: int = 256
  depth: int = 4
  num_heads: int = 4
  time_embed_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
    b = x.shape[0]
    latent = x.shape[-1] // self.num_views
    tokens = nn.Dense(self.width, name="in")(x.reshape((b, self.num_views, latent)))
    temb = sinusoidal_embedding(tau, self.time_embed_dim)  # [B, V, E]
    tokens = tokens + nn.Dense(self.width, name="time")(nn.silu(nn.Dense(self.width)(temb)))
    view_embed = self.param("view_embed", nn.initializers.normal(0.02), (self.num_views, self.width))
    h = tokens + view_embed
    for i in range(self.depth):
      y = nn.LayerNorm(name=f"ln_attn{i}")(h)
      h = h + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name=f"attn{i}")(y, y)
      y = nn.LayerNorm(name=f"ln_mlp{i}")(h)
      y = nn.Dense(4 * self.width, name=f"mlp_in{i}")(y)
      h = h + nn.Dense(self.width, name=f"mlp_out{i}")(nn.gelu(y))
    h = nn.LayerNorm(name="ln_out")(h)
    out = nn.Dense(latent, kernel_init=nn.initializers.zeros, name="out")(h)
    return out.reshape((b, self.num_views * latent))
