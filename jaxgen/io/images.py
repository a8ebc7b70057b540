"""Image grids and PNG files (uint8 HWC at the edges, as everywhere in jaxgen)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from jaxgen.io.files import atomic_write_bytes


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Map float images in [-1, 1] to uint8 [0, 255]; uint8 input is returned unchanged."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1,
               pad_value: int = 255) -> np.ndarray:
  """Tile [N, H, W, C] (or [R, C, H, W, ch] rows x columns) uint8 images into one HWC image."""
  images = to_uint8(images)
  if images.ndim == 5:
    rows, cols = images.shape[:2]
    images = images.reshape((rows * cols,) + images.shape[2:])
    ncols = cols
  n, h, w, c = images.shape
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def encode_png(image: np.ndarray) -> bytes:
  image = to_uint8(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path: str, image: np.ndarray) -> None:
  """Write one uint8 HWC (or HW) image as PNG, atomically."""
  atomic_write_bytes(path, encode_png(image))
