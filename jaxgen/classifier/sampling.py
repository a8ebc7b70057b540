"""Batch samplers for classifier training, all with the loop's get_state/set_state protocol.

- Uniform and class-balanced batches come from `jaxgen.data.batches.training_batches` (in-memory
  arrays or the grain pipeline); class-balanced re-sampling for long-tailed data is the CMO /
  Diff-Mix long-tail baseline of paper 001 sec. 4.3.
- `balanced_class_weights`: per-class loss weights N / (C n_c) (scikit-learn's 'balanced'
  `compute_class_weight`), used by sampling='reweighted'.
- `effective_number_weights`: deferred re-weighting's class weights (drw_start > 0).
- `PairedBatches`: a second stream under prefixed keys, e.g. CMO's class-balanced images to
  paste onto the batch (Park et al. 2022; paper 001's long-tail baseline).
- `SyntheticReplacement`: Diff-Mix's joint training (paper 001 sec. 4.1): each real example of a
  batch is replaced by a random synthetic one with probability p.

Every draw is a function of (seed, position) alone, so a resumed run sees the same batches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from jaxgen.data.sources import Source
from jaxgen.errors import DataError


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """w_c = N / (C' n_c) for the C' classes present (0 for absent ones): mean weight per example 1."""
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes, np.float64)
  weights[present] = counts.sum() / (present.sum() * counts[present])
  return weights.astype(np.float32)


def effective_number_weights(labels: np.ndarray, num_classes: int, beta: float) -> np.ndarray:
  """w_c = (1 - beta) / (1 - beta^n_c), normalised to sum to the C' classes present (Cui et al.
  2019; the weights of deferred re-weighting, Cao et al. 2019); 0 for absent classes."""
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
  present = counts > 0
  weights = np.zeros(num_classes, np.float64)
  weights[present] = (1.0 - beta) / (1.0 - beta ** counts[present])
  weights *= present.sum() / weights.sum()
  return weights.astype(np.float32)


class SyntheticReplacement:
  """Wraps a batch iterator: each example is swapped for a random synthetic one with prob `p`.

  The synthetic pool is in-memory arrays keyed like the batch, or a `Source` (e.g. a
  `jaxgen.data.cached.CachedSource` too large for memory) whose picked records `record_fn` maps
  to the batch's keys; both draw the same swaps and picks from (seed, step), so the same pool
  gives the same batches either way.
  """

  def __init__(self, base: Any, synthetic: Mapping[str, np.ndarray] | Source, prob: float, *,
               seed: int, process_index: int = 0, process_count: int = 1,
               record_fn: Callable[[dict], dict] | None = None):
    self._base, self._prob = base, float(prob)
    if isinstance(synthetic, Source):
      if record_fn is None:
        raise DataError("a synthetic Source needs a record_fn mapping its records to the batch")
      self._source, self._record_fn, self._syn = synthetic, record_fn, None
      self._m = len(synthetic)
    else:
      self._source, self._syn = None, dict(synthetic)
      self._m = len(next(iter(self._syn.values())))
    if self._m == 0:
      raise DataError("synthetic arrays are empty; expected at least one synthetic example")
    self._seed, self._process, self._processes = seed, process_index, process_count
    self._count = 0

  def _take(self, pick: np.ndarray) -> dict[str, np.ndarray]:
    if self._source is None:
      return {k: v[pick] for k, v in self._syn.items()}
    records = [self._record_fn(self._source[int(i)]) for i in pick]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}

  def __iter__(self) -> "SyntheticReplacement":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._base))
    # Drawn for the whole global batch, then this process's rows: the same swaps on 1 or N hosts.
    rng = np.random.default_rng([self._seed, 0x5E7, 0, self._count])
    self._count += 1
    b = len(next(iter(batch.values())))
    swap = np.flatnonzero(rng.random(b * self._processes) < self._prob)
    pick = rng.integers(0, self._m, swap.size)
    mine = (swap >= self._process * b) & (swap < (self._process + 1) * b)
    swap, pick = swap[mine] - self._process * b, pick[mine]
    if swap.size:
      picked = self._take(pick)
      for k in batch:
        batch[k] = batch[k].copy()
        batch[k][swap] = picked[k]
    return batch

  def get_state(self) -> dict:
    return {"base": self._base.get_state(), "count": self._count}

  def set_state(self, state: dict) -> None:
    self._base.set_state(state["base"])
    self._count = int(state["count"])


class PairedBatches:
  """Batches of `base` with the batch of `partner` added under `prefix` + key."""

  def __init__(self, base: Any, partner: Any, prefix: str = "paste_"):
    self._base, self._partner, self._prefix = base, partner, prefix

  def __iter__(self) -> "PairedBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._base))
    batch.update({self._prefix + k: v for k, v in next(self._partner).items()})
    return batch

  def get_state(self) -> dict:
    return {"base": self._base.get_state(), "partner": self._partner.get_state()}

  def set_state(self, state: dict) -> None:
    self._base.set_state(state["base"])
    self._partner.set_state(state["partner"])
