"""The NMR (Neural 3D Mesh Renderer) data set of ShapeNet renderings, read from disk.

Paper 000 (Sec. IV) uses NMR: the 13 largest ShapeNet classes rendered at 64x64 from 24 fixed
views, of which 4 are used (front, right, back, left: views 0, 6, 12, 18 at 15 degrees apart).
Supported layout (the ShapeNet-NMR release used by DVR / pixelNeRF):

  <root>/<synset>/<object_id>/image/0000.png ... 0023.png    (one PNG per view)
  <root>/<synset>/<object_id>/cameras.npz                     (world_mat_<v>, camera_mat_<v>)
  <root>/<synset>/train.lst | val.lst | test.lst              (object ids, one a line), or
  <root>/<synset>/softras_train.lst | softras_val.lst | softras_test.lst

Synset folders (sorted) are the classes. Without list files the objects of each synset are
split train/val/test by a seeded permutation with `split_fractions`.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from jaxgen.data.folder import decode_image
from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError
from jaxgen.io import paths

# ShapeNet synset id -> class name for the 13 NMR classes.
SYNSET_NAMES = {
    "02691156": "airplane", "02828884": "bench", "02933112": "cabinet", "02958343": "car",
    "03001627": "chair", "03211117": "display", "03636649": "lamp", "03691459": "loudspeaker",
    "04090254": "rifle", "04256520": "sofa", "04379243": "table", "04401088": "telephone",
    "04530566": "watercraft",
}
FRONT_RIGHT_BACK_LEFT = (0, 6, 12, 18)
_SPLITS = ("train", "val", "test")


def _read_list(path: str) -> list[str]:
  with paths.open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]


def _find_list(synset_dir: str, split: str, list_prefix: str | None) -> str | None:
  prefixes = ("", "softras_") if list_prefix is None else (list_prefix,)
  for prefix in prefixes:
    path = os.path.join(synset_dir, f"{prefix}{split}.lst")
    if paths.isfile(path):
      return path
  return None


def list_nmr_objects(root: str, split: str, *, seed: int = 0,
                     split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     list_prefix: str | None = None, classes: Sequence[str] | None = None
                     ) -> tuple[list[str], list[tuple[str, int]]]:
  """Returns (synset ids, [(object folder, label)]) of one split (layout in the module doc)."""
  if split not in _SPLITS:
    raise ConfigError("data.split", split, f"one of {', '.join(_SPLITS)} for source 'nmr'")
  if not paths.isdir(root):
    raise DataError(f"{root}: NMR root folder does not exist")
  synsets = sorted(d for d in paths.listdir(root)
                   if paths.isdir(os.path.join(root, d)) and not d.startswith("."))
  if classes is not None:
    missing = [c for c in classes if c not in synsets]
    if missing:
      raise DataError(f"{root}: class folder(s) {missing} not found (have {synsets})")
    synsets = sorted(classes)
  if not synsets:
    raise DataError(f"{root}: no synset folders; expected <root>/<synset>/<object>/image/0000.png")
  fractions = np.asarray(split_fractions, np.float64)
  if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
    raise ConfigError("data.split_fractions", tuple(split_fractions),
                      "three non-negative fractions (train, val, test) summing to 1")
  objects: list[tuple[str, int]] = []
  for label, synset in enumerate(synsets):
    sdir = os.path.join(root, synset)
    list_path = _find_list(sdir, split, list_prefix)
    if list_path is not None:
      ids = _read_list(list_path)
    else:
      others = [sp for sp in _SPLITS if _find_list(sdir, sp, list_prefix) is not None]
      if others:  # a seeded split here could overlap the listed objects of the other splits
        raise DataError(f"{sdir}: has list files for {others} but none for split '{split}'")
      all_ids = sorted(d for d in paths.listdir(sdir)
                       if paths.isdir(os.path.join(sdir, d, "image")))
      # Seed folded with the class index so each synset gets its own permutation.
      perm = np.random.default_rng([seed, label]).permutation(len(all_ids))
      bounds = np.rint(np.cumsum(fractions) * len(all_ids)).astype(int)
      start = 0 if split == "train" else bounds[_SPLITS.index(split) - 1]
      ids = [all_ids[i] for i in np.sort(perm[start:bounds[_SPLITS.index(split)]])]
    if not ids:
      raise DataError(f"{sdir}: class '{synset}' has no objects in split '{split}'")
    for obj in ids:
      odir = os.path.join(sdir, obj)
      if not paths.isdir(os.path.join(odir, "image")):
        raise DataError(f"{odir}: object listed for split '{split}' has no image/ folder")
      objects.append((odir, label))
  return synsets, objects


class NMRSource(Source):
  """NMR objects; records {'images' uint8 [V, H, W, 3], 'label'} (view_mode='all') or
  {'image' [H, W, 3], 'view' (position in `views`), 'label', 'images'} (view_mode='random_one':
  one seeded random view per object, the NMR_c / NMR_e sets of paper 000 Sec. IV) or
  {'image', 'view', 'label'} per (object, view) pair, object-major (view_mode='each').
  With with_cameras, records also hold 'world_mat' and 'camera_mat' [V, ...] float32.
  """

  def __init__(self, objects: list[tuple[str, int]], synsets: list[str], *,
               views: Sequence[int], view_mode: str, seed: int, with_cameras: bool,
               image_size: int | None, alpha: str, name: str):
    self.objects, self.views, self.name = objects, tuple(int(v) for v in views), name
    self.view_mode, self.seed, self.with_cameras = view_mode, int(seed), with_cameras
    self.size, self.alpha = image_size, alpha
    self.num_classes = len(synsets)
    self.class_names = tuple(SYNSET_NAMES.get(s, s) for s in synsets)
    # NMR renders share one size: read it from the first view so batches need no resize.
    hw = (image_size, image_size) if image_size else self._first_size()
    if view_mode == "all":
      self.image_key, self.image_shape = "images", (len(self.views), *hw, 3)
    else:
      self.image_key, self.image_shape = "image", (*hw, 3)
    self._labels = np.asarray([lab for _, lab in objects], np.int32)

  def __len__(self) -> int:
    return len(self.objects) * (len(self.views) if self.view_mode == "each" else 1)

  def _first_size(self) -> tuple[int, int]:
    path = os.path.join(self.objects[0][0], "image", f"{self.views[0]:04d}.png")
    if not paths.isfile(path):
      raise DataError(f"{path}: view {self.views[0]} of object {self.objects[0][0]} does not exist")
    return tuple(decode_image(path, channels=3, alpha=self.alpha).shape[:2])

  def labels(self) -> np.ndarray:
    return np.repeat(self._labels, len(self.views)) if self.view_mode == "each" else self._labels

  def chosen_view(self, index: int) -> int:
    """Position in `views` of the seeded random view of object `index` (view_mode='random_one')."""
    return int(np.random.default_rng([self.seed, int(index)]).integers(len(self.views)))

  def _frame(self, odir: str, v: int) -> np.ndarray:
    path = os.path.join(odir, "image", f"{v:04d}.png")
    if not paths.isfile(path):
      raise DataError(f"{path}: view {v} of object {odir} does not exist")
    frame = decode_image(path, channels=3, alpha=self.alpha)
    if self.size:
      from jaxgen.data.pipeline import resize_center_crop  # pylint: disable=import-outside-toplevel
      frame = resize_center_crop(frame, self.size)
    if frame.shape != (*self.image_shape[-3:-1], 3):
      raise DataError(f"{path}: view size {frame.shape[:2]}; expected {self.image_shape[-3:-1]} "
                      "like the first object (or set image_size)")
    return frame

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if self.view_mode == "each":  # record k: view k % V of object k // V; one PNG decoded
      k = self._index(index)
      i, position = divmod(k, len(self.views))
      odir, label = self.objects[i]
      return {"image": self._frame(odir, self.views[position]),
              "view": np.asarray(position, np.int32), "label": self._check_label(label, odir)}
    i = self._index(index)
    odir, label = self.objects[i]
    frames = [self._frame(odir, v) for v in self.views]
    record = {"images": np.stack(frames), "label": self._check_label(label, odir)}
    if self.view_mode == "random_one":
      view = self.chosen_view(i)
      record["image"], record["view"] = record["images"][view], np.asarray(view, np.int32)
    if self.with_cameras:
      record.update(self._cameras(odir))
    return record

  def _cameras(self, odir: str) -> dict[str, np.ndarray]:
    path = os.path.join(odir, "cameras.npz")
    try:
      with paths.load_npz(path) as npz:
        return {key: np.stack([npz[f"{key}_{v}"] for v in self.views]).astype(np.float32)
                for key in ("world_mat", "camera_mat")}
    except FileNotFoundError:
      raise DataError(f"{path}: cameras file does not exist") from None
    except KeyError as err:
      raise DataError(f"{path}: missing camera entry {err}") from None
    except (OSError, ValueError) as err:
      raise DataError(f"{path}: unreadable cameras file ({err})") from None


def nmr_source(split: str, *, data_dir: str | None = None,
               views: Sequence[int] = FRONT_RIGHT_BACK_LEFT, num_views_total: int = 24,
               view_mode: str = "all", seed: int = 0,
               split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
               list_prefix: str | None = None, classes: Sequence[str] | None = None,
               with_cameras: bool = False, image_size: int | None = None,
               alpha: str = "white") -> NMRSource:
  """An NMR split 'train' / 'val' / 'test' (layout and record format in the module docstring).

  Options: views (subset of 0..num_views_total-1; default front/right/back/left), view_mode
  ('all', 'random_one', or 'each': one record per (object, view), for training on views), seed (random view and fallback split), split_fractions, list_prefix
  ('' or 'softras_'; default: try both), classes (synset ids to keep), with_cameras,
  image_size (resize + centre crop), alpha ('white' composites RGBA renders over white).
  """
  if not data_dir:
    raise ConfigError("data.data_dir", data_dir, "the NMR root folder (<root>/<synset>/...)")
  views = tuple(int(v) for v in views)
  if not views or any(not 0 <= v < num_views_total for v in views) or len(set(views)) != len(views):
    raise ConfigError("data.views", views, f"distinct view ids in [0, {num_views_total})")
  if view_mode not in ("all", "random_one", "each"):
    raise ConfigError("data.view_mode", view_mode, "'all', 'random_one' or 'each'")
  synsets, objects = list_nmr_objects(data_dir, split, seed=seed, split_fractions=split_fractions,
                                      list_prefix=list_prefix, classes=classes)
  return NMRSource(objects, synsets, views=views, view_mode=view_mode, seed=seed,
                   with_cameras=with_cameras, image_size=image_size, alpha=alpha,
                   name=f"nmr:{data_dir}/{split}")
