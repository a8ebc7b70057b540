"""Start a classifier from another's weights where they fit (fine-tuning across label sets)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def transfer_variables(fresh: dict, pretrained: dict) -> tuple[dict, list[str]]:
  """(`fresh` with every leaf replaced by `pretrained`'s at the same path and shape, the paths
  kept fresh). With a backbone pre-trained on another task the kept paths are the new head,
  as when torchvision weights are fine-tuned on a new label set."""
  source = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(pretrained)}
  kept: list[str] = []

  def pick(path: Any, leaf: Any) -> Any:
    name = jax.tree_util.keystr(path)
    other = source.get(name)
    if other is not None and np.shape(other) == np.shape(leaf):
      return np.asarray(other, np.asarray(leaf).dtype)
    kept.append(name)
    return leaf

  return jax.tree_util.tree_map_with_path(pick, fresh), kept
