"""Convolution that sends small-output convolutions to shifted slices + one matmul on XLA:CPU.

XLA:CPU's convolution is very slow when the output has few spatial positions and many channels.
A 3x3 512->512 convolution on 2x2 maps (ResNet's last stage on 64x64 inputs) takes ~380 ms
forward at batch 32, against ~4 ms as an explicit im2col (the k*k shifted slices concatenated
along channels, then one matmul with the reshaped kernel); see `benchmarks/conv_cpu.py`. For large
outputs XLA's own convolution is as fast or faster, so only outputs with at most
`small_output_positions()` positions take the im2col path, and only on the CPU backend. Both paths
compute the same sum in a different order (float32 rounding differences only). Parameters and
their names are those of `flax.linen.Conv`, so checkpoints and weight import are unaffected.

With the opt-in 'eigen' route of `jaxgen/train/xla_cpu.py` (which already gives up bit-for-bit
equality with the default route), two more CPU-only changes apply, both measured in
`benchmarks/classifier.py`:
- Convolutions on maps so small that the block matrix of (input position, output position) taps is
  no larger than the kernel (3x3 on 1x1 maps, and from 2x2 into 1x1: ResNet's last stage at 32x32
  inputs) are one dense product over the taps that touch the input, instead of im2col's, most of
  whose patch entries are padding zeros (9x fewer products on 1x1 maps, 2.25x into them).
- Convolutions that stay on XLA's path get a gradient that stores their input before the weight
  gradient (see `_conv_stored_input`): same operations, same values.
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


def _is_plain_nhwc(lhs_shape, rhs_shape, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count) -> bool:
  """An undilated, ungrouped 2-D convolution in NHWC / HWIO layout."""
  if len(lhs_shape) != 4 or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  expected = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), _NHWC)
  return dimension_numbers is not None and lax.conv_dimension_numbers(
      tuple(lhs_shape), tuple(rhs_shape), dimension_numbers) == expected


def uses_im2col(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                padding: str | Sequence[tuple[int, int]], *, lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                feature_group_count: int = 1, batch_group_count: int = 1,
                backend: str | None = None) -> bool:
  """Whether `conv_general_dilated` takes the im2col path for these arguments."""
  if (backend or jax.default_backend()) != "cpu":
    return False
  if not _is_plain_nhwc(lhs_shape, rhs_shape, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count):
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


def _dense_is_smaller(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                      window_strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> bool:
  """Whether the dense form's block matrix (input x output positions) is no larger than the
  kernel (its taps): true on 1x1 maps and into them (1 and 4 blocks against 9 taps for 3x3), false
  on 2x2 -> 2x2, where its 16 blocks made the product slower than im2col's
  (benchmarks/conv_cpu.py)."""
  blocks = lhs_shape[1] * lhs_shape[2]
  for size, window, stride, pad in zip(lhs_shape[1:3], rhs_shape[:2], window_strides, pads):
    blocks *= _output_size(size, window, stride, pad)
  return blocks <= rhs_shape[0] * rhs_shape[1]


def _dense_small_map_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                          pads: Sequence[tuple[int, int]], precision: Any,
                          preferred_element_type: Any) -> jax.Array:
  """The convolution as one product of the flattened input with a block matrix of kernel taps.

  Block (input position, output position) of the matrix is the tap that connects them, or zero;
  only taps that touch the input are used, so no product with a padding zero is computed.
  """
  kh, kw, cin, cout = rhs.shape
  batch, hi, wi, _ = lhs.shape
  (sh, sw), (pad_h, pad_w) = window_strides, pads
  ho = _output_size(hi, kh, sh, pad_h)
  wo = _output_size(wi, kw, sw, pad_w)
  # Block (input position, output position): the tap connecting them (static, from the shapes).
  taps = rhs.reshape(kh * kw, cin, cout)
  zero = jnp.zeros((cin, cout), rhs.dtype)
  rows = []
  for a in range(hi):
    for b in range(wi):
      row = []
      for p in range(ho):
        for q in range(wo):
          i, j = a - p * sh + pad_h[0], b - q * sw + pad_w[0]
          row.append(taps[i * kw + j] if 0 <= i < kh and 0 <= j < kw else zero)
      rows.append(jnp.concatenate(row, axis=1) if len(row) > 1 else row[0])
  blocks = jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
  out = jnp.dot(lhs.reshape(batch, hi * wi * cin), blocks.reshape(hi * wi * cin, ho * wo * cout),
                precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(batch, ho, wo, cout)


def _stored(x: jax.Array) -> jax.Array:
  """x, as a value that XLA:CPU computes into memory instead of recomputing in its consumers.

  XLA:CPU fuses the elementwise producers of a weight gradient's input (batch norm, ReLU, the
  residual sum) into the transpose that its convolution canonicalisation inserts, and the
  recomputation in transposed order ran 3-10x slower than transposing the stored input (a ResNet-18
  step at 64x64: ~165 ms of such fusions, ~45 ms stored). Optimisation barriers do not survive to
  XLA:CPU's fusion pass; a conditional does. Its predicate, (bits of x[0] | 1) != 0, is always
  true, so the other branch is never taken; if XLA ever folds it, only the speed-up is lost.
  """
  bits = lax.bitcast_convert_type(x.ravel()[0], jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  return lax.cond((bits | 1) != 0, lambda v: v, jnp.zeros_like, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stored_input(lhs: jax.Array, rhs: jax.Array, spec: tuple) -> jax.Array:
  """`lax.conv_general_dilated(lhs, rhs, *spec)` whose gradient reads a stored `lhs` (`_stored`)."""
  return _lax_conv(lhs, rhs, spec)


def _lax_conv(lhs: jax.Array, rhs: jax.Array, spec: tuple) -> jax.Array:
  strides, pads, dimension_numbers, precision, preferred_element_type = spec
  return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=dimension_numbers,
                                  precision=precision,
                                  preferred_element_type=preferred_element_type)


def _conv_stored_input_fwd(lhs, rhs, spec):
  return _lax_conv(lhs, rhs, spec), (lhs, rhs)


def _conv_stored_input_bwd(spec, residuals, cotangent):
  lhs, rhs = residuals
  _, vjp = jax.vjp(lambda x, w: _lax_conv(x, w, spec), _stored(lhs), rhs)
  return vjp(cotangent)


_conv_stored_input.defvjp(_conv_stored_input_fwd, _conv_stored_input_bwd)


def _eigen_route() -> bool:
  from jaxgen.train.xla_cpu import conv_route  # pylint: disable=import-outside-toplevel
  return jax.default_backend() == "cpu" and conv_route() == "eigen"


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
    if _eigen_route() and _dense_is_smaller(lhs.shape, rhs.shape, window_strides, pads):
      return _dense_small_map_conv(lhs, rhs, tuple(window_strides), pads, precision,
                                   preferred_element_type)
    return _im2col_conv(lhs, rhs, tuple(window_strides), pads, precision, preferred_element_type)
  if _eigen_route() and _is_plain_nhwc(lhs.shape, rhs.shape, lhs_dilation, rhs_dilation,
                                       dimension_numbers, feature_group_count, batch_group_count):
    pads = tuple(tuple(p) for p in _pads(lhs.shape, rhs.shape, window_strides, padding))
    spec = (tuple(window_strides), pads, lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, dimension_numbers), precision, preferred_element_type)
    return _conv_stored_input(lhs, rhs, spec)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count,
                                  batch_group_count=batch_group_count, precision=precision,
                                  preferred_element_type=preferred_element_type)


# `flax.linen.Conv` with the convolution above; same parameters, same auto-names ('Conv_0').
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
