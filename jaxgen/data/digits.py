"""scikit-learn's digits (1,797 8x8 images, 10 classes) as an in-memory source.

The data ship inside scikit-learn (no download), which makes them the smallest real image set
for smoke runs of every method. Pixel values 0..16 are mapped to uint8 by round(v * 255 / 16),
optionally resized with bilinear interpolation, and split train/test by a seeded stratified split.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from jaxgen.data.sources import ArraySource
from jaxgen.errors import ConfigError

_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  bunch = load_digits()
  return bunch.images.astype(np.float32), bunch.target.astype(np.int32)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes float images [N, H, W] to [N, size, size] with PIL's bilinear filter (float32).

  Resizing in float ('F' mode) and rounding once afterwards avoids a double quantisation.
  """
  out = np.empty((len(images), size, size), np.float32)
  for i, img in enumerate(images):
    out[i] = np.asarray(Image.fromarray(img, mode="F").resize((size, size), Image.BILINEAR))
  return out


def digits_arrays(*, image_size: int = 8, channels: int = 3) -> dict[str, np.ndarray]:
  """All 1,797 digits as {'image' uint8 [N, S, S, channels], 'label' int32 [N]}.

  uint8 value = round(clip(v, 0, 16) * 255 / 16) of the (optionally bilinearly resized) 0..16
  intensities; channels=3 repeats the gray value into RGB.
  """
  if channels not in (1, 3):
    raise ConfigError("data.channels", channels, "1 (grayscale) or 3 (RGB)")
  if int(image_size) < 1:
    raise ConfigError("data.image_size", image_size, "a positive image side in pixels")
  images, labels = _load_digits()
  if image_size != images.shape[1]:
    images = resize_bilinear(images, int(image_size))
  u8 = np.rint(np.clip(images, 0.0, 16.0) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  if channels == 3:
    u8 = np.repeat(u8, 3, axis=-1)
  return {"image": u8, "label": labels.copy()}


def digits_split_indices(labels: np.ndarray, *, seed: int, test_fraction: float
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Seeded stratified train/test split (scikit-learn `train_test_split`), sorted indices."""
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel
  if not 0.0 < test_fraction < 1.0:
    raise ConfigError("data.test_fraction", test_fraction, "a fraction in (0, 1)")
  train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                 random_state=seed, stratify=labels)
  return np.sort(train), np.sort(test)


def digits_source(split: str, *, data_dir: str | None = None, image_size: int = 8,
                  channels: int = 3, seed: int = 0, test_fraction: float = 0.2) -> ArraySource:
  """The scikit-learn digits split 'train', 'test' or 'all' (data_dir is unused).

  Options: image_size (bilinear resize, e.g. 32), channels (3 = RGB, 1 = gray), seed and
  test_fraction of the stratified split (same seed -> same split).
  """
  del data_dir  # bundled with scikit-learn
  if split not in _SPLITS:
    raise ConfigError("data.split", split, f"one of {', '.join(_SPLITS)} for source 'digits'")
  arrays = digits_arrays(image_size=image_size, channels=channels)
  if split != "all":
    train, test = digits_split_indices(arrays["label"], seed=seed, test_fraction=test_fraction)
    idx = train if split == "train" else test
    arrays = {k: v[idx] for k, v in arrays.items()}
  return ArraySource(arrays, num_classes=10, class_names=[str(d) for d in range(10)],
                     name=f"digits/{split}")
