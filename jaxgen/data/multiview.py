"""NMR-like splits of rendered multi-view objects (paper 000 sec. IV; paper 001 sec. 4.4).

`build_multiview_splits` renders disjoint sets of objects with `jaxgen.data.renderer` and returns
  'train'            (NMR_d) all V views per object, for the autoencoder / diffusion model;
  'classifier_train' (NMR_c) one random view per object, for training classifiers;
  'classifier_eval'  (NMR_e) one random view per object, for evaluating classifiers;
  'test'             held-out objects with all V views, for evaluating generation.
Object ids are contiguous blocks: train [0, n), classifier_train [n, 2n), classifier_eval
[2n, 2n + m), test [2n + m, 2n + 2m), with n = num_train and m = num_test.

variant="plain" renders every object on a white background (as NMR does); variant="background_shift" mimics Waterbird (paper 001 sec. 4.4): the classes fall into the two
groups of `SHAPE_GROUPS`; in 'train' / 'classifier_train' a group-0 object lies on a "water"
background with probability SHIFT_CORRELATION (else "land") and a group-1 object on "land" with
that probability; in 'classifier_eval' / 'test' the correlation is swapped.

Results are cached in `data_dir` as one .npz per configuration, named by a hash of every
parameter and the renderer / split versions, written atomically (temp file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile

import numpy as np

from jaxgen.data import renderer
from jaxgen.errors import ConfigError
from jaxgen.io.files import atomic_save_npz
from jaxgen.io import paths

SPLITS: tuple[str, ...] = ("train", "classifier_train", "classifier_eval", "test")
SINGLE_VIEW_SPLITS: tuple[str, ...] = ("classifier_train", "classifier_eval")
VARIANTS: tuple[str, ...] = ("standard", "background_shift", "plain")
SHIFT_CORRELATION = 0.95
# Bump when the split layout or the per-object choices (view, background) change.
SPLITS_VERSION = 1
_SPLIT_STREAM = 0x5B17  # Per-object view / background draws, apart from the renderer's own.
_BG = {name: i for i, name in enumerate(renderer.BACKGROUND_TYPES)}

_log = logging.getLogger(__name__)


def split_object_ids(num_train: int, num_test: int) -> dict[str, np.ndarray]:
  """Disjoint contiguous object-id blocks of the four splits (see module docstring)."""
  sizes = (num_train, num_train, num_test, num_test)
  bounds = np.cumsum((0,) + sizes)
  return {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64)
          for i, name in enumerate(SPLITS)}


def background_codes(seed: int, object_ids: np.ndarray, labels: np.ndarray, split: str,
                     variant: str) -> np.ndarray:
  """Background code (index into renderer.BACKGROUND_TYPES) of each object of `split`.

  standard: "random" for every object. background_shift: the group's preferred background
  (group 0 -> water, group 1 -> land in training splits, swapped in evaluation splits) with
  probability SHIFT_CORRELATION, decided by a per-object uniform from (seed, id).
  """
  if variant == "standard":
    return np.full(object_ids.shape, _BG["random"], np.int32)
  if variant == "plain":  # white background, as NMR's renders
    return np.full(object_ids.shape, _BG["plain"], np.int32)
  group = np.asarray(renderer.SHAPE_GROUPS)[labels]
  swapped = split not in ("train", "classifier_train")
  prefers_water = (group == 0) != swapped
  u = renderer.object_uniforms(seed, object_ids, _SPLIT_STREAM)[:, 1]
  water = np.where(u < SHIFT_CORRELATION, prefers_water, ~prefers_water)
  return np.where(water, _BG["water"], _BG["land"]).astype(np.int32)


def _cache_key(params: dict) -> str:
  blob = json.dumps(params, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:20]


def _expected(params: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Stored arrays with their shapes and dtypes ('image' is derived from 'images' on load)."""
  v, s = params["num_views"], params["image_size"]
  out = {}
  for name, ids in split_object_ids(params["num_train"], params["num_test"]).items():
    n = ids.size
    out[f"{name}/images"] = ((n, v, s, s, 3), np.dtype(np.uint8))
    out[f"{name}/{'label' if name in SINGLE_VIEW_SPLITS else 'labels'}"] = ((n,), np.dtype(np.int32))
    out[f"{name}/background"] = ((n,), np.dtype(np.int32))
    out[f"{name}/object_id"] = ((n,), np.dtype(np.int64))
    if name in SINGLE_VIEW_SPLITS:
      out[f"{name}/view"] = ((n,), np.dtype(np.int32))
  return out


def _render(params: dict) -> dict[str, np.ndarray]:
  """Renders every split in one renderer call (grouping by class spans all splits)."""
  seed, variant = params["seed"], params["variant"]
  ids = split_object_ids(params["num_train"], params["num_test"])
  all_ids = np.concatenate(list(ids.values()))
  labels = renderer.object_labels(all_ids)
  bgs, start = [], 0
  for name, split_ids in ids.items():
    bgs.append(background_codes(seed, split_ids, labels[start:start + split_ids.size], name,
                                variant))
    start += split_ids.size
  out = renderer.render_objects(seed, all_ids, np.concatenate(bgs),
                                num_views=params["num_views"], image_size=params["image_size"],
                                elevation_deg=params["elevation_deg"])
  views = np.minimum(
      np.floor(renderer.object_uniforms(seed, all_ids, _SPLIT_STREAM)[:, 0] * params["num_views"]),
      params["num_views"] - 1).astype(np.int32)
  flat, start = {}, 0
  for (name, split_ids), bg in zip(ids.items(), bgs):
    sl = slice(start, start + split_ids.size)
    start += split_ids.size
    flat[f"{name}/images"] = out["images"][sl]
    flat[f"{name}/{'label' if name in SINGLE_VIEW_SPLITS else 'labels'}"] = labels[sl]
    flat[f"{name}/background"] = bg
    flat[f"{name}/object_id"] = split_ids
    if name in SINGLE_VIEW_SPLITS:
      flat[f"{name}/view"] = views[sl]
  return flat


def _load(path: str, params: dict) -> dict[str, np.ndarray]:
  """Reads a cache file fully (zip CRCs catch corruption) and checks keys, shapes, dtypes."""
  with paths.load_npz(path, allow_pickle=False) as npz:
    meta = json.loads(bytes(npz["__meta__"]).decode())
    if meta != params:
      raise ValueError(f"parameters {meta} differ from the requested {params}")
    flat = {}
    for key, (shape, dtype) in _expected(params).items():
      arr = npz[key]
      if arr.shape != shape or arr.dtype != dtype:
        raise ValueError(f"{key} has {arr.shape} {arr.dtype}, expected {shape} {dtype}")
      flat[key] = arr
  return flat


def _save(path: str, flat: dict[str, np.ndarray], params: dict) -> None:
  """Atomic write (`jaxgen.io.files.atomic_save_npz`): the parameters ride along as `__meta__`."""
  meta = np.frombuffer(json.dumps(params, sort_keys=True).encode(), np.uint8)
  atomic_save_npz(path, __meta__=meta, **flat)


def _unflatten(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  splits: dict[str, dict[str, np.ndarray]] = {name: {} for name in SPLITS}
  for key, arr in flat.items():
    name, field = key.split("/")
    splits[name][field] = arr
  for name in SINGLE_VIEW_SPLITS:
    split = splits[name]
    split["image"] = split["images"][np.arange(split["view"].size), split["view"]]
  return splits


def cache_path(data_dir: str, params: dict) -> str:
  """Cache file of a configuration: `<data_dir>/multiview_<variant>_<hash>.npz`."""
  return os.path.join(data_dir, f"multiview_{params['variant']}_{_cache_key(params)}.npz")


def build_multiview_splits(data_dir: str | None, *, seed: int = 0, num_train: int, num_test: int,
                           num_views: int = 4, image_size: int = 64,
                           variant: str = "standard") -> dict[str, dict[str, np.ndarray]]:
  """NMR-like disjoint-object splits (paper 000 sec. IV), cached in `data_dir` (None: no cache).

  Returns {split: arrays}: 'train' and 'test' have 'images' uint8 [N, V, H, W, 3] and 'labels'
  int32 [N]; 'classifier_train' and 'classifier_eval' have 'image' [N, H, W, 3] (one random view),
  'view' int32 [N] (its index), 'label' int32 [N] and 'images' [N, V, H, W, 3] (all true views).
  Every split also has 'background' int32 [N] (index into renderer.BACKGROUND_TYPES) and
  'object_id' int64 [N]. A corrupt or mismatching cache file is reported in one log line and
  rebuilt.
  """
  if variant not in VARIANTS:
    raise ConfigError("variant", variant, f"one of {VARIANTS}")
  for key, value in (("num_train", num_train), ("num_test", num_test)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise ConfigError(key, value, "a non-negative integer")
  params = {"renderer_version": renderer.RENDERER_VERSION, "splits_version": SPLITS_VERSION,
            "seed": int(seed), "num_train": int(num_train), "num_test": int(num_test),
            "num_views": int(num_views), "image_size": int(image_size), "variant": variant,
            "elevation_deg": 20.0, "shift_correlation": SHIFT_CORRELATION}
  if data_dir is None:
    return _unflatten(_render(params))
  path = cache_path(data_dir, params)
  if paths.exists(path):
    try:
      return _unflatten(_load(path, params))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError,
            UnicodeDecodeError) as err:
      _log.warning("multiview cache %s is unreadable (%s: %s); rebuilding it", path,
                   type(err).__name__, str(err).splitlines()[0] if str(err) else "")
  flat = _render(params)
  _save(path, flat, params)
  return _unflatten(flat)
