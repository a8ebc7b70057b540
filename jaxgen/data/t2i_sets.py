"""Embedded text-to-image data sets for the Stable-Diffusion-like backbone and Diff-Mix (paper 001).

Every set is a pure function of its arguments (seed -> arrays), rendered by
`jaxgen.data.renderer` with a single front-facing camera, so nothing is downloaded:

* `pretraining_set`: the stand-in for vanilla SD's pre-training data. Classes are (colour word,
  solid) pairs over the 12 solids of `SHAPE_CLASSES` (the metaclasses) and `COLOUR_WORDS`;
  prompts "a photo of a red cube". The object's front hue lies in the colour word's hue band.
* `fine_grained_set`: the CUB-like target domain. `num_classes` classes of ONE metaclass (a cube
  by default) that differ only by subtle two-tone markings: class c has a fixed front hue and a
  fixed back-hue offset, with small per-object jitter. Front hues sit in the teal gap between
  the "green" and "blue" bands, so no single pre-training colour word names a class; all
  prompts are the bare "a photo of a cube" (Diff-Mix later writes "a photo of a [V_c] cube").
* `fine_grained_long_tail_set`: the CUB-LT-like subset (`jaxgen.data.imbalance.long_tail_indices`).
* `background_shift_set`: the Waterbirds-like variant of the fine-grained set: the first half of
  the classes are "land" classes, the rest "water" classes; training backgrounds follow the class
  group except for a `minority_fraction`, test backgrounds are balanced and independent of class.

Pose: pre-training objects face the camera (yaw within +-45 degrees), so the front colour that
the prompt names dominates the view; fine-grained objects are seen side-on (yaw 90 +- 30
degrees), so both tones of their markings are always in view. Each set (and split) uses its own
block of renderer object ids, so no two sets share an object; per-object choices that are not
renderer parameters (the background in the shift set) come from a separate uniform stream.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from jaxgen.data import renderer
from jaxgen.data.imbalance import long_tail_indices
from jaxgen.errors import ConfigError

SHAPE_CLASSES = renderer.SHAPE_CLASSES
# Prompt words of the solids: "hexagonal_prism" -> "hexagonal prism".
SHAPE_WORDS: tuple[str, ...] = tuple(name.replace("_", " ").lower() for name in SHAPE_CLASSES)
# Colour words of the pre-training set and their front-hue bands (centre, half width), in turns
# of the HSV hue circle. Gaps between bands keep neighbouring words apart after jitter.
COLOUR_WORDS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
COLOUR_BANDS: dict[str, tuple[float, float]] = {
    "red": (0.0, 0.025), "orange": (0.075, 0.02), "yellow": (0.155, 0.02),
    "green": (0.33, 0.06), "blue": (0.61, 0.05), "purple": (0.77, 0.04)}
DEFAULT_METACLASS = "cube"
MAX_FINE_CLASSES = 16
# Fine-grained class c: front hue level c // 2 of A = ceil(K / 2) levels spread evenly over
# FINE_HUE_CENTRE +- FINE_HUE_SPAN / 2 = [0.405, 0.545], the teal gap between the "green" and
# "blue" bands (0.015 from each), and back-hue parameter back_dh = FINE_BACK_DH[c % 2] (back hue
# = front + 0.3 + 0.4 back_dh, see renderer). At K = 10 the levels are 0.035 turns apart, what a
# small CNN judge trained on 40 images per class reads (test accuracy 0.815; 0.525 at 0.02 turns
# with back offsets 0.46 / 0.54, where only a hand-made hue histogram still separated them):
# CUB-like, the species are subtle for the prompts but learnable from images. K = 16 has 0.02.
FINE_HUE_CENTRE = 0.475
FINE_HUE_SPAN = 0.14
FINE_HUE_JITTER = 0.005      # half width of the uniform per-object jitter, in turns
FINE_BACK_DH = (0.25, 0.75)  # back hue offsets 0.40 and 0.60 turns
FINE_BACK_JITTER = 0.025     # half width in back_dh units (0.01 turns of back hue)
PRETRAIN_YAW = (0.0, 0.125)  # (centre, half range) in turns: front faces the camera, +-45 deg
FINE_YAW = (0.25, 1 / 12)    # side-on, 90 +- 30 deg: front and back markings both in view
BACKGROUND_LAND = renderer.BACKGROUND_TYPES.index("land")
BACKGROUND_WATER = renderer.BACKGROUND_TYPES.index("water")
BACKGROUND_RANDOM = renderer.BACKGROUND_TYPES.index("random")
GROUP_NAMES: tuple[str, ...] = ("land_class/land", "land_class/water", "water_class/land",
                                "water_class/water")

_STREAM = 0x7215           # per-object draws of these sets that are not renderer parameters
_BLOCK_BITS = 24           # each (set, split) owns object ids [block << 24, (block + 1) << 24)
_BLOCKS = {("pretraining", "train"): 1, ("fine_grained", "train"): 2,
           ("fine_grained", "test"): 3, ("background_shift", "train"): 4,
           ("background_shift", "test"): 5}
_SPLITS = ("train", "test")
_KEY = "t2i_data"


def photo_prompt(noun_phrase: str) -> str:
  """'a photo of a red cube' / 'a photo of an orange box' / 'a photo of a <v1> box'."""
  article = "an" if noun_phrase[:1].lower() in "aeiou" else "a"
  return f"a photo of {article} {noun_phrase}"


# --------------------------------------------------------------------------- validation

def _int_arg(name: str, value: Any, lo: int, hi: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
    raise ConfigError(f"{_KEY}.{name}", value, f"an integer in [{lo}, {hi}]")
  return int(value)


def _check_common(seed: Any, image_size: Any) -> tuple[int, int]:
  return _int_arg("seed", seed, 0, 2**32 - 1), _int_arg("image_size", image_size, 8, 256)


def _metaclass_index(metaclass: Any) -> int:
  if metaclass not in SHAPE_CLASSES:
    raise ConfigError(f"{_KEY}.metaclass", metaclass, f"one of {SHAPE_CLASSES}")
  return SHAPE_CLASSES.index(metaclass)


def _check_split(split: Any) -> str:
  if split not in _SPLITS:
    raise ConfigError(f"{_KEY}.split", split, f"one of {_SPLITS}")
  return split


def _number_arg(name: str, value: Any, lo: float, hi: float) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
    raise ConfigError(f"{_KEY}.{name}", value, f"a number in [{lo}, {hi}]")
  return float(value)


def _object_ids(block: tuple[str, str], num_objects: int, key: str = "num_per_class"
                ) -> np.ndarray:
  if num_objects >= 1 << _BLOCK_BITS:
    raise ConfigError(f"{_KEY}.{key}", num_objects,
                      f"fewer than {1 << _BLOCK_BITS} objects in all")
  return (_BLOCKS[block] << _BLOCK_BITS) + np.arange(num_objects, dtype=np.int64)


# --------------------------------------------------------------------------- shared helpers

def _wrap(x: np.ndarray) -> np.ndarray:
  """x mod 1 in [0, 1) (float rounding of a tiny negative x would otherwise give 1.0)."""
  r = np.mod(x, 1.0)
  return np.where(r >= 1.0, 0.0, r)


def _band(u: np.ndarray, centre: np.ndarray | float, half_width: np.ndarray | float) -> np.ndarray:
  """Uniform u in [0, 1) -> centre + half_width * (2u - 1), wrapped onto the hue circle."""
  return _wrap(centre + half_width * (2.0 * u - 1.0))


def _common_overrides(u: np.ndarray, yaw: tuple[float, float]) -> dict[str, np.ndarray]:
  """Yaw uniform in centre +- half range (turns) and a vivid front colour (saturation >= 0.63,
  value >= 0.76)."""
  col = renderer.UNIFORM_COLUMNS
  return {"yaw": _band(u[:, col["yaw"]], yaw[0], yaw[1]),
          "front_s": 0.4 + 0.6 * u[:, col["front_s"]],
          "front_v": 0.4 + 0.6 * u[:, col["front_v"]]}


def _render(seed: int, ids: np.ndarray, backgrounds: np.ndarray | int, image_size: int,
            overrides: dict[str, np.ndarray], shape_classes: np.ndarray | int
            ) -> dict[str, np.ndarray]:
  out = renderer.render_objects(seed, ids, backgrounds, num_views=1, image_size=image_size,
                                uniforms_override=overrides,
                                shape_classes=np.broadcast_to(shape_classes, ids.shape))
  return {"images": out["images"][:, 0], "masks": out["masks"][:, 0]}


# --------------------------------------------------------------------------- pre-training set

def pretraining_set(seed: int, num_per_class: int, image_size: int = 32) -> dict[str, Any]:
  """Vanilla-SD stand-in: every (colour word, solid) pair, `num_per_class` objects each.

  Class `k = shape * len(COLOUR_WORDS) + colour`, named "red sphere" etc.; prompt
  "a photo of a red sphere". The front hue is uniform in the colour's `COLOUR_BANDS` band,
  saturation and value vivid; the back colour, size, proportions and the random floor/sky
  background are free. Objects are interleaved by class (object j has class j mod K).

  Returns 'images' uint8 [N, H, W, 3], 'masks' bool [N, H, W], 'labels' int32 [N],
  'metaclass' int32 [N] (index into SHAPE_CLASSES), 'colours' int32 [N] (index into
  COLOUR_WORDS), 'prompts' list[str] [N], 'class_names' list[str] [K], 'metaclass_names'
  (SHAPE_WORDS), 'colour_names' (COLOUR_WORDS), 'object_ids' int64 [N], 'backgrounds' int32 [N].
  """
  seed, image_size = _check_common(seed, image_size)
  num_per_class = _int_arg("num_per_class", num_per_class, 1, 1 << _BLOCK_BITS)
  n_col = len(COLOUR_WORDS)
  k = len(SHAPE_CLASSES) * n_col
  ids = _object_ids(("pretraining", "train"), num_per_class * k)
  labels = (np.arange(ids.size) % k).astype(np.int32)
  shape, colour = labels // n_col, labels % n_col
  u = renderer.object_uniforms(seed, ids)
  centre = np.array([COLOUR_BANDS[c][0] for c in COLOUR_WORDS])[colour]
  half = np.array([COLOUR_BANDS[c][1] for c in COLOUR_WORDS])[colour]
  overrides = _common_overrides(u, PRETRAIN_YAW)
  overrides["front_h"] = _band(u[:, renderer.UNIFORM_COLUMNS["front_h"]], centre, half)
  backgrounds = np.full(ids.shape, BACKGROUND_RANDOM, np.int32)
  out = _render(seed, ids, backgrounds, image_size, overrides, shape)
  class_names = [f"{c} {s}" for s in SHAPE_WORDS for c in COLOUR_WORDS]
  out.update(labels=labels, metaclass=shape.astype(np.int32), colours=colour.astype(np.int32),
             prompts=[photo_prompt(class_names[i]) for i in labels], class_names=class_names,
             metaclass_names=list(SHAPE_WORDS), colour_names=list(COLOUR_WORDS),
             object_ids=ids, backgrounds=backgrounds)
  return out


# --------------------------------------------------------------------------- fine-grained set

def fine_grained_class_hues(num_classes: int) -> np.ndarray:
  """[K, 2] float: each class's front hue and back hue (turns) before per-object jitter."""
  k = _int_arg("num_classes", num_classes, 2, MAX_FINE_CLASSES)
  levels = math.ceil(k / 2)
  c = np.arange(k)
  step = FINE_HUE_SPAN / max(levels - 1, 1)
  front = FINE_HUE_CENTRE + step * (c // 2 - (levels - 1) / 2)
  back_dh = np.asarray(FINE_BACK_DH)[c % 2]
  return np.stack([front, _wrap(front + 0.3 + 0.4 * back_dh)], -1)


def _fine_layout(block: tuple[str, str], num_per_class: int, num_classes: int,
                 key: str = "num_per_class") -> tuple[np.ndarray, np.ndarray]:
  """Object ids and labels (object j has class j mod K) without rendering."""
  ids = _object_ids(block, num_per_class * num_classes, key)
  return ids, (np.arange(ids.size) % num_classes).astype(np.int32)


def _fine_render(seed: int, ids: np.ndarray, labels: np.ndarray, backgrounds: np.ndarray,
                 num_classes: int, image_size: int, metaclass: str) -> dict[str, Any]:
  """Renders fine-grained objects of the given classes and adds the set's metadata."""
  meta = _metaclass_index(metaclass)
  hues = fine_grained_class_hues(num_classes)
  col = renderer.UNIFORM_COLUMNS
  u = renderer.object_uniforms(seed, ids)
  overrides = _common_overrides(u, FINE_YAW)
  overrides["front_h"] = _band(u[:, col["front_h"]], hues[labels, 0], FINE_HUE_JITTER)
  back_dh = np.asarray(FINE_BACK_DH)[labels % 2]
  overrides["back_dh"] = back_dh + FINE_BACK_JITTER * (2.0 * u[:, col["back_dh"]] - 1.0)
  out = _render(seed, ids, backgrounds, image_size, overrides, meta)
  word = SHAPE_WORDS[meta]
  out.update(labels=labels.astype(np.int32), prompts=[photo_prompt(word)] * ids.size,
             class_names=[f"class_{c:02d}" for c in range(num_classes)], metaclass_name=word,
             metaclass=meta, class_hues=hues, object_ids=ids,
             backgrounds=np.asarray(backgrounds, np.int32))
  return out


def fine_grained_set(seed: int, num_per_class: int, num_classes: int = 10, image_size: int = 32,
                     metaclass: str = DEFAULT_METACLASS, split: str = "train") -> dict[str, Any]:
  """CUB-like target set: `num_classes` classes of one metaclass told apart by subtle markings.

  Class c: front hue `fine_grained_class_hues(K)[c, 0]` +- FINE_HUE_JITTER and back offset
  FINE_BACK_DH[c % 2] +- FINE_BACK_JITTER (classes 2i and 2i+1 share the front hue and differ in
  the back, neighbouring pairs differ by FINE_HUE_SPAN / (ceil(K / 2) - 1) in front hue); everything else (size,
  proportions, back saturation / value, random background) is free. Class names are neutral
  ("class_00"), every prompt is "a photo of a {metaclass word}": the classes are not in the
  pre-training vocabulary. `split` 'train' and 'test' use disjoint objects.

  Returns 'images' uint8 [N, H, W, 3], 'masks' bool [N, H, W], 'labels' int32 [N] (object j has
  class j mod K), 'prompts', 'class_names', 'metaclass_name' (e.g. "box"), 'metaclass' (its index
  in SHAPE_CLASSES), 'class_hues' [K, 2], 'object_ids' int64 [N], 'backgrounds' int32 [N].
  """
  seed, image_size = _check_common(seed, image_size)
  num_per_class = _int_arg("num_per_class", num_per_class, 1, 1 << _BLOCK_BITS)
  num_classes = _int_arg("num_classes", num_classes, 2, MAX_FINE_CLASSES)
  _metaclass_index(metaclass)
  ids, labels = _fine_layout(("fine_grained", _check_split(split)), num_per_class, num_classes)
  backgrounds = np.full(ids.shape, BACKGROUND_RANDOM, np.int32)
  return _fine_render(seed, ids, labels, backgrounds, num_classes, image_size, metaclass)


def fine_grained_long_tail_set(seed: int, n_max: int, imbalance_factor: float,
                               num_classes: int = 10, image_size: int = 32,
                               metaclass: str = DEFAULT_METACLASS) -> dict[str, Any]:
  """CUB-LT-like subset: `long_tail_indices` of `fine_grained_set(seed, n_max, ...)` ('train').

  Class c keeps `long_tail_counts(K, n_max, imbalance_factor)[c]` objects (class 0 is the head),
  drawn with `seed`; only the kept objects are rendered. Same keys as `fine_grained_set`
  (restricted to the kept objects) plus 'indices' int64 [M], the kept rows of the balanced set.
  """
  seed, image_size = _check_common(seed, image_size)
  n_max = _int_arg("n_max", n_max, 1, 1 << _BLOCK_BITS)
  num_classes = _int_arg("num_classes", num_classes, 2, MAX_FINE_CLASSES)
  imbalance_factor = _number_arg("imbalance_factor", imbalance_factor, 1.0, 1e9)
  _metaclass_index(metaclass)
  ids, labels = _fine_layout(("fine_grained", "train"), n_max, num_classes, "n_max")
  sub = long_tail_indices(labels, seed=seed, imbalance_factor=imbalance_factor,
                          n_max=n_max, num_classes=num_classes)
  idx = sub.indices
  backgrounds = np.full(idx.shape, BACKGROUND_RANDOM, np.int32)
  out = _fine_render(seed, ids[idx], labels[idx], backgrounds, num_classes, image_size, metaclass)
  out["indices"] = idx
  return out


# --------------------------------------------------------------------------- background shift

def background_shift_set(seed: int, num_per_class: int, split: str = "train",
                         minority_fraction: float = 0.05, num_classes: int = 10,
                         image_size: int = 32, metaclass: str = DEFAULT_METACLASS
                         ) -> dict[str, Any]:
  """Waterbirds-like variant of the fine-grained classes (paper 001 Sec. 4.4).

  Class group g = 0 ("land classes") for labels c with 2c < K, else 1 ("water classes").
  'train': each object lies on its group's background (land / water) with probability
  1 - minority_fraction, else on the other, decided independently per object by a uniform of
  the set's own stream. 'test': exactly floor(n/2) of each class's n objects on water, the rest
  on land, chosen by a seeded per-class permutation (balanced and independent of the class).

  Returns the keys of `fine_grained_set` plus 'class_groups' int32 [N], 'groups' int32 [N] =
  2 * class_group + background_is_water (named by GROUP_NAMES, for worst-group accuracy) and
  'group_names'.
  """
  seed, image_size = _check_common(seed, image_size)
  num_per_class = _int_arg("num_per_class", num_per_class, 1, 1 << _BLOCK_BITS)
  num_classes = _int_arg("num_classes", num_classes, 2, MAX_FINE_CLASSES)
  split = _check_split(split)
  minority_fraction = _number_arg("minority_fraction", minority_fraction, 0.0, 0.5)
  _metaclass_index(metaclass)
  ids, labels = _fine_layout(("background_shift", split), num_per_class, num_classes)
  class_group = (2 * labels >= num_classes).astype(np.int32)
  draw = renderer.object_uniforms(seed, ids, _STREAM)[:, 0]
  if split == "train":
    water = np.where(draw < minority_fraction, class_group == 0, class_group == 1)
  else:
    water = np.zeros(ids.shape, bool)
    for c in range(num_classes):
      rows = np.flatnonzero(labels == c)
      water[rows[np.argsort(draw[rows], kind="stable")[:rows.size // 2]]] = True
  backgrounds = np.where(water, BACKGROUND_WATER, BACKGROUND_LAND).astype(np.int32)
  out = _fine_render(seed, ids, labels, backgrounds, num_classes, image_size, metaclass)
  out.update(class_groups=class_group, groups=(2 * class_group + water).astype(np.int32),
             group_names=list(GROUP_NAMES))
  return out
