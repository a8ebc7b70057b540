"""Winograd F(m x m, 3x3) convolution in plain JAX, a contender of `benchmarks/conv_cpu.py --winograd`.

Lavin & Gray 2016 ("Fast Algorithms for Convolutional Neural Networks"): each m x m output tile is
A^T [(G g G^T) * (B^T d B)] A for the (m + 2) x (m + 2) input patch d and the 3x3 kernel g, so a
3x3 stride-1 convolution becomes (m + 2)^2 batched matmuls over (tiles, Cin) x (Cin, Cout), with
9 m^2 / (m + 2)^2 times fewer products than the direct sum (2.25x for F(2, 3), 4x for F(4, 3)).
Here the input transform is strided slices and sums, the output transform sums, and the gradients
come from autodiff. It is benchmark-only: on this project's CPU its forward pass alone was slower
than XLA's convolution (benchmarks/RESULTS.md), so `jaxgen.nets.conv` does not use it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# (B^T, G, A^T) of Lavin & Gray 2016, eqs. 7-8 (F(2, 3)) and 11-13 (F(4, 3)).
TRANSFORMS = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}


def _combine(parts: list[jax.Array], coeffs: np.ndarray) -> jax.Array:
  """sum_j coeffs[j] parts[j], skipping zero coefficients (the transforms are sparse)."""
  out = None
  for c, p in zip(coeffs, parts):
    if c != 0:
      term = p if c == 1 else (-p if c == -1 else float(c) * p)
      out = term if out is None else out + term
  return out


def _input_transform_1d(d: jax.Array, bt: np.ndarray, m: int, tiles: int, axis: int) -> list[jax.Array]:
  """B^T along `axis` of a padded map whose tile t starts at m t: one array per row of B^T."""
  n = bt.shape[0]
  parts = [lax.slice_in_dim(d, j, j + m * (tiles - 1) + 1, m, axis) for j in range(n)]
  return [_combine(parts, bt[k]) for k in range(n)]


def winograd_conv(x: jax.Array, w: jax.Array, m: int = 2) -> jax.Array:
  """3x3, stride 1, padding 1 convolution of x [B, H, W, Cin] with w [3, 3, Cin, Cout] (NHWC/HWIO)."""
  bt, g, at = TRANSFORMS[m]
  n = m + 2
  b, h, wd, cin = x.shape
  cout = w.shape[-1]
  th, tw = -(-h // m), -(-wd // m)
  xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - wd), (0, 0)))
  u = [col for row in _input_transform_1d(xp, bt, m, th, 1)
       for col in _input_transform_1d(row, bt, m, tw, 2)]
  u = jnp.stack(u).reshape(n * n, b * th * tw, cin)
  gm = jnp.asarray(g, w.dtype)
  v = jnp.einsum("ai,bj,ijco->abco", gm, gm, w, precision=lax.Precision.HIGHEST)
  prod = lax.dot_general(u, v.reshape(n * n, cin, cout), (((2,), (1,)), ((0,), (0,))))
  prod = prod.reshape(n, n, b, th, tw, cout)
  rows = [_combine([prod[i] for i in range(n)], at[k]) for k in range(m)]
  tiles = [[_combine([r[j] for j in range(n)], at[k]) for k in range(m)] for r in rows]
  y = jnp.stack([jnp.stack(row, axis=-2) for row in tiles], axis=2)  # [B, th, m, tw, m, Cout]
  return y.reshape(b, m * th, m * tw, cout)[:, :h, :wd]
