"""Frechet distance between Gaussians, FID, and streaming feature statistics.

Precision. Everything runs in float64 when `jax_enable_x64` is on (recommended for reported
numbers) and in float32 otherwise. The float32 path is compensated rather than naive:
  * the distance is evaluated in the Bures form ||S1 - S2 U||_F^2 (S = PSD square root, U the
    orthogonal polar factor of S2 S1) instead of tr C1 + tr C2 - 2 tr (C1 C2)^(1/2), so that two
    large traces are never subtracted; measured against SciPy float64 this keeps the absolute
    error near 1e-7 x tr(C) (about 1e-4 FID units for 512-d features), against ~1e-5 x tr(C)
    for the trace form;
  * statistics are accumulated with Chan et al.'s pairwise merge (each batch centred on its own
    mean, so E[xx^T] - mu mu^T cancellation never happens) plus Kahan-compensated running sums;
  * all matrix products use `Precision.HIGHEST` (no TF32 on GPUs).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.files import atomic_save_npz
from jaxgen.metrics.dtypes import working_float_dtype
from jaxgen.io import paths

_HI = jax.lax.Precision.HIGHEST


def _psd_sqrt(c: jax.Array) -> jax.Array:
  """Symmetric PSD square root via eigh; round-off negative eigenvalues are clipped to 0."""
  c = 0.5 * (c + c.T)
  w, v = jnp.linalg.eigh(c)
  return jnp.matmul(v * jnp.sqrt(jnp.clip(w, 0.0)), v.T, precision=_HI)


@jax.jit
def frechet_distance(mu1: jax.Array, cov1: jax.Array, mu2: jax.Array, cov2: jax.Array) -> jax.Array:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2).

  d^2 = ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))  (Dowson & Landau 1982; the FID of
  Heusel et al. 2017, eq. 6). The trace term is the squared Bures distance, computed here as
  min_U ||S1 - S2 U||_F^2 with S_i = C_i^(1/2) from symmetric eigendecompositions and
  U = P Q^T from the SVD S2 S1 = P diag(s) Q^T; this needs no non-symmetric matrix square root,
  is exact for singular (rank-deficient) covariances, and avoids the cancellation of the trace
  form (see the module docstring for the precision in float32 and float64).

  Args:
    mu1, mu2: (d,) means.
    cov1, cov2: (d, d) symmetric positive semi-definite covariances.

  Returns:
    A scalar >= 0 in the working float dtype.
  """
  dt = working_float_dtype()
  mu1, mu2, cov1, cov2 = (jnp.asarray(a, dt) for a in (mu1, mu2, cov1, cov2))
  s1, s2 = _psd_sqrt(cov1), _psd_sqrt(cov2)
  p, _, qt = jnp.linalg.svd(jnp.matmul(s2, s1, precision=_HI))
  diff = s1 - jnp.matmul(s2, jnp.matmul(p, qt, precision=_HI), precision=_HI)
  return jnp.sum(jnp.square(mu1 - mu2)) + jnp.sum(jnp.square(diff))


def _mean_cov(feats: jax.Array) -> tuple[jax.Array, jax.Array]:
  x = jnp.asarray(feats, working_float_dtype())
  if x.ndim != 2 or x.shape[0] < 2:
    raise DataError(f"features of shape {x.shape}: expected (N, d) with N >= 2")
  mu = jnp.mean(x, axis=0)
  xc = x - mu
  return mu, jnp.matmul(xc.T, xc, precision=_HI) / (x.shape[0] - 1)


def fid(feats_a: jax.Array, feats_b: jax.Array) -> jax.Array:
  """Frechet Inception Distance between two feature sets (Heusel et al. 2017, eq. 6).

  Fits a Gaussian to each (N, d) set (mean and unbiased covariance, as `numpy.cov`) and returns
  `frechet_distance` between them. The features come from a named feature network (InceptionV3
  pool3 for the standard FID; see docs/metrics.md); for sets too large to hold, use
  `init_stats`/`update_stats` and `fid_from_stats`.
  """
  mu1, c1 = _mean_cov(feats_a)
  mu2, c2 = _mean_cov(feats_b)
  if mu1.shape != mu2.shape:
    raise DataError(f"fid: feature dims differ, {mu1.shape[0]} vs {mu2.shape[0]}")
  return frechet_distance(mu1, c1, mu2, c2)


class FeatureStats(NamedTuple):
  """Running mean/covariance state (a pytree). `m2` is the sum of centred outer products; the
  `*_comp` fields hold Kahan compensation terms (the low-order bits lost by each addition).
  `count` is a float (exact up to 2^24 samples in float32)."""

  count: jax.Array
  mean: jax.Array
  m2: jax.Array
  mean_comp: jax.Array
  m2_comp: jax.Array


def init_stats(dim: int) -> FeatureStats:
  """Empty accumulator for d-dimensional features (float64 under x64, else float32)."""
  dt = working_float_dtype()
  z1, z2 = jnp.zeros((dim,), dt), jnp.zeros((dim, dim), dt)
  return FeatureStats(jnp.zeros((), dt), z1, z2, z1, z2)


def _kahan_add(total: jax.Array, comp: jax.Array, inc: jax.Array) -> tuple[jax.Array, jax.Array]:
  y = inc - comp
  t = total + y
  return t, (t - total) - y


@jax.jit
def merge_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
  """Combines two accumulators (Chan, Golub & LeVeque 1979 pairwise update):
  n = na + nb, mean = mean_a + delta nb / n, M2 = M2_a + M2_b + delta delta^T na nb / n."""
  n = a.count + b.count
  safe_n = jnp.maximum(n, 1.0)
  # Kahan: the best estimate of a running sum is total - comp.
  delta = (b.mean - b.mean_comp) - (a.mean - a.mean_comp)
  mean, mean_comp = _kahan_add(a.mean, a.mean_comp, delta * (b.count / safe_n))
  inc = (b.m2 - b.m2_comp) + jnp.outer(delta, delta) * (a.count * b.count / safe_n)
  m2, m2_comp = _kahan_add(a.m2, a.m2_comp, inc)
  return FeatureStats(n, mean, m2, mean_comp, m2_comp)


@jax.jit
def update_stats(stats: FeatureStats, feats: jax.Array,
                 mask: jax.Array | None = None) -> FeatureStats:
  """Adds a (B, d) batch of features to the accumulator; rows where `mask` is False are ignored
  (so a padded last batch can reuse the same compiled shape). Pure: returns the new state."""
  x = jnp.asarray(feats, stats.mean.dtype)
  w = jnp.ones((x.shape[0],), x.dtype) if mask is None else jnp.asarray(mask, x.dtype)
  nb = jnp.sum(w)
  mb = jnp.sum(x * w[:, None], axis=0) / jnp.maximum(nb, 1.0)
  xc = (x - mb) * w[:, None]
  m2b = jnp.matmul(xc.T, xc, precision=_HI)
  zeros = jnp.zeros_like(mb)
  return merge_stats(stats, FeatureStats(nb, mb, m2b, zeros, jnp.zeros_like(m2b)))


def finalize_stats(stats: FeatureStats) -> tuple[jax.Array, jax.Array]:
  """Returns (mean, cov) with the unbiased covariance M2 / (n - 1), matching `numpy.cov`.
  Jittable; called eagerly it checks that at least two samples were seen."""
  if not isinstance(stats.count, jax.core.Tracer) and float(stats.count) < 2:
    raise DataError(f"feature statistics hold {int(stats.count)} samples; expected at least 2")
  return stats.mean - stats.mean_comp, (stats.m2 - stats.m2_comp) / (stats.count - 1)


StatsLike = FeatureStats | tuple[jax.Array, jax.Array]


def fid_from_stats(stats_a: StatsLike, stats_b: StatsLike) -> jax.Array:
  """FID from two sets of statistics, each a `FeatureStats` accumulator or a (mean, cov) pair
  (e.g. from `load_stats` of a reference .npz). Heusel et al. 2017, eq. 6."""
  pairs = []
  for s in (stats_a, stats_b):
    pairs.append(finalize_stats(s) if isinstance(s, FeatureStats) else (s[0], s[1]))
  (mu1, c1), (mu2, c2) = pairs
  if np.shape(mu1) != np.shape(mu2):
    raise DataError(f"fid_from_stats: feature dims differ, {np.shape(mu1)} vs {np.shape(mu2)}")
  return frechet_distance(mu1, c1, mu2, c2)


def save_stats(path: str, mean: jax.Array, cov: jax.Array) -> None:
  """Writes (mean, cov) as float64 .npz with keys `mu` and `sigma` (the layout used by the
  common FID reference-statistics files), atomically (temp file, then rename)."""
  atomic_save_npz(path, mu=np.asarray(mean, np.float64), sigma=np.asarray(cov, np.float64))


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mean, cov) from an .npz holding `mu` and `sigma`."""
  try:
    with paths.load_npz(path) as f:
      mu, sigma = f["mu"], f["sigma"]
  except (OSError, KeyError, ValueError) as e:
    raise DataError(f"{path}: not a statistics .npz with keys 'mu' and 'sigma' ({e})") from e
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise DataError(f"{path}: mu {mu.shape} and sigma {sigma.shape}; expected (d,) and (d, d)")
  return mu, sigma
