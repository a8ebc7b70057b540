"""Precision / recall (Kynkaanniemi et al. 2019) and density / coverage (Naeem et al. 2020).

All four use k-nearest-neighbour balls in feature space. Pairwise distances are formed one
row block at a time (`block_size` rows against a whole set), so 10k x 10k sets never need the
full 10k x 10k matrix: peak memory is block_size x max(N_real, N_fake) floats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError, DataError
from jaxgen.metrics.dtypes import working_float_dtype

_HI = jax.lax.Precision.HIGHEST


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  d2 = (jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * jnp.matmul(a, b.T, precision=_HI))
  return jnp.maximum(d2, 0.0)


def _row_blocks(x: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
  """Pads rows to a multiple of `block`; returns (num_blocks, block, d) and a validity mask."""
  n = x.shape[0]
  nb = -(-n // block)
  pad = nb * block - n
  xp = jnp.pad(x, ((0, pad), (0, 0)))
  valid = jnp.arange(nb * block) < n
  return xp.reshape(nb, block, x.shape[1]), valid.reshape(nb, block)


def knn_radii_sq(x: jax.Array, k: int, block_size: int = 1024) -> jax.Array:
  """Squared distance from each row of x to its k-th nearest other row of x (self excluded;
  the k-th smallest of the row's distances counting the zero to itself as the 0-th), blocked."""
  block = min(block_size, x.shape[0])
  xb, _ = _row_blocks(x, block)
  kth = jax.lax.map(lambda rows: -jax.lax.top_k(-_sq_dists(rows, x), k + 1)[0][:, k], xb)
  return kth.reshape(-1)[: x.shape[0]]


@functools.partial(jax.jit, static_argnames=("k", "block_size"))
def _prdc(real, fake, *, k, block_size):
  # Distances are translation invariant; centring on the real mean keeps |x|^2 small so the
  # expansion |a|^2 + |b|^2 - 2ab loses fewer digits in float32.
  mu = jnp.mean(real, axis=0)
  real, fake = real - mu, fake - mu
  r_real = knn_radii_sq(real, k, block_size)
  r_fake = knn_radii_sq(fake, k, block_size)
  block = min(block_size, real.shape[0])
  rb, valid = _row_blocks(real, block)
  rr, _ = _row_blocks(r_real[:, None], block)

  def step(fake_counts, inp):
    rows, ok, rad = inp
    d = _sq_dists(rows, fake)                               # (block, N_fake)
    inside_real = (d < rad) & ok[:, None]                   # fake j in real ball i
    recall_i = jnp.any(d < r_fake[None, :], axis=1)         # real i in some fake ball
    cover_i = jnp.min(d, axis=1) < rad[:, 0]                # real ball i holds a fake sample
    return fake_counts + jnp.sum(inside_real, axis=0), (recall_i, cover_i)

  counts, (rec, cov) = jax.lax.scan(step, jnp.zeros((fake.shape[0],), jnp.int32), (rb, valid, rr))
  n_real = real.shape[0]
  rec, cov = rec.reshape(-1)[:n_real], cov.reshape(-1)[:n_real]
  dt = real.dtype
  return {
      "precision": jnp.mean((counts > 0).astype(dt)),
      "recall": jnp.mean(rec.astype(dt)),
      "density": jnp.mean(counts.astype(dt)) / k,
      "coverage": jnp.mean(cov.astype(dt)),
  }


def prdc(real_feats: jax.Array, fake_feats: jax.Array, k: int = 5,
         block_size: int = 1024) -> dict[str, jax.Array]:
  """Precision, recall, density and coverage of fake features against real ones.

  With B(x, r) the Euclidean ball and NND_k(x) the distance from x to its k-th nearest
  neighbour within its own set:
    precision = 1/M sum_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]  (Kynkaanniemi et al. 2019,
    recall    = 1/N sum_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]   eq. 1-2)
    density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]   (Naeem et al. 2020, eq. 3)
    coverage  = 1/N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]  (Naeem et al. 2020, eq. 4)
  for N real rows X and M fake rows Y; ball membership is strict (distance < radius), as in the
  authors' reference code. Jittable (`k`, `block_size` static).

  Args:
    real_feats: (N, d) real features, N > k.
    fake_feats: (M, d) generated features, M > k.
    k: neighbourhood size (5 in both papers).
    block_size: rows per distance block (memory ~ block_size x max(N, M)).

  Returns:
    {'precision', 'recall', 'density', 'coverage'} scalars (density can exceed 1).
  """
  real = jnp.asarray(real_feats, working_float_dtype())
  fake = jnp.asarray(fake_feats, working_float_dtype())
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise DataError(f"prdc: feature shapes {real.shape} and {fake.shape}; "
                    "expected (N, d) with equal d")
  if k < 1:
    raise ConfigError("k", k, "an integer >= 1")
  if min(real.shape[0], fake.shape[0]) <= k:
    raise DataError(f"prdc: sets of {real.shape[0]} and {fake.shape[0]} rows; expected more than "
                    f"k={k} rows in each")
  if block_size < 1:
    raise ConfigError("block_size", block_size, "an integer >= 1")
  return _prdc(real, fake, k=int(k), block_size=int(block_size))
