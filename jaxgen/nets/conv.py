"""Convolution that sends small-output convolutions to shifted slices + one matmul on XLA:CPU.

XLA:CPU's convolution is very slow when the output has few spatial positions and many channels.
A 3x3 512->512 convolution on 2x2 maps (ResNet's last stage on 64x64 inputs) takes ~380 ms
forward at batch 32, against ~4 ms as an explicit im2col (the k*k shifted slices concatenated
along channels, then one matmul with the reshaped kernel); see `benchmarks/conv_cpu.py`. For large
outputs XLA's own convolution is as fast or faster, so only outputs with at most
`small_output_positions()` positions take the im2col path, and only on the CPU backend. Both paths
compute the same sum in a different order (float32 rounding differences only). Parameters and
their names are those of `flax.linen.Conv`, so checkpoints and weight import are unaffected.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# im2col wins at or below this many output positions (benchmarks/conv_cpu.py): with XLA's default
# (YNNPACK) convolutions on 2x2 and 4x4 maps; with the 'eigen' route of jaxgen/train/xla_cpu.py,
# whose convolutions are faster at 4x4, on 2x2 and 1x1 maps only.
SMALL_OUTPUT_POSITIONS = 16
SMALL_OUTPUT_POSITIONS_EIGEN = 4

_NHWC = ("NHWC", "HWIO", "NHWC")


def _output_size(size: int, window: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - window) // stride + 1


def uses_im2col(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                padding: str | Sequence[tuple[int, int]], *, lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                feature_group_count: int = 1, batch_group_count: int = 1,
                backend: str | None = None) -> bool:
  """Whether `conv_general_dilated` takes the im2col path for these arguments."""
  if (backend or jax.default_backend()) != "cpu":
    return False
  if len(lhs_shape) != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  expected = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), _NHWC)
  if dimension_numbers is None or lax.conv_dimension_numbers(
      tuple(lhs_shape), tuple(rhs_shape), dimension_numbers) != expected:
    return False
  pads = _pads(lhs_shape, rhs_shape, window_strides, padding)
  positions = 1
  for size, window, stride, pad in zip(lhs_shape[1:3], rhs_shape[:2], window_strides, pads):
    positions *= _output_size(size, window, stride, pad)
  return positions <= small_output_positions()


def small_output_positions() -> int:
  """The im2col threshold for this process's XLA:CPU convolution route."""
  from jaxgen.train.xla_cpu import conv_route  # pylint: disable=import-outside-toplevel
  return SMALL_OUTPUT_POSITIONS_EIGEN if conv_route() == "eigen" else SMALL_OUTPUT_POSITIONS


def _pads(lhs_shape, rhs_shape, window_strides, padding) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return [tuple(p) for p in lax.padtype_to_pads(tuple(lhs_shape[1:3]), tuple(rhs_shape[:2]),
                                                  tuple(window_strides), padding)]
  return [tuple(p) for p in padding]


def _im2col_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                 pads: Sequence[tuple[int, int]], precision: Any,
                 preferred_element_type: Any) -> jax.Array:
  kh, kw, cin, cout = rhs.shape
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  sh, sw = window_strides
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  # (kh, kw, cin) ordering of the patch channels matches rhs.reshape(kh * kw * cin, cout).
  cols = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
  return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision,
                 preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
  """Drop-in for `jax.lax.conv_general_dilated` (im2col for small NHWC outputs on CPU)."""
  if uses_im2col(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, batch_group_count=batch_group_count):
    pads = _pads(lhs.shape, rhs.shape, window_strides, padding)
    return _im2col_conv(lhs, rhs, tuple(window_strides), pads, precision, preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count,
                                  batch_group_count=batch_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)


# `flax.linen.Conv` with the convolution above; same parameters, same auto-names ('Conv_0').
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
