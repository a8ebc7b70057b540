"""Training the text-to-image backbone from scratch on embedded data ("vanilla SD" here).

Two stages on the shared loop (`jaxgen.train.loop`), as Stable Diffusion was built (Rombach et al.
2022): first the KL autoencoder, then the latent denoiser.

* `train_autoencoder`: L1 reconstruction plus a small KL term to N(0, I) (LDM's KL-reg weight
  1e-6 on a summed KL). LDM adds an LPIPS and a patch-GAN term for photographs; the embedded
  renders are flat-shaded, and L1 alone reconstructs them (see the report's reconstruction PSNR).
  `latent_scale` then measures 1 / std of the latents (SD's 0.18215 was found the same way).
* `train_denoiser`: the U-Net and the text encoder together (SD's CLIP text encoder came
  pretrained; ours learns from the prompts) on the DDPM loss E ||target - net(x_n, n, c)||^2 with
  n uniform in {0..N-1}, x_n = a_n x0 + s_n eps and target eps or v (`backbone.training_target`).
  The prompt is replaced by the empty prompt with probability `p_uncond` (0.1), which trains the
  unconditional branch of classifier-free guidance. The latents are posterior samples of the frozen
  autoencoder, drawn anew each step from stored means and log-variances.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen.data.batches import training_batches
from jaxgen.nets.common import to_model_range
from jaxgen.nets.kl_autoencoder import KLAutoencoder, kl_divergence, sample_posterior
from jaxgen.parallel.batching import batched_apply
from jaxgen.t2i import backbone as bb
from jaxgen.train import loop
from jaxgen.train.init import compiled_init
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState

Array = jax.Array


def train_autoencoder(config: bb.BackboneConfig, images: np.ndarray, train_cfg: ml_collections.ConfigDict,
                      *, kl_weight: float, workdir: str, mesh, key: Array, writer, seed: int) -> dict:
  """Train the KL autoencoder on uint8 images [N, H, W, 3]; returns its variables (EMA if kept)."""
  model = KLAutoencoder(config.vae)
  k_init, k_train = jax.random.split(key)
  dummy = jnp.zeros((1,) + images.shape[1:], jnp.float32)
  params = compiled_init(lambda k: model.init(k, dummy), k_init)["params"]
  state = TrainState.create(params, make_optimizer(train_cfg.optim, train_cfg.num_steps),
                            ema_decay=train_cfg.ema_decay)

  def step_fn(state, batch, key):
    x = to_model_range(batch["image"])

    def loss_fn(p):
      recon, mean, logvar = model.apply({"params": p}, x, sample=True, rngs={"sample": key})
      l1 = jnp.mean(jnp.abs(recon - x))
      kl = jnp.mean(kl_divergence(mean, logvar))  # summed over latent entries, mean over batch
      return l1 * x[0].size + kl_weight * kl, (l1, kl)

    (_, (l1, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {"l1": l1, "kl": kl, "grad_norm": optax.global_norm(grads)}

  batches = training_batches({"image": images}, global_batch_size=train_cfg.batch_size, seed=seed)
  state = loop.train(name="autoencoder", state=state, step_fn=step_fn, batches=batches,
                     cfg=train_cfg, workdir=workdir, mesh=mesh, key=k_train, writer=writer)
  return {"params": jax.device_get(state.eval_params)}


def posterior_moments(config: bb.BackboneConfig, vae: dict, images: np.ndarray,
                      batch_size: int, mesh: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """Unscaled posterior (mean, logvar) of uint8 images, in whole jitted batches of `batch_size`
  (one compiled shape for the pre-training set and the few shots alike), split over the mesh's
  data axis, every host its rows."""
  encode = jax.jit(lambda x: KLAutoencoder(config.vae).apply(vae, to_model_range(x),
                                                             method="encode"))
  return tuple(batched_apply(encode, np.asarray(images), batch_size, mesh=mesh, full_batches=True))


def latent_scale(means: np.ndarray) -> float:
  """1 / std of the posterior means: the scaling factor that gives the denoiser unit-variance
  latents (SD 1.x: 0.18215, measured on its training images)."""
  return float(1.0 / np.std(means))


def denoising_loss(eps_apply, config: bb.BackboneConfig, x0: Array, context: Array,
                   key: Array) -> Array:
  """Mean squared error of the U-Net's eps / v prediction at uniform DDPM steps (Ho et al. 2020).

  `eps_apply(x_n, n, context)` is the raw network (indices n as the U-Net expects)."""
  sde = config.sde
  k_t, k_eps = jax.random.split(key)
  n = jax.random.randint(k_t, (x0.shape[0],), 0, sde.num_train_timesteps)
  t = sde.time(n)
  noise = jax.random.normal(k_eps, x0.shape, x0.dtype)
  shape = (-1,) + (1,) * (x0.ndim - 1)
  x_t = sde.mean_coeff(t).reshape(shape) * x0 + sde.marginal_std(t).reshape(shape) * noise
  target = bb.training_target(x0, noise, t, config)
  return jnp.mean((eps_apply(x_t, n.astype(jnp.float32), context) - target) ** 2)


def train_denoiser(config: bb.BackboneConfig, init: dict, data: dict[str, np.ndarray],
                   empty_ids: np.ndarray, train_cfg: ml_collections.ConfigDict, *, p_uncond: float,
                   workdir: str, mesh, key: Array, writer, seed: int, name: str = "denoiser") -> dict:
  """Train {'unet', 'text'} (variables) on data {'mean', 'logvar', 'ids'}; returns the trained
  variables (EMA if kept). `empty_ids` [L] are the empty prompt's token ids."""
  params = {"unet": init["unet"]["params"], "text": init["text"]["params"]}
  state = TrainState.create(params, make_optimizer(train_cfg.optim, train_cfg.num_steps),
                            ema_decay=train_cfg.ema_decay)
  empty = jnp.asarray(empty_ids, jnp.int32)
  scale = config.vae.scaling_factor

  def step_fn(state, batch, key):
    k_post, k_drop, k_loss = jax.random.split(key, 3)
    x0 = scale * sample_posterior(batch["mean"], batch["logvar"], k_post)
    drop = jax.random.bernoulli(k_drop, p_uncond, (x0.shape[0], 1))
    ids = jnp.where(drop, empty[None], batch["ids"])

    def loss_fn(p):
      context = bb.encode_prompts({"params": p["text"]}, config, ids)
      apply = lambda x, n, c: bb.unet_apply({"params": p["unet"]}, config, x, n, c)  # noqa: E731
      return denoising_loss(apply, config, x0, context, k_loss)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss, "grad_norm": optax.global_norm(grads)}

  batches = training_batches(data, global_batch_size=train_cfg.batch_size, seed=seed)
  state = loop.train(name=name, state=state, step_fn=step_fn, batches=batches, cfg=train_cfg,
                     workdir=workdir, mesh=mesh, key=key, writer=writer)
  trained = jax.device_get(state.eval_params)
  return {"unet": {"params": trained["unet"]}, "text": {"params": trained["text"]}}


def with_latent_scale(config: bb.BackboneConfig, scale: float) -> bb.BackboneConfig:
  """The backbone config with the autoencoder's measured scaling factor."""
  return dataclasses.replace(config, vae=dataclasses.replace(config.vae, scaling_factor=scale))


__all__ = ["denoising_loss", "latent_scale", "posterior_moments", "train_autoencoder",
           "train_denoiser", "with_latent_scale"]
