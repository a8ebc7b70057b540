"""Classifier evaluation: accuracy, per-class accuracy, confusion matrix, ECE, multi-view accuracy.

Definitions (probabilities p [N, K], labels y [N], prediction argmax_k p_ik):
- top-1 accuracy: mean_i [pred_i == y_i].
- per-class accuracy (recall): for class c, accuracy over the examples with y_i = c (NaN when
  the class has no example).
- confusion matrix M[t, q]: number of examples of true class t predicted as q (scikit-learn's
  `confusion_matrix` convention: rows true, columns predicted).
- expected calibration error (Guo et al. 2017, eq. 3): confidences max_k p_ik binned into M=15
  equal-width bins (lo, hi]; ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|.
- multi-view accuracy (paper 000 Fig. 2 right): p_i = mean over the V views of softmax(z_iv),
  prediction argmax_k p_ik.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.images import save_png


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax in float64 (stable)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy of scores (logits or probabilities) [N, K] against labels [N]."""
  labels = np.asarray(labels)
  if len(labels) == 0:
    return float("nan")
  return float(np.mean(np.argmax(scores, axis=1) == labels))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 [K, K]: M[true, predicted] counts."""
  labels = np.asarray(labels, np.int64)
  predictions = np.asarray(predictions, np.int64)
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, predictions), 1)
  return m


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [K]: accuracy over each true class (NaN for classes without examples)."""
  m = confusion_matrix(labels, predictions, num_classes)
  support = m.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, np.diag(m) / np.maximum(support, 1), np.nan)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """ECE with `num_bins` equal-width confidence bins (lo, hi] (Guo et al. 2017 eq. 3)."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  n = len(labels)
  if n == 0:
    return float("nan")
  conf = probs.max(axis=1)
  correct = (probs.argmax(axis=1) == labels).astype(np.float64)
  # Bin b holds confidences in (b/M, (b+1)/M]; a confidence of exactly 0 cannot occur for K >= 1.
  bins = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  acc_sum = np.bincount(bins, weights=correct, minlength=num_bins)
  conf_sum = np.bincount(bins, weights=conf, minlength=num_bins)
  return float(np.sum(np.abs(acc_sum - conf_sum)) / n)


def multiview_probabilities(view_logits: np.ndarray) -> np.ndarray:
  """[N, V, K] logits -> [N, K] mean over views of the per-view softmax (paper 000 Fig. 2)."""
  return softmax(view_logits).mean(axis=1)


def classifier_view_logits(classifier: Any, views: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Logits [N, V, K] of a `Classifier` on multi-view images uint8 [N, V, H, W, C]."""
  views = np.asarray(views)
  if views.ndim != 5:
    raise DataError(f"multi-view images have shape {views.shape}; expected [N, V, H, W, C]")
  n, v = views.shape[:2]
  logits = classifier.logits(views.reshape((n * v,) + views.shape[2:]), batch_size)
  return logits.reshape(n, v, -1)


def confusion_image(matrix: np.ndarray, cell: int = 12) -> np.ndarray:
  """uint8 RGB heat map of a confusion matrix, rows normalised (white 0 -> dark blue 1).

  Each class is a `cell` x `cell` square; a one-pixel grey grid separates the cells and the
  diagonal cells get a red outline so mistakes stand out.
  """
  m = np.asarray(matrix, np.float64)
  k = m.shape[0]
  rows = m.sum(axis=1, keepdims=True)
  frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
  white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
  colours = white + frac[..., None] * (blue - white)  # [K, K, 3]
  size = k * (cell + 1) + 1
  image = np.full((size, size, 3), 160, np.uint8)
  for t in range(k):
    for q in range(k):
      y, x = 1 + t * (cell + 1), 1 + q * (cell + 1)
      image[y:y + cell, x:x + cell] = np.round(colours[t, q]).astype(np.uint8)
      if t == q and cell >= 3:
        red = np.array([200, 30, 30], np.uint8)
        image[y, x:x + cell] = red
        image[y + cell - 1, x:x + cell] = red
        image[y:y + cell, x] = red
        image[y:y + cell, x + cell - 1] = red
  return image


def save_confusion_png(path: str, matrix: np.ndarray, cell: int = 12) -> None:
  """Write `confusion_image(matrix)` as a PNG (atomically)."""
  save_png(path, confusion_image(matrix, cell))


def evaluate_logits(logits: np.ndarray, labels: np.ndarray, num_classes: int, *,
                    view_logits: np.ndarray | None = None, num_bins: int = 15) -> dict:
  """All metrics from single-view logits [N, K] (and optionally multi-view logits [N, V, K]).

  Returns accuracy, per_class_accuracy (list, NaN -> None), confusion_matrix (nested list),
  ece, nll and, with views, multiview_accuracy, multiview_ece and per_view_accuracy.
  """
  labels = np.asarray(labels, np.int64)
  if len(logits) != len(labels):
    raise DataError(f"{len(logits)} predictions for {len(labels)} labels")
  probs = softmax(logits)
  preds = probs.argmax(axis=1)
  per_class = per_class_accuracy(labels, preds, num_classes)
  nll = float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300))))
  out: dict[str, Any] = {
      "accuracy": accuracy(probs, labels),
      "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
      "mean_per_class_accuracy": float(np.nanmean(per_class)) if np.any(~np.isnan(per_class))
                                 else float("nan"),
      "ece": expected_calibration_error(probs, labels, num_bins),
      "nll": nll,
      "confusion_matrix": confusion_matrix(labels, preds, num_classes).tolist(),
      "num_examples": int(len(labels)),
  }
  if view_logits is not None:
    view_logits = np.asarray(view_logits)
    if view_logits.shape[0] != len(labels):
      raise DataError(f"multi-view logits for {view_logits.shape[0]} objects, {len(labels)} labels")
    mv = multiview_probabilities(view_logits)
    out["multiview_accuracy"] = accuracy(mv, labels)
    out["multiview_ece"] = expected_calibration_error(mv, labels, num_bins)
    out["per_view_accuracy"] = [accuracy(view_logits[:, v], labels)
                                for v in range(view_logits.shape[1])]
    out["num_views"] = int(view_logits.shape[1])
  return out


def evaluate_classifier(classifier: Any, images: np.ndarray, labels: np.ndarray, *,
                        views: np.ndarray | None = None, batch_size: int = 256,
                        num_bins: int = 15) -> dict:
  """`evaluate_logits` of a `Classifier` on uint8 images [N, H, W, C] (and views [N, V, ...])."""
  logits = classifier.logits(images, batch_size)
  view_logits = None if views is None else classifier_view_logits(classifier, views, batch_size)
  return evaluate_logits(logits, labels, classifier.num_classes, view_logits=view_logits,
                         num_bins=num_bins)
