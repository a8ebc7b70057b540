"""Kernel Inception Distance: unbiased MMD^2 with a polynomial kernel over random subsets."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError, DataError
from jaxgen.metrics.dtypes import working_float_dtype

_HI = jax.lax.Precision.HIGHEST


def polynomial_kernel(x: jax.Array, y: jax.Array, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> jax.Array:
  """k(x, y) = (gamma <x, y> + coef0)^degree for all row pairs; gamma defaults to 1/d
  (Binkowski et al. 2018, Sec. 3 / App. D; as `sklearn.metrics.pairwise.polynomial_kernel`)."""
  g = 1.0 / x.shape[-1] if gamma is None else gamma
  return (g * jnp.matmul(x, y.T, precision=_HI) + coef0) ** degree


def mmd2_unbiased(x: jax.Array, y: jax.Array, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0) -> jax.Array:
  """Unbiased estimator of the squared MMD (Gretton et al. 2012, eq. 3) with the polynomial
  kernel: sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 mean k(x_i,y_j)."""
  m, n = x.shape[0], y.shape[0]
  kxx = polynomial_kernel(x, x, degree, gamma, coef0)
  kyy = polynomial_kernel(y, y, degree, gamma, coef0)
  kxy = polynomial_kernel(x, y, degree, gamma, coef0)
  sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (m * (m - 1))
  syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (n * (n - 1))
  return sxx + syy - 2.0 * jnp.mean(kxy)


def kid_subset_indices(key: jax.Array, n_a: int, n_b: int, num_subsets: int,
                       subset_size: int) -> tuple[jax.Array, jax.Array]:
  """The subsets `kid` draws: subset s takes `subset_size` distinct rows of each set, chosen with
  `fold_in(key, s)` (split in two, one per set). Returns (num_subsets, m) index arrays."""
  m = min(subset_size, n_a, n_b)

  def draw(s):
    ka, kb = jax.random.split(jax.random.fold_in(key, s))
    return (jax.random.choice(ka, n_a, (m,), replace=False),
            jax.random.choice(kb, n_b, (m,), replace=False))

  return jax.vmap(draw)(jnp.arange(num_subsets))


@functools.partial(jax.jit, static_argnames=("num_subsets", "subset_size", "degree"))
def _kid(fa, fb, key, gamma, coef0, *, num_subsets, subset_size, degree):
  ia, ib = kid_subset_indices(key, fa.shape[0], fb.shape[0], num_subsets, subset_size)
  # lax.map: one subset's three m x m kernel matrices live at a time, not num_subsets of them.
  vals = jax.lax.map(lambda ij: mmd2_unbiased(fa[ij[0]], fb[ij[1]], degree, gamma, coef0),
                     (ia, ib))
  return jnp.mean(vals), jnp.std(vals)


def kid(feats_a: jax.Array, feats_b: jax.Array, num_subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
        key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 3).

  For each of `num_subsets` subsets of m = min(subset_size, N_a, N_b) rows drawn without
  replacement from each set, computes the unbiased MMD^2 with the polynomial kernel
  (gamma <x, y> + coef0)^degree, gamma = 1/d by default; returns the mean and the standard
  deviation (population, ddof=0) over subsets. Jittable; `key` defaults to PRNGKey(0) so a
  report is reproducible.

  Args:
    feats_a, feats_b: (N_a, d) and (N_b, d) features.
    num_subsets, subset_size, degree: Python ints (static).
    gamma, coef0: kernel parameters.
    key: PRNG key for the subsets (`kid_subset_indices` reproduces them).

  Returns:
    (mean, std) scalars.
  """
  fa = jnp.asarray(feats_a, working_float_dtype())
  fb = jnp.asarray(feats_b, working_float_dtype())
  if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
    raise DataError(f"kid: feature shapes {fa.shape} and {fb.shape}; expected (N, d) with equal d")
  if min(fa.shape[0], fb.shape[0], subset_size) < 2:
    raise DataError(f"kid: sets of {fa.shape[0]} and {fb.shape[0]} rows, subset_size {subset_size};"
                    " expected at least 2 rows per subset")
  if num_subsets < 1:
    raise ConfigError("num_subsets", num_subsets, "an integer >= 1")
  key = jax.random.PRNGKey(0) if key is None else key
  g = 1.0 / fa.shape[1] if gamma is None else gamma
  return _kid(fa, fb, key, g, coef0, num_subsets=int(num_subsets), subset_size=int(subset_size),
              degree=int(degree))
