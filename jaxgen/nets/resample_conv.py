"""A convolution fused with the x2 resampling around it: the same function, fewer products.

BigGAN's residual blocks upsample (nearest, x2) right before a 3x3 convolution in G and average-pool
(2x2) right after one in D. Written as they read, G convolves a map four times larger than the
information in it, and D computes four outputs for every one it keeps; on XLA:CPU the backward
pass of each also runs the convolution fused with a reduction (the upsample's transpose, the
pool), which takes it off the fast convolution path. Both compositions are linear in the input,
so each equals one cheaper convolution whose kernel is a fixed linear map of the 3x3 kernel:

- `upsample_conv`: output pixel (2i + a, 2j + b) of conv3x3(upsample(x)) reads low-resolution
  rows {i - 1, i} (a = 0) or {i, i + 1} (a = 1), the 3x3 kernel's rows summed onto them as
  (w0, w1 + w2) or (w0 + w1, w2); likewise for columns. So the output is four 2x2 convolutions of
  x, one per phase (a, b), interleaved: 16 products per low-resolution pixel against 36.
- `conv_avg_pool`: avgpool2x2(conv3x3(x)) is one 4x4 convolution with stride 2 whose kernel is
  the 3x3 kernel summed over the pool's four shifts, / 4: 16 products per output against 36. It
  runs as a 2x2 convolution over 2x2 blocks of the input (space to depth), whose gradients are
  plain convolutions too.
- 1x1 kernels commute with either resampling: upsample(conv1x1(x)), conv1x1(avgpool(x)).

The sums run in another order than the plain composition's, so results agree to float rounding
(tests/test_resample_conv.py), not bit for bit. SAME padding (zeros) only, as BigGAN's blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.nets.autoencoder import upsample_nearest
from jaxgen.nets.conv import conv_general_dilated

_NHWC = ("NHWC", "HWIO", "NHWC")


def avg_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 of NHWC maps (torch's F.avg_pool2d(x, 2)).

  The sum of the window's four strided slices, not a reduce-window: XLA:CPU's YNNPACK reduction
  fusions take a reduce-window in together with the convolutions around it, and YNNPACK's
  convolutions are the slow ones (D's first block at width 64: ~0.5 s of an ~8 s step in one
  such fusion; benchmarks/RESULTS.md)."""
  if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(f"expected NHWC maps of even height and width, got shape {x.shape}")
  # Pairwise: inside the GAN step the reduce-window it replaces summed in this order (G, D and
  # EMA parameters after 3 steps bit-identical on the default route, with and without fusing).
  total = (x[:, 0::2, 0::2] + x[:, 0::2, 1::2]) + (x[:, 1::2, 0::2] + x[:, 1::2, 1::2])
  return total * 0.25


def _check(x: jax.Array, kernel: jax.Array) -> int:
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"expected NHWC x and an HWIO kernel with in = {x.shape[-1]}, got x "
                     f"{x.shape} and kernel {kernel.shape}")
  size = kernel.shape[0]
  if kernel.shape[1] != size or size not in (1, 3):
    raise ValueError(f"fused resampling takes 1x1 or 3x3 kernels, got {kernel.shape[:2]}")
  return size


def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding) -> jax.Array:
  return conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


def _phase_rows(k: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """Along `axis` of a 3-tap kernel: the 2-tap kernels of output phases 0 and 1, (w0, w1 + w2)
  and (w0 + w1, w2) (plain sums: a matmul here would round on accelerators' default precision)."""
  w0, w1, w2 = (jnp.take(k, i, axis=axis) for i in range(3))
  return jnp.stack([w0, w1 + w2], axis=axis), jnp.stack([w0 + w1, w2], axis=axis)


def phase_kernels(kernel: jax.Array) -> list[list[jax.Array]]:
  """k[a][b]: the 2x2 HWIO kernel of output phase (a, b) of conv3x3(upsample(x)) on x."""
  k = kernel.astype(jnp.float32)
  return [[kc.astype(kernel.dtype) for kc in _phase_rows(ka, 1)] for ka in _phase_rows(k, 0)]


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv(upsample_nearest(x), kernel) with SAME padding, for 1x1 and 3x3 HWIO kernels."""
  if _check(x, kernel) == 1:
    return upsample_nearest(_conv(x, kernel, (1, 1), "VALID"))
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = phase_kernels(kernel)
  rows = []
  for a in (0, 1):
    # Phase a reads padded rows a .. a + h (low-resolution rows i - 1 + a, i + a).
    cols = [_conv(xp[:, a:a + h + 1, c:c + w + 1], k[a][c], (1, 1), "VALID") for c in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))  # [B, h, w, 2 (b), out]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, -1)  # [B, h, 2 (a), w, 2 (b), out]


def pooled_kernel(kernel: jax.Array) -> jax.Array:
  """The 4x4 stride-2 kernel of avg_pool_2x2(conv3x3(x)): the 3x3 kernel at the pool's four
  shifts, summed, / 4."""
  k = kernel.astype(jnp.float32)
  shifted = [jnp.pad(k, ((a, 1 - a), (c, 1 - c), (0, 0), (0, 0))) for a in (0, 1) for c in (0, 1)]
  return (sum(shifted) / 4.0).astype(kernel.dtype)


def conv_avg_pool(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """avg_pool_2x2(conv(x, kernel)) with SAME padding, for 1x1 and 3x3 HWIO kernels and maps with
  even sides."""
  size = _check(x, kernel)
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"fused conv + 2x2 average pool needs even map sides, got {h}x{w}")
  if size == 1:
    return _conv(avg_pool_2x2(x), kernel, (1, 1), "VALID")
  # The stride-2 4x4 convolution as a 2x2 one over 2x2 blocks of the padded input (space to
  # depth): XLA:CPU runs a strided convolution's input gradient on a zero-dilated map, 1.4x the
  # whole fused forward + backward of this form (benchmarks: D's first block at batch 128).
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h2, w2 = h // 2 + 1, w // 2 + 1
  blocks = xp.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h2, w2, 4 * c)
  k = pooled_kernel(kernel)  # [4 = 2 blocks x 2 rows, 4, in, out]
  k = k.reshape(2, 2, 2, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, -1)
  return _conv(blocks, k, (1, 1), "VALID")
