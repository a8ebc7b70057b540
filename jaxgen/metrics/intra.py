"""Intra-class metrics: a set metric evaluated class by class, then averaged over classes.

Intra-FID (Miyato & Koyama 2018, "cGANs with Projection Discriminator", Sec. 5) and its
KID / PRDC / LPIPS analogues are the per-class values of the base metric, summarised by their
mean and standard deviation over classes. Grouping has data-dependent sizes, so it runs on the
host; the metric itself is whatever (jitted) function is passed in.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxgen.errors import DataError


def _groups(x: Any, labels: Any, side: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
  labels = np.asarray(labels).reshape(-1)
  n = np.shape(x)[0]
  if labels.shape[0] != n:
    raise DataError(f"intra_class: set {side} has {n} rows but {labels.shape[0]} labels; "
                    "expected one label per row")
  return labels, {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _to_host(tree: Any) -> Any:
  return jax.tree.map(lambda v: np.asarray(v, np.float64), tree)


def intra_class(metric_fn: Callable[..., Any], feats_or_images_a: Any, labels_a: Any,
                feats_or_images_b: Any = None, labels_b: Any = None,
                classes: list[int] | None = None) -> dict[str, Any]:
  """Evaluates `metric_fn` on each class separately.

  For each class c: value_c = metric_fn(A[labels_a == c], B[labels_b == c]); with no set B
  (a one-set metric such as LPIPS diversity), value_c = metric_fn(A[labels_a == c]). The
  result's mean and std (population, over classes) are taken leaf by leaf, so a metric may
  return a scalar (fid), a tuple (kid's (mean, std)) or a dict (prdc).

  Examples:
    intra_class(fid, real_feats, real_y, fake_feats, fake_y)              # intra-FID
    intra_class(lambda a, b: kid(a, b, subset_size=100)[0], ...)           # intra-KID
    intra_class(prdc, real_feats, real_y, fake_feats, fake_y)             # intra-PRDC
    intra_class(lambda imgs: lpips_diversity(imgs), fake_images, fake_y)  # intra-LPIPS

  Args:
    metric_fn: f(a_c, b_c) or f(a_c) returning a pytree of scalars.
    feats_or_images_a, labels_a: set A (features or images) and its (N_a,) integer labels.
    feats_or_images_b, labels_b: optional set B and its labels.
    classes: classes to evaluate; default all classes present (in either set). A requested
      class absent from a set is an error.

  Returns:
    {'mean': pytree, 'std': pytree, 'per_class': {class: pytree}} with numpy float64 leaves.
  """
  a = np.asarray(feats_or_images_a)
  _, ga = _groups(a, labels_a, "a")
  two_sets = feats_or_images_b is not None
  if two_sets:
    if labels_b is None:
      raise DataError("intra_class: set b was given without labels_b; expected its labels")
    b = np.asarray(feats_or_images_b)
    _, gb = _groups(b, labels_b, "b")
  else:
    gb = {}
  wanted = sorted(set(ga) | set(gb)) if classes is None else [int(c) for c in classes]
  if not wanted:
    raise DataError("intra_class: no labelled rows; expected at least one class")
  per_class = {}
  for c in wanted:
    if c not in ga or (two_sets and c not in gb):
      where = "a" if c not in ga else "b"
      raise DataError(f"intra_class: class {c} has no rows in set {where}; expected every "
                      "evaluated class in both sets (pass classes=[...] to restrict)")
    args = (a[ga[c]], b[gb[c]]) if two_sets else (a[ga[c]],)
    per_class[c] = _to_host(metric_fn(*args))
  values = list(per_class.values())
  mean = jax.tree.map(lambda *v: np.mean(np.stack(v), axis=0), *values)
  std = jax.tree.map(lambda *v: np.std(np.stack(v), axis=0), *values)
  return {"mean": mean, "std": std, "per_class": per_class}
