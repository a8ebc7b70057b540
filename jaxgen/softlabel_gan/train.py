"""Training one conditional GAN of a comparison on the shared loop, and sampling from it.

One training step (BigGAN's schedule) is `d_steps` discriminator updates, each on its own real
batch and fresh fakes, then one generator update:
  D: L_D(D(A(x_r), y_hat_r), D(A(G(z, y_f)), y_f))      (paper 003 eq. 3; A = DiffAugment)
  G: L_G(D(A(G(z, y_f)), y_f))                            (eq. 2)
with y_hat_r the variant's label vector of each real image (one-hot, smoothed, the classifier's
softmax, ...) and y_f one-hot labels of uniformly drawn classes: the generator only sees one-hot
labels. Real and fake go through D in one call, as BigGAN-PyTorch does, so one power iteration of
D's spectral norms runs per D update; in the G update D keeps its stored u vectors.

The generator's EMA covers its BatchNorm running statistics and spectral-norm vectors as well as
its parameters (BigGAN-PyTorch's `ema` copies buffers too; without it, samples in eval mode mix
EMA weights with raw-weight statistics). Evaluation samples in eval mode from the EMA.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxgen.data.batches import is_streamed, select_keys, training_batches
from jaxgen.data.sources import Source, with_fields
from jaxgen.gan.diffaugment import diff_augment
from jaxgen.gan.losses import discriminator_loss, generator_loss
from jaxgen.nets.biggan import Discriminator, Generator
from jaxgen.nets.common import to_model_range, to_uint8
from jaxgen.parallel.batching import batched_apply
from jaxgen.softlabel_gan.labels import Variant
from jaxgen.train import loop
from jaxgen.train.optim import make_optimizer


class GANState(flax.struct.PyTreeNode):
  """Both networks' parameters, non-trainable collections and optimiser states, and G's EMA.

  `g_stats` holds G's 'batch_stats' (BatchNorm) and 'spectral' (power-iteration vectors);
  `d_stats` D's 'spectral'. `ema_params` / `ema_stats` are G's EMA of both.
  """

  step: jax.Array
  g_params: Any
  g_stats: Any
  g_opt: Any
  d_params: Any
  d_stats: Any
  d_opt: Any
  ema_params: Any
  ema_stats: Any
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)


def build_networks(cfg: ml_collections.ConfigDict, num_classes: int, image_size: int
                   ) -> tuple[Generator, Discriminator]:
  """BigGAN G and projection D of the config's `gan` section."""
  g = Generator(num_classes=num_classes, resolution=image_size, ch=cfg.g_ch, dim_z=cfg.dim_z,
                shared_dim=cfg.shared_dim, hierarchical=cfg.hierarchical, attention=cfg.g_attention,
                fused_resample=cfg.fused_resample)
  d = Discriminator(num_classes=num_classes, resolution=image_size, ch=cfg.d_ch,
                    attention=cfg.d_attention, fused_resample=cfg.fused_resample)
  return g, d


def _split(variables: dict) -> tuple[Any, dict]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def init_state(g: Generator, d: Discriminator, cfg: ml_collections.ConfigDict, key: jax.Array
               ) -> GANState:
  """Fresh parameters (BigGAN's orthogonal init), optimisers (G: `cfg.train.optim`, D:
  `cfg.d_optim`) and an EMA equal to G."""
  k_g, k_d = jax.random.split(key)
  z = jnp.zeros((2, cfg.dim_z), jnp.float32)
  y = jnp.zeros((2, g.num_classes), jnp.float32).at[:, 0].set(1.0)
  x = jnp.zeros((2, g.resolution, g.resolution, 3), jnp.float32)
  g_params, g_stats = _split(jax.jit(functools.partial(g.init, train=False))(k_g, z, y))
  d_params, d_stats = _split(jax.jit(functools.partial(d.init, train=False))(k_d, x, y))
  g_tx = make_optimizer(cfg.train.optim, cfg.train.num_steps)
  d_tx = make_optimizer(cfg.d_optim, cfg.train.num_steps * cfg.d_steps)
  return GANState(step=jnp.zeros((), jnp.int32), g_params=g_params, g_stats=g_stats,
                  g_opt=g_tx.init(g_params), d_params=d_params, d_stats=d_stats,
                  d_opt=d_tx.init(d_params), ema_params=jax.tree.map(jnp.copy, g_params),
                  ema_stats=jax.tree.map(jnp.copy, g_stats), g_tx=g_tx, d_tx=d_tx)


def _fake_labels(key: jax.Array, batch: int, num_classes: int) -> jax.Array:
  return jax.nn.one_hot(jax.random.randint(key, (batch,), 0, num_classes), num_classes)


def _mixup(key: jax.Array, x: jax.Array, y: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """T(x, y) = (lam x + (1 - lam) x', lam y + (1 - lam) y') with lam ~ Beta(alpha, alpha) per
  batch and (x', y') the batch in a random order (Zhang et al. 2018; paper 003 sec. 4.2)."""
  k_lam, k_perm = jax.random.split(key)
  lam = jax.random.beta(k_lam, alpha, alpha)
  perm = jax.random.permutation(k_perm, x.shape[0])
  return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def make_step_fn(g: Generator, d: Discriminator, cfg: ml_collections.ConfigDict, variant: Variant,
                 mixup_alpha: float) -> Callable[[GANState, dict, jax.Array], tuple[GANState, dict]]:
  """The training step for `loop.train`: `cfg.d_steps` D updates, one G update, the EMA."""
  policy = cfg.diffaugment if variant.augment else ""
  k_classes, dim_z, n_d = g.num_classes, cfg.dim_z, cfg.d_steps
  mix = variant.label_source == "mixup"

  def generate(g_params, g_stats, key, batch):
    k_z, k_y = jax.random.split(key)
    z = jax.random.normal(k_z, (batch, dim_z))
    y = _fake_labels(k_y, batch, k_classes)
    x, updates = g.apply({"params": g_params, **g_stats}, z, y, train=True,
                         mutable=["batch_stats", "spectral"])
    return x, y, updates

  def d_update(state: GANState, real: tuple[jax.Array, jax.Array], key: jax.Array):
    x_real, y_real = real
    b = x_real.shape[0]
    k_fake, k_aug_r, k_aug_f, k_mix = jax.random.split(key, 4)
    if mix:
      x_real, y_real = _mixup(k_mix, x_real, y_real, mixup_alpha)
    x_fake, y_fake, g_stats = generate(state.g_params, state.g_stats, k_fake, b)
    x_fake = jax.lax.stop_gradient(x_fake)
    x = jnp.concatenate([diff_augment(k_aug_r, x_real, policy), diff_augment(k_aug_f, x_fake, policy)])
    y = jnp.concatenate([y_real, y_fake])

    def loss_fn(d_params):
      logits, updates = d.apply({"params": d_params, **state.d_stats}, x, y, train=True,
                                mutable=["spectral"])
      loss, aux = discriminator_loss(cfg.loss, logits[:b], logits[b:])
      return loss, (updates, aux)

    (loss, (d_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
    updates, d_opt = state.d_tx.update(grads, state.d_opt, state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt=d_opt,
                          d_stats=d_stats, g_stats=g_stats)
    return state, {"d_loss": loss, **aux}

  def step_fn(state: GANState, batch: dict, key: jax.Array) -> tuple[GANState, dict]:
    x_all = to_model_range(batch["image"])
    y_all = batch["label"].astype(jnp.float32)
    b = x_all.shape[0] // n_d
    d_metrics = []
    for i in range(n_d):  # unrolled: n_d is small and static
      real = (x_all[i * b:(i + 1) * b], y_all[i * b:(i + 1) * b])
      state, m = d_update(state, real, jax.random.fold_in(key, i))
      d_metrics.append(m)
    k_fake, k_aug = jax.random.split(jax.random.fold_in(key, n_d))

    def g_loss_fn(g_params):
      x_fake, y_fake, g_stats = generate(g_params, state.g_stats, k_fake, b)
      logits = d.apply({"params": state.d_params, **state.d_stats},
                       diff_augment(k_aug, x_fake, policy), y_fake, train=False)
      return generator_loss(cfg.loss, logits), g_stats

    (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
    updates, g_opt = state.g_tx.update(grads, state.g_opt, state.g_params)
    g_params = optax.apply_updates(state.g_params, updates)
    # EMA from ema_start on (BigGAN); before it the EMA tracks G exactly.
    decay = jnp.where(state.step >= cfg.ema_start, cfg.train.ema_decay, 0.0)
    ema = lambda e, p: decay * e + (1.0 - decay) * p  # noqa: E731
    state = state.replace(step=state.step + 1, g_params=g_params, g_opt=g_opt, g_stats=g_stats,
                          ema_params=jax.tree.map(ema, state.ema_params, g_params),
                          ema_stats=jax.tree.map(ema, state.ema_stats, g_stats))
    metrics = jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *d_metrics)
    return state, {**metrics, "g_loss": g_loss}

  return step_fn


def real_batches(images: np.ndarray | Source, label_vectors: np.ndarray, classes: np.ndarray,
                 batch_size: int, sampling: str, seed: int, image_size: int | None = None):
  """Endless real batches of `batch_size` rows {'image', 'label' (T_y vectors)}: shuffled epochs
  (`sampling='uniform'`), or class-balanced draws (the Oversample baseline); checkpointable
  positions. A Source is streamed through grain (decoded and resized to `image_size`), each
  record carrying its vector."""
  vectors = label_vectors.astype(np.float32)
  if is_streamed(images):
    return training_batches(with_fields(images, label=vectors), global_batch_size=batch_size,
                            seed=seed, sampling=sampling, class_ids=classes, image_size=image_size,
                            record_fn=functools.partial(select_keys, keys=("image", "label")))
  arrays = {"image": images, "label": vectors}
  return training_batches(arrays, global_batch_size=batch_size, seed=seed, sampling=sampling,
                          class_ids=classes)


def train_gan(name: str, g: Generator, d: Discriminator, cfg: ml_collections.ConfigDict,
              variant: Variant, images: np.ndarray | Source, label_vectors: np.ndarray,
              classes: np.ndarray, *, mixup_alpha: float, workdir: str, mesh: Mesh, key: jax.Array,
              writer: Any = None, image_size: int | None = None) -> GANState:
  """Train (or resume) the GAN `name` on uint8 images (or a Source decoded at `image_size`) with
  their T_y label vectors."""
  k_init, k_data, k_train = jax.random.split(key, 3)
  state = init_state(g, d, cfg, k_init)
  seed = int(jax.random.randint(k_data, (), 0, 2**31 - 1))
  # One D step per real batch of `batch_size`: a training step reads d_steps of them.
  batches = real_batches(images, label_vectors, classes, cfg.train.batch_size * cfg.d_steps,
                         variant.sampling, seed, image_size)
  step_fn = make_step_fn(g, d, cfg, variant, mixup_alpha)
  return loop.train(name=name, state=state, step_fn=step_fn, batches=batches, cfg=cfg.train,
                    workdir=workdir, mesh=mesh, key=k_train, writer=writer)


def sample(g: Generator, params: Any, stats: Any, key: jax.Array, classes: np.ndarray,
           batch_size: int, mesh: Mesh | None = None) -> np.ndarray:
  """uint8 samples [N, H, W, 3] of G in eval mode for the class ids `classes`; z is drawn for all
  N at once, so the images do not depend on the batch size or the device count."""
  classes = np.asarray(classes, np.int32)
  z = np.asarray(jax.random.normal(key, (len(classes), g.dim_z)), np.float32)
  y = np.eye(g.num_classes, dtype=np.float32)[classes]
  fn = _sampler(g)
  return batched_apply(lambda zb, yb: fn(params, stats, zb, yb), (z, y), batch_size, mesh=mesh)


@functools.lru_cache(maxsize=8)
def _sampler(g: nn.Module) -> Callable:
  def run(params, stats, z, y):
    return to_uint8(g.apply({"params": params, **stats}, z, y, train=False))
  return jax.jit(run)
