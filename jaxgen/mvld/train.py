"""MVLD's two training stages on the shared loop: the autoencoder, then the latent diffusion.

Paper 000 sec. III-A: the autoencoder is trained first (eq. 1, Laplace likelihood, augmented
with TrivialAugmentWide), then frozen; the score network is trained on the standardised latents
of all V views with multi-time masked diffusion (eq. 6). jaxgen can add an in-domain feature
loss to eq. 1 (`feature_distance_fn`; `autoencoder.perceptual_weight`, docs/mvld.md).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxgen.classifier.inference import Classifier
from jaxgen.classifier.losses import normalize
from jaxgen.data.batches import is_streamed, select_keys, training_batches
from jaxgen.data.sources import Source
from jaxgen.data.trivial_augment import trivial_augment_wide
from jaxgen.metrics.lpips import capture_features, distance_from_features
from jaxgen.mvld import model as mvld_model
from jaxgen.nets.autoencoder import laplace_reconstruction_loss
from jaxgen.parallel.mesh import to_host
from jaxgen.train import loop
from jaxgen.train.init import compiled_init
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.train.writers import MetricWriter


def feature_distance_fn(classifier: Classifier,
                        layers: Sequence[str]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(x, x_hat) in the model range [-1, 1] -> the mean in-domain LPIPS distance (unit-normalised
  channels, equal weights: `jaxgen.metrics.lpips.distance_from_features`) between the activations
  of `layers` of a frozen classifier; differentiable in x_hat.

  The classifier's variables enter as host constants, so any jitted step (one process or several)
  can use the function without passing them in.
  """
  variables = jax.tree.map(to_host, classifier.variables)
  apply_fn, normalization, layers = classifier.apply_fn, classifier.normalization, tuple(layers)

  def distance(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    both = jnp.concatenate([x_hat, jax.lax.stop_gradient(x)], axis=0)
    if normalization != "minus_one_one":  # [-1, 1] is already this classifier's input
      both = normalize((both + 1.0) * 127.5, normalization)
    feats = capture_features(apply_fn, variables, both, layers, {"train": False})
    n = x.shape[0]
    return jnp.mean(distance_from_features([f[:n] for f in feats], [f[n:] for f in feats]))

  return distance


def train_autoencoder(spec: mvld_model.MVLDSpec, cfg: ml_collections.ConfigDict,
                      views: np.ndarray | Source, *, workdir: str, mesh: Mesh, key: jax.Array,
                      writer: MetricWriter | None, seed: int,
                      feature_distance: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> Any:
  """Train e_phi / d_psi on single views uint8 [N, H, W, 3] (or a Source of {'image'} records,
  streamed by grain); returns the (EMA if any) params. With `feature_distance` (see
  `feature_distance_fn`), the loss is eq. 1's L1 plus `cfg.perceptual_weight` times it."""
  k_init, k_train = jax.random.split(key)
  shape = tuple(views.image_shape) if is_streamed(views) else views.shape[1:]
  dummy = jnp.zeros((1,) + shape, jnp.float32)
  params = compiled_init(lambda k: spec.autoencoder.init(k, dummy), k_init)["params"]
  tcfg = cfg.train
  state = TrainState.create(params, make_optimizer(tcfg.optim, tcfg.num_steps), ema_decay=tcfg.ema_decay)
  augment = cfg.augment == "trivial_augment_wide"
  weight = float(cfg.perceptual_weight) if feature_distance is not None else 0.0

  def step_fn(state, batch, key):
    x = mvld_model.to_model_range(batch["image"])
    x_in = trivial_augment_wide(key, x) if augment else x

    def loss_fn(p):
      # The augmented image is both input and target: augmentation widens what the autoencoder
      # can reconstruct, it does not ask it to undo the augmentation.
      x_hat = spec.autoencoder.apply({"params": p}, x_in)
      l1 = laplace_reconstruction_loss(x_in, x_hat)
      if not weight:
        return l1, {"l1": l1}
      features = feature_distance(x_in, x_hat)
      return l1 + weight * features, {"l1": l1, "feature_distance": features}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {**metrics, "grad_norm": optax.global_norm(grads)}

  data, stream = {"image": views}, {}
  if is_streamed(views):
    data, stream = views, {"record_fn": functools.partial(select_keys, keys=("image",))}
  batches = training_batches(data, global_batch_size=tcfg.batch_size, seed=seed, **stream)
  state = loop.train(name="autoencoder", state=state, step_fn=step_fn, batches=batches, cfg=tcfg,
                     workdir=workdir, mesh=mesh, key=k_train, writer=writer)
  return state.eval_params


def train_diffusion(spec: mvld_model.MVLDSpec, cfg: ml_collections.ConfigDict, latents: np.ndarray, *,
                    workdir: str, mesh: Mesh, key: jax.Array, writer: MetricWriter | None,
                    seed: int) -> Any:
  """Train the score network on standardised flat latents [N, V * L]; returns EMA params."""
  k_init, k_train = jax.random.split(key)
  params = compiled_init(lambda k: spec.score_net.init(k, jnp.zeros((1, spec.flat_dim)),
                                                       jnp.zeros((1, spec.num_views))),
                         k_init)["params"]
  tcfg = cfg.train
  state = TrainState.create(params, make_optimizer(tcfg.optim, tcfg.num_steps), ema_decay=tcfg.ema_decay)

  def step_fn(state, batch, key):
    def loss_fn(p):
      return mvld_model.diffusion_loss(spec, p, key, batch["z"], cfg)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {**aux, "grad_norm": optax.global_norm(grads)}

  batches = training_batches({"z": latents.astype(np.float32)},
                             global_batch_size=tcfg.batch_size, seed=seed + 1)
  state = loop.train(name="diffusion", state=state, step_fn=step_fn, batches=batches, cfg=tcfg,
                     workdir=workdir, mesh=mesh, key=k_train, writer=writer)
  return state.eval_params

