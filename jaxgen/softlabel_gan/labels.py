"""The label augmentation T(x, y) = (T_x, T_y) of paper 003 sec. 4.2 and the variants compared.

A variant is a label source for the real samples, whether DiffAugment is on, and how real batches
are drawn. The labels of the real images are fixed per image (`real_label_vectors`), except
Mixup, whose pairs are drawn per batch in the training step. Fakes always get one-hot labels of
uniformly drawn classes, and the generator only ever sees one-hot labels (paper eq. 3).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxgen.errors import DataError

LABEL_SOURCES = ("onehot", "smooth", "soft", "class_mean", "mixup")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One GAN of a comparison: its name in the paper's tables and what it changes."""

  title: str
  label_source: str  # one of LABEL_SOURCES
  augment: bool = True  # DiffAugment on real and fake images before D
  sampling: str = "uniform"  # 'uniform' or 'class_balanced' (the Oversample baseline)
  model: str = "gan"  # 'gan' (BigGAN + projection D) or 'diffusion' (CFG, Table 7)


VARIANTS: dict[str, Variant] = {
    "onehot": Variant("DiffAug-GAN", "onehot"),
    "smooth": Variant("Smooth-GAN", "smooth"),
    "soft": Variant("Softlabel-GAN", "soft"),
    # The per-class mean of the classifier's softmax over correctly classified samples: the
    # class-level relations without per-image labels (an ablation of the soft labels).
    "class_mean": Variant("Softlabel-GAN (class-mean labels)", "class_mean"),
    "mixup": Variant("Mixup", "mixup"),  # Table 4
    "oversample": Variant("Oversample", "onehot", sampling="class_balanced"),  # Table 4
    "onehot_noaug": Variant("Softlabel-GAN-- (BigGAN)", "onehot", augment=False),  # Table 3
    "soft_noaug": Variant("Softlabel-GAN- (no DiffAugment)", "soft", augment=False),
    "smooth_noaug": Variant("Smooth-GAN- (no DiffAugment)", "smooth", augment=False),
    # Table 7: a class-conditional diffusion model with classifier-free guidance, conditioned on
    # one-hot labels (CFG) or on the classifier's softmax (CFG w/ our label augmentation).
    "cfg": Variant("CFG (diffusion)", "onehot", augment=False, model="diffusion"),
    "cfg_soft": Variant("CFG w/ label augmentation (diffusion)", "soft", augment=False,
                        model="diffusion"),
}


def of_model(variant_names, model: str) -> list[str]:
  """The variants (in order) trained as `model` ('gan' or 'diffusion')."""
  return [v for v in variant_names if VARIANTS[v].model == model]


def comparisons(variant_names) -> list[tuple[str, str]]:
  """(label-augmented variant, baseline) pairs a run's claims compare: Softlabel-GAN ('soft')
  against every other GAN variant of the run, CFG w/ label augmentation ('cfg_soft') against
  every other diffusion variant."""
  names = list(variant_names)
  out = []
  for mine in ("soft", "cfg_soft"):
    if mine in names:
      out += [(mine, v) for v in names if v != mine and VARIANTS[v].model == VARIANTS[mine].model]
  return out


def needs_classifier(variant_names) -> bool:
  """Whether any of the variants reads the pretrained classifier's soft labels."""
  return any(VARIANTS[v].label_source in ("soft", "class_mean") for v in variant_names)


def onehot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


def smoothed(labels: np.ndarray, num_classes: int, alpha: float) -> np.ndarray:
  """Label smoothing T_y(y) = y (1 - alpha) + alpha / k (paper sec. 4.2, [54])."""
  return (1.0 - alpha) * onehot(labels, num_classes) + alpha / num_classes


def class_mean_probabilities(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per class, the mean softmax of its correctly classified samples ([K, K]; a class with none
  keeps its one-hot row)."""
  k = probs.shape[1]
  out = np.eye(k, dtype=np.float32)
  correct = np.argmax(probs, 1) == labels
  for c in range(k):
    rows = probs[(labels == c) & correct]
    if len(rows):
      out[c] = rows.mean(0)
  return out


def real_label_vectors(source: str, labels: np.ndarray, num_classes: int, *,
                       probs: np.ndarray | None = None, smooth_alpha: float = 0.1) -> np.ndarray:
  """T_y for every real training image: float32 [N, K] rows that sum to 1.

  onehot / mixup: the one-hot label (Mixup mixes pairs per batch later); smooth: label
  smoothing; soft: the classifier's softmax C(x) (paper sec. 4.2, y_hat = C(x)); class_mean:
  `class_mean_probabilities` of the image's class.
  """
  if source not in LABEL_SOURCES:
    raise DataError(f"label source {source!r}; expected one of {', '.join(LABEL_SOURCES)}")
  if source in ("onehot", "mixup"):
    return onehot(labels, num_classes)
  if source == "smooth":
    return smoothed(labels, num_classes, smooth_alpha).astype(np.float32)
  if probs is None or probs.shape != (len(labels), num_classes):
    raise DataError(f"label source {source!r} needs the classifier's probabilities [N={len(labels)}, "
                    f"K={num_classes}]; got {None if probs is None else probs.shape}")
  if source == "soft":
    return probs.astype(np.float32)
  return class_mean_probabilities(probs, labels)[labels]


def augmented_counts(label_vectors: np.ndarray, threshold: float = 0.01) -> np.ndarray:
  """Table 1: per class, the number of samples that assign it more than `threshold`."""
  return np.sum(np.asarray(label_vectors) > threshold, axis=0).astype(np.int64)
