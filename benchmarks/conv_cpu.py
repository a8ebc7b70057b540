"""Convolution and max-pool lowerings on XLA:CPU, on ResNet-18's shapes at 64x64 input.

For each convolution shape, milliseconds of the forward pass, the input gradient and the weight
gradient (each its own jitted call) for:
  - `jax.lax.conv_general_dilated` compiled with each convolution route of
    `jaxgen/train/xla_cpu.py` ('xla': XLA's default, YNNPACK; 'eigen': XLA's own convolution),
  - jaxgen's im2col path (`jaxgen.nets.conv`, shifted slices + one matmul; compiled with the
    'eigen' route, so its matmul is YNNPACK's), which `conv_general_dilated` takes on CPU for
    outputs with at most SMALL_OUTPUT_POSITIONS positions (SMALL_OUTPUT_POSITIONS_EIGEN with the
    'eigen' route),
  - with the 'eigen' route, the dense product over the taps that touch the input (block matrix
    of input x output positions), on the 2x2 maps here for comparison; `conv_general_dilated`
    takes it instead of im2col only where that matrix is no larger than the kernel (1x1 maps
    and into them, ResNet-18's last stage at 32x32 inputs).
The 'eigen' route's stored-input weight gradient (`jaxgen.nets.conv`) saves time only where the
convolution's input comes out of a fusion (batch norm, ReLU), so it shows in
`benchmarks/classifier.py`, not in these isolated convolutions.
With `--winograd`, also Winograd F(2x2, 3x3) and F(4x4, 3x3) (`benchmarks/winograd.py`, plain JAX,
gradients by autodiff; 'eigen' route) on the 3x3 stride-1 shapes.
With `--torch` (run with `.venv-torch/bin/python`), PyTorch's own CPU convolution (eager, NCHW as
`benchmarks/classifier.py` runs it, all CPU threads) on the same shapes, its three passes timed
apart through `aten.convolution_backward`: the per-layer side of the classifier benchmark's ratio.
Then the 3x3/2 stem max-pool's forward + backward: `flax.linen.max_pool` (reduce-window) against
`jaxgen.nets.pooling.max_pool` (same values and gradient bit for bit). The threshold in
`jaxgen/nets/conv.py` and the route choice are read from this table (benchmarks/RESULTS.md).

  python benchmarks/conv_cpu.py [--batch 128]
  python benchmarks/conv_cpu.py --winograd
  PYTHONPATH=. .venv-torch/bin/python benchmarks/conv_cpu.py --torch
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import flax.linen as nn
import jax
from jax import lax

from jaxgen.nets import conv as conv_lib
from jaxgen.nets.pooling import max_pool
from jaxgen.train.xla_cpu import COMPILER_OPTIONS, step_compiler_options

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import devices  # noqa: E402
from benchmarks.winograd import winograd_conv  # noqa: E402

SHAPES = [  # (cin, cout, input hw, kernel, stride): ResNet-18 at 64x64 (stem, stages 1-4)
    (3, 64, 64, 7, 2), (64, 64, 16, 3, 1), (64, 128, 16, 3, 2), (64, 128, 16, 1, 2),
    (128, 128, 8, 3, 1), (128, 256, 8, 3, 2), (256, 256, 4, 3, 1), (256, 512, 4, 3, 2),
    (512, 512, 2, 3, 1),
]


def _ms(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats * 1e3


def _three_passes(f, x, w, options) -> tuple[float, float, float]:
  y = jax.eval_shape(f, x, w)
  g = jax.random.normal(jax.random.key(2), y.shape, y.dtype)
  fwd = jax.jit(f, compiler_options=options)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0], compiler_options=options)
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0], compiler_options=options)
  return _ms(fwd, x, w), _ms(dx, x, w, g), _ms(dw, x, w, g)


def _torch_three_passes(batch: int, cin: int, cout: int, hw: int, k: int, s: int
                        ) -> tuple[float, float, float]:
  """PyTorch eager: ms of conv2d forward, its input gradient and its weight gradient."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count() or 1)
  x = torch.randn(batch, cin, hw, hw)
  w = torch.randn(cout, cin, k, k) * 0.1
  pad = k // 2
  with torch.no_grad():
    g = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=s, padding=pad))

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(
        g, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, mask)

  passes = (lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=pad),
            backward([True, False, False]), backward([False, True, False]))
  times = []
  with torch.no_grad():
    for fn in passes:
      fn()
      start = time.perf_counter()
      for _ in range(3):
        fn()
      times.append((time.perf_counter() - start) / 3 * 1e3)
  return times[0], times[1], times[2]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--torch", action="store_true",
                      help="add PyTorch's eager convolution (needs torch: .venv-torch)")
  parser.add_argument("--winograd", action="store_true",
                      help="add Winograd F(2x2, 3x3) and F(4x4, 3x3) on the 3x3 stride-1 shapes")
  args = parser.parse_args()
  print(f"device: {devices.jax_line()}, batch {args.batch}, "
        f"float32; ms of forward / input gradient / weight gradient; im2col is taken at <= "
        f"{conv_lib.SMALL_OUTPUT_POSITIONS} output positions (route xla), <= "
        f"{conv_lib.SMALL_OUTPUT_POSITIONS_EIGEN} (route eigen)")
  contenders = [(f"lax[{route}]", route, False) for route in COMPILER_OPTIONS]
  contenders.append(("im2col[eigen]", "eigen", "im2col"))
  contenders.append(("dense[eigen]", "eigen", "dense"))
  if args.winograd:
    contenders += [(f"winograd F({m},3)[eigen]", "eigen", f"winograd{m}") for m in (2, 4)]
  for cin, cout, hw, k, s in SHAPES:
    x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
    pads, strides = ((k // 2, (k - 1) // 2),) * 2, (s, s)
    lax_conv = lambda x, w: lax.conv_general_dilated(x, w, strides, pads,
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    paths = {
        False: lax_conv,
        "im2col": lambda x, w: conv_lib._im2col_conv(x, w, strides, pads, None, None),  # pylint: disable=protected-access
        "dense": lambda x, w: conv_lib._dense_small_map_conv(x, w, strides, pads, None, None),  # pylint: disable=protected-access
        "winograd2": functools.partial(winograd_conv, m=2),
        "winograd4": functools.partial(winograd_conv, m=4),
    }
    out = (hw + 2 * (k // 2) - k) // s + 1
    cells = []
    for name, route, path in contenders:
      if path == "dense" and hw * hw >= k * k:  # no fewer products than im2col
        continue
      if str(path).startswith("winograd") and (k, s) != (3, 1):
        continue
      t = _three_passes(paths[path], x, w, step_compiler_options(route))
      cells.append(f"{name} {t[0]:6.1f}/{t[1]:6.1f}/{t[2]:6.1f} (sum {sum(t):6.1f})")
    if args.torch:
      t = _torch_three_passes(args.batch, cin, cout, hw, k, s)
      cells.append(f"torch {t[0]:6.1f}/{t[1]:6.1f}/{t[2]:6.1f} (sum {sum(t):6.1f})")
    print(f"{cin:>3}->{cout:<3} {hw:>2}x{hw:<2} k{k} s{s} (out {out}x{out}): " + " | ".join(cells),
          flush=True)
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 64)))
  pad = ((1, 1), (1, 1))
  pools = {"flax.linen.max_pool": lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad),
           "jaxgen max_pool": lambda x: max_pool(x, (3, 3), (2, 2), pad)}
  g = jax.random.normal(jax.random.key(1), (args.batch, 16, 16, 64))
  for route in COMPILER_OPTIONS:
    cells = []
    for name, f in pools.items():
      both = jax.jit(lambda x, f=f: jax.vjp(f, x)[1](g)[0], compiler_options=step_compiler_options(route))
      cells.append(f"{name} {_ms(both, x):6.1f}")
    print(f"max-pool 3x3/2 on 32x32x64, forward+backward ms, route {route}: " + " | ".join(cells))


if __name__ == "__main__":
  main()
