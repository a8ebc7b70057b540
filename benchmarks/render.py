"""Renderer throughput: objects/s for `render_multiview` (default 10,000 objects x 4 views, 64x64).

Usage: python benchmarks/render.py [--num_objects N] [--num_views V] [--image_size S] [--repeat R]
The first pass includes jit compilation (4 compiled signatures); later passes are warm.
"""

from __future__ import annotations

import argparse
import os
import time

from jaxgen.data import renderer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--num_objects", type=int, default=10_000)
  parser.add_argument("--num_views", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--background", default="random")
  parser.add_argument("--repeat", type=int, default=1)
  args = parser.parse_args()
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"cpus={os.cpu_count()} load_avg_1min={load:.2f}")
  for rep in range(args.repeat):
    start = time.perf_counter()
    out = renderer.render_multiview(
        rep, args.num_objects, num_views=args.num_views, image_size=args.image_size,
        background=args.background)
    total = time.perf_counter() - start
    kind = "cold (includes compilation)" if rep == 0 else "warm"
    print(f"pass {rep} [{kind}]: {args.num_objects} objects x {args.num_views} views at "
          f"{args.image_size}x{args.image_size}: total {total:.2f} s, "
          f"{args.num_objects / total:.1f} objects/s, "
          f"foreground fraction {out['masks'].mean():.3f}")


if __name__ == "__main__":
  main()
