"""Softlabel-GAN's data (paper 003 sec. 5.1): an imbalanced training set, a balanced real reference
set for the FID-like metrics and, offline, a balanced set for the in-domain judge.

Embedded ('multiview'): single views of the procedural renders at `image_size`; the imbalanced set
is drawn from a pool of `num_pool` objects by the paper's recipe (`jaxgen.data.imbalance`), the
reference set and the judge's set are disjoint objects, balanced over the 12 shape classes. On
disk ('tfds', 'folder'): the training split made imbalanced the same way (or kept as it is,
`imbalance='none'`, for sets that are imbalanced already) and the test split as the reference;
the training set is then a `Source` (a subset of the split, never read whole), the reference set
arrays. `load_sets(...)["train"]` is (images or Source, int labels) accordingly.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen.data.imbalance import softlabel_gan_indices
from jaxgen.data.memory import source_arrays
from jaxgen.data.sources import get_source, subset
from jaxgen.errors import DataError

DATA_NAMES = ("multiview", "tfds", "folder")
IMBALANCE = ("auto", "lognormal", "chi2", "pareto", "none")


def _imbalanced_indices(labels: np.ndarray, d: ml_collections.ConfigDict,
                        num_classes: int) -> tuple[np.ndarray, str]:
  """Indices of the imbalanced training set among `labels` (all of them for imbalance='none')."""
  if d.imbalance == "none":
    return np.arange(len(labels)), "kept as it is"
  subset = softlabel_gan_indices(labels, seed=d.seed, num_samples=d.imbalance_samples,
                                 num_classes=num_classes, distribution=d.imbalance,
                                 min_class_size=d.min_class_size)
  short = np.flatnonzero(subset.histogram < subset.target)
  if short.size:
    c = int(short[0])
    raise DataError(f"imbalanced draw: class {c} needs {int(subset.target[c])} images, the pool has "
                    f"{int(subset.histogram[c])}; expected a larger data.num_pool (or a smaller "
                    "data.imbalance_samples / data.min_class_size)")
  how = (f"paper 003 recipe ({d.imbalance}, min class {d.min_class_size})" if d.min_class_size
         else f"paper 003 recipe ({d.imbalance}, {d.imbalance_samples} samples)")
  return subset.indices, how


def load_sets(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """{'train': (images, labels) imbalanced, 'test': (images, labels) balanced reference,
  'judge': (images, labels) or None, 'num_classes', 'class_names', 'description'}."""
  d = config.data
  if d.name == "multiview":
    from jaxgen.data.multiview import build_multiview_splits
    from jaxgen.data.renderer import SHAPE_CLASSES
    num_other = max(d.num_test, d.num_judge)
    splits = build_multiview_splits(d.data_dir or os.path.join(workdir, "data"), seed=d.seed,
                                    num_train=d.num_pool, num_test=num_other, num_views=1,
                                    image_size=d.image_size, variant=d.variant)
    pool = splits["classifier_train"]
    k = len(SHAPE_CLASSES)
    idx, how = _imbalanced_indices(pool["label"], d, k)
    ref, judge = splits["classifier_eval"], splits["test"]
    out = {"train": (pool["image"][idx], pool["label"][idx]),
           "test": (ref["image"][:d.num_test], ref["label"][:d.num_test]),
           "judge": (judge["images"][:d.num_judge, 0], judge["labels"][:d.num_judge]),
           "num_classes": k, "class_names": tuple(SHAPE_CLASSES), "reference": "balanced, disjoint renders"}
    source = (f"embedded renders ({k} shape classes, {d.image_size}x{d.image_size}, {d.variant} "
              f"background, one view per object, data seed {d.seed})")
  else:
    opts = {"tfds_name": d.tfds_name} if d.name == "tfds" else {"image_size": d.image_size}
    train_src = get_source(d.name, d.train_split, data_dir=d.data_dir, **opts)
    test_src = get_source(d.name, d.test_split, data_dir=d.data_dir, **opts)
    # The training split stays on disk: the imbalanced subset is chosen from its labels alone and
    # streamed through the grain pipeline by every stage that reads it (jaxgen/data/batches.py).
    # The reference split is read into memory, at most num_test records.
    test = source_arrays(test_src, d.image_size, d.num_test)
    k = train_src.num_classes
    all_labels = np.asarray(train_src.labels(), np.int32)
    idx, how = _imbalanced_indices(all_labels, d, k)
    out = {"train": (subset(train_src, idx), all_labels[idx]),
           "test": (test["image"], test["label"]),
           "judge": None, "num_classes": k, "class_names": tuple(train_src.class_names),
           "reference": f"split {d.test_split!r}"}
    source = f"{d.name} {d.tfds_name or d.data_dir} at {d.image_size}x{d.image_size}"
  counts = np.bincount(out["train"][1], minlength=out["num_classes"])
  missing = sorted(set(range(out["num_classes"])) - set(np.unique(out["test"][1]).tolist()))
  if missing:
    raise DataError(f"the reference set has no image of class {missing[0]}; expected every class "
                    "(increase data.num_test)")
  out["counts"] = counts
  out["description"] = (f"{source}; training set imbalanced by the {how}: {int(counts.sum())} images, "
                        f"{int(counts.min())}-{int(counts.max())} per class "
                        f"(ratio {counts.max() / max(counts.min(), 1):.1f}x); reference set "
                        f"{len(out['test'][1])} real images ({out['reference']})")
  return out
