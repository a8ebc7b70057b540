"""Inception Score from classifier logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError, DataError


def _split_ids(n: int, num_splits: int) -> np.ndarray:
  # Split s holds rows [s*n//k, (s+1)*n//k), the slicing of Salimans et al.'s reference code.
  bounds = np.array([s * n // num_splits for s in range(num_splits + 1)])
  return np.searchsorted(bounds, np.arange(n), side="right") - 1


@functools.partial(jax.jit, static_argnames=("num_splits",))
def _inception_score(logits, *, num_splits):
  n = logits.shape[0]
  seg = jnp.asarray(_split_ids(n, num_splits))
  logp = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(logp)
  counts = jax.ops.segment_sum(jnp.ones((n,), logits.dtype), seg, num_splits)
  py = jax.ops.segment_sum(p, seg, num_splits) / counts[:, None]     # marginal p(y) per split
  kl = jnp.sum(p * (logp - jnp.log(py)[seg]), axis=-1)                # KL(p(y|x) || p(y))
  scores = jnp.exp(jax.ops.segment_sum(kl, seg, num_splits) / counts)
  return jnp.mean(scores), jnp.std(scores)


def inception_score(logits: jax.Array, num_splits: int = 10) -> tuple[jax.Array, jax.Array]:
  """Inception Score IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016, "Improved
  Techniques for Training GANs", Sec. 4).

  The N rows are cut into `num_splits` contiguous splits (rows s*N//k to (s+1)*N//k); in each,
  p(y) is the mean of the softmax of the logits over that split, and the score is the exp of the
  mean KL divergence. Returns the mean and the population standard deviation (ddof=0) of the
  per-split scores, as the reference implementation. Jittable (`num_splits` static).

  Args:
    logits: (N, K) unnormalised class scores of the classifier (InceptionV3 logits for the
      standard IS; any named classifier otherwise, see docs/metrics.md).
    num_splits: number of splits, 1 <= num_splits <= N.

  Returns:
    (mean, std) scalars.
  """
  x = jnp.asarray(logits)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim != 2:
    raise DataError(f"inception_score: logits of shape {x.shape}; expected (N, num_classes)")
  if not 1 <= num_splits <= x.shape[0]:
    raise ConfigError("num_splits", num_splits, f"an integer in [1, N={x.shape[0]}]")
  return _inception_score(x, num_splits=int(num_splits))
