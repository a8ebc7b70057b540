"""Which views are observed: conditioning sets C, the multi-time vector tau and lambda(M, C).

Paper 000 sec. III-A: with probability d = 0.2 no view is observed (C = {}: joint diffusion of all
views); otherwise C is drawn uniformly among the non-empty proper subsets of the V views and
those latents are frozen. The loss is weighted by lambda(M, C) = 1 + |C| / |M| (eq. 6), and the
score network sees tau(M, t) = t * [1(1 in M), ..., 1(V in M)] (sec. II-B).

The authors' public code differs: one conditioning draw per batch, and d is the probability of a
*conditional* batch. `mode="per_batch"` reproduces that; `mode="per_example"` (default) follows
the paper. Observed masks are float arrays [B, V] with 1 = view in C (observed, frozen).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

MODES = ("per_example", "per_batch")


def _subset_bits(index: jax.Array, num_views: int) -> jax.Array:
  """Bits of `index` as a [..., V] float mask (view v observed iff bit v is set)."""
  return ((index[..., None] >> jnp.arange(num_views)) & 1).astype(jnp.float32)


def sample_observed(key: jax.Array, batch: int, num_views: int, joint_prob: float = 0.2,
                    mode: str = "per_example") -> jax.Array:
  """Draw observed-view masks [batch, V] as paper 000 sec. III-A (or the authors' code)."""
  k_joint, k_subset = jax.random.split(key)
  n = batch if mode == "per_example" else 1
  # Non-empty proper subsets are the integers 1 .. 2^V - 2 read as bit masks: uniform over them.
  subset = jax.random.randint(k_subset, (n,), 1, 2 ** num_views - 1)
  conditional = _subset_bits(subset, num_views)
  u = jax.random.uniform(k_joint, (n, 1))
  if mode == "per_example":
    observed = jnp.where(u < joint_prob, 0.0, conditional)
  else:  # authors' code: d is the probability that the batch is conditional
    observed = jnp.where(u < joint_prob, conditional, 0.0)
  return jnp.broadcast_to(observed, (batch, num_views))


def lambda_weight(observed: jax.Array) -> jax.Array:
  """lambda(M, C) = 1 + |C| / |M| per example (paper 000 eq. 6); |M| >= 1 always."""
  num_observed = observed.sum(-1)
  num_missing = jnp.maximum(observed.shape[-1] - num_observed, 1.0)
  return 1.0 + num_observed / num_missing


def multi_time(t: jax.Array, observed: jax.Array) -> jax.Array:
  """tau(M, t) = t * 1(v in M): the diffusion time of each view, 0 for observed views."""
  return t[:, None] * (1.0 - observed)


def coordinate_mask(observed: jax.Array, latent_dim: int) -> jax.Array:
  """Per-coordinate diffusion mask [B, V * L] (1 = missing/diffused) for the flat latent."""
  return jnp.repeat(1.0 - observed, latent_dim, axis=-1)


def subsets_of_size(num_views: int, k: int) -> list[tuple[int, ...]]:
  """All conditioning sets with k observed views, as sorted view-index tuples."""
  return list(itertools.combinations(range(num_views), k))


def observed_mask_for(subset: tuple[int, ...], num_views: int) -> jax.Array:
  return jnp.asarray([1.0 if v in subset else 0.0 for v in range(num_views)], jnp.float32)
