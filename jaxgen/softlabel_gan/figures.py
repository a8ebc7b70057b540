"""Paper 003's per-class figures from the evaluation's per-class FIDs: the class-FID histogram of
Fig. 6 and the per-class gain over DiffAug-GAN of Fig. 8 (classes ordered by training-set size)."""

from __future__ import annotations

import numpy as np

from jaxgen.io.plots import line_plot
from jaxgen.softlabel_gan.labels import VARIANTS


def class_fids(results: dict, name: str, num_classes: int) -> np.ndarray:
  return np.asarray([results[name]["per_class"]["fid"][str(c)] for c in range(num_classes)])


def figures(results: dict, train_counts: np.ndarray) -> dict[str, np.ndarray]:
  """{'fig6_class_fid_histogram.png': ..., 'fig8_class_fid_gain.png': ... (when 'onehot' ran)}."""
  k = len(train_counts)
  fids = {name: class_fids(results, name, k) for name in results}
  lo, hi = min(v.min() for v in fids.values()), max(v.max() for v in fids.values())
  edges = np.linspace(lo, hi + 1e-9, 9)
  centres = 0.5 * (edges[1:] + edges[:-1])
  out = {"fig6_class_fid_histogram.png": line_plot(
      {VARIANTS[n].title: (centres.tolist(), np.histogram(v, edges)[0].tolist()) for n, v in fids.items()},
      title=f"Class FID over the {k} classes (Fig. 6a)", xlabel="class FID", ylabel="classes")}
  if "onehot" in fids and len(fids) > 1:
    order = np.argsort(train_counts, kind="stable")
    out["fig8_class_fid_gain.png"] = line_plot(
        {VARIANTS[n].title: (train_counts[order].tolist(), (fids["onehot"] - v)[order].tolist())
         for n, v in fids.items() if n != "onehot"},
        title="Class FID gain over DiffAug-GAN (Fig. 8)", xlabel="training images of the class",
        ylabel="FID(DiffAug-GAN) - FID", log_x=True)
  return out
