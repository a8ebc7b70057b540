"""Opt-in parity of jaxgen's text-to-image and img2img sampling with diffusers' pipelines (`-m torch`).

Small random diffusers `UNet2DConditionModel` and `AutoencoderKL` go through our importers into a
`BackboneConfig`; `StableDiffusionPipeline` / `StableDiffusionImg2ImgPipeline` with SD 1.x's
`DDIMScheduler` (leading spacing, steps_offset 1, set_alpha_to_one False) or
`DPMSolverMultistepScheduler` (linspace, final sigma 0), classifier-free guidance 7.5 and the same
prompt embeddings are the reference. Every random draw of the pipeline (the VAE posterior sample,
the initial noise) is replayed from the same torch generator and handed to our functions, so the
decoded images must agree to float32 rounding accumulated over the steps: atol 2e-4 on [0, 1]
pixels (measured: 1.4e-4 for 10 DPM-Solver++ steps, under 1e-4 for the others). The img2img
check runs two strengths in one of our calls against two pipeline calls.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxgen.io.cond_unet_import import config_from_diffusers, import_cond_unet  # noqa: E402
from jaxgen.io.kl_autoencoder_import import import_kl_autoencoder  # noqa: E402
from jaxgen.nets.kl_autoencoder import KLAutoencoder, KLAutoencoderConfig  # noqa: E402
from jaxgen.nets.text_encoder import TextEncoderConfig  # noqa: E402
from jaxgen.t2i import backbone as bb  # noqa: E402
from jaxgen.t2i.sampling import sample_latents  # noqa: E402
from jaxgen.t2i.schedules import SamplerSpec, scheduler_timesteps  # noqa: E402

from test_parity_cond_unet import perturb_norms  # noqa: E402

pytestmark = pytest.mark.torch
ATOL = 2e-4  # measured max 1.4e-4 (10-step DPM-Solver++, guidance 7.5 amplifies rounding)
UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D",
                                                                       "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
           norm_num_groups=8, latent_channels=4, scaling_factor=0.18215,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                num_train_timesteps=1000)


@pytest.fixture(scope="module")
def models():
  torch.manual_seed(0)
  unet = perturb_norms(diffusers.UNet2DConditionModel(**UNET).eval())
  vae = perturb_norms(diffusers.AutoencoderKL(**VAE).eval())
  sd = lambda m: {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}  # noqa: E731
  unet_cfg = config_from_diffusers(dict(unet.config))
  vae_cfg = KLAutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                embed_dim=4, resolution=16, num_groups=8)
  config = bb.BackboneConfig(unet=unet_cfg, vae=vae_cfg, text=TextEncoderConfig.tiny())
  params = {"unet": import_cond_unet(sd(unet), unet_cfg),
            "vae": import_kl_autoencoder(sd(vae), vae_cfg)}
  gen = torch.Generator().manual_seed(1)
  embeds = torch.randn(2, 7, 32, generator=gen)
  uncond = torch.randn(2, 7, 32, generator=gen)
  images = torch.rand(2, 3, 16, 16, generator=gen)
  return unet, vae, config, params, embeds, uncond, images


def _scheduler(name):
  if name == "ddim":
    return diffusers.DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False,
                                   steps_offset=1)
  return diffusers.DPMSolverMultistepScheduler(**SD_BETAS, steps_offset=1)


def _pipeline(cls, unet, vae, name):
  return cls(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=_scheduler(name),
             safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _nhwc(t):
  return jnp.asarray(t.numpy().transpose(0, 2, 3, 1))


def _to_pixels(config, params, latents):
  images = bb.decode_latents(params["vae"], config, latents)
  return np.asarray(jnp.clip(images / 2 + 0.5, 0.0, 1.0))


@pytest.mark.parametrize("name,steps", [("ddim", 25), ("dpmpp_2m", 25), ("dpmpp_2m", 10)])
def test_scheduler_timesteps_match_diffusers(name, steps):
  sched = _scheduler(name)
  sched.set_timesteps(steps)
  spec = SamplerSpec(name=name, num_steps=steps)
  ours = scheduler_timesteps(steps, spacing=spec.spacing, steps_offset=1, scheduler=name)
  np.testing.assert_array_equal(ours, sched.timesteps.numpy())


@pytest.mark.parametrize("name,steps", [("ddim", 25), ("dpmpp_2m", 25), ("dpmpp_2m", 10)])
def test_text_to_image_matches_the_diffusers_pipeline(models, name, steps):
  unet, vae, config, params, embeds, uncond, _ = models
  noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
  pipe = _pipeline(diffusers.StableDiffusionPipeline, unet, vae, name)
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = pipe(prompt_embeds=embeds, negative_prompt_embeds=uncond, latents=noise.clone(),
               num_inference_steps=steps, guidance_scale=7.5, height=16, width=16,
               output_type="np").images
  spec = SamplerSpec(name=name, num_steps=steps)
  latents = sample_latents(params["unet"], config, spec, jax.random.key(0),
                           jnp.asarray(embeds.numpy()), jnp.asarray(uncond.numpy()), 7.5,
                           noise=_nhwc(noise))
  np.testing.assert_allclose(_to_pixels(config, params, latents), ref, atol=ATOL)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_img2img_with_two_strengths_in_one_call_matches_two_pipeline_calls(models, name):
  unet, vae, config, params, embeds, uncond, images = models
  strengths, steps = (0.3, 0.8), 20
  pipe = _pipeline(diffusers.StableDiffusionImg2ImgPipeline, unet, vae, name)
  refs, post_eps, noises = [], [], []
  for b, s in enumerate(strengths):
    with torch.no_grad(), warnings.catch_warnings():
      warnings.simplefilter("ignore")
      refs.append(pipe(image=images[b:b + 1], prompt_embeds=embeds[b:b + 1],
                       negative_prompt_embeds=uncond[b:b + 1], strength=s,
                       num_inference_steps=steps, guidance_scale=7.5,
                       generator=torch.Generator().manual_seed(10 + b), output_type="np").images)
    # the pipeline's draws, in its order: the VAE posterior sample, then the noise
    gen = torch.Generator().manual_seed(10 + b)
    post_eps.append(torch.randn(1, 4, 8, 8, generator=gen))
    noises.append(torch.randn(1, 4, 8, 8, generator=gen))
  mean, logvar = KLAutoencoder(config.vae).apply(params["vae"], _nhwc(images * 2 - 1),
                                                 method="encode")
  z = mean + jnp.exp(0.5 * logvar) * _nhwc(torch.cat(post_eps))
  spec = SamplerSpec(name=name, num_steps=steps)
  latents = sample_latents(params["unet"], config, spec, jax.random.key(0),
                           jnp.asarray(embeds.numpy()), jnp.asarray(uncond.numpy()), 7.5,
                           init_latents=config.vae.scaling_factor * z,
                           strength=jnp.asarray(strengths), noise=_nhwc(torch.cat(noises)))
  np.testing.assert_allclose(_to_pixels(config, params, latents), np.concatenate(refs), atol=ATOL)
