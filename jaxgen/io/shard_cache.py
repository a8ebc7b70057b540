"""A resumable on-disk cache of generated arrays, written in fixed shards (DIMVIDA's generated
views, Diff-Mix's synthetic set).

Items 0..N-1 are cut into shards of `shard_size`; shard s always holds the same items, so what
it holds does not depend on the device count or on where a run was killed. Each shard is one
.npz written atomically (temp file, rename) with an `index` array naming its items; a shard that
is missing, unreadable or holds other items or shapes is made again, never mixed in.
`manifest.json` records the provenance (inputs' fingerprint, sampler, checkpoints' digests,
seed); a cache made with other settings is refused in one line naming the first difference.
`read_shards` checks that the shards cover every item exactly once (no duplicate, no gap);
`shard_files` does the same check reading only the shards' `index` arrays, for readers that
keep a cache larger than memory on disk (`jaxgen.data.cached.CachedSource`), and `open_member`
memory-maps one array of a shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zipfile
from typing import Any, Callable, Mapping

import numpy as np

from jaxgen.errors import DataError
from jaxgen.faults import kill_if_requested
from jaxgen.io.files import atomic_save_npz, atomic_write_json, first_json_difference, read_json
from jaxgen.io import paths

_log = logging.getLogger(__name__)
INDEX = "index"
# (shard number, item indices [n]) -> {name: array [n, ...]} for the shard's items
MakeShard = Callable[[int, np.ndarray], Mapping[str, np.ndarray]]


def fingerprint(*arrays: np.ndarray) -> str:
  """A short digest of arrays' bytes, shapes and dtypes (what a cache was generated from)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def file_digest(path: str) -> str:
  """A short sha256 digest of a file (a checkpoint the cache was generated with)."""
  h = hashlib.sha256()
  with paths.open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def first_difference(old: Mapping, new: Mapping, prefix: str = "") -> str:
  """'key: old in the cache, new now' for the first differing (nested) key, or ''."""
  found = first_json_difference(old, new, prefix=prefix)
  return f"{found[0]}: {found[1]!r} in the cache, {found[2]!r} now" if found else ""


def check_manifest(cache_dir: str, manifest: Mapping[str, Any], *, write: bool = True) -> None:
  """Write `manifest` into a new cache, or check an existing cache was made with it."""
  manifest = json.loads(json.dumps(manifest))  # tuples / numpy scalars as JSON holds them
  path = os.path.join(cache_dir, "manifest.json")
  if paths.exists(path):
    try:
      old = read_json(path)
    except (OSError, ValueError) as err:
      raise DataError(f"{path}: unreadable ({type(err).__name__}); remove {cache_dir} to "
                      "generate again") from None
    diff = first_difference(old, manifest)
    if diff:
      raise DataError(f"{cache_dir} holds items generated with other settings ({diff}); remove it "
                      "or use another workdir")
  elif write:
    atomic_write_json(path, manifest)


def shard_path(cache_dir: str, shard: int) -> str:
  return os.path.join(cache_dir, f"shard_{shard:05d}.npz")


def _read_shard(path: str, expected_index: np.ndarray, shapes: Mapping[str, tuple[int, ...]] | None
                ) -> dict[str, np.ndarray] | None:
  """The shard's arrays if it is complete and holds exactly `expected_index`, else None."""
  try:
    with paths.load_npz(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
    _log.warning("shard %s is unreadable (%s); generating it again", path, type(err).__name__)
    return None
  n = len(expected_index)
  ok = np.array_equal(arrays.get(INDEX), expected_index) and all(
      k in arrays and arrays[k].shape == (n,) + tuple(shape) for k, shape in (shapes or {}).items())
  if not ok:
    _log.warning("shard %s holds other items or shapes; generating it again", path)
    return None
  return arrays


def build_shards(cache_dir: str, num_items: int, shard_size: int, make_shard: MakeShard, *,
                 manifest: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None,
                 write: bool = True, log: Callable[[str], None] = print,
                 collect: bool = True) -> dict[str, np.ndarray]:
  """Every item's arrays {name: [num_items, ...]} (plus `index`), made shard by shard.

  Shards already in `cache_dir` are read when they hold their items with the `shapes` given
  (per-item shapes of the named arrays); the others are made by `make_shard` and written (unless
  `write=False`, for processes other than the main one, which also do not log). `manifest` must
  equal the cache's.
  `collect=False` returns {} and holds one shard at a time (a cache larger than memory; read
  it back with `jaxgen.data.cached.CachedSource`).
  """
  check_manifest(cache_dir, {**manifest, "num_items": num_items, "shard_size": shard_size},
                 write=write)
  parts, made = [], 0
  num_shards = -(-num_items // shard_size)
  for s in range(num_shards):
    index = np.arange(s * shard_size, min(num_items, (s + 1) * shard_size))
    path = shard_path(cache_dir, s)
    arrays = _read_shard(path, index, shapes) if paths.exists(path) else None
    if arrays is None:
      arrays = {k: np.asarray(v) for k, v in make_shard(s, index).items()}
      arrays[INDEX] = index
      bad = [k for k, v in arrays.items() if len(v) != len(index)]
      if bad:
        raise ValueError(f"make_shard returned {bad[0]!r} with {len(arrays[bad[0]])} rows for a "
                         f"shard of {len(index)} items")
      if write:
        atomic_save_npz(path, **arrays)
      made += 1
      kill_if_requested(os.path.basename(os.path.normpath(cache_dir)), s)  # tests only
    if collect:
      parts.append(arrays)
  if write:  # the process that writes reports, once per job (not once per host)
    log(f"[cache] {cache_dir}: {num_items} items, {made} of {num_shards} shards generated, "
        f"{num_shards - made} read from the cache")
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _shard_names(cache_dir: str) -> list[str]:
  names = sorted(f for f in paths.listdir(cache_dir) if f.startswith("shard_") and f.endswith(".npz")) \
      if paths.isdir(cache_dir) else []
  if not names:
    raise DataError(f"{cache_dir}: no generated shards; run the generating stage first")
  return names


def _check_coverage(cache_dir: str, index: np.ndarray, num_items: int) -> None:
  if not np.array_equal(np.sort(index), np.arange(num_items)):
    raise DataError(f"{cache_dir}: shards cover {len(np.unique(index))} distinct of {num_items} "
                    f"items ({len(index)} entries); expected each exactly once")


def read_shards(cache_dir: str, num_items: int) -> dict[str, np.ndarray]:
  """All shards of a finished cache, ordered by item; DataError unless they cover
  0..num_items-1 exactly once."""
  parts = []
  for name in _shard_names(cache_dir):
    with paths.load_npz(os.path.join(cache_dir, name), allow_pickle=False) as f:
      parts.append({k: f[k] for k in f.files})
  out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  _check_coverage(cache_dir, out[INDEX], num_items)
  order = np.argsort(out[INDEX])
  return {k: v[order] for k, v in out.items()}


def shard_files(cache_dir: str, num_items: int) -> list[tuple[str, np.ndarray]]:
  """(path, item indices) of every shard of a finished cache, reading only the `index` arrays;
  DataError unless they cover 0..num_items-1 exactly once."""
  out = []
  for name in _shard_names(cache_dir):
    path = os.path.join(cache_dir, name)
    try:
      with paths.load_npz(path, allow_pickle=False) as f:
        out.append((path, np.asarray(f[INDEX])))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
      raise DataError(f"{path}: unreadable shard ({type(err).__name__}); run the generating "
                      "stage again to remake it") from None
  _check_coverage(cache_dir, np.concatenate([i for _, i in out]), num_items)
  return out


def open_member(path: str, name: str) -> np.ndarray:
  """Array `name` of the .npz shard at `path`: memory-mapped when the file is local and the
  member stored uncompressed (how `build_shards` writes them), so reading a row touches only
  that row's bytes; otherwise read whole."""
  if not paths.is_url(path):
    local = paths.local(path)
    with zipfile.ZipFile(local) as z:
      info = z.getinfo(f"{name}.npy")
    if info.compress_type == zipfile.ZIP_STORED:
      with open(local, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # the zip local file header: its name and extra field lengths follow
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        with paths.NPY_HEADER_LOCK:
          shape, fortran, dtype = read_header(f)
        offset = f.tell()
      if dtype.hasobject:
        raise DataError(f"{path}: member {name!r} holds Python objects; expected a numeric array")
      return np.memmap(local, dtype=dtype, mode="r", shape=shape, offset=offset,
                       order="F" if fortran else "C")
  with paths.load_npz(path, allow_pickle=False) as f:
    return np.asarray(f[name])
