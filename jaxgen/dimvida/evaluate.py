"""DIMVIDA's test-time augmentation (paper 000 Fig. 2 right) and its accuracy numbers."""

from __future__ import annotations

import numpy as np

from jaxgen.classifier.evaluate import softmax
from jaxgen.errors import ConfigError

AVERAGES = ("probabilities", "logits")


def average_outputs(view_logits: np.ndarray, average: str) -> np.ndarray:
  """Class probabilities [N, K] from the logits [N, M, K] of each object's M views.

  'probabilities': the mean of the M softmax outputs; 'logits': the softmax of the mean logits
  (the paper says "the mean of the 4 outputs" without saying which outputs).
  """
  view_logits = np.asarray(view_logits, np.float64)
  if view_logits.ndim != 3:
    raise ValueError(f"view logits have shape {view_logits.shape}; expected [N, M, K]")
  if average == "probabilities":
    return softmax(view_logits).mean(axis=1)
  if average == "logits":
    return softmax(view_logits.mean(axis=1))
  raise ConfigError("evaluate.average", average, "one of " + ", ".join(AVERAGES))


def accuracy_percent(probabilities: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy in percent (the paper's unit)."""
  return float(100.0 * np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def augmented_views(image: np.ndarray, generated: np.ndarray) -> np.ndarray:
  """[N, 1 + G, H, W, 3]: the real view first, then its G generated views (NMR_ea / NMR_ca)."""
  return np.concatenate([np.asarray(image)[:, None], np.asarray(generated)], axis=1)
