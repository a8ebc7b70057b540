"""The generated views of a single-view split (NMR_ca / NMR_ea), cached on disk, resumable.

For object i with real view v_i, MVLD generates the G views after it, cyclically
(v_i + 1, ..., v_i + G mod V), conditioned on the real image placed at slot v_i. Objects are
processed in fixed shards; shard s always draws with `fold_in(key, s)` on a batch padded to the
shard size, so the images do not depend on the device count or on where a run was killed. The
shards, their manifest (data fingerprint, sampler and its settings, MVLD checkpoint digests, seed)
and the no-duplicate / no-gap check are the shared `jaxgen.io.shard_cache`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxgen.io import shard_cache
from jaxgen.io.shard_cache import fingerprint
from jaxgen.parallel.mesh import to_host

GenerateFn = Callable[[jax.Array, np.ndarray, np.ndarray], Any]  # (key, images, observed) -> views


def generated_view_indices(view: np.ndarray, num_views: int, num_generated: int) -> np.ndarray:
  """[N, G] indices of the views generated for objects whose real view is `view` [N]."""
  return ((np.asarray(view)[:, None] + 1 + np.arange(num_generated)[None]) % num_views).astype(np.int32)


def conditioning_inputs(image: np.ndarray, view: np.ndarray, num_views: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [B, V, H, W, 3] with the real image at its view's slot and zeros elsewhere,
  observed mask float32 [B, V])."""
  b = len(image)
  images = np.zeros((b, num_views) + image.shape[1:], np.uint8)
  images[np.arange(b), view] = image
  return images, np.eye(num_views, dtype=np.float32)[view]


def generate_split(cache_dir: str, image: np.ndarray, view: np.ndarray, *, generate: GenerateFn,
                   key: jax.Array, num_views: int, num_generated: int, shard_size: int,
                   provenance: dict, write: bool = True, log: Callable[[str], None] = print
                   ) -> np.ndarray:
  """Generated views uint8 [N, G, H, W, 3] of the single-view split (image [N, H, W, 3], view [N]).

  Shards already in `cache_dir` are read, missing or corrupt ones generated (`generate` gets a
  full shard, padded by repeating its last object). `provenance` (JSON-able) must equal the
  cache's manifest, else DataError. `write=False` (processes other than the main one) generates
  the same shards without writing them.
  """
  image, view = np.asarray(image), np.asarray(view, np.int32)
  manifest = {"provenance": provenance, "num_views": num_views, "num_generated": num_generated,
              "inputs": fingerprint(image, view), "views_rule": "next G views after the real one, cyclic"}
  targets = generated_view_indices(view, num_views, num_generated)

  def make_shard(s: int, index: np.ndarray) -> dict[str, np.ndarray]:
    pad = np.concatenate([index, np.full(shard_size - len(index), index[-1])])
    images, observed = conditioning_inputs(image[pad], view[pad], num_views)
    # to_host: with several processes the views span every host's devices
    full = to_host(generate(jax.random.fold_in(key, s), images, observed))
    return {"views": full[np.arange(shard_size)[:, None], targets[pad]][:len(index)],
            "real_view": view[index], "generated_view": targets[index]}

  out = shard_cache.build_shards(cache_dir, len(image), shard_size, make_shard, manifest=manifest,
                                 shapes={"views": (num_generated,) + image.shape[1:]},
                                 write=write, log=log)
  return out["views"]


def read_split(cache_dir: str, num_objects: int) -> dict[str, np.ndarray]:
  """All shards of a finished cache: {'views', 'source_index', 'real_view', 'generated_view'};
  DataError unless the shards cover 0..num_objects-1 exactly once (no duplicate, no gap)."""
  out = shard_cache.read_shards(cache_dir, num_objects)
  out["source_index"] = out.pop(shard_cache.INDEX)
  return out
