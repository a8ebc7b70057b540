"""MVLD sampling quality and speed with bfloat16 score-network matmuls against float32.

For each trained MVLD workdir given (e.g. the three seeds behind docs/results_mvld.md), loads the
autoencoder and score network (`jaxgen.mvld.api.MVLD.from_workdir`), and generates the three
missing views of the first --objects test objects from view 0 with the run's own sampler
(Euler-Maruyama, 200 steps by default), once with `diffusion.score_net.compute_dtype='float32'`
and once with 'bfloat16', from the same PRNG key. Prints per workdir and as mean +- std over
workdirs: PSNR and SSIM (data_range 255) of the generated views against the true views for each
dtype, the PSNR between the two dtypes' samples, and the seconds of each generation call after
a compiling first call. The same test objects, key and sampler for both dtypes, so the difference
is the matmul precision alone (and the chaotic amplification of it along the sampling path).

  python benchmarks/mvld_compute_dtype.py workdirs/mvld-claims/seed0 workdirs/mvld-claims/seed1 ...
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

from jaxgen.metrics.image import psnr, ssim  # noqa: E402
from jaxgen.mvld.api import MVLD  # noqa: E402


def _test_views(workdir: str, n: int) -> np.ndarray:
  (path,) = glob.glob(os.path.join(workdir, "data", "*.npz"))
  with np.load(path) as f:
    return np.asarray(f["test/images"][:n])


def _generate(workdir: str, dtype: str, images: np.ndarray, key: jax.Array) -> tuple[np.ndarray, float]:
  model = MVLD.from_workdir(workdir)
  model.config.diffusion.score_net.compute_dtype = dtype
  model = MVLD(model.config, model.ae_params, model.score_params, model.stats)
  mask = np.zeros(images.shape[:2], bool)
  mask[:, 0] = True
  observed = np.where(mask[:, :, None, None, None], images, 0).astype(np.uint8)
  model.generate(observed, mask, key)  # compile
  start = time.perf_counter()
  out = model.generate(observed, mask, key)
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--objects", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rows = []
  for workdir in args.workdirs:
    images = _test_views(workdir, args.objects)
    key = jax.random.key(args.seed)
    out = {d: _generate(workdir, d, images, key) for d in ("float32", "bfloat16")}
    true = images[:, 1:].reshape((-1,) + images.shape[2:])
    row = {}
    for d, (gen, seconds) in out.items():
      fake = gen[:, 1:].reshape(true.shape)
      row[f"psnr_{d}"] = float(np.mean(psnr(fake, true, data_range=255.0)))
      row[f"ssim_{d}"] = float(np.mean(ssim(fake, true, data_range=255.0)))
      row[f"seconds_{d}"] = seconds
    a, b = (out[d][0][:, 1:].reshape(true.shape) for d in ("float32", "bfloat16"))
    row["psnr_between"] = float(np.mean(psnr(a, b, data_range=255.0)))
    rows.append(row)
    print(f"{workdir}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
  sampler = MVLD.from_workdir(args.workdirs[0]).config.sampler
  print(f"{len(rows)} workdir(s), {args.objects} test objects each, view 0 observed, sampler "
        f"{sampler.name} {sampler.num_steps} steps, key {args.seed}; {jax.devices()[0].device_kind}")
  for k in rows[0]:
    v = np.array([r[k] for r in rows])
    print(f"  {k:16s} {v.mean():8.3f} +- {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}")


if __name__ == "__main__":
  main()
