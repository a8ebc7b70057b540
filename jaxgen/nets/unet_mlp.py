"""`UnetMLP`: the score network of the MLD authors (Bounoua et al., multi-modal latent diffusion;
github.com/MustaphaBounoua/MLD, src/components/mlp_unet.py), re-implemented in Flax.

eps_hat(x, tau) for flat latents x [B, V * L] and the multi-time tau [B, V] (per-view time in
[0, 1], 0 for observed views); the output has the shape of x. The elements, and where each
differs from `ResidualMLPScoreNet` (jaxgen/nets/score_nets.py):
- time embedding: tau enters RAW, Dense(V -> time_dim) - GELU (exact erf, PyTorch's nn.GELU) -
  Dense(time_dim -> time_dim). Ours embeds each t sinusoidally and uses SiLU.
- levels: Dense(D -> init_dim), then one level per entry of `dim_mults` with widths
  d_0 = init_dim, d_{i+1} = init_dim * dim_mults[i]: a residual block at width d_i, then a Dense
  d_i -> d_{i+1}. The paper's (1, 1) keeps a constant width. Ours changes width inside blocks.
- residual block: GroupNorm-SiLU-Dense, + Dense(SiLU(temb)) (additive; FiLM scale/shift with
  `shift_scale`), GroupNorm-SiLU-Dense, + x (Dense(x) when the width changes). The same layout as
  ours, but with a fixed number of groups (must divide every width; 32 in all paper configs) and
  PyTorch's GroupNorm eps 1e-5 (flax: 1e-6).
- middle: two residual blocks (ours: one).
- up path: concat [h, block output of the same down level], residual block to d_{i+1}, Dense
  d_{i+1} -> d_i.
- global skip: concat [h, input projection Dense(D -> init_dim)(x)] into a final residual block
  2 * init_dim -> init_dim. Ours has none.
- output: GroupNorm-SiLU-Dense(init_dim -> D), kernel and bias zero at init (eps_hat = 0).
- init: every other Dense uses PyTorch nn.Linear's default, U(+-1/sqrt(fan_in)) for kernel and
  bias, as the authors trained with it (ours: flax lecun_normal kernels, zero biases).

Output scaling. The authors' forward(x, time, sigma, weighted=True) returns final_lin(h) / sigma
and, with weighted=False, the raw final_lin(h) (mlp_unet.py, forward, l. 297 and 359-368). Their
training (mm_sde.py l. 88-112) perturbs x_t = mean * x_0 + std * z, calls the net with
weighted=False and minimises |raw + z|^2, so raw regresses onto -z = -eps; their samplers
(mm_sde.py l. 135, 169, 235) call it with weighted=True and use raw / std as the score. jaxgen
predicts eps and forms score = -eps / sigma (jaxgen.sde.eps_to_score_fn), so the map is
  eps_hat = -raw,   score = raw / sigma = -eps_hat / sigma:
their division by sigma is exactly eps_to_score_fn, and the sign is absorbed by the last layer
(linear, zero-initialised), so this is the same function class at the same init and there is no
`weighted` option here.

Not ported: `use_attention` (their MultiheadAttention over a flat vector attends to a single token,
softmax = 1, so it reduces to a residual Linear(GroupNorm(x)); False in every released config),
the unused `out_dim`, the `get_bottelneck` output, and `.squeeze()` of the time embedding (which
only drops the batch axis when B = 1).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nets.mixed_precision import dense_in


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch nn.Linear's default for both weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _dense_in(features: int, fan_in: int, name: str, dot_dtype: Any = jnp.float32) -> nn.Module:
  init = torch_linear_init(fan_in)
  return dense_in(dot_dtype)(features, kernel_init=init, bias_init=init, name=name)


def _norm(groups: int, name: str) -> nn.GroupNorm:
  # PyTorch's eps; two-pass variance like PyTorch (no E[x^2] - E[x]^2 cancellation).
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False, name=name)


class MLDResnetBlock(nn.Module):
  """Dense(SiLU(GN(x))) + time term -> Dense(SiLU(GN(.))) -> + x (or Dense(x) if widths differ)."""

  width: int
  groups: int = 32
  shift_scale: bool = False
  dot_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    t_out = 2 * self.width if self.shift_scale else self.width
    _dense = functools.partial(_dense_in, dot_dtype=self.dot_dtype)
    t = _dense(t_out, temb.shape[-1], "time")(nn.silu(temb))
    h = _dense(self.width, fan_in, "dense1")(nn.silu(_norm(self.groups, "norm1")(x)))
    if self.shift_scale:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = h * (scale + 1.0) + shift
    else:
      h = h + t  # the time enters once per block, after the first Dense
    h = _dense(self.width, self.width, "dense2")(nn.silu(_norm(self.groups, "norm2")(h)))
    skip = x if fan_in == self.width else _dense(self.width, fan_in, "skip")(x)
    return h + skip


class UnetMLP(nn.Module):
  """eps_hat(x, tau) for x [B, V * L] and tau [B, V]; the defaults are the paper's (~70.4M params
  at V = 4, L = 64)."""

  init_dim: int = 1536
  dim_mults: Sequence[int] = (1, 1)
  time_dim: int = 512
  groups: int = 32
  shift_scale: bool = False  # FiLM instead of additive time (the authors' option; off in papers)
  dot_dtype: Any = jnp.float32  # matmul operands (jaxgen.nets.mixed_precision); float32 accumulation

  def level_widths(self) -> list[int]:
    return [self.init_dim] + [self.init_dim * m for m in self.dim_mults]

  @nn.compact
  def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
    flat_dim = x.shape[-1]
    _dense = functools.partial(_dense_in, dot_dtype=self.dot_dtype)
    # Raw times: tau is already in [0, 1] and the net must see exactly which views are observed.
    temb = _dense(self.time_dim, tau.shape[-1], "time_in")(tau.astype(x.dtype))
    temb = _dense(self.time_dim, self.time_dim, "time_out")(nn.gelu(temb, approximate=False))
    block = functools.partial(MLDResnetBlock, groups=self.groups, shift_scale=self.shift_scale,
                              dot_dtype=self.dot_dtype)
    dims = self.level_widths()
    levels = list(enumerate(zip(dims[:-1], dims[1:])))

    h = _dense(self.init_dim, flat_dim, "init")(x)
    projected = h  # kept for the global skip into the final block
    skips = []
    for i, (d_in, d_out) in levels:
      h = block(d_in, name=f"down{i}")(h, temb)
      skips.append(h)
      h = _dense(d_out, d_in, f"downsample{i}")(h)
    h = block(dims[-1], name="mid1")(h, temb)
    h = block(dims[-1], name="mid2")(h, temb)
    for i, (d_in, d_out) in reversed(levels):
      h = block(d_out, name=f"up{i}")(jnp.concatenate([h, skips.pop()], axis=-1), temb)
      h = _dense(d_in, d_out, f"upsample{i}")(h)
    h = block(self.init_dim, name="final")(jnp.concatenate([h, projected], axis=-1), temb)

    h = nn.silu(_norm(self.groups, "out_norm")(h))
    # Zero kernel and bias: eps_hat = 0 at init, as the authors' zero-filled proj.
    zeros = nn.initializers.zeros
    return dense_in(self.dot_dtype)(flat_dim, kernel_init=zeros, bias_init=zeros, name="out")(h)
