"""LR-GMM-NN's autoencoder E / D (paper 004 sec. 3.1): trained here on A, or a VQ-GAN checkpoint.

`autoencoder.kind = 'spatial'`: `jaxgen.nets.spatial_autoencoder` trained on the auxiliary set A
with the L1 (Laplace) reconstruction loss on the shared loop. `'vqgan'`: the taming-transformers
VQ-GAN of the paper, loaded from `autoencoder.checkpoint_path`, encoder output unquantised.
Either way the method sees a `Codec`: uint8 images <-> float latent maps [N, h, w, c].
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen.data.batches import training_batches
from jaxgen.errors import ConfigError, DataError
from jaxgen.nets.autoencoder import laplace_reconstruction_loss
from jaxgen.nets.common import to_model_range, to_uint8
from jaxgen.nets.spatial_autoencoder import SpatialAutoencoder
from jaxgen.train import loop
from jaxgen.train.init import compiled_init
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState
from jaxgen.io import paths
from jaxgen.parallel.batching import batched_apply

KINDS = ("spatial", "vqgan")
VQGAN_PRESETS = ("ffhq_f16", "tiny")


@dataclasses.dataclass
class Codec:
  """Batched, jitted E and D around fixed parameters."""

  encode_fn: Callable[[jax.Array], jax.Array]  # float [-1, 1] images -> latents
  decode_fn: Callable[[jax.Array], jax.Array]  # latents -> float images
  batch_size: int
  mesh: Any = None  # batches split over its data axis (every host its rows) when it divides them

  def _batched(self, fn, x: np.ndarray) -> np.ndarray:
    # Whole batches only (the last padded), so one compiled shape serves every call.
    return batched_apply(fn, x, self.batch_size, mesh=self.mesh, full_batches=True)

  def encode(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> latents [N, h, w, c]."""
    return self._batched(lambda x: self.encode_fn(to_model_range(x)), np.asarray(images))

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """latents [N, h, w, c] -> uint8 [N, H, W, 3]."""
    return self._batched(lambda z: to_uint8(self.decode_fn(z)), np.asarray(latents, np.float32))


def spatial_model(cfg: ml_collections.ConfigDict) -> SpatialAutoencoder:
  return SpatialAutoencoder(latent_channels=cfg.latent_channels, channels=tuple(cfg.channels))


def vqgan_config(cfg: ml_collections.ConfigDict):
  from jaxgen.nets.vqgan import VQGANConfig
  return getattr(VQGANConfig, cfg.vqgan_preset)()


def latent_shape(cfg: ml_collections.ConfigDict, image_size: int) -> tuple[int, int, int]:
  """(h, w, c) of E on `image_size` images, by `jax.eval_shape` (nothing is computed)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  if cfg.kind == "spatial":
    model = spatial_model(cfg)
    shape = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, method="encode")[0], x)
  else:
    from jaxgen.nets.vqgan import VQGANAutoencoder
    model = VQGANAutoencoder(vqgan_config(cfg))
    shape = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, method="encode")[0], x)
  return tuple(shape.shape[1:])


def train_spatial(cfg: ml_collections.ConfigDict, images: np.ndarray, *, workdir: str, mesh,
                  key: jax.Array, writer, seed: int) -> Any:
  """Train E / D on A (uint8 [M, H, W, 3]) by the L1 reconstruction loss; returns EMA-or-last params."""
  model = spatial_model(cfg)
  k_init, k_train = jax.random.split(key)
  dummy = jnp.zeros((1,) + images.shape[1:], jnp.float32)
  params = compiled_init(lambda k: model.init(k, dummy), k_init)["params"]
  tcfg = cfg.train
  state = TrainState.create(params, make_optimizer(tcfg.optim, tcfg.num_steps), ema_decay=tcfg.ema_decay)

  def step_fn(state, batch, key):
    del key
    x = to_model_range(batch["image"])

    def loss_fn(p):
      return laplace_reconstruction_loss(x, model.apply({"params": p}, x))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"l1": loss, "grad_norm": optax.global_norm(grads)}

  batches = training_batches({"image": images}, global_batch_size=tcfg.batch_size, seed=seed)
  state = loop.train(name="autoencoder", state=state, step_fn=step_fn, batches=batches, cfg=tcfg,
                     workdir=workdir, mesh=mesh, key=k_train, writer=writer)
  return state.eval_params


def make_codec(cfg: ml_collections.ConfigDict, params: Any, batch_size: int, mesh: Any = None) -> Codec:
  """The Codec for `autoencoder.kind`; `params` are the spatial model's (unused for 'vqgan')."""
  if cfg.kind == "spatial":
    model = spatial_model(cfg)
    variables = {"params": params}
    enc = jax.jit(lambda x: model.apply(variables, x, method="encode"))
    dec = jax.jit(lambda z: model.apply(variables, z, method="decode"))
    return Codec(enc, dec, batch_size, mesh)
  from jaxgen.io.vqgan_import import load_vqgan
  from jaxgen.nets.vqgan import vqgan_decode, vqgan_encode
  vq_cfg = vqgan_config(cfg)
  variables = load_vqgan(cfg.checkpoint_path, vq_cfg)
  return Codec(lambda x: vqgan_encode(variables, x, vq_cfg),
               lambda z: vqgan_decode(variables, z, vq_cfg), batch_size, mesh)


def check_checkpoint(cfg: ml_collections.ConfigDict) -> None:
  """A 'vqgan' run needs its checkpoint file before anything starts; other kinds train their own
  autoencoder, so a checkpoint path there would be ignored and is refused."""
  if cfg.kind != "vqgan" and cfg.checkpoint_path:
    raise ConfigError("autoencoder.checkpoint_path", cfg.checkpoint_path,
                      f"'' for autoencoder.kind={cfg.kind!r} (only 'vqgan' loads a checkpoint)")
  if cfg.kind == "vqgan" and not paths.isfile(cfg.checkpoint_path):
    raise DataError(f"config.autoencoder.checkpoint_path={cfg.checkpoint_path!r}: no such file; "
                    "expected a taming-transformers VQ-GAN .ckpt (e.g. the FFHQ/CelebA-HQ f16 model)")
