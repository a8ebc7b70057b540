"""The classifier's input normalisation and loss (pure functions).

Loss per batch (targets t are class probabilities):
  L = sum_i w_i CE(t_i, softmax(z_i)) / B  -  entropy_weight * mean_i H(softmax(z_i))
with t = (1 - eps) onehot(y) + eps / K (label smoothing, Szegedy et al. 2016; torch's convention),
then Mixup/CutMix mixing, w_i = 1 or the 'balanced' class weight (sampling='reweighted'), and the
entropy term of paper 003 sec. 4.3 (w = 0.3 for Softlabel-GAN's SpinalNet classifier).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.classifier.config import IMAGENET_MEAN, IMAGENET_STD


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """uint8-valued images in [0, 255] -> float32 in [-1, 1] or ImageNet mean/std normalised."""
  x = images.astype(jnp.float32)
  if normalization == "imagenet":
    return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return x / 127.5 - 1.0


def smooth_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """Hard labels [B] or soft labels [B, K] -> (1 - eps) t + eps / K (label smoothing)."""
  t = labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
  return (1.0 - smoothing) * t + smoothing / num_classes


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example CE(t, softmax(z)) = -sum_k t_k log softmax(z)_k."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def softmax_entropy(logits: jax.Array) -> jax.Array:
  """Per-example Shannon entropy H(softmax(z)) = -sum_k p_k log p_k (nats)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def classification_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                        entropy_weight: float) -> tuple[jax.Array, dict]:
  """sum_i w_i CE_i / B - entropy_weight * mean_i H_i (paper 003 sec. 4.3 for the entropy term)."""
  ce = soft_cross_entropy(logits, targets)
  ent = softmax_entropy(logits)
  loss = jnp.mean(weights * ce) - entropy_weight * jnp.mean(ent)
  return loss, {"cross_entropy": jnp.mean(ce), "entropy": jnp.mean(ent)}
