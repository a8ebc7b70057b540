"""LR-GMM-NN's evaluation: Table 1 metrics, the memorisation check and the figures' images.

FID and improved precision / recall (Kynkaanniemi et al. 2019, the paper's IPR) are computed on
features of a named network: InceptionV3 pool3 when `evaluate.inception_path` is given, else an
in-domain classifier trained on A (numbers then not comparable with published FIDs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxgen.metrics.frechet import fid
from jaxgen.metrics.prdc import prdc

FeatureFn = Callable[[np.ndarray], np.ndarray]


def set_metrics(real_feats: np.ndarray, fake_feats: np.ndarray, k: int) -> dict[str, float]:
  """FID, precision and recall (k-NN manifolds, k = `k`) of generated vs real features."""
  pr = prdc(real_feats, fake_feats, k=k)
  return {"fid": float(fid(real_feats, fake_feats)), "precision": float(pr["precision"]),
          "recall": float(pr["recall"])}


def nearest_distances(queries: np.ndarray, references: np.ndarray, block: int = 512) -> np.ndarray:
  """Euclidean distance [M] from each query (flattened) to its nearest reference image."""
  q = queries.reshape((len(queries), -1)).astype(np.float32) / 255.0
  r = references.reshape((len(references), -1)).astype(np.float32) / 255.0
  r2 = np.sum(r * r, 1)
  out = []
  for i in range(0, len(q), block):
    qb = q[i:i + block]
    d2 = np.sum(qb * qb, 1)[:, None] + r2[None] - 2.0 * qb @ r.T
    out.append(np.sqrt(np.maximum(d2.min(1), 0.0)))
  return np.concatenate(out)


def memorisation(samples: dict[str, np.ndarray], train: np.ndarray, test: np.ndarray
                 ) -> dict[str, dict]:
  """Each sample's pixel distance to its nearest training image, against the test set's.

  A generator that copies training images has many samples far closer to X than real unseen
  images are; `frac_below_test_p01` is the fraction of samples nearer to X than the 1st
  percentile of the test images' nearest-X distances (about 0.01 when nothing is copied).
  """
  test_d = nearest_distances(test, train)
  p01 = float(np.percentile(test_d, 1))
  out = {"test": {"median": float(np.median(test_d)), "p01": p01, "distances": test_d}}
  for name, images in samples.items():
    d = nearest_distances(images, train)
    out[name] = {"median": float(np.median(d)), "frac_below_test_p01": float(np.mean(d < p01)),
                 "min": float(d.min()), "distances": d}
  return out


def histogram_series(distances: dict[str, np.ndarray], bins: int = 30
                     ) -> dict[str, tuple[list[float], list[float]]]:
  """Normalised histograms on shared bins, as (bin centres, density) series for `line_plot`."""
  lo = min(float(d.min()) for d in distances.values())
  hi = max(float(d.max()) for d in distances.values())
  edges = np.linspace(lo, hi, bins + 1)
  centres = ((edges[1:] + edges[:-1]) / 2).tolist()
  return {name: (centres, np.histogram(d, edges, density=True)[0].tolist())
          for name, d in distances.items()}


def latent_map_image(indices: np.ndarray, num_train: int, scale: int) -> np.ndarray:
  """Colour-coded map of chosen training indices [B, h, w] -> uint8 [B, h*s, w*s, 3] (Fig. 1)."""
  rng = np.random.default_rng(0)
  palette = rng.integers(30, 255, (max(num_train, 1), 3)).astype(np.uint8)
  img = palette[indices]
  return np.repeat(np.repeat(img, scale, axis=1), scale, axis=2)
