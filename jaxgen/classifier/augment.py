"""Classifier data augmentation as pure JAX functions of (key, batch), run inside the jitted step.

- `random_flip`: horizontal flip of each image with probability 1/2.
- `random_crop`: torchvision `RandomCrop(size, padding=p)`: zero-pad by `p`, then crop the
  original size at a uniformly random offset, independently per image.
- `mixup` (Zhang et al. 2018, eq. 1): x = lam x_i + (1 - lam) x_j, y = lam y_i + (1 - lam) y_j,
  lam ~ Beta(alpha, alpha), one lam per batch and j a random permutation of the batch.
- `cutmix` (Yun et al. 2019, sec. 3.1): a box of side ratio sqrt(1 - lam) centred at a uniform
  position (clipped to the image) is pasted from x_j; the labels are mixed with the area actually
  kept, lam' = 1 - box_area / (H W).
- `mix_batch`: with probability `mix_prob` apply one of them (both enabled: each with
  probability 1/2, as timm's Mixup does); Diff-Mix (paper 001 sec. 4) compares against both.

Images are float [B, H, W, C] (any range); targets are class probabilities [B, K].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flip each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pad each side by `padding` and crop the original size at a random offset per image."""
  if padding <= 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def _partner(key: jax.Array, n: int) -> jax.Array:
  return jax.random.permutation(key, n)


def mixup(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixup (Zhang et al. 2018 eq. 1). Returns (images, targets, lam)."""
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = _partner(k_perm, images.shape[0])
  mixed = lam * images + (1.0 - lam) * images[perm]
  return mixed, lam * targets + (1.0 - lam) * targets[perm], lam


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
  """CutMix box [y0, y1, x0, x1] (Yun et al. 2019 sec. 3.1): sides H sqrt(1-lam), W sqrt(1-lam)
  centred at a uniform pixel, clipped to the image (so the kept area can exceed lam)."""
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  k_y, k_x = jax.random.split(key)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0 = jnp.clip(cy - cut_h // 2, 0, height)
  y1 = jnp.clip(cy + cut_h // 2, 0, height)
  x0 = jnp.clip(cx - cut_w // 2, 0, width)
  x1 = jnp.clip(cx + cut_w // 2, 0, width)
  return jnp.stack([y0, y1, x0, x1])


def cutmix(key: jax.Array, images: jax.Array, targets: jax.Array, alpha: float,
           sources: tuple[jax.Array, jax.Array] | None = None
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """CutMix (Yun et al. 2019). Returns (images, targets, lam') with lam' the kept-area fraction.

  The pasted patches come from a permutation of the batch, or from `sources` = (images, targets)
  of the same shapes: CMO (Park et al. 2022) pastes minority-oversampled images onto the batch.
  """
  k_lam, k_box, k_perm = jax.random.split(key, 3)
  n, h, w, _ = images.shape
  lam = jax.random.beta(k_lam, alpha, alpha)
  y0, y1, x0, x1 = cutmix_box(k_box, lam, h, w)
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  if sources is None:
    perm = _partner(k_perm, n)
    sources = (images[perm], targets[perm])
  mixed = jnp.where(inside[None, :, :, None], sources[0], images)
  kept = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
  return mixed, kept * targets + (1.0 - kept) * sources[1], kept


def mix_batch(key: jax.Array, images: jax.Array, targets: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float, mix_prob: float,
              cutmix_sources: tuple[jax.Array, jax.Array] | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """Apply mixup or cutmix to the whole batch with probability `mix_prob` (alpha 0 = disabled).

  With both enabled, each mixed batch uses CutMix or Mixup with probability 1/2 (timm's
  `switch_prob=0.5`). `cutmix_sources` (CMO) are the images and targets CutMix pastes from.
  Returns the (possibly) mixed images and targets.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0 or mix_prob <= 0:
    return images, targets
  k_apply, k_switch, k_mix, k_cut = jax.random.split(key, 4)
  candidates = []
  if mixup_alpha > 0:
    candidates.append(mixup(k_mix, images, targets, mixup_alpha)[:2])
  if cutmix_alpha > 0:
    candidates.append(cutmix(k_cut, images, targets, cutmix_alpha, cutmix_sources)[:2])
  if len(candidates) == 2:
    use_cut = jax.random.bernoulli(k_switch, 0.5)
    mixed = jax.tree.map(lambda a, b: jnp.where(use_cut, b, a), candidates[0], candidates[1])
  else:
    mixed = candidates[0]
  apply = jax.random.bernoulli(k_apply, mix_prob)
  return (jnp.where(apply, mixed[0], images), jnp.where(apply, mixed[1], targets))
