"""FID of 10k vs 10k images at 64x64 with the in-domain feature network, timed.

The in-domain network is the ResNet-18 of MVLD's default judge (width 16, torchvision stem) as
`jaxgen.classifier` builds it (`--width 64 --small_input` for the full-width small-stem one); its weights
here are a seeded random init, because the benchmark measures time, not a score (the MVLD
evaluate stage uses the trained one). Images are rendered by the embedded renderer (two disjoint
sets of objects). Feature extraction streams in batches and the statistics accumulate with
`jaxgen.metrics.frechet.update_stats`, so the 10k images never pass through the network at once.

  python benchmarks/metrics.py [--num 10000] [--size 64] [--batch 500] [--width 16] [--small_input]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from jaxgen.data.renderer import render_multiview
from jaxgen.metrics.frechet import fid_from_stats, init_stats, update_stats
from jaxgen.nets.classifiers import build_classifier


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=10_000)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=500)
  parser.add_argument("--width", type=int, default=16, help="ResNet-18 width (64 = standard)")
  parser.add_argument("--small_input", action="store_true", help="3x3 stride-1 stem, no max-pool")
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")

  t0 = time.perf_counter()
  objects = (args.num + 3) // 4
  a = render_multiview(0, objects, image_size=args.size)["images"].reshape(-1, args.size, args.size, 3)[:args.num]
  b = render_multiview(0, objects, image_size=args.size, first_object=objects)["images"].reshape(
      -1, args.size, args.size, 3)[:args.num]
  print(f"rendered 2 x {args.num} images at {args.size}x{args.size} in {time.perf_counter() - t0:.1f}s")

  model = build_classifier("resnet18", 12, small_input=args.small_input, width=args.width)
  variables = model.init(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))

  @jax.jit
  def features(images):
    x = images.astype(jnp.float32) / 127.5 - 1.0
    return model.apply(variables, x, train=False, return_features=True)[1]

  def stats_of(images):
    stats = None
    for i in range(0, len(images), args.batch):
      f = features(images[i:i + args.batch])
      stats = update_stats(stats if stats is not None else init_stats(f.shape[-1]), f)
    return stats

  stats_of(a[:args.batch])  # compile
  t0 = time.perf_counter()
  sa, sb = stats_of(a), stats_of(b)
  value = float(fid_from_stats(sa, sb))
  elapsed = time.perf_counter() - t0
  stem = "small" if args.small_input else "torchvision"
  print(f"FID (random-init in-domain ResNet-18 width {args.width}, {stem} stem, {args.num} vs {args.num}): "
        f"{value:.3f}")
  print(f"time: {elapsed:.1f}s for {2 * args.num} images = {2 * args.num / elapsed:.0f} images/s "
        "(features + streaming statistics + Frechet distance)")


if __name__ == "__main__":
  main()
