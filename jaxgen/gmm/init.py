"""Initial responsibilities for the EM, as scikit-learn's `GaussianMixture._initialize_parameters`.

scikit-learn builds a responsibility matrix and derives the first parameters from it with the
M-step formulas (weights NOT renormalised: n_k / N). We follow that exactly for each init:

- 'kmeans': one-hot labels of a k-means run (k-means++ seeds, then Lloyd iterations);
- 'kmeans++': one-hot at the K seeds chosen by greedy k-means++ only (every other row is zero,
  so the first covariances are reg_covar * I and the first weights (1 + 10 eps) / N, as sklearn);
- 'random_from_data': one-hot at K distinct points drawn uniformly.

Random draws use JAX keys, so seeds do not match sklearn's NumPy streams; equivalence with
sklearn is tested from explicit initial parameters.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

INITS = ("kmeans++", "kmeans", "random_from_data")


def _sq_dists(x: jax.Array, centers: jax.Array) -> jax.Array:
  """||x_i - c_k||^2 [N, K] by the expanded form, clipped at 0."""
  d = (jnp.sum(x * x, 1)[:, None] - 2.0 * x @ centers.T + jnp.sum(centers * centers, 1)[None])
  return jnp.maximum(d, 0.0)


def kmeans_plusplus(key: jax.Array, x: jax.Array, num_components: int, valid: jax.Array
                    ) -> jax.Array:
  """Indices [K] of greedy k-means++ seeds (Arthur & Vassilvitskii 2007; sklearn's variant).

  Each new seed is the best of 2 + floor(log K) candidates drawn with probability proportional to
  the squared distance to the nearest seed so far (best = lowest resulting potential).
  """
  n = x.shape[0]
  trials = 2 + int(math.log(num_components))
  k0, key = jax.random.split(key)
  p = valid / jnp.sum(valid)
  first = jax.random.choice(k0, n, p=p)
  closest = _sq_dists(x, x[first][None])[:, 0] * valid
  indices = jnp.zeros((num_components,), jnp.int32).at[0].set(first.astype(jnp.int32))

  def body(c, carry):
    indices, closest, key = carry
    key, sub = jax.random.split(key)
    probs = closest / jnp.maximum(jnp.sum(closest), jnp.finfo(x.dtype).tiny)
    probs = jnp.where(jnp.sum(closest) > 0, probs, p)  # all points coincide with seeds
    cand = jax.random.choice(sub, n, (trials,), p=probs)
    d = jnp.minimum(closest[None], _sq_dists(x, x[cand]).T * valid[None])  # [trials, N]
    best = jnp.argmin(jnp.sum(d, axis=1))
    return indices.at[c].set(cand[best].astype(jnp.int32)), d[best], key

  indices, _, _ = jax.lax.fori_loop(1, num_components, body, (indices, closest, key))
  return indices


def kmeans_labels(key: jax.Array, x: jax.Array, num_components: int, valid: jax.Array,
                  max_iter: int = 300, tol: float = 1e-4) -> jax.Array:
  """Lloyd's k-means from k-means++ seeds in one `lax.while_loop`; returns labels [N].

  Stops when the squared centre shift falls below tol * mean per-feature variance (sklearn's
  rule) or after max_iter iterations; an empty cluster keeps its previous centre.
  """
  n_valid = jnp.sum(valid)
  mean = jnp.sum(x * valid[:, None], 0) / n_valid
  var = jnp.sum(((x - mean) ** 2) * valid[:, None], 0) / n_valid
  threshold = tol * jnp.mean(var)
  centers = x[kmeans_plusplus(key, x, num_components, valid)]

  def step(carry):
    centers, _, it = carry
    labels = jnp.argmin(_sq_dists(x, centers), axis=1)
    onehot = jax.nn.one_hot(labels, num_components, dtype=x.dtype) * valid[:, None]
    counts = jnp.sum(onehot, 0)
    new = jnp.where(counts[:, None] > 0, onehot.T @ x / jnp.maximum(counts, 1)[:, None], centers)
    return new, jnp.sum((new - centers) ** 2), it + 1

  def cond(carry):
    _, shift, it = carry
    return (it < max_iter) & (shift > threshold)

  centers, _, _ = jax.lax.while_loop(cond, step, step((centers, jnp.inf, 0)))
  return jnp.argmin(_sq_dists(x, centers), axis=1)


def initial_responsibilities(key: jax.Array, x: jax.Array, num_components: int, init: str,
                             valid: jax.Array) -> jax.Array:
  """Responsibilities [N, K] for `init` in INITS, built as scikit-learn builds them."""
  n = x.shape[0]
  if init == "kmeans":
    labels = kmeans_labels(key, x, num_components, valid)
    return jax.nn.one_hot(labels, num_components, dtype=x.dtype) * valid[:, None]
  if init == "kmeans++":
    idx = kmeans_plusplus(key, x, num_components, valid)
  elif init == "random_from_data":
    # Distinct valid points: Gumbel top-k over the valid rows.
    scores = jnp.where(valid > 0, jax.random.gumbel(key, (n,)), -jnp.inf)
    idx = jax.lax.top_k(scores, num_components)[1]
  else:
    raise ValueError(init)
  return jnp.zeros((n, num_components), x.dtype).at[idx, jnp.arange(num_components)].set(1.0)
