"""Imbalanced, long-tail and k-shot subsets: pure functions of (labels, seed) -> indices.

Each builder returns a `Subset(indices, histogram, target)`: sorted record indices, the
per-class count of the selected records, and the per-class count the recipe asked for (the
histogram is smaller where a class has fewer records than asked). The histogram is also
logged. Apply a subset to a source with `jaxgen.data.subset(source, result.indices)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from absl import logging

from jaxgen.errors import ConfigError, DataError


class Subset(NamedTuple):
  """A builder's result: which records to keep and the per-class counts it produced."""

  indices: np.ndarray    # int64 [M], sorted
  histogram: np.ndarray  # int64 [C], selected records per class
  target: np.ndarray     # int64 [C], records per class the recipe asked for


def _check_labels(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
  labels = np.asarray(labels).reshape(-1)
  if labels.size == 0:
    raise DataError("imbalance builder: no labels given")
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"imbalance builder: labels have dtype {labels.dtype}; expected integers")
  c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  bad = np.flatnonzero((labels < 0) | (labels >= c))
  if bad.size:
    raise DataError(f"imbalance builder: label {int(labels[bad[0]])} at index {int(bad[0])} is "
                    f"outside [0, {c})")
  return labels.astype(np.int64), c


def _select(labels: np.ndarray, target: np.ndarray, seed: int, recipe: str) -> Subset:
  """Per class c, min(target[c], available) records drawn without replacement (seeded)."""
  rng = np.random.default_rng(seed)
  chosen = []
  for c, want in enumerate(target):
    idx = np.flatnonzero(labels == c)
    chosen.append(rng.permutation(idx)[:int(want)])
  indices = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
  hist = np.bincount(labels[indices], minlength=len(target)).astype(np.int64)
  logging.info("%s: %d records, per-class histogram %s", recipe, indices.size, hist.tolist())
  return Subset(indices.astype(np.int64), hist, np.asarray(target, np.int64))


# --------------------------------------------------------------------------- Softlabel-GAN

def _lognormal_cdf(x: np.ndarray, s: float) -> np.ndarray:
  """CDF of the standard lognormal with shape s: Phi(ln x / s), 0 for x <= 0."""
  return np.asarray([0.0 if v <= 0 else 0.5 * math.erfc(-math.log(v) / (s * math.sqrt(2)))
                     for v in x])


def _chi2_3_cdf(x: np.ndarray) -> np.ndarray:
  """CDF of chi-squared with 3 dof: P(3/2, x/2) = erf(sqrt(x/2)) - sqrt(2x/pi) exp(-x/2)."""
  return np.asarray([0.0 if v <= 0 else math.erf(math.sqrt(v / 2))
                     - math.sqrt(2 * v / math.pi) * math.exp(-v / 2) for v in x])


def _pareto_cdf(x: np.ndarray, b: float) -> np.ndarray:
  """CDF of the Pareto distribution with shape b and scale 1: 1 - x^(-b) for x >= 1."""
  return np.where(x >= 1, 1.0 - np.power(np.maximum(x, 1.0), -b), 0.0)


IMBALANCE_DISTRIBUTIONS = ("auto", "lognormal", "chi2", "pareto")


def softlabel_gan_cdf(num_classes: int, distribution: str = "auto") -> tuple[str, np.ndarray]:
  """The CDF values at the C+1 bin edges of paper 003 Sec. 5.1, and the distribution's name.

  lognormal (s=3) at linspace(0, 3, C+1) (Imbalanced CIFAR-10), chi-squared (3 dof) at
  linspace(0, 3, C+1) (CIFAR-100) or Pareto (shape 2, scale 1) at linspace(1, 4, C+1) (Tiny
  ImageNet). 'auto' picks as the paper does by class count: lognormal for C <= 10, chi2 for
  C <= 100, else Pareto.
  """
  if num_classes < 1:
    raise ConfigError("data.num_classes", num_classes, "a positive number of classes")
  if distribution not in IMBALANCE_DISTRIBUTIONS:
    raise ConfigError("data.imbalance", distribution, "one of " + ", ".join(IMBALANCE_DISTRIBUTIONS))
  if distribution == "auto":
    distribution = "lognormal" if num_classes <= 10 else "chi2" if num_classes <= 100 else "pareto"
  if distribution == "lognormal":
    return "lognormal(s=3) on [0,3)", _lognormal_cdf(np.linspace(0, 3, num_classes + 1), 3.0)
  if distribution == "chi2":
    return "chi2(df=3) on [0,3)", _chi2_3_cdf(np.linspace(0, 3, num_classes + 1))
  return "pareto(b=2) on [1,4)", _pareto_cdf(np.linspace(1, 4, num_classes + 1), 2.0)


def softlabel_gan_counts(num_classes: int, *, num_samples: int = 5000,
                         seed: int | None = None, distribution: str = "auto",
                         min_class_size: int = 0) -> np.ndarray:
  """Per-class target counts of paper 003 Sec. 5.1: floor(num_samples * diff(CDF(edges))).

  Our reading: the histogram is NOT renormalised to the CDF mass inside the range; bin b gets
  floor(num_samples * (F(x_{b+1}) - F(x_b))), so the total is about num_samples * (F(hi) -
  F(lo)). With num_samples=5000 this gives exactly the paper's Imbalanced CIFAR-10 (3,208
  images, 65-1,720 per class) and CIFAR-100 (2,993 images, 6-36 per class). With `seed`, the
  bins are assigned to classes by a seeded permutation ("we shuffle the order of class
  labels"): class c gets bin perm[c]; without it class c gets bin c. `min_class_size` > 0
  replaces num_samples by the one that gives the smallest bin that many records (our reading of
  Fig. 5's "minor class of 120 / 90 / 65 samples": the same profile, rescaled).
  """
  _, cdf = softlabel_gan_cdf(num_classes, distribution)
  fractions = np.diff(cdf)
  if min_class_size > 0:
    num_samples = min_class_size / float(fractions.min())
  counts = np.floor(num_samples * fractions + 1e-9).astype(np.int64)
  if seed is not None:
    counts = counts[np.random.default_rng(seed).permutation(num_classes)]
  return counts


def softlabel_gan_indices(labels: np.ndarray, *, seed: int, num_samples: int = 5000,
                          num_classes: int | None = None, distribution: str = "auto",
                          min_class_size: int = 0) -> Subset:
  """Imbalanced subset of paper 003 Sec. 5.1 (Imbalanced CIFAR-10/100, Tiny ImageNet).

  Targets from `softlabel_gan_counts(C, num_samples=..., seed=seed, distribution=...,
  min_class_size=...)`; each class then keeps min(target, available) records drawn at random
  with the same seed.
  """
  labels, c = _check_labels(labels, num_classes)
  target = softlabel_gan_counts(c, num_samples=num_samples, seed=seed, distribution=distribution,
                                min_class_size=min_class_size)
  name, _ = softlabel_gan_cdf(c, distribution)
  return _select(labels, target, seed, f"softlabel-gan imbalance ({name}, {num_samples})")


# --------------------------------------------------------------------------- long tail

def long_tail_counts(num_classes: int, n_max: int, imbalance_factor: float) -> np.ndarray:
  """Exponential long-tail profile (paper 001 Sec. 4.3, after Cao et al. 2019):

  n_c = max(1, floor(n_max * IF^(-c / (C - 1)))) for rank c = 0..C-1, so n_0 = n_max and
  n_{C-1} = n_max / IF (IF = imbalance factor, e.g. 100, 50, 10).
  """
  if imbalance_factor < 1:
    raise ConfigError("data.imbalance_factor", imbalance_factor, "a number >= 1 (e.g. 100)")
  if num_classes < 1 or n_max < 1:
    raise ConfigError("data.n_max", n_max, "a positive count for a positive number of classes")
  rank = np.arange(num_classes, dtype=np.float64)
  expo = rank / (num_classes - 1) if num_classes > 1 else rank
  return np.maximum(1, np.floor(n_max * imbalance_factor ** (-expo) + 1e-9)).astype(np.int64)


def long_tail_indices(labels: np.ndarray, *, seed: int, imbalance_factor: float,
                      n_max: int | None = None, shuffle_classes: bool = False,
                      num_classes: int | None = None) -> Subset:
  """Long-tail subset (CUB-LT / Flower-LT of paper 001 Sec. 4.3).

  Class ranks: by available count, largest first (ties by label), or a seeded permutation with
  shuffle_classes. n_max defaults to floor(mean records per class). The class of rank c keeps
  min(long_tail_counts(...)[c], available) records drawn at random with `seed`.
  """
  labels, c = _check_labels(labels, num_classes)
  available = np.bincount(labels, minlength=c)
  if n_max is None:
    n_max = max(1, int(labels.size // c))
  profile = long_tail_counts(c, int(n_max), float(imbalance_factor))
  if shuffle_classes:
    order = np.random.default_rng(seed).permutation(c)
  else:
    order = np.lexsort((np.arange(c), -available))  # largest class first, ties by label
  target = np.empty(c, np.int64)
  target[order] = profile
  return _select(labels, target, seed, f"long tail (IF={imbalance_factor}, n_max={n_max})")


# --------------------------------------------------------------------------- k-shot

def few_shot_indices(labels: np.ndarray, *, k: int | None, seed: int,
                     num_classes: int | None = None) -> Subset:
  """k records per class drawn at random with `seed` (paper 001 Sec. 4.1: k in 1, 5, 10, all).

  k=None (or 'all') keeps everything. A class with fewer than k records keeps all it has.
  """
  labels, c = _check_labels(labels, num_classes)
  available = np.bincount(labels, minlength=c)
  if k is None or k == "all":
    target = available.astype(np.int64)
  else:
    if int(k) < 1:
      raise ConfigError("data.shots", k, "a positive number of examples per class or 'all'")
    target = np.full(c, int(k), np.int64)
  return _select(labels, target, seed, f"{k if k is not None else 'all'}-shot")
