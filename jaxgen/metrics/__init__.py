"""jaxgen.metrics: image-quality and distribution metrics as pure JAX functions.

Definitions, references and the feature-network policy are in docs/metrics.md. The LPIPS and
InceptionV3 modules (`jaxgen.metrics.lpips`, `jaxgen.metrics.inception`) are re-exported when
present (their public `__all__` names, e.g. `lpips`, `lpips_diversity`); the package imports
without them. Note that after this, `jaxgen.metrics.lpips` is the function: import the module
itself with `from jaxgen.metrics.lpips import ...`.
"""

from __future__ import annotations

import importlib

from jaxgen.metrics.coherence import coherence, coherence_from_logits
from jaxgen.metrics.features import (FeatureExtractor, extract_features, feature_statistics,
                                     fixed_batches, iter_features)
from jaxgen.metrics.frechet import (FeatureStats, fid, fid_from_stats, finalize_stats,
                                    frechet_distance, init_stats, load_stats, merge_stats,
                                    save_stats, update_stats)
from jaxgen.metrics.image import psnr, ssim
from jaxgen.metrics.inception_score import inception_score
from jaxgen.metrics.intra import intra_class
from jaxgen.metrics.kernel import kid, kid_subset_indices, mmd2_unbiased, polynomial_kernel
from jaxgen.metrics.prdc import knn_radii_sq, prdc

__all__ = [
    "FeatureExtractor", "FeatureStats", "coherence", "coherence_from_logits", "extract_features",
    "feature_statistics", "fid", "fid_from_stats", "finalize_stats", "fixed_batches",
    "frechet_distance", "inception_score", "init_stats", "intra_class", "iter_features", "kid",
    "kid_subset_indices", "knn_radii_sq", "load_stats", "merge_stats", "mmd2_unbiased",
    "polynomial_kernel", "prdc", "psnr", "save_stats", "ssim", "update_stats",
]


def _reexport(mod_name: str) -> None:
  """Copies the public names of an optional sibling module into this package."""
  try:
    mod = importlib.import_module(mod_name)
  except ModuleNotFoundError as e:
    if e.name != mod_name:  # the module exists but one of its own imports is missing: surface it
      raise
    return
  names = getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")
                                    and getattr(vars(mod)[n], "__module__", None) == mod_name])
  for n in names:
    globals()[n] = getattr(mod, n)
    if n not in __all__:
      __all__.append(n)


# Owned by the feature-network work; imported last because they may import the modules above.
_reexport("jaxgen.metrics.lpips")
_reexport("jaxgen.metrics.inception")
