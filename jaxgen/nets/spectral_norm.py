"""Spectral normalisation (Miyato et al. 2018, "Spectral Normalization for Generative Adversarial
Networks", sec. 2.1 and Algorithm 1) as Flax modules.

A layer's weight W is reshaped to a matrix [out, -1] (BigGAN-PyTorch's `W.view(out, -1)`) and
divided by its largest singular value sigma(W), estimated by power iteration from a left
singular-vector estimate `u` [out] kept in the variable collection "spectral":

  v = normalize(W^T u),   u' = normalize(W v),   sigma = u'^T W v,   W_SN = W / sigma.

With `update_stats=True` (training: the caller passes `mutable=["spectral"]`) one power iteration
runs per call and `u'` is stored. With `update_stats=False` the stored `u` is used as is
(u' = u, sigma = u^T W v) and nothing is written. BigGAN-PyTorch's eval mode still takes the
second half-step (u' = normalize(W v)) without storing it; the two agree once u has converged,
which one power iteration per training step ensures after a few hundred steps.

u and v carry no gradient (the paper's Algorithm 1; BigGAN-PyTorch computes them under
`torch.no_grad`), so the gradient flows through W in both W and sigma. Parameters are named as in
`flax.linen.Dense` / `Conv` ('kernel', 'bias'). A flax kernel is [..., in, out], so the matrix
used is `kernel.reshape(-1, out).T`: its columns are a permutation of torch's [out, in*kh*kw]
columns, which leaves sigma and u unchanged.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes
from jax import lax

from jaxgen.nets.conv import conv_general_dilated
from jaxgen.nets.autoencoder import upsample_nearest
from jaxgen.nets.resample_conv import avg_pool_2x2, conv_avg_pool, upsample_conv

Initializer = Any

# The power-iteration products are tiny; full float32 keeps sigma exact on TPU/GPU, whose
# default matmul precision would round the operands to bfloat16/TF32.
_HIGHEST = lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps), torch's `F.normalize` (BigGAN-PyTorch's power iteration)."""
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def power_iteration(w_mat: jax.Array, u: jax.Array, update: bool, eps: float = 1e-12
                    ) -> tuple[jax.Array, jax.Array]:
  """(sigma, u') for the matrix `w_mat` [out, n] from the estimate `u` [out] (Miyato et al.
  2018 Algorithm 1, one iteration; with `update=False` only the v half-step, u' = u)."""
  w_sg = lax.stop_gradient(w_mat)
  u = lax.stop_gradient(u)
  v = l2_normalize(jnp.dot(u, w_sg, precision=_HIGHEST), eps)
  if update:
    u = l2_normalize(jnp.dot(w_sg, v, precision=_HIGHEST), eps)
  # Gradient flows through W here (the paper's eq. 12-13), not through u or v.
  sigma = jnp.dot(u, jnp.dot(w_mat, v, precision=_HIGHEST), precision=_HIGHEST)
  return sigma, u


def _init_u(module: nn.Module, out: int):
  # Random direction, as BigGAN-PyTorch's `torch.randn(1, out)`, normalised so that even the very
  # first (eval-mode) sigma is a proper Rayleigh-quotient estimate.
  return lambda: l2_normalize(jax.random.normal(module.make_rng("params"), (out,), jnp.float32))


def normalize_kernel(module: nn.Module, kernel: jax.Array, update_stats: bool, eps: float
                     ) -> jax.Array:
  """kernel / sigma(kernel.reshape(-1, out).T), with u in `module`'s "spectral" collection."""
  out = kernel.shape[-1]
  u_var = module.variable("spectral", "u", _init_u(module, out))
  w32 = kernel.astype(jnp.float32)
  sigma, u_new = power_iteration(w32.reshape(-1, out).T, u_var.value, update_stats, eps)
  if update_stats and not module.is_initializing():
    u_var.value = u_new
  return (w32 / sigma).astype(kernel.dtype)


class SNDense(nn.Module):
  """`flax.linen.Dense` with a spectrally normalised kernel (BigGAN-PyTorch `SNLinear`; without
  bias it is also its `SNEmbedding` applied to one-hot or soft label vectors)."""

  features: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros
  eps: float = 1e-12

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
    kernel = normalize_kernel(self, kernel, update_stats, self.eps)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = jnp.dot(x, kernel)
    return y + bias if bias is not None else y


class SNConv(nn.Module):
  """NHWC `flax.linen.Conv` with a spectrally normalised HWIO kernel (BigGAN-PyTorch
  `SNConv2d`), computed with `jaxgen.nets.conv.conv_general_dilated`.

  `resample='up'` upsamples the input (nearest, x2) before the convolution, `'down'` average-pools
  the output (2x2) after it; with `fused_resample=True` either runs as one cheaper convolution of
  the same function (`jaxgen.nets.resample_conv`; SAME padding, stride 1, 1x1 or 3x3 kernels).
  """

  features: int
  kernel_size: int | Sequence[int] = (3, 3)
  strides: int | Sequence[int] = (1, 1)
  padding: str | Sequence[tuple[int, int]] = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros
  eps: float = 1e-12
  resample: str | None = None  # None, 'up' (before the convolution) or 'down' (after it)
  fused_resample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, update_stats: bool = False) -> jax.Array:
    if self.resample not in (None, "up", "down"):
      raise ValueError(f"SNConv resample={self.resample!r}: expected None, 'up' or 'down'")
    ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel = self.param("kernel", self.kernel_init, (*ks, x.shape[-1], self.features),
                        self.param_dtype)
    kernel = normalize_kernel(self, kernel, update_stats, self.eps)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.resample and self.fused_resample:
      if strides != (1, 1) or self.padding != "SAME":
        raise ValueError(f"SNConv fused_resample: expected strides (1, 1) and padding 'SAME', got "
                         f"{strides} and {self.padding!r}")
      fused = upsample_conv if self.resample == "up" else conv_avg_pool
      y = fused(x, kernel)
      return y + bias if bias is not None else y
    if self.resample == "up":
      x = upsample_nearest(x)
    y = conv_general_dilated(x, kernel, strides, self.padding,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + bias if bias is not None else y
    return avg_pool_2x2(y) if self.resample == "down" else y
