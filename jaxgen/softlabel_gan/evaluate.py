"""Paper 003 sec. 5.2: overall and intra-class metrics of a conditional generator's samples.

Overall: FID, KID, precision / recall / density / coverage (k-NN, Naeem et al. 2020) between all
generated images and the real reference set, the Inception Score of the judge's logits and LPIPS
diversity (mean pairwise distance of sampled pairs). Intra-class: the same per class (generated
images of class c against real images of class c), summarised by mean and std over classes
(`jaxgen.metrics.intra_class`); intra-LPIPS on `lpips_per_class` samples per class (paper: 100).
Also the judge's class consistency (fraction of samples it assigns to their conditioning class:
paper sec. 5.4 counts Smooth-GAN's images of a wrong class) and per-class FID (Figs. 6 and 8).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from jaxgen.metrics.frechet import fid
from jaxgen.metrics.inception_score import inception_score
from jaxgen.metrics.intra import intra_class
from jaxgen.metrics.kernel import kid
from jaxgen.metrics.lpips import lpips_diversity
from jaxgen.metrics.prdc import prdc

TABLE2_METRICS = ("fid", "intra_fid_mean", "intra_fid_std", "lpips", "intra_lpips_mean",
                  "intra_lpips_std", "precision", "recall", "density", "coverage",
                  "intra_precision", "intra_recall", "intra_density", "intra_coverage",
                  "kid", "intra_kid", "inception_score", "class_consistency")
PRDC = ("precision", "recall", "density", "coverage")


@dataclasses.dataclass
class Evaluator:
  """The networks behind the numbers (uint8 NHWC in), and their names for the reports."""

  features: Callable[[np.ndarray], np.ndarray]
  logits: Callable[[np.ndarray], np.ndarray]  # Inception Score
  lpips: Callable[[np.ndarray, np.ndarray], np.ndarray]  # paired images -> [N] distances
  classify: Callable[[np.ndarray], np.ndarray] | None  # class consistency (None: not measured)
  feature_network: str
  lpips_network: str
  logits_network: str
  classify_network: str


def _diversity(images: np.ndarray, ev: Evaluator, pairs: int, key: jax.Array) -> float:
  n = len(images)
  return float(lpips_diversity(images, max_pairs=min(pairs, n * (n - 1) // 2), key=key,
                               distance_fn=ev.lpips))


def evaluate_samples(ev: Evaluator, fake: np.ndarray, fake_labels: np.ndarray,
                     real_feats: np.ndarray, real_labels: np.ndarray, *, k: int,
                     kid_subset_size: int, lpips_per_class: int, lpips_pairs: int,
                     seed: int) -> dict:
  """Every Table 2 metric (`TABLE2_METRICS`) plus per-class FID / LPIPS of one generator's samples.

  `fake` uint8 [N, H, W, 3] with class ids `fake_labels`; `real_feats` the reference set's
  features (computed once by the caller) with `real_labels`.
  """
  fake_feats = ev.features(fake)
  logits = ev.logits(fake)
  out = {"fid": float(fid(real_feats, fake_feats))}
  kid_size = min(kid_subset_size, len(fake_feats), len(real_feats))
  out["kid"] = float(kid(real_feats, fake_feats, num_subsets=50, subset_size=kid_size)[0])
  out.update({m: float(v) for m, v in prdc(real_feats, fake_feats, k=k).items() if m in PRDC})
  out["inception_score"] = float(inception_score(logits, num_splits=min(10, len(logits)))[0])
  predicted = None if ev.classify is None else np.argmax(ev.classify(fake), 1)
  out["class_consistency"] = None if predicted is None else float(np.mean(predicted == fake_labels))
  key = jax.random.key(seed)
  out["lpips"] = _diversity(fake, ev, lpips_pairs * 4, jax.random.fold_in(key, 0))

  intra_fid = intra_class(fid, real_feats, real_labels, fake_feats, fake_labels)
  out["intra_fid_mean"], out["intra_fid_std"] = float(intra_fid["mean"]), float(intra_fid["std"])

  def class_kid(a, b):
    return kid(a, b, num_subsets=20, subset_size=min(kid_subset_size, len(a), len(b)))[0]

  out["intra_kid"] = float(intra_class(class_kid, real_feats, real_labels, fake_feats,
                                       fake_labels)["mean"])
  kc = max(1, min(k, int(np.min(np.bincount(fake_labels))) - 1, int(np.min(np.bincount(real_labels))) - 1))
  intra_pr = intra_class(lambda a, b: {m: v for m, v in prdc(a, b, k=kc).items() if m in PRDC},
                         real_feats, real_labels, fake_feats, fake_labels)
  out.update({f"intra_{m}": float(intra_pr["mean"][m]) for m in PRDC})
  # Intra-LPIPS on the first lpips_per_class samples of each class, one key per class.
  keep = np.concatenate([np.flatnonzero(fake_labels == c)[:lpips_per_class]
                         for c in np.unique(fake_labels)])
  classes = fake_labels[keep]
  per_class_lpips = {int(c): _diversity(fake[keep][classes == c], ev, lpips_pairs,
                                        jax.random.fold_in(key, 1 + int(c)))
                     for c in np.unique(classes)}
  values = np.array(list(per_class_lpips.values()))
  out["intra_lpips_mean"], out["intra_lpips_std"] = float(values.mean()), float(values.std())
  out["per_class"] = {"fid": {str(c): float(v) for c, v in intra_fid["per_class"].items()},
                      "lpips": {str(c): v for c, v in per_class_lpips.items()},
                      "consistency": None if predicted is None else {
                          str(int(c)): float(np.mean(predicted[fake_labels == c] == c))
                          for c in np.unique(fake_labels)}}
  return out


def real_reference_row(ev: Evaluator, real: np.ndarray, labels: np.ndarray, *, lpips_pairs: int,
                       seed: int) -> dict:
  """What the real reference images themselves score on the label-free metrics (IS, class
  consistency, LPIPS diversity): the ceiling a generator is read against."""
  logits = ev.logits(real)
  consistency = None if ev.classify is None else float(np.mean(np.argmax(ev.classify(real), 1) == labels))
  return {"inception_score": float(inception_score(logits, num_splits=min(10, len(logits)))[0]),
          "class_consistency": consistency,
          "lpips": _diversity(real, ev, lpips_pairs * 4, jax.random.key(seed))}
