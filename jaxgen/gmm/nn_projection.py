"""Iterated nearest-neighbour patch projection of LR-GMM-NN (paper 004 sec. 3.3, eqs. 5-6).

Each latent pixel z(p) of a generated map is replaced by the training feature y_j(p) whose
omega x omega patch (omega = 2 rho + 1, eq. 6) is nearest to the patch of z around p (eq. 5):

    j = argmin_{i allowed} ||Phi z(p) - Phi y_i(p)||^2.

Conventions (the paper leaves them open):
- Borders: Phi zero-pads, so positions outside the map add 0 for both sides (the paper's "zero
  padding may be used for efficiency").
- Parallel update: every position uses the patch of the current map (Jacobi style), so one
  iteration is one parallel step; `num_iters` > 1 repeats it on the refined map.
- Clusters: with `same_cluster` and both label arrays given, only training images of the cluster
  of the component that generated z_b are candidates. Without labels (both None) every image is a
  candidate (one cluster, the paper's K = 1). A cluster with no training image falls back to all
  images, so an index is always a real training image.
- `same_position=False` (non-registered data, end of sec. 3.3): candidates are the patches of all
  training images at all positions, and `positions` names the source position.
- Ties: the lowest training index wins, then the lowest source position (row-major).

Memory: generated samples are processed `chunk_size` at a time (`lax.map`) and training images
`block_size` at a time (`lax.scan` keeping a running min / argmin), so the distances held at once
are chunk_size * block_size * h * w floats (same position) or chunk_size * h * w * block_size
* h * w (all positions; plus the block's patches, block_size * h * w * q * omega^2), never
B * N * h * w (* h * w).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen.errors import ConfigError

Array = jax.Array
_HI = lax.Precision.HIGHEST  # no TF32/bf16 matmul passes: they would flip argmins on GPU/TPU


class NNProjection(NamedTuple):
  """Result of `nn_project`.

  latents: [B, h, w, q] refined latents, latents[b, r, c] = y[indices[b, r, c], positions[b, r, c]].
  indices: [B, h, w] int32 index of the chosen training image.
  positions: [B, h, w, 2] int32 (row, col) of the copied training feature; the identity grid when
    same_position=True.
  """
  latents: Array
  indices: Array
  positions: Array


def _patches(x: Array, rho: int) -> Array:
  """Phi of eq. 6 at every position with zero padding: [n, h, w, q] -> [n, h*w, omega^2 * q]."""
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (rho, rho), (rho, rho), (0, 0)))
  omega = 2 * rho + 1
  shifts = [xp[:, dy:dy + h, dx:dx + w] for dy in range(omega) for dx in range(omega)]
  return jnp.concatenate(shifts, axis=-1).reshape(n, h * w, -1)


def _search_same_position(z: Array, y_blocks: Array, ok_blocks: Array, omega: int
                          ) -> tuple[Array, Array]:
  """Eq. 5 at the same position: z [c, h, w, q]; y_blocks [nblk, nb, h, w, q]; ok [nblk, c, nb]."""
  zz = jnp.sum(z * z, axis=-1)
  nb = y_blocks.shape[1]

  def block(carry, xs):
    best, idx = carry
    yb, ok, offset = xs
    # Per-pixel |z - y|^2 = |z|^2 + |y|^2 - 2 z.y, then the omega x omega box sum of it equals the
    # zero-padded patch distance (padded pixels are 0 on both sides).
    d = (zz[:, None] + jnp.sum(yb * yb, axis=-1)[None]
         - 2 * jnp.einsum("chwq,nhwq->cnhw", z, yb, precision=_HI))
    d = lax.reduce_window(d, jnp.array(0, d.dtype), lax.add, (1, 1, omega, omega), (1, 1, 1, 1),
                          "SAME")
    d = jnp.where(ok[:, :, None, None], d, jnp.inf)
    bmin, barg = jnp.min(d, axis=1), jnp.argmin(d, axis=1).astype(jnp.int32) + offset
    better = bmin < best  # strict: an earlier block keeps ties (lowest index wins)
    return (jnp.where(better, bmin, best), jnp.where(better, barg, idx)), None

  init = (jnp.full(zz.shape, jnp.inf, z.dtype), jnp.zeros(zz.shape, jnp.int32))
  offsets = jnp.arange(y_blocks.shape[0], dtype=jnp.int32) * nb
  (_, idx), _ = lax.scan(block, init, (y_blocks, ok_blocks, offsets))
  return idx, jnp.zeros_like(idx)


def _search_all_positions(z: Array, y_blocks: Array, ok_blocks: Array, rho: int
                          ) -> tuple[Array, Array]:
  """Eq. 5 over every patch of every allowed image; returns (image index, flat source position)."""
  c, h, w, _ = z.shape
  hw, nb = h * w, y_blocks.shape[1]
  pz = _patches(z, rho)  # [c, hw, D]
  pzz = jnp.sum(pz * pz, axis=-1)

  def block(carry, xs):
    best, idx, pos = carry
    yb, ok, offset = xs
    py = _patches(yb, rho).reshape(nb * hw, -1)  # candidate k = image * hw + position
    d = (pzz[:, :, None] + jnp.sum(py * py, axis=-1)[None, None]
         - 2 * jnp.einsum("cpd,kd->cpk", pz, py, precision=_HI))
    d = jnp.where(jnp.repeat(ok, hw, axis=1)[:, None, :], d, jnp.inf)
    bmin, k = jnp.min(d, axis=-1), jnp.argmin(d, axis=-1).astype(jnp.int32)
    better = bmin < best
    return (jnp.where(better, bmin, best), jnp.where(better, k // hw + offset, idx),
            jnp.where(better, k % hw, pos)), None

  init = (jnp.full((c, hw), jnp.inf, z.dtype), jnp.zeros((c, hw), jnp.int32),
          jnp.zeros((c, hw), jnp.int32))
  offsets = jnp.arange(y_blocks.shape[0], dtype=jnp.int32) * nb
  (_, idx, pos), _ = lax.scan(block, init, (y_blocks, ok_blocks, offsets))
  return idx.reshape(c, h, w), pos.reshape(c, h, w)


@functools.partial(jax.jit, static_argnames=("patch_size", "num_iters", "same_position",
                                             "same_cluster", "chunk_size", "block_size"))
def _project(z: Array, y: Array, zc: Array, yc: Array, *, patch_size: int, num_iters: int,
             same_position: bool, same_cluster: bool, chunk_size: int, block_size: int
             ) -> NNProjection:
  b, h, w, q = z.shape
  n = y.shape[0]
  rho = patch_size // 2
  nch, nblk = -(-b // chunk_size), -(-n // block_size)
  bp, np_ = nch * chunk_size, nblk * block_size
  real = jnp.arange(np_) < n  # padded training images are never candidates
  ypad = jnp.pad(y, ((0, np_ - n), (0, 0), (0, 0), (0, 0)))
  match = real[None, :]
  if same_cluster:
    match = match & (zc[:, None] == jnp.pad(yc, (0, np_ - n), constant_values=-1)[None, :])
  # A cluster without training images falls back to all images (never a padded index).
  allowed = jnp.where(jnp.any(match, axis=1, keepdims=True), match, real[None, :])
  allowed = jnp.broadcast_to(allowed, (b, np_))
  zpad = jnp.pad(z, ((0, bp - b), (0, 0), (0, 0), (0, 0)))
  allowed = jnp.pad(allowed, ((0, bp - b), (0, 0)), constant_values=True)
  y_blocks = ypad.reshape(nblk, block_size, h, w, q)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

  def one_chunk(args):
    zch, ok = args
    ok_blocks = ok.reshape(chunk_size, nblk, block_size).transpose(1, 0, 2)

    def one_iter(_, carry):
      cur = carry[0]
      if same_position:
        idx, pos = _search_same_position(cur, y_blocks, ok_blocks, patch_size)
        new = y[idx, rows, cols]
      else:
        idx, pos = _search_all_positions(cur, y_blocks, ok_blocks, rho)
        new = y[idx, pos // w, pos % w]
      return new, idx, pos

    zeros = jnp.zeros((chunk_size, h, w), jnp.int32)
    return lax.fori_loop(0, num_iters, one_iter, (zch, zeros, zeros))

  lat, idx, pos = lax.map(one_chunk, (zpad.reshape(nch, chunk_size, h, w, q),
                                      allowed.reshape(nch, chunk_size, np_)))
  lat, idx, pos = (a.reshape(bp, *a.shape[2:])[:b] for a in (lat, idx, pos))
  if same_position:
    pos = jnp.broadcast_to(rows * w + cols, (b, h, w))
  positions = jnp.stack([pos // w, pos % w], axis=-1).astype(jnp.int32)
  return NNProjection(lat, idx, positions)


def _check_int(key: str, value: int, low: int) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ConfigError(key, value, f"an integer >= {low}")


def _check_labels(key: str, labels: Array, size: int) -> Array:
  labels = jnp.asarray(labels)
  if labels.shape != (size,) or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ConfigError(key, f"{labels.dtype}{list(labels.shape)}",
                      f"integer labels of shape [{size}]")
  return labels.astype(jnp.int32)


def nn_project(z: Array, y: Array, *, z_clusters: Optional[Array] = None,
               y_clusters: Optional[Array] = None, patch_size: int = 5, num_iters: int = 1,
               same_position: bool = True, same_cluster: bool = True, chunk_size: int = 64,
               block_size: int = 16) -> NNProjection:
  """Iterated NN patch projection of generated latents onto training latents (paper 004 eqs. 5-6).

  Args:
    z: [B, h, w, q] generated latents (NHWC).
    y: [N, h, w, q] training latents.
    z_clusters: [B] int cluster (GMM component) that generated each z_b.
    y_clusters: [N] int cluster label of each training image.
    patch_size: omega = 2 rho + 1 (odd, >= 1) of the patch extractor Phi (eq. 6), zero padded.
    num_iters: parallel (Jacobi) NN steps; each one uses the map refined by the previous one.
    same_position: candidates at the same position p only (registered data, eq. 5); False
      searches every position of every training image.
    same_cluster: restrict candidates to the cluster of z_b when both label arrays are given;
      with neither given all images are candidates; exactly one given is an error. A cluster with
      no training image falls back to all images.
    chunk_size: generated samples per `lax.map` step (B is padded to a multiple, then unpadded).
    block_size: training images per `lax.scan` step of the running argmin.

  Returns:
    NNProjection(latents, indices, positions); ties go to the lowest index, then position.
  """
  z, y = jnp.asarray(z), jnp.asarray(y)
  if z.ndim != 4:
    raise ConfigError("nn.z", list(z.shape), "generated latents of shape [B, h, w, q]")
  if y.ndim != 4 or y.shape[1:] != z.shape[1:] or y.shape[0] < 1:
    raise ConfigError("nn.y", list(y.shape), f"training latents of shape [N >= 1, {z.shape[1]}, "
                      f"{z.shape[2]}, {z.shape[3]}] like z")
  _check_int("nn.patch_size", patch_size, 1)
  if patch_size % 2 == 0:
    raise ConfigError("nn.patch_size", patch_size, "an odd integer omega = 2 rho + 1")
  _check_int("nn.num_iters", num_iters, 1)
  _check_int("nn.chunk_size", chunk_size, 1)
  _check_int("nn.block_size", block_size, 1)
  for key, flag in (("nn.same_position", same_position), ("nn.same_cluster", same_cluster)):
    if not isinstance(flag, (bool, np.bool_)):
      raise ConfigError(key, flag, "True or False")
  b, n = z.shape[0], y.shape[0]
  use_clusters = bool(same_cluster) and (z_clusters is not None or y_clusters is not None)
  if use_clusters and (z_clusters is None or y_clusters is None):
    raise ConfigError("nn.z_clusters" if z_clusters is None else "nn.y_clusters", None,
                      "both z_clusters and y_clusters, or neither, when same_cluster=True")
  zc = _check_labels("nn.z_clusters", z_clusters, b) if use_clusters else jnp.zeros((b,), jnp.int32)
  yc = _check_labels("nn.y_clusters", y_clusters, n) if use_clusters else jnp.zeros((n,), jnp.int32)
  dtype = jnp.result_type(z.dtype, y.dtype, jnp.float32)
  h, w = z.shape[1:3]
  if b == 0:
    empty = jnp.zeros((0, h, w), jnp.int32)
    return NNProjection(z.astype(dtype), empty, jnp.zeros((0, h, w, 2), jnp.int32))
  return _project(z.astype(dtype), y.astype(dtype), zc, yc, patch_size=int(patch_size),
                  num_iters=int(num_iters), same_position=bool(same_position),
                  same_cluster=use_clusters, chunk_size=min(int(chunk_size), b),
                  block_size=min(int(block_size), n))
