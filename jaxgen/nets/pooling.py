"""Max pooling as a maximum over shifted strided slices, with the gradient of `flax.linen.max_pool`.

XLA:CPU differentiates `lax.reduce_window` max through a variadic reduce-window that carries an
index per window dimension (four int32 arrays the size of the padded input): for ResNet's 3x3/2
stem pool on 64x64 images at batch 128 that is 150-190 ms forward + backward on 2 cores (of a
~1 s training step), against 33-35 ms for the form below (`benchmarks/conv_cpu.py`, last lines;
benchmarks/RESULTS.md). The forward pass is the
elementwise maximum of the kh*kw window slices; the backward pass sends each output's gradient to
the first maximal input of its window in row-major window order, which is exactly the element
XLA's select-and-scatter picks for `reduce_window` max (tested against `jax.grad` of
`flax.linen.max_pool`, ties included: after a ReLU many windows tie at zero).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def _window_slices(x_pad: jax.Array, window: tuple[int, int], strides: tuple[int, int],
                   out_hw: tuple[int, int]) -> list[jax.Array]:
  (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
  return [x_pad[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
          for i in range(kh) for j in range(kw)]


def _geometry(shape: Sequence[int], window, strides, padding):
  pads = tuple(tuple(p) for p in padding)
  hp = shape[1] + pads[0][0] + pads[0][1]
  wp = shape[2] + pads[1][0] + pads[1][1]
  out_hw = ((hp - window[0]) // strides[0] + 1, (wp - window[1]) // strides[1] + 1)
  return pads, (hp, wp), out_hw


def _pad_neg_inf(x: jax.Array, pads) -> jax.Array:
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  pads, _, out_hw = _geometry(x.shape, window, strides, padding)
  slices = _window_slices(_pad_neg_inf(x, pads), window, strides, out_hw)
  out = slices[0]
  for s in slices[1:]:
    out = jnp.maximum(out, s)
  return out


def _max_pool_fwd(x, window, strides, padding):
  out = _max_pool(x, window, strides, padding)
  return out, (x, out)


def _max_pool_bwd(window, strides, padding, residuals, g):
  x, out = residuals
  pads, (hp, wp), out_hw = _geometry(x.shape, window, strides, padding)
  slices = _window_slices(_pad_neg_inf(x, pads), window, strides, out_hw)
  kw, (sh, sw), (ho, wo) = window[1], strides, out_hw
  taken = jnp.zeros(out.shape, bool)
  chosen = []
  for s in slices:
    chosen.append((s == out) & ~taken)  # the first maximum of each window, in window order
    taken = taken | chosen[-1]
  # An input in several windows sums their gradients in the order XLA's scatter does (windows in
  # row-major output order, i.e. window offsets descending), so the sum is bit for bit flax's.
  dx_pad = jnp.zeros((x.shape[0], hp, wp, x.shape[3]), g.dtype)
  for k in reversed(range(len(slices))):
    i, j = divmod(k, kw)
    # The transpose of the strided slice: interior padding puts each value back at its position.
    dx_pad = dx_pad + lax.pad(jnp.where(chosen[k], g, jnp.zeros_like(g)), jnp.zeros((), g.dtype),
                              ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
                               (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
  dx = dx_pad[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2], :]
  return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> jax.Array:
  """`flax.linen.max_pool(x, window, strides, padding)` for NHWC `x` with explicit pad pairs.

  Same values and, through the custom gradient, the same gradient as flax's reduce-window form.
  """
  if x.ndim != 4:
    raise ValueError(f"max_pool takes NHWC images, got shape {x.shape}")
  return _max_pool(x, tuple(window), tuple(strides), tuple(tuple(p) for p in padding))
