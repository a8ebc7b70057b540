"""XLA's convolution vs jaxgen's im2col path (`jaxgen.nets.conv`) on ResNet-like shapes, CPU.

For each shape: forward and forward+backward milliseconds of `jax.lax.conv_general_dilated` and of
`jaxgen.nets.conv._im2col_conv` (the path `conv_general_dilated` takes on CPU for outputs with at
most SMALL_OUTPUT_POSITIONS positions), and the ratio lax / im2col (> 1: im2col faster). The
threshold in `jaxgen/nets/conv.py` is chosen from this table.

  python benchmarks/conv_cpu.py [--batch 32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxgen.nets import conv as conv_lib

SHAPES = [  # (cin, cout, input hw, kernel, stride)
    (16, 16, 32, 3, 1), (64, 64, 16, 3, 1), (128, 128, 8, 3, 1), (256, 256, 4, 3, 1),
    (512, 512, 2, 3, 1), (512, 512, 1, 3, 1), (256, 512, 4, 3, 2), (256, 512, 2, 3, 2),
    (3, 64, 64, 7, 2),
]


def _ms(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), batch {args.batch}, "
        f"float32; im2col used at <= {conv_lib.SMALL_OUTPUT_POSITIONS} output positions")
  for cin, cout, hw, k, s in SHAPES:
    x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
    pads, strides = ((k // 2, (k - 1) // 2),) * 2, (s, s)
    ref = lambda x, w: lax.conv_general_dilated(x, w, strides, pads,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, w: conv_lib._im2col_conv(x, w, strides, pads, None, None)  # pylint: disable=protected-access
    row = []
    for name, f in (("lax", ref), ("im2col", ours)):
      fwd = jax.jit(f)
      grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
      row.append((_ms(fwd, x, w), _ms(grad, x, w)))
    out = (hw + 2 * (k // 2) - k) // s + 1
    print(f"{cin:>3}->{cout:<3} {hw:>2}x{hw:<2} k{k} s{s} (out {out}x{out}): "
          f"fwd lax {row[0][0]:7.2f} ms im2col {row[1][0]:7.2f} ms ratio {row[0][0] / row[1][0]:6.2f} | "
          f"fwd+bwd lax {row[0][1]:7.2f} ms im2col {row[1][1]:7.2f} ms ratio {row[0][1] / row[1][1]:6.2f}")


if __name__ == "__main__":
  main()
