"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

Pure JAX, differentiable w.r.t. the images, for NHWC float images in [-1, 1]. Every image of the
batch gets its own random draw; the ops are vectorised (gathers and where-masks, no loop over the
batch), so a jitted caller compiles once per shape. Paper 003 sec. 4.3 uses the policy
'color,translation,cutout' with brightness in [-0.5, 0.5], saturation in [0, 2], contrast in
[0.5, 1.5], translation within 1/8 of the image size and a cutout square of half the image size,
which are the defaults here (and DiffAugment's). The same ranges are used on [-1, 1] images as
DiffAugment does; 0, the fill of translation and cutout, is mid-grey in that range.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _uniform(key: Array, x: Array, low: float, high: float) -> Array:
  """One factor per image, shape [B, 1, 1, 1], drawn in float32 and cast to x's dtype."""
  u = jax.random.uniform(key, (x.shape[0], 1, 1, 1), jnp.float32, low, high)
  return u.astype(x.dtype)


def brightness(key: Array, x: Array) -> Array:
  """Add one offset b ~ U(-0.5, 0.5) per image to every pixel and channel."""
  return x + _uniform(key, x, -0.5, 0.5)


def saturation(key: Array, x: Array) -> Array:
  """Scale each pixel's deviation from its channel mean by s ~ U(0, 2) per image (s = 0: grey)."""
  mean = jnp.mean(x, axis=3, keepdims=True)
  return (x - mean) * _uniform(key, x, 0.0, 2.0) + mean


def contrast(key: Array, x: Array) -> Array:
  """Scale each image's deviation from its mean over H, W, C by c ~ U(0.5, 1.5)."""
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _uniform(key, x, 0.5, 1.5) + mean


def _shift(x: Array, t: Array, axis: int) -> Array:
  """out[b, .., i, ..] = x[b, .., i + t_b, ..] along `axis` (1 or 2), 0 where i + t_b is outside."""
  n = x.shape[axis]
  idx = jnp.arange(n)[None, :] + t[:, None]  # [B, n]
  valid = (idx >= 0) & (idx < n)
  # Per-image gather along the axis; clipped indices stay in bounds, the mask zeroes them.
  g = jax.vmap(lambda img, i: jnp.take(img, i, axis=axis - 1))(x, jnp.clip(idx, 0, n - 1))
  shape = [x.shape[0], 1, 1, 1]
  shape[axis] = n
  return jnp.where(valid.reshape(shape), g, jnp.zeros((), x.dtype))


def translation(key: Array, x: Array, ratio: float = 0.125) -> Array:
  """Shift each image by integers (dy, dx), |dy| <= int(H*ratio + 0.5), |dx| <= int(W*ratio + 0.5).

  The shifts are uniform over those inclusive ranges, independently per axis and per image, as in
  DiffAugment; pixels shifted in from outside the image are 0 (DiffAugment's zero padding).
  """
  _, h, w, _ = x.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  th = jax.random.randint(kh, (x.shape[0],), -sh, sh + 1)
  tw = jax.random.randint(kw, (x.shape[0],), -sw, sw + 1)
  return _shift(_shift(x, th, 1), tw, 2)


def cutout(key: Array, x: Array, ratio: float = 0.5) -> Array:
  """Set one square of size (int(H*ratio + 0.5), int(W*ratio + 0.5)) per image to 0.

  As DiffAugment: the centre offset o is uniform on [0, size - (cut % 2)] per axis and the square
  covers [o - cut // 2, o - cut // 2 + cut), clipped to the image, so it may be cut by the border
  (it always keeps at least one row and column inside).
  """
  b, h, w, _ = x.shape
  ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  oh = jax.random.randint(kh, (b,), 0, h + 1 - ch % 2) - ch // 2
  ow = jax.random.randint(kw, (b,), 0, w + 1 - cw % 2) - cw // 2
  rows = jnp.arange(h)[None, :] - oh[:, None]  # [B, H], in [0, ch) inside the square
  cols = jnp.arange(w)[None, :] - ow[:, None]
  in_rows = (rows >= 0) & (rows < ch)
  in_cols = (cols >= 0) & (cols < cw)
  box = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(box, jnp.zeros((), x.dtype), x)


POLICY_OPS: dict[str, tuple[Callable[[Array, Array], Array], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
  """'color,translation,cutout' -> ('color', 'translation', 'cutout'); '' -> ().

  Names are comma-separated (spaces around them ignored); an unknown or empty name raises
  ValueError naming it and the choices.
  """
  if not policy.strip():
    return ()
  names = tuple(p.strip() for p in policy.split(","))
  for name in names:
    if name not in POLICY_OPS:
      raise ValueError(f"unknown DiffAugment policy {name!r} in {policy!r}: expected "
                       f"comma-separated names from {tuple(POLICY_OPS)}")
  return names


def diff_augment(key: Array, x: Array, policy: str) -> Array:
  """Apply the DiffAugment `policy` to NHWC images x: its ops in order, each with its own key.

  The policy is static (a Python string); '' returns x unchanged. Apply it to real and fake
  images alike, inside the D and G losses, so gradients reach G through it (Zhao et al. 2020).
  """
  ops = [op for name in parse_policy(policy) for op in POLICY_OPS[name]]
  if not ops:
    return x
  for op, k in zip(ops, jax.random.split(key, len(ops))):
    x = op(k, x)
  return x
