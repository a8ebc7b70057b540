"""Low-rank sampling from a fitted mixture (paper 004 eqs. 3-4).

Each component keeps its d_k leading eigenpairs (V_k, s_k) of Sigma_k, with
d_k = max(1, floor(lambda * pi_k * d0)) (temperature lambda, paper default 0.12) or a fixed d_k,
and a sample of component k is

  z = V_k^T diag(sqrt(s_k)) eps + c_k,   eps ~ N(0, I_{d_k}),

whose covariance is the rank-d_k truncation V_k^T diag(s_k) V_k of Sigma_k. Eq. 4 as printed,
diag(sqrt(s_k)^{-1}) V_k eps, has the whitening (inverse) scale of eq. 1 and V_k's transpose
missing; it cannot map R^{d_k} to R^{d0}. We read it as the colouring map above, the only reading
that reproduces Sigma_k when d_k = d0 (then it equals eq. 3 up to a rotation of eps).

Eigenpairs come from eigh of the d x d covariance ('full' fits) or, for 'dual' fits, from the
N x N matrix A_k A_k^T = Q L Q^T: V_k = A_k^T Q L^{-1/2}, s_k = L + reg, with no d x d matrix.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.gmm.em import GaussianMixture


@flax.struct.dataclass
class LowRankMixture:
  weights: jax.Array  # [K]
  means: jax.Array  # [K, d]
  bases: jax.Array  # [K, d, r_max] leading eigenvectors (columns), zero beyond d_k
  scales: jax.Array  # [K, r_max] sqrt eigenvalues, zero beyond d_k
  dims: jax.Array  # [K] d_k


def component_dims(weights: np.ndarray, dim: int, *, temperature: float | None = 0.12,
                   fixed: int | None = None, max_rank: int | None = None) -> np.ndarray:
  """d_k = max(1, floor(temperature * pi_k * d0)), or `fixed` for every component, capped at max_rank."""
  weights = np.asarray(weights, np.float64)
  if fixed is not None:
    if not (isinstance(fixed, int) and fixed >= 1):
      raise ConfigError("lowrank.fixed_dim", fixed, "a positive integer (or None for the temperature rule)")
    dims = np.full(weights.shape, fixed)
  else:
    if not (temperature is not None and temperature > 0):
      raise ConfigError("lowrank.temperature", temperature, "a positive number")
    dims = np.maximum(1, np.floor(temperature * weights * dim + 1e-9)).astype(int)
  cap = dim if max_rank is None else min(dim, max_rank)
  return np.minimum(dims, cap).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("rank",))
def _eigs_full(covs, rank):
  evals, evecs = jax.vmap(jnp.linalg.eigh)(covs)
  return evecs[:, :, ::-1][:, :, :rank], evals[:, ::-1][:, :rank]


@functools.partial(jax.jit, static_argnames=("rank",))
def _eigs_dual(support, support_weights, means, reg, rank):
  def one(wk, mk):
    a = jnp.sqrt(wk)[:, None] * (support - mk)  # [N, d]
    evals, q = jnp.linalg.eigh(a @ a.T)
    evals, q = evals[::-1][:rank], q[:, ::-1][:, :rank]
    lam = jnp.maximum(evals, 0.0)
    basis = (a.T @ q) * jnp.where(lam > 0, jax.lax.rsqrt(jnp.maximum(lam, 1e-30)), 0.0)
    return basis, lam + reg
  # vmap, not lax.map: jaxlib's CPU eigh inside a loop deadlocks with several simulated devices.
  return jax.vmap(one)(support_weights, means)


def low_rank(mixture: GaussianMixture, dims: np.ndarray) -> LowRankMixture:
  """Keep d_k leading eigenpairs per component (dims from `component_dims`)."""
  dims = np.asarray(dims, np.int32)
  d = int(mixture.means.shape[1])
  limit = d if mixture.form == "full" else min(d, int(mixture.support.shape[0]))
  if dims.shape != (int(mixture.weights.shape[0]),) or dims.min() < 1 or dims.max() > limit:
    raise ConfigError("lowrank.dims", dims.tolist(), f"one integer in [1, {limit}] per component")
  rank = int(dims.max())
  if mixture.form == "full":
    bases, evals = _eigs_full(mixture.full_covariances, rank)
  else:
    bases, evals = _eigs_dual(mixture.support, mixture.support_weights, mixture.means,
                              mixture.reg_covar, rank)
  keep = jnp.arange(rank)[None] < jnp.asarray(dims)[:, None]
  scales = jnp.where(keep, jnp.sqrt(jnp.maximum(evals, 0.0)), 0.0)
  return LowRankMixture(weights=mixture.weights, means=mixture.means,
                        bases=bases * keep[:, None, :], scales=scales, dims=jnp.asarray(dims))


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sample(lr, key, num_samples, components):
  k_eps = jax.random.fold_in(key, 1)
  # Draw [n, d0] and keep the first r_max columns: sample i's eps then depends on the key and i
  # only, not on r_max = max_k d_k (a [n, r_max] draw reshuffles the stream when r_max changes).
  eps = jax.random.normal(k_eps, (num_samples, lr.means.shape[1]), lr.means.dtype)
  eps = eps[:, :lr.scales.shape[1]]
  coeffs = eps * lr.scales[components]
  return jnp.einsum("bdr,br->bd", lr.bases[components], coeffs) + lr.means[components]


def sample_low_rank(lr: LowRankMixture, key: jax.Array, num_samples: int,
                    components: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(codes [n, d], component [n]) by eqs. 3-4: k ~ pi, then z = V_k^T diag(sqrt(s_k)) eps + c_k.

  The same key with different d_k uses the same eps (its first d_k entries), so sweeps over the
  temperature compare like with like (paper Fig. 8).
  """
  if components is None:
    components = jax.random.categorical(jax.random.fold_in(key, 0), jnp.log(lr.weights),
                                        shape=(num_samples,))
  return _sample(lr, key, num_samples, jnp.asarray(components, jnp.int32)), components


def num_parameters(lr: LowRankMixture) -> int:
  """Stored numbers: K (d_k + 1) d0 (eigenvectors and mean) + K d_k + K (paper supp. sec. 3)."""
  d = int(lr.means.shape[1])
  dims = np.asarray(lr.dims)
  return int(np.sum((dims + 1) * d + dims + 1))

