"""Confidence filtering of synthetic images (paper 001 sec. 3.4, "Construct synthetic dataset").

The paper scores each synthetic image with CLIP's confidence in its content and drops the
problematic ones (fragmented foregrounds after inter-class edits). The scorer is pluggable:

* `classifier`: a jaxgen classifier trained on the real set; the score is its probability of the
  image's target class;
* `backbone`: the text-to-image backbone's own text-image score, the diffusion classifier of
  Li et al. (2023) / Clark & Jaini (2023): log p(target | x) from the denoising errors
  ||eps - eps_theta(z_t, t, prompt_c)||^2 of every class prompt at fixed timesteps and noise
  (uniform timestep weights), softmax over classes;
* `none`: keep everything.

`keep_mask` then drops the lowest-scoring fraction.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.t2i import backbone as bb

SCORERS = ("none", "classifier", "backbone")
Array = jax.Array
EpsFn = Callable[[Array, Array, Array], Array]  # (x, t, context) -> eps


def target_confidence(probs: np.ndarray, target_class: np.ndarray) -> np.ndarray:
  """probs[i, target_class[i]]: the scorer's confidence in each image's target class."""
  probs, target_class = np.asarray(probs), np.asarray(target_class)
  return probs[np.arange(len(target_class)), target_class]


def keep_mask(scores: np.ndarray, drop_fraction: float) -> np.ndarray:
  """bool [M]: False for the floor(drop_fraction * M) lowest scores (ties: the later index goes)."""
  if not 0.0 <= drop_fraction < 1.0:
    raise ConfigError("filter.drop_fraction", drop_fraction, "a number in [0, 1)")
  scores = np.asarray(scores)
  num_drop = int(np.floor(drop_fraction * len(scores)))
  keep = np.ones(len(scores), bool)
  # stable sort of -index as tie-breaker: among equal scores the later image is dropped first
  order = np.lexsort((-np.arange(len(scores)), scores))
  keep[order[:num_drop]] = False
  return keep


def diffusion_class_log_probs(eps_model: EpsFn, latents: Array, contexts: Array, times: Array,
                              noise: Array, mean_coeff: Array, marginal_std: Array) -> Array:
  """log p(c | x) [B, K] of the diffusion classifier.

  latents [B, ...] (scaled x0 latents), contexts [K, L, W] (one prompt per class), times [T]
  (continuous SDE times), noise [T, B, ...], mean_coeff / marginal_std [T] (a(t), s(t) of
  z_t = a x0 + s eps). The class score is minus the denoising error summed over latent entries
  and averaged over the T timesteps; a softmax over classes gives the probabilities.
  """
  b = latents.shape[0]
  shape = (1,) * (latents.ndim - 1)

  def error_at(t, eps, a, s):
    z = a * latents + s * eps
    tb = jnp.full((b,), t)

    def per_class(context):
      pred = eps_model(z, tb, jnp.broadcast_to(context[None], (b,) + context.shape))
      return jnp.sum((pred - eps) ** 2, axis=tuple(range(1, latents.ndim)))

    return jax.lax.map(per_class, contexts)  # [K, B]

  errors = jax.vmap(error_at)(times, noise, mean_coeff.reshape((-1,) + shape),
                              marginal_std.reshape((-1,) + shape))  # [T, K, B]
  return jax.nn.log_softmax(-jnp.mean(errors, axis=0).T, axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def _target_probs(unet_variables, config, latents, contexts, times, noise, target):
  sde = config.sde
  logp = diffusion_class_log_probs(bb.eps_fn(unet_variables, config), latents, contexts, times,
                                   noise, sde.mean_coeff(times), sde.marginal_std(times))
  return jnp.exp(jnp.take_along_axis(logp, target[:, None], axis=1)[:, 0])


def backbone_scores(unet_variables: dict, config: bb.BackboneConfig, latents: np.ndarray,
                    contexts: Array, target_class: np.ndarray, *, num_times: int, key: Array,
                    batch_size: int, first_batch: int = 0) -> np.ndarray:
  """p(target | x) [M] of the backbone's diffusion classifier over batches of `latents` [M, ...]
  (scaled latents of the synthetic images); contexts [K, L, W] are the class prompts' states.

  The T times are evenly spaced in (0, 1) (t_k = (k + 0.5) / T) with the same noise draw for
  every class (a paired comparison); batches are padded to one compiled shape. Batch i draws
  its noise from fold_in(key, first_batch + i), so scoring a set in chunks of whole batches
  (`first_batch` = the chunk's first batch) gives the scores of one call.
  """
  times = (jnp.arange(num_times) + 0.5) / num_times
  out = []
  m = len(latents)
  for i, start in enumerate(range(0, m, batch_size)):
    rows = np.minimum(np.arange(start, start + batch_size), m - 1)
    noise = jax.random.normal(jax.random.fold_in(key, first_batch + i), (num_times, batch_size) + latents.shape[1:])
    p = _target_probs(unet_variables, config, jnp.asarray(latents[rows]), contexts, times, noise,
                      jnp.asarray(np.asarray(target_class)[rows]))
    out.append(np.asarray(p)[:min(batch_size, m - start)])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)
