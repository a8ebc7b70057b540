"""TrivialAugmentWide (Muller & Hutter 2021) as a pure, jittable JAX function.

Per image: one operation drawn uniformly, with a magnitude drawn uniformly from 31 bins of its
"wide" range, as torchvision's `TrivialAugmentWide` that paper 000 IV-A uses for the autoencoder.
Geometric ranges are expressed as fractions of the image size so that they mean the same at
16x16 and 224x224 (torchvision's 32-pixel translation is 1/7 of a 224 image; we use that ratio).
Images are float32 NHWC in [-1, 1].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast")
NUM_BINS = 31


def _affine(img: jax.Array, matrix: jax.Array) -> jax.Array:
  """Warp one HWC image by a 2x3 affine matrix about the centre (bilinear, edge pixels extended)."""
  h, w = img.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  coords = jnp.stack([xs - cx, ys - cy, jnp.ones_like(xs)], 0).reshape(3, -1)
  src = matrix @ coords  # sampling positions (inverse map)
  sx, sy = src[0] + cx, src[1] + cy

  def channel(c):
    return jax.scipy.ndimage.map_coordinates(c, [sy, sx], order=1, mode="nearest").reshape(h, w)

  return jnp.stack([channel(img[..., i]) for i in range(img.shape[-1])], -1)


def _grey(img: jax.Array) -> jax.Array:
  return (img @ jnp.asarray([0.299, 0.587, 0.114], img.dtype))[..., None]


def _blend(a: jax.Array, b: jax.Array, factor: jax.Array) -> jax.Array:
  return jnp.clip(b + factor * (a - b), -1.0, 1.0)


def _apply_op(img: jax.Array, op: jax.Array, level: jax.Array, sign: jax.Array) -> jax.Array:
  """img in [-1,1]; level in [0, 1]; sign +-1 for symmetric operations."""
  size = img.shape[0]
  shear = sign * 0.99 * level
  shift = sign * level * size / 7.0
  angle = sign * jnp.deg2rad(135.0) * level
  factor = 1.0 + sign * 0.99 * level
  u8 = (img + 1.0) * 127.5

  def affine(m):
    return _affine(img, jnp.asarray(m, jnp.float32))

  cos, sin = jnp.cos(angle), jnp.sin(angle)
  bits = jnp.round(8 - 6 * level)  # 8 .. 2 bits
  step = 2.0 ** (8 - bits)
  candidates = [
      img,
      affine([[1, shear, 0], [0, 1, 0]]),
      affine([[1, 0, 0], [shear, 1, 0]]),
      affine([[1, 0, shift], [0, 1, 0]]),
      affine([[1, 0, 0], [0, 1, shift]]),
      affine([[cos, -sin, 0], [sin, cos, 0]]),
      _blend(img, jnp.full_like(img, -1.0), factor),
      _blend(img, jnp.broadcast_to(_grey(img), img.shape), factor),
      _blend(img, jnp.full_like(img, _grey(img).mean()), factor),
      _blend(img, _smooth(img), factor),
      jnp.floor(jnp.round(u8) / step) * step / 127.5 - 1.0,
      jnp.where(u8 >= 255.0 * (1.0 - level), 255.0 - u8, u8) / 127.5 - 1.0,
      _autocontrast(img),
  ]
  return jax.lax.switch(op, [lambda c=c: c for c in candidates])


def _smooth(img: jax.Array) -> jax.Array:
  """PIL's SMOOTH kernel (centre 5, neighbours 1, /13), used by the sharpness op."""
  k = jnp.asarray([[1, 1, 1], [1, 5, 1], [1, 1, 1]], img.dtype) / 13.0
  padded = jnp.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  out = sum(k[i, j] * padded[i:i + img.shape[0], j:j + img.shape[1]] for i in range(3) for j in range(3))
  return out


def _autocontrast(img: jax.Array) -> jax.Array:
  lo = img.min(axis=(0, 1), keepdims=True)
  hi = img.max(axis=(0, 1), keepdims=True)
  scale = jnp.where(hi > lo, 2.0 / jnp.maximum(hi - lo, 1e-6), 1.0)
  return jnp.where(hi > lo, (img - lo) * scale - 1.0, img)


def trivial_augment_wide(key: jax.Array, images: jax.Array) -> jax.Array:
  """Augment a batch [B, H, W, C] in [-1, 1]: one random op with a random magnitude per image."""
  b = images.shape[0]
  k_op, k_level, k_sign = jax.random.split(key, 3)
  ops = jax.random.randint(k_op, (b,), 0, len(OPS))
  levels = jax.random.randint(k_level, (b,), 0, NUM_BINS).astype(jnp.float32) / (NUM_BINS - 1)
  signs = jnp.where(jax.random.bernoulli(k_sign, 0.5, (b,)), 1.0, -1.0)
  return jax.vmap(_apply_op)(images, ops, levels, signs)
