"""Where every trainer gets its training batches: one call, two backends, one protocol.

`training_batches(data, ...)` returns an endless iterator of this process's share of each
global batch, with `get_state` / `set_state` (stored in the training checkpoint by
`jaxgen.train.loop`, so a resumed run sees exactly the batches an uninterrupted one would):

- `data` a mapping of numpy arrays (the embedded sets, latents, synthetic pools, anything that
  fits in memory): `ArrayBatches` (uniform, epoch by epoch) or `ClassBalancedBatches`; the step
  is one numpy gather.
- `data` a `Source` (TFDS, image folders, NMR renders: anything read from disk): the grain
  pipeline of `jaxgen.data.pipeline` (decode, resize or random-resized-crop, flip, per-host
  sharding, optional worker processes); nothing is held in memory beyond the prefetch buffer
  and each host reads only its own share.

Both backends shard per process the same way: every process derives the same global batch from
(seed, step) and keeps rows [p * L, (p + 1) * L) of it, L = global batch / process count.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from jaxgen.data.memory import ArrayBatches, ClassBalancedBatches
from jaxgen.data.pipeline import SAMPLINGS, make_loader
from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError

Record = dict[str, np.ndarray]


def is_streamed(data: Any) -> bool:
  """True when `data` goes through the grain pipeline (a Source), False for in-memory arrays."""
  return isinstance(data, Source)


def training_batches(data: Mapping[str, np.ndarray] | Source, *, global_batch_size: int,
                     seed: int, sampling: str = "uniform", class_ids: np.ndarray | None = None,
                     image_size: int | None = None, augment: str | None = None,
                     record_fn: Callable[[Record], Record] | None = None,
                     worker_count: int = 0) -> Any:
  """Endless, checkpointable batches of this process's share of each global batch.

  Args:
    data: arrays keyed like the batch (first axis = examples), or a Source streamed by grain.
    global_batch_size: examples per step over all processes.
    seed: the order (and, for sources, the augmentation draws) derive from it alone.
    sampling: 'uniform' or 'class_balanced' (then `class_ids` [N] is required).
    image_size, augment, record_fn, worker_count: grain options (sources only; see
      `jaxgen.data.pipeline.make_loader`): resize or random-resized-crop to image_size,
      'flip' / 'crop' / 'rrc' augmentations, a per-record map to the batch's keys, worker
      processes for decoding (0: threads in this process).
  """
  pidx, pcount = jax.process_index(), jax.process_count()
  if sampling not in SAMPLINGS:
    raise ConfigError("sampling", sampling, f"one of {SAMPLINGS}")
  if sampling == "class_balanced" and class_ids is None:
    raise ConfigError("sampling", sampling, "'uniform', or class_ids for 'class_balanced'")
  if is_streamed(data):
    return make_loader(data, global_batch_size=global_batch_size, seed=seed, shuffle=True,
                       num_epochs=None, image_size=image_size, augment=augment,
                       process_index=pidx, process_count=pcount, worker_count=worker_count,
                       sampling=sampling, class_ids=class_ids, record_fn=record_fn)
  for name, value in (("image_size", image_size), ("augment", augment), ("record_fn", record_fn)):
    if value is not None:  # arrays arrive ready-made; these apply while decoding a source
      raise ConfigError(name, value, "None for in-memory arrays (it applies to streamed sources)")
  if sampling == "class_balanced":
    return ClassBalancedBatches(data, class_ids, global_batch_size=global_batch_size, seed=seed,
                                process_index=pidx, process_count=pcount)
  return ArrayBatches(data, global_batch_size=global_batch_size, seed=seed, process_index=pidx,
                      process_count=pcount)


def select_keys(record: Record, *, keys: tuple[str, ...]) -> Record:
  """A record restricted to `keys` (a `record_fn`: batches carry only what the step reads)."""
  return {k: record[k] for k in keys}


def ordered_batches(data: np.ndarray | Source, batch_size: int, key: str = "images",
                    image_size: int | None = None) -> Iterator[np.ndarray]:
  """`data[key]` in record order, `batch_size` records at a time (the last batch may be short):
  a slice of an in-memory array, or one sequential pass of the grain pipeline over a source
  (for encoding a data set that does not fit in memory; images resized and centre-cropped to
  `image_size` when given). Every process reads every record."""
  if not is_streamed(data):
    for start in range(0, len(data), batch_size):
      yield data[start:start + batch_size]
    return
  loader = make_loader(data, global_batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
                       drop_remainder=False, image_size=image_size,
                       record_fn=functools.partial(select_keys, keys=(key,)))
  for batch in loader:
    yield batch[key]


def first_records(data: np.ndarray | Source, n: int, key: str = "images",
                  image_size: int | None = None) -> np.ndarray:
  """The first n records' `key` as one array (e.g. for a figure)."""
  return next(ordered_batches(data, min(n, len(data)), key, image_size))
