"""Coherence: agreement between a classifier's prediction on generated images and the label of
the observed (conditioning) data (paper 000, eq. 7)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen.errors import DataError
from jaxgen.metrics.features import ImageSource, iter_features


def coherence_from_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """(1/N) sum_n 1[argmax_c logits_n = y_n] (paper 000 eq. 7) for (N, C) logits, (N,) labels.
  Jittable."""
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def coherence(classify_fn: Callable[[jax.Array], jax.Array], images: ImageSource,
              labels: jax.Array, batch_size: int = 256, mesh: Mesh | None = None) -> float:
  """Fraction of generated images whose predicted class equals the conditioning label.

  coherence = (1/N) sum_n 1[Gamma(x_hat_n) = y_n]  (paper 000 eq. 7), Gamma = argmax of
  `classify_fn`, a pre-trained classifier mapping a uint8 NHWC batch to (B, C) logits (an
  in-domain classifier trained by jaxgen; name it in the report).

  Args:
    classify_fn: uint8 NHWC batch -> (B, C) logits; jittable.
    images: (N, H, W, C) uint8 generated images, or an iterable of such batches (in label order).
    labels: (N,) integer labels of the conditioning data.
    batch_size: images per classifier call (a multiple of the mesh 'data' size with `mesh`).
    mesh: optional mesh whose `data` axis shards each batch.

  Returns:
    The coherence in [0, 1] as a Python float.
  """
  labels = np.asarray(labels).reshape(-1)
  predict = lambda x: jnp.argmax(classify_fn(x), axis=-1)  # noqa: E731  (only ints come back)
  preds = np.concatenate(list(iter_features(predict, images, batch_size, mesh)))
  if preds.shape[0] != labels.shape[0]:
    raise DataError(f"coherence: {preds.shape[0]} images but {labels.shape[0]} labels; expected "
                    "one label per image")
  return float(np.mean(preds == labels))
