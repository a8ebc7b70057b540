"""LR-GMM-NN's three image sets (paper 004 sec. 3.1 and 4.1): A (auxiliary), X (limited target), test.

- 'faces' (embedded, registered): A = the 'aux' split, X = 'train', reference = 'test', all
  disjoint; A's attribute labels train the in-domain feature network.
- 'folder' / 'tfds' (e.g. CelebA-HQ 256x256): X = the first `num_target` images of 'train',
  reference = the first `num_test` of 'test'; A is not needed (the VQ-GAN was trained on FFHQ).
Images are uint8 [N, H, W, 3], resized by the source.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from jaxgen.data.sources import get_source
from jaxgen.errors import DataError

DATA_NAMES = ("faces", "folder", "tfds")


def _take(source, count: int, what: str) -> np.ndarray:
  if len(source) < count:
    raise DataError(f"{what}: {len(source)} images available; the config asks for {count}")
  arrays = getattr(source, "arrays", None)
  if arrays is not None:
    return np.asarray(arrays["image"][:count])
  return np.stack([np.asarray(source[i]["image"]) for i in range(count)])


def load_sets(config: ml_collections.ConfigDict) -> dict:
  """{'aux', 'aux_labels', 'num_classes', 'target', 'test', 'description'}."""
  d = config.data
  if d.name == "faces":
    opts = dict(seed=d.seed, num_train=d.num_target, num_test=d.num_test, num_aux=d.num_aux,
                image_size=d.image_size)
    aux = get_source("faces", "aux", **opts)
    target, test = get_source("faces", "train", **opts), get_source("faces", "test", **opts)
    desc = (f"embedded registered faces (jaxgen.data.faces, data seed {d.seed}) at "
            f"{d.image_size}x{d.image_size}: A = {d.num_aux} auxiliary faces, X = {d.num_target} "
            f"target faces, {d.num_test} test faces, disjoint")
    return {"aux": _take(aux, d.num_aux, "faces/aux"), "aux_labels": aux.labels(),
            "num_classes": aux.num_classes, "target": _take(target, d.num_target, "faces/train"),
            "test": _take(test, d.num_test, "faces/test"), "description": desc}
  opts = {"data_dir": d.data_dir, "image_size": d.image_size}
  if d.name == "tfds":
    opts["tfds_name"] = d.tfds_name
  train, test = get_source(d.name, "train", **opts), get_source(d.name, "test", **opts)
  desc = (f"{d.name} data at {d.data_dir or '(default)'} resized to {d.image_size}x{d.image_size}: "
          f"X = first {d.num_target} training images, {d.num_test} test images")
  return {"aux": None, "aux_labels": None, "num_classes": 0,
          "target": _take(train, d.num_target, f"{d.name}/train"),
          "test": _take(test, d.num_test, f"{d.name}/test"), "description": desc}
