"""The MVLD communication system (paper 002 Fig. 1 and sec. I), which the authors only envision.

Transmitter: encode k of the V views, standardise, quantise each latent number to b bits
(32 = float32, 16 = float16, 8/4 = uniform levels over the training range of that dimension)
and send the bit string. Channel: independent bit flips at a given rate, and whole views lost
with a given probability. Receiver: de-quantise (non-finite floats from flipped exponent bits are
zeroed, values clipped to the training range), generate the views that were not received, and
decode all V views. Bytes per object are compared with sending the k raw or PNG-encoded images.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np

from jaxgen.io.images import encode_png
from jaxgen.mvld import masking



def header_bytes(num_views: int) -> int:
  """Bytes of the mask saying which of the V views were sent (V bits, rounded up), counted for
  honesty in every scheme's bytes per object."""
  return math.ceil(num_views / 8)


def quantize(z: np.ndarray, bits: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """Standardised latents [..., L] -> unsigned integer codes (or the float bit patterns)."""
  if bits == 32:
    return z.astype(np.float32).view(np.uint32)
  if bits == 16:
    return z.astype(np.float16).view(np.uint16)
  levels = 2 ** bits - 1
  q = np.round((np.clip(z, lo, hi) - lo) / (hi - lo) * levels)
  return q.astype(np.uint8 if bits <= 8 else np.uint16)


def dequantize(codes: np.ndarray, bits: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  if bits == 32:
    z = codes.astype(np.uint32).view(np.float32).astype(np.float32)
  elif bits == 16:
    z = codes.astype(np.uint16).view(np.float16).astype(np.float32)
  else:
    z = lo + codes.astype(np.float32) / (2 ** bits - 1) * (hi - lo)
  # A receiver cannot trust a corrupted float: non-finite values become the mean (0), and
  # everything is clipped to the range seen in training.
  z = np.where(np.isfinite(z), z, 0.0)
  return np.clip(z, lo, hi).astype(np.float32)


def flip_bits(codes: np.ndarray, bits: int, rate: float, rng: np.random.Generator) -> np.ndarray:
  """Flip each of the `bits` transmitted bits of every code independently with probability `rate`."""
  if rate <= 0:
    return codes
  flips = rng.random(codes.shape + (bits,)) < rate
  mask = (flips * (1 << np.arange(bits, dtype=np.uint64))).sum(-1).astype(codes.dtype)
  return codes ^ mask


def payload_bytes(k: int, latent_dim: int, bits: int, num_views: int) -> int:
  return header_bytes(num_views) + int(np.ceil(k * latent_dim * bits / 8))


def png_bytes(images: np.ndarray, subset: tuple[int, ...]) -> float:
  """Mean bytes per object of sending the views in `subset` as PNG files."""
  return float(np.mean([sum(len(encode_png(obj[v])) for v in subset) for obj in images]))


def object_psnr(generated: np.ndarray, true: np.ndarray, num_views: int) -> float:
  """Mean over objects of the PSNR of all V views together (MSE pooled over the object's views).

  The transmission study's distortion: per object, so that an object whose sent views arrive
  losslessly still has a finite PSNR from its unsent ones (a per-image mean would be infinite).
  generated, true: uint8 [N * V, H, W, C] (objects' views consecutive). Infinite only when every
  view of every object is exact.
  """
  diff = generated.astype(np.float64) - true.astype(np.float64)
  return pooled_psnr(np.mean(diff.reshape((-1, num_views, int(np.prod(diff.shape[1:])))) ** 2, axis=-1))


def pooled_psnr(mse: np.ndarray) -> float:
  """Mean over objects of 10 log10(255^2 / MSE) with each object's MSE the mean of its views'
  (mse: [..., N, V] per-view MSEs of uint8 images)."""
  with np.errstate(divide="ignore"):
    return float(np.mean(10.0 * np.log10(255.0 ** 2 / mse.mean(axis=-1))))


def transmit(z_std: np.ndarray, subset: tuple[int, ...], bits: int, lo: np.ndarray, hi: np.ndarray, *,
             bit_error_rate: float, view_loss_prob: float, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
  """Channel simulation: returns (received standardised latents [N, V, L], received mask [N, V])."""
  n, v, _ = z_std.shape
  received = np.zeros((n, v), np.float32)
  received[:, list(subset)] = 1.0
  if view_loss_prob > 0:
    received *= (rng.random((n, v)) >= view_loss_prob)
  codes = quantize(z_std, bits, lo, hi)
  codes = flip_bits(codes, bits, bit_error_rate, rng)
  z_rx = dequantize(codes, bits, lo, hi) * received[..., None]
  return z_rx, received


def run_study(encode: Callable, receive: Callable, images: np.ndarray, labels: np.ndarray,
              judge_fn: Callable, *, latent_dim: int, bits_list, bit_error_rate: float,
              view_loss_prob: float, lo: np.ndarray, hi: np.ndarray, key: jax.Array,
              seed: int) -> list[dict]:
  """For each k (number of views sent) and bit depth: bytes per object and quality of all V views.

  `encode(images) -> standardised latents [N, V, L]`; `receive(key, z, received_mask) -> uint8
  [N, V, H, W, 3]` generates the views not received and decodes all; `judge_fn(generated, true,
  labels) -> {'psnr', 'ssim', 'lpips', 'coherence'}` over all V views (the caller's PSNR should be
  `object_psnr`, as for the codec baselines).
  """
  num_views = images.shape[1]
  raw_bytes_per_view = int(np.prod(images.shape[2:]))
  z = np.asarray(encode(images))
  rows = []
  for k in range(1, num_views + 1):
    subsets = masking.subsets_of_size(num_views, k)
    png = float(np.mean([png_bytes(images, s) for s in subsets]))
    for bits in bits_list:
      per_subset = []
      for j, subset in enumerate(subsets):
        rng = np.random.default_rng([seed, k, bits, j])
        z_rx, received = transmit(z, subset, bits, lo, hi, bit_error_rate=bit_error_rate,
                                  view_loss_prob=view_loss_prob, rng=rng)
        out = np.asarray(receive(jax.random.fold_in(key, 100 * k + j), z_rx, received))
        per_subset.append(judge_fn(out.reshape((-1,) + images.shape[2:]),
                                   images.reshape((-1,) + images.shape[2:]),
                                   np.repeat(labels, num_views)))
      quality = {m: float(np.mean([q[m] for q in per_subset])) for m in per_subset[0]}
      rows.append({"views_sent": k, "bits": bits, "bytes": payload_bytes(k, latent_dim, bits, num_views),
                   "raw_bytes": k * raw_bytes_per_view, "png_bytes": png, **quality})
  return rows
