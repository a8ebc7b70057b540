"""The generated views of a single-view split (NMR_ca / NMR_ea), cached on disk, resumable.

For object i with real view v_i, MVLD generates the G views after it, cyclically
(v_i + 1, ..., v_i + G mod V), conditioned on the real image placed at slot v_i. Objects are
processed in fixed shards; shard s always draws with `fold_in(key, s)` on a batch padded to the
shard size, so the images do not depend on the device count or on where a run was killed. Each
shard is one .npz written atomically (temp file, rename) with the source indices it holds;
`manifest.json` records the provenance (data fingerprint, sampler and its settings, MVLD
checkpoint digests, seed), and a cache made with other settings is refused in one line, never
mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from typing import Any, Callable

import jax
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json

_log = logging.getLogger(__name__)
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


def fingerprint(*arrays: np.ndarray) -> str:
  """A short digest of arrays' bytes, shapes and dtypes (what the cache was generated from)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      found = _first_difference(a, b, f"{prefix}{key}.")
      if found:
        return found
    elif a != b:
      return f"{prefix}{key}: {a!r} in the cache, {b!r} now"
  return ""


def _shard_path(cache_dir: str, shard: int) -> str:
  return os.path.join(cache_dir, f"shard_{shard:05d}.npz")


def _read_shard(path: str, expected_index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
  """The shard's views if it is complete and holds exactly `expected_index`, else None."""
  try:
    with np.load(path, allow_pickle=False) as f:
      views, index = f["views"], f["source_index"]
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
    _log.warning("generated shard %s is unreadable (%s); generating it again", path,
                 type(err).__name__)
    return None
  if not np.array_equal(index, expected_index) or views.shape != (len(expected_index),) + shape:
    _log.warning("generated shard %s holds other objects or shapes; generating it again", path)
    return None
  return views


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
  n = len(image)
  manifest = {"provenance": provenance, "num_objects": n, "num_views": num_views,
              "num_generated": num_generated, "shard_size": shard_size,
              "inputs": fingerprint(image, view), "views_rule": "next G views after the real one, cyclic"}
  manifest = json.loads(json.dumps(manifest))  # normalise tuples / numpy scalars as JSON would
  manifest_path = os.path.join(cache_dir, "manifest.json")
  if os.path.exists(manifest_path):
    try:
      old = read_json(manifest_path)
    except (OSError, ValueError) as err:
      raise DataError(f"{manifest_path}: unreadable ({type(err).__name__}); remove {cache_dir} "
                      "to generate again") from None
    diff = _first_difference(old, manifest)
    if diff:
      raise DataError(f"{cache_dir} holds views generated with other settings ({diff}); remove it "
                      "or use another workdir")
  elif write:
    atomic_write_json(manifest_path, manifest)
  targets = generated_view_indices(view, num_views, num_generated)
  shape = (num_generated,) + image.shape[1:]
  out = np.zeros((n,) + shape, np.uint8)
  num_shards = -(-n // shard_size)
  made = 0
  for s in range(num_shards):
    index = np.arange(s * shard_size, min(n, (s + 1) * shard_size))
    path = _shard_path(cache_dir, s)
    views = _read_shard(path, index, shape) if os.path.exists(path) else None
    if views is None:
      pad = np.concatenate([index, np.full(shard_size - len(index), index[-1])])
      images, observed = conditioning_inputs(image[pad], view[pad], num_views)
      full = np.asarray(generate(jax.random.fold_in(key, s), images, observed))
      views = full[np.arange(shard_size)[:, None], targets[pad]][:len(index)]
      if write:
        atomic_save_npz(path, views=views, source_index=index, real_view=view[index],
                        generated_view=targets[index])
      made += 1
    out[index] = views
  log(f"[generate] {cache_dir}: {n} objects x {num_generated} views, {made} of {num_shards} shards "
      f"generated, {num_shards - made} read from the cache")
  return out


def read_split(cache_dir: str, num_objects: int) -> dict[str, np.ndarray]:
  """All shards of a finished cache: {'views', 'source_index', 'real_view', 'generated_view'};
  DataError unless the shards cover 0..num_objects-1 exactly once (no duplicate, no gap)."""
  names = sorted(f for f in os.listdir(cache_dir) if f.startswith("shard_") and f.endswith(".npz"))
  parts: dict[str, list[np.ndarray]] = {"views": [], "source_index": [], "real_view": [],
                                        "generated_view": []}
  for name in names:
    with np.load(os.path.join(cache_dir, name), allow_pickle=False) as f:
      for k in parts:
        parts[k].append(f[k])
  if not names:
    raise DataError(f"{cache_dir}: no generated shards; run the generate stages first")
  out = {k: np.concatenate(v) for k, v in parts.items()}
  if not np.array_equal(np.sort(out["source_index"]), np.arange(num_objects)):
    raise DataError(f"{cache_dir}: shards cover {len(np.unique(out['source_index']))} distinct of "
                    f"{num_objects} objects ({len(out['source_index'])} entries); expected each "
                    "exactly once")
  order = np.argsort(out["source_index"])
  return {k: v[order] for k, v in out.items()}
