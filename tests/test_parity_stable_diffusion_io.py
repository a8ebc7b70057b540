"""Opt-in parity of `load_stable_diffusion` with a diffusers pipeline folder (`-m torch`).

A tiny `StableDiffusionPipeline` (random `UNet2DConditionModel`, an `AutoencoderKL` with
attention in its coarsest level as well as the middle, a transformers `CLIPTextModel` and a
`CLIPTokenizer` built offline from the tiny vocabulary of tests/test_stable_diffusion_io.py, a
v-prediction `PNDMScheduler`) is written with `save_pretrained`, once as safetensors and once
with `safe_serialization=False` (diffusers then writes torch pickles, .bin; transformers 5 still
writes the text encoder as safetensors, and its tokenizer as tokenizer.json only), and read back
with ours. GroupNorm / LayerNorm affine parameters are perturbed so that a swapped scale and bias
cannot pass. Our U-Net forward, VAE encode (posterior mean) and decode, text states and token ids
must match the torch modules: atol 1e-4 in float32 (measured: at most 7e-6, on decoded pixels of
magnitude ~3); the config must equal the sizes the pipeline was built with.
"""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from jaxgen.io.stable_diffusion import load_stable_diffusion  # noqa: E402
from jaxgen.nets.cond_unet import CondUNetConfig  # noqa: E402
from jaxgen.nets.kl_autoencoder import KLAutoencoderConfig  # noqa: E402
from jaxgen.nets.text_encoder import TextEncoderConfig  # noqa: E402
from jaxgen.sde.sdes import DiscreteVPSDE  # noqa: E402
from jaxgen.t2i import backbone as bb  # noqa: E402
from test_stable_diffusion_io import MAX_LENGTH, VOCAB, write_tokenizer  # noqa: E402

from test_parity_cond_unet import perturb_norms  # noqa: E402

pytestmark = pytest.mark.torch
ATOL = 1e-4
PROMPTS = ["hello a", "a photo of hello, hello!", ""]
EXPECTED = bb.BackboneConfig(
    unet=dataclasses.replace(CondUNetConfig.tiny(), sample_size=8),
    vae=KLAutoencoderConfig(ch=8, ch_mult=(1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(4,),
                            z_channels=4, embed_dim=4, resolution=32, num_groups=4,
                            scaling_factor=0.5),
    text=TextEncoderConfig(vocab_size=len(VOCAB), max_length=MAX_LENGTH, width=32, layers=2,
                           heads=2, intermediate_size=64),
    sde=DiscreteVPSDE(), prediction_type="v_prediction")


def _pipeline(tmp_path):
  torch.manual_seed(0)
  unet = diffusers.UNet2DConditionModel(
      sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
      attention_head_dim=4, norm_num_groups=8,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
  vae = diffusers.AutoencoderKL(
      in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 32), layers_per_block=1,
      latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.5,
      down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
      up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3)
  text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=2, max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu",
      bos_token_id=VOCAB["<|startoftext|>"], eos_token_id=VOCAB["<|endoftext|>"],
      pad_token_id=VOCAB["<|endoftext|>"], attn_implementation="eager"))
  for model in (unet, vae, text):
    perturb_norms(model.eval())
  tok_dir = tmp_path / "source_tokenizer"
  write_tokenizer(str(tok_dir))
  try:
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
  except Exception as err:  # noqa: BLE001 - any failure means "cannot build it offline"
    pytest.skip(f"transformers' CLIPTokenizer cannot be built offline: {type(err).__name__}: {err}")
  scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", skip_prk_steps=True,
                                      steps_offset=1, set_alpha_to_one=False,
                                      prediction_type="v_prediction")
  pipe = diffusers.StableDiffusionPipeline(
      vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  return pipe


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_pipeline_folder_matches_diffusers(tmp_path, safe_serialization):
  pipe = _pipeline(tmp_path)
  folder = tmp_path / "pipeline"
  pipe.save_pretrained(str(folder), safe_serialization=safe_serialization)
  assert (folder / "unet" / ("diffusion_pytorch_model." + (
      "safetensors" if safe_serialization else "bin"))).is_file()
  config, params, tokenizer = load_stable_diffusion(str(folder))
  assert config == EXPECTED

  # Token ids: ours as transformers' (the files written by save_pretrained).
  ids = tokenizer.encode(PROMPTS)
  want = pipe.tokenizer(PROMPTS, padding="max_length", max_length=MAX_LENGTH,
                        truncation=True).input_ids
  np.testing.assert_array_equal(ids, want)

  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    states = pipe.text_encoder(torch.from_numpy(ids.astype(np.int64)))[0]
    latents = torch.randn(3, 4, 8, 8, generator=gen)
    steps = torch.tensor([0, 417, 999])
    eps = pipe.unet(latents, steps, encoder_hidden_states=states).sample
    images = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    mean = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    decoded = pipe.vae.decode(latents[:, :, :4, :4] / pipe.vae.config.scaling_factor).sample
  nhwc = lambda t: jnp.asarray(t.numpy().transpose(0, 2, 3, 1))  # noqa: E731
  as_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731

  ours_states = bb.encode_prompts(params["text"], config, jnp.asarray(ids))
  np.testing.assert_allclose(np.asarray(ours_states), states.numpy(), atol=ATOL, rtol=0)
  ours_eps = bb.unet_apply(params["unet"], config, nhwc(latents), jnp.asarray(steps.numpy()),
                           jnp.asarray(states.numpy()))
  np.testing.assert_allclose(as_nchw(ours_eps), eps.numpy(), atol=ATOL, rtol=0)
  ours_mean = bb.encode_images(params["vae"], config, nhwc(images))
  np.testing.assert_allclose(as_nchw(ours_mean), mean.numpy(), atol=ATOL, rtol=0)
  ours_decoded = bb.decode_latents(params["vae"], config, nhwc(latents[:, :, :4, :4]))
  np.testing.assert_allclose(as_nchw(ours_decoded), decoded.numpy(), atol=ATOL, rtol=0)
