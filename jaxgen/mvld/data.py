"""MVLD's data: objects with all V views (NMR_d-like) for training and held-out objects for tests.

'multiview' is the embedded renderer (default, built once and cached, in memory); 'nmr' reads
the NMR renders from `config.data.data_dir` with V views evenly spaced over the 24 cameras
(V = 4 gives front/right/back/left, as paper 000 IV). NMR's training split is never loaded
whole: it stays a `Source` that the trainers stream through the grain pipeline
(`jaxgen.data.batches`) and the latent encoding reads in one ordered pass; its test objects
(capped by data.num_test) are read into memory for evaluation.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxgen.errors import DataError


def nmr_views(num_views: int) -> tuple[int, ...]:
  """V NMR camera indices evenly spaced over the 24 (V = 4: front, right, back, left)."""
  return tuple(int(round(i * 24 / num_views)) % 24 for i in range(num_views))


def stack_objects(source, limit: int) -> tuple[np.ndarray, np.ndarray]:
  """(images [n, V, H, W, 3], labels [n]) of the first n = min(len, limit) objects of a source."""
  n = min(len(source), limit)
  if n == 0:
    raise DataError(f"{source!r} holds no objects")
  records = [source[i] for i in range(n)]
  return np.stack([r["images"] for r in records]), np.asarray([r["label"] for r in records], np.int32)


def load_views(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """{'train_images': uint8 [N, V, H, W, 3] or a Source of such objects, 'train_views': the
  same as single views (uint8 [N * V, H, W, 3] or a Source of {'image'} records),
  'train_labels' [N], 'image_shape' (H, W, 3), 'streamed', 'test_images' [n, V, H, W, 3],
  'test_labels', 'num_classes', 'class_names', 'description'}."""
  d = config.data
  if d.name == "multiview":
    from jaxgen.data.multiview import build_multiview_splits
    from jaxgen.data.renderer import SHAPE_CLASSES
    cache = d.data_dir or os.path.join(workdir, "data")
    splits = build_multiview_splits(cache, seed=config.seed, num_train=d.num_train,
                                    num_test=d.num_test, num_views=d.num_views,
                                    image_size=d.image_size, variant=d.variant)
    train = splits["train"]["images"]
    return {
        "train_images": train, "train_views": train.reshape((-1,) + train.shape[2:]),
        "train_labels": splits["train"]["labels"], "image_shape": tuple(train.shape[2:]),
        "streamed": False,
        "test_images": splits["test"]["images"], "test_labels": splits["test"]["labels"],
        "num_classes": len(SHAPE_CLASSES), "class_names": tuple(SHAPE_CLASSES),
        "description": (f"embedded multi-view renders ({len(SHAPE_CLASSES)} primitive classes, "
                        f"{d.num_views} views, {d.image_size}x{d.image_size}, {d.num_train} train / "
                        f"{d.num_test} test objects, render seed {config.seed}, variant {d.variant})"),
    }
  from jaxgen.data.nmr import nmr_source
  from jaxgen.data.sources import subset
  views = nmr_views(d.num_views)
  opts = dict(data_dir=d.data_dir, views=views, seed=config.seed, image_size=d.image_size)
  train = nmr_source("train", **opts)
  n = min(len(train), d.num_train)
  if n == 0:
    raise DataError(f"{train!r} holds no objects")
  train_views = subset(nmr_source("train", view_mode="each", **opts), np.arange(n * len(views)))
  train = subset(train, np.arange(n))
  test = nmr_source("test", **opts)
  test_images, test_labels = stack_objects(test, d.num_test)
  return {
      "train_images": train, "train_views": train_views,
      "train_labels": train.labels(), "image_shape": tuple(train.image_shape[1:]),
      "streamed": True, "test_images": test_images, "test_labels": test_labels,
      "num_classes": train.num_classes, "class_names": train.class_names,
      "description": (f"NMR renders from {d.data_dir} (views {views}, {d.image_size}x{d.image_size}, "
                      f"{n} train objects streamed by grain / {len(test_images)} test objects)"),
  }
