"""Diff-Mix's synthesis plan and annotation (paper 001 sec. 3.4, eq. 3): which reference image
is translated toward which class at which strength, and the soft label each synthetic image gets.

Strategies are `<backbone>_<kind>`: backbone `real` (the vanilla, not fine-tuned model) or `diff`
(fine-tuned with TI / DB / TI+DB); kind

* `gen`: text-to-image from noise with the target class's prompt (distillation);
* `aug`: SDEdit of a reference image toward its own class (intra-class translation);
* `mix`: SDEdit of a reference image of any class toward a target class (inter-class; Diff-Mix).

`none` adds no synthetic image (the baseline). Each real image is the reference of `multiplier`
synthetic images (so the set is multiplier x the real set); `gen` keeps those counts but has no
reference (index -1, strength 1). Targets of `gen` and `mix` are drawn per image, uniformly or
weighted toward tail classes with probability proportional to 1 / (n_c + 1) (SYNAuG-style
uniformisation of long-tailed data); strengths are drawn per image from a set (the paper's
randomised {0.5, 0.7, 0.9}) or fixed when the set has one value.

Soft label (eq. 3): y = (1 - s^gamma) onehot(reference class) + s^gamma onehot(target class), so
gamma < 1 puts more mass on the target than s does (gamma = 0.5, s = 0.7 -> 0.16 / 0.84).
"""

from __future__ import annotations

import numpy as np

from jaxgen.errors import ConfigError

STRATEGIES = ("none", "real_gen", "real_aug", "real_mix", "diff_gen", "diff_aug", "diff_mix")
KINDS = ("gen", "aug", "mix")
TARGET_SAMPLING = ("uniform", "tail")


def split_strategy(strategy: str) -> tuple[str, str]:
  """('real' | 'diff', 'gen' | 'aug' | 'mix') of a synthesis strategy (not 'none')."""
  if strategy not in STRATEGIES or strategy == "none":
    raise ConfigError("strategies", strategy, f"one of {STRATEGIES[1:]}")
  backbone, kind = strategy.split("_")
  return backbone, kind


def target_distribution(class_counts: np.ndarray, sampling: str) -> np.ndarray:
  """Probabilities [K] of each target class: uniform, or 'tail': proportional to 1 / (n_c + 1)."""
  counts = np.asarray(class_counts, np.float64)
  if sampling == "uniform":
    p = np.ones_like(counts)
  elif sampling == "tail":
    p = 1.0 / (counts + 1.0)
  else:
    raise ConfigError("synthesis.target_sampling", sampling, f"one of {TARGET_SAMPLING}")
  return p / p.sum()


def referable_targets(reference_class: int, num_classes: int, referable_classes: int) -> np.ndarray:
  """The targets a reference of `reference_class` may be translated toward when each target
  accepts references from only r classes (paper Fig. 7b): {a, a + 1, ..., a + r - 1} mod K, so
  target t takes references from the r classes t, t - 1, ..., t - r + 1 (0 = all K)."""
  r = referable_classes or num_classes
  return (reference_class + np.arange(r)) % num_classes


def plan_synthesis(labels: np.ndarray, num_classes: int, *, kind: str, multiplier: int,
                   strengths: tuple[float, ...], target_sampling: str, seed: int,
                   referable_classes: int = 0) -> dict[str, np.ndarray]:
  """The per-image plan of a synthetic set of multiplier x len(labels) images.

  Returns {'reference_index' int32 [M] (-1 for gen), 'reference_class' int32 [M] (the target's
  class for gen), 'target_class' int32 [M], 'strength' float32 [M] (1 for gen)}: reference i is
  real image i mod N, so every real image is referenced `multiplier` times. With
  `referable_classes` r > 0, a mix target is drawn (with the same weights) among the r classes
  `referable_targets` allows for its reference.
  """
  labels = np.asarray(labels, np.int64)
  if kind not in KINDS:
    raise ConfigError("synthesis.kind", kind, f"one of {KINDS}")
  if not strengths or any(not 0.0 < float(s) <= 1.0 for s in strengths):
    raise ConfigError("synthesis.strengths", tuple(strengths), "values in (0, 1]")
  rng = np.random.default_rng(seed)
  n = len(labels)
  m = multiplier * n
  reference = np.tile(np.arange(n), multiplier)
  probs = target_distribution(np.bincount(labels, minlength=num_classes), target_sampling)
  drawn = rng.choice(num_classes, size=m, p=probs)
  strength = rng.choice(np.asarray(strengths, np.float64), size=m)
  if kind == "gen":
    return {"reference_index": np.full(m, -1, np.int32), "reference_class": drawn.astype(np.int32),
            "target_class": drawn.astype(np.int32), "strength": np.ones(m, np.float32)}
  ref_class = labels[reference]
  target = ref_class if kind == "aug" else drawn
  if kind == "mix" and referable_classes and referable_classes < num_classes:
    if referable_classes < 1:
      raise ConfigError("synthesis.referable_classes", referable_classes,
                        f"0 (all) or an integer in [1, {num_classes}]")
    target = np.empty(m, np.int64)
    for a in range(num_classes):  # one draw per reference class, restricted and renormalised
      rows = np.flatnonzero(ref_class == a)
      allowed = referable_targets(a, num_classes, referable_classes)
      target[rows] = rng.choice(allowed, size=len(rows), p=probs[allowed] / probs[allowed].sum())
  return {"reference_index": reference.astype(np.int32), "reference_class": ref_class.astype(np.int32),
          "target_class": target.astype(np.int32), "strength": strength.astype(np.float32)}


def soft_labels(reference_class: np.ndarray, target_class: np.ndarray, strength: np.ndarray,
                gamma: float, num_classes: int) -> np.ndarray:
  """Eq. 3: float32 [M, K] = (1 - s^gamma) onehot(reference) + s^gamma onehot(target)."""
  if gamma < 0:
    raise ConfigError("synthesis.gamma", gamma, "a number >= 0")
  eye = np.eye(num_classes, dtype=np.float64)
  w = np.asarray(strength, np.float64)[:, None] ** gamma
  out = (1.0 - w) * eye[np.asarray(reference_class)] + w * eye[np.asarray(target_class)]
  return out.astype(np.float32)
