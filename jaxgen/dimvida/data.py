"""DIMVIDA's splits (paper 000 sec. IV): NMR_d for MVLD, NMR_c / NMR_e single-view for classifiers.

Each single-view split is {'image' uint8 [N, H, W, 3] (the one real view), 'view' int32 [N] (its
index among the V views), 'label' int32 [N], 'images' uint8 [N, V, H, W, 3] (all true views, for
the reference rows only)}. The embedded renderer provides these directly
(`jaxgen.data.multiview`); NMR on disk uses 'train' as NMR_d, 'val' as NMR_c and 'test' as
NMR_e, with one seeded random view per object.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen.data.nmr import nmr_source
from jaxgen.mvld.data import nmr_views, stack_objects

SINGLE_VIEW_KEYS = ("image", "view", "label", "images")


def _one_view(images: np.ndarray, labels: np.ndarray, seed: int, stream: int) -> dict:
  rng = np.random.default_rng([seed, stream])
  view = rng.integers(0, images.shape[1], len(images)).astype(np.int32)
  return {"image": images[np.arange(len(images)), view], "view": view, "label": labels,
          "images": images}


def load_splits(data: ml_collections.ConfigDict, seed: int, workdir: str) -> dict:
  """{'classifier_train', 'classifier_eval': single-view splits, 'num_classes', 'class_names',
  'description'} for the data section `data` rendered / read with `seed` (MVLD's seed)."""
  if data.name == "multiview":
    from jaxgen.data.multiview import build_multiview_splits
    from jaxgen.data.renderer import SHAPE_CLASSES
    splits = build_multiview_splits(data.data_dir or os.path.join(workdir, "data"), seed=seed,
                                    num_train=data.num_train, num_test=data.num_test,
                                    num_views=data.num_views, image_size=data.image_size,
                                    variant=data.variant)
    out = {name: {k: splits[name][k] for k in SINGLE_VIEW_KEYS}
           for name in ("classifier_train", "classifier_eval")}
    out.update(num_classes=len(SHAPE_CLASSES), class_names=tuple(SHAPE_CLASSES),
               description=(f"embedded multi-view renders ({len(SHAPE_CLASSES)} classes, "
                            f"{data.num_views} views, {data.image_size}x{data.image_size}, render "
                            f"seed {seed}): NMR_c {data.num_train} / NMR_e {data.num_test} objects, "
                            "one random view each"))
    return out
  views = nmr_views(data.num_views)
  out = {}
  for name, split, limit, stream in (("classifier_train", "val", data.num_train, 1),
                                     ("classifier_eval", "test", data.num_test, 2)):
    source = nmr_source(split, data_dir=data.data_dir, views=views, seed=seed,
                        image_size=data.image_size)
    images, labels = stack_objects(source, limit)
    out[name] = _one_view(images, labels, seed, stream)
    out["num_classes"], out["class_names"] = source.num_classes, tuple(source.class_names)
  out["description"] = (f"NMR renders from {data.data_dir} (views {views}, "
                        f"{data.image_size}x{data.image_size}): NMR_c = 'val' "
                        f"({len(out['classifier_train']['label'])} objects), NMR_e = 'test' "
                        f"({len(out['classifier_eval']['label'])}), one random view each")
  return out
