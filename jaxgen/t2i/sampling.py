"""Text-to-image and image-to-image (SDEdit) sampling with classifier-free guidance, one jit each.

Both run the shared few-step samplers of `jaxgen.sde` (DDIM, DPM-Solver++(2M)) on the grid of
`jaxgen.t2i.schedules.sampler_grid`, i.e. diffusers' scheduler steps, with the U-Net's noise
prediction guided as eps_u + w (eps_c - eps_u) (Ho & Salimans 2022; w = 7.5 in SD's pipelines,
the unconditional branch conditioned on the empty prompt). The two branches run as one U-Net call
on a doubled batch. Text encoding, the whole sampling loop (`lax.scan`) and decoding are one
compiled call; `guidance_scale` and `strength` are traced arrays, so changing them (or mixing
strengths in a batch) does not recompile. On XLA:CPU each is compiled with the sampling options of
the `JAXGEN_XLA_CPU_CONV` route (`jaxgen.train.xla_cpu.sampling_jit`; the default route compiles
as plain `jax.jit`).

SDEdit (Meng et al. 2022) as diffusers' img2img: the reference's latents are noised to the grid
index k = K - int(K s) of strength s (per example) and denoised with the target prompt by the
remaining steps; s = 1 starts from (almost) pure noise, small s stays close to the reference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.sde.fast_samplers import sample_ddim, sample_dpmpp_2m
from jaxgen.t2i import backbone as bb
from jaxgen.t2i.schedules import SamplerSpec, sampler_grid, start_index
from jaxgen.train.xla_cpu import sampling_jit

Array = jax.Array


def guided_eps(eps_model, context: Array, uncond_context: Array | None, guidance_scale: Any):
  """eps(x, t) of the guided model: one call on [x; x] with [context; uncond_context] and
  eps_u + w (eps_c - eps_u); without an unconditional context, the conditional eps."""

  def fn(x: Array, t: Array) -> Array:
    if uncond_context is None:
      return eps_model(x, t, context)
    b = x.shape[0]
    both = eps_model(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.concatenate([context, uncond_context]))
    eps_c, eps_u = both[:b], both[b:]
    return eps_u + guidance_scale * (eps_c - eps_u)

  return fn


def _check_context(config: bb.BackboneConfig, context: Array, batch: int, name: str) -> None:
  if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != config.text.width:
    raise ConfigError(f"t2i.{name}.shape", tuple(context.shape),
                      f"[batch={batch}, tokens, width={config.text.width}]")


@sampling_jit(static_argnames=("config", "spec", "dtype", "attention_impl"))
def sample_latents(unet_variables: dict, config: bb.BackboneConfig, spec: SamplerSpec,
                   key: Array, context: Array, uncond_context: Array | None = None,
                   guidance_scale: Any = 7.5, *, init_latents: Array | None = None,
                   strength: Array | None = None, noise: Array | None = None,
                   dtype: Any = jnp.float32, attention_impl: str = "jnp") -> Array:
  """Latents [B, h, w, c] from noise (text-to-image) or from `init_latents` (SDEdit).

  Args:
    unet_variables: the U-Net's variables (LoRA merged in, if any).
    context, uncond_context: text states [B, L, width] of the prompts and of the empty prompt
      (None: no guidance).
    guidance_scale: w (scalar, traced).
    init_latents: scaled latents of the references; with `strength` [B] in (0, 1] (traced).
    noise: the initial N(0, I) draw (else drawn from `key`), e.g. to share it across calls.
    dtype, attention_impl: the U-Net's compute dtype and attention kernel (`CondUNet`).

  The scan always runs all K steps (examples not yet started are masked), so a batch of small
  strengths costs as much as strength 1; the price of mixing strengths in one compiled call.
  """
  batch = context.shape[0]
  _check_context(config, context, batch, "context")
  if uncond_context is not None:
    _check_context(config, uncond_context, batch, "uncond_context")
  shape = (batch,) + config.latent_shape
  if init_latents is not None and tuple(init_latents.shape) != shape:
    raise ConfigError("t2i.init_latents.shape", tuple(init_latents.shape), f"{shape}")
  if (init_latents is None) != (strength is None):
    raise ConfigError("t2i.strength", strength, "given together with init_latents (SDEdit)")
  sde = config.sde
  grid = sampler_grid(spec, sde)
  times = jnp.asarray(grid.times)
  key_noise, key_sampler = jax.random.split(key)
  if noise is None:
    noise = jax.random.normal(key_noise, shape, jnp.float32)
  eps = guided_eps(bb.eps_fn(unet_variables, config, dtype=dtype, attention_impl=attention_impl),
                   context, uncond_context, guidance_scale)
  score_fn = lambda x, t: -eps(x, t) / sde.marginal_std(t).reshape(-1, 1, 1, 1)  # noqa: E731
  starts = None
  x_init = noise
  if init_latents is not None:
    strength = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), (batch,))
    starts = start_index(strength, len(grid.timesteps))
    t0 = times[starts]
    a, s = sde.mean_coeff(t0), sde.marginal_std(t0)
    x_init = a[:, None, None, None] * init_latents + s[:, None, None, None] * noise
  kwargs = dict(times=times, x_init=x_init, start_index=starts, denoise=grid.denoise)
  if spec.name == "ddim":
    return sample_ddim(key_sampler, score_fn, sde, shape, 0, eta=spec.eta, **kwargs)
  return sample_dpmpp_2m(key_sampler, score_fn, sde, shape, 0,
                         lower_order_final=grid.lower_order_final, **kwargs)


@sampling_jit(static_argnames=("config", "spec", "dtype", "attention_impl"))
def text_to_image(params: dict, config: bb.BackboneConfig, spec: SamplerSpec, key: Array,
                  token_ids: Array, uncond_ids: Array | None = None,
                  guidance_scale: Any = 7.5, dtype: Any = jnp.float32,
                  attention_impl: str = "jnp") -> Array:
  """Images [B, H, W, 3] in [-1, 1] for prompts `token_ids` [B, L] (uncond_ids: the empty
  prompt's ids [B, L], or None for no guidance); encode, sample, decode in one compiled call."""
  context = bb.encode_prompts(params["text"], config, token_ids)
  uncond = None if uncond_ids is None else bb.encode_prompts(params["text"], config, uncond_ids)
  latents = sample_latents(params["unet"], config, spec, key, context, uncond, guidance_scale,
                           dtype=dtype, attention_impl=attention_impl)
  return jnp.clip(bb.decode_latents(params["vae"], config, latents), -1.0, 1.0)


@sampling_jit(static_argnames=("config", "spec", "dtype", "attention_impl"))
def image_to_image(params: dict, config: bb.BackboneConfig, spec: SamplerSpec, key: Array,
                   images: Array, strength: Array, token_ids: Array,
                   uncond_ids: Array | None = None, guidance_scale: Any = 7.5,
                   dtype: Any = jnp.float32, attention_impl: str = "jnp") -> Array:
  """SDEdit: references `images` [B, H, W, 3] in [-1, 1] translated toward the prompts
  `token_ids` with per-example `strength` [B] (or a scalar) in (0, 1]. The reference is encoded
  by a posterior sample (as diffusers' img2img); one compiled call for any mix of strengths."""
  key_post, key_sample = jax.random.split(key)
  init = bb.encode_images(params["vae"], config, images, key_post)
  context = bb.encode_prompts(params["text"], config, token_ids)
  uncond = None if uncond_ids is None else bb.encode_prompts(params["text"], config, uncond_ids)
  latents = sample_latents(params["unet"], config, spec, key_sample, context, uncond,
                           guidance_scale, init_latents=init, strength=strength, dtype=dtype,
                           attention_impl=attention_impl)
  return jnp.clip(bb.decode_latents(params["vae"], config, latents), -1.0, 1.0)
