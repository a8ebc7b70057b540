"""The PyTorch side of benchmarks/t2i.py: diffusers / transformers modules holding jaxgen's weights.

`export_unet`, `export_vae`, `export_text` write Flax variables of `jaxgen.t2i.backbone` under
diffusers' `UNet2DConditionModel` / `AutoencoderKL` and transformers' `CLIPTextModel` names and
layouts (conv HWIO -> OIHW, Dense [in, out] -> Linear [out, in], the VAE's attention projections
as Linear), by the importers' own name maps; `build_unet`, `build_vae`, `build_text_encoder` make
the torch modules from a `BackboneConfig` and load those weights strictly (a name or shape that
does not line up fails), so both frameworks compute with the same networks.

`UNetTrainStep` is one Adam step on the DDPM epsilon loss (as `jaxgen.t2i.train.denoising_loss`:
n uniform in {0..N-1}, x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps, MSE to eps), optionally
under bfloat16 autocast (float32 weights and Adam, bfloat16 compute: jaxgen's `dtype`).
`Img2Img` runs diffusers' `StableDiffusionImg2ImgPipeline` (DPMSolverMultistepScheduler with the
backbone's betas and SD 1.x's steps_offset) after encoding the prompt and empty-prompt token ids
with the CLIP text model, which is the work `jaxgen.t2i.sampling.image_to_image` does in its one
compiled call.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from jaxgen.io.cond_unet_import import export_cond_unet
from jaxgen.io.kl_autoencoder_import import export_kl_autoencoder
from jaxgen.io.text_encoder_import import export_text_encoder
from jaxgen.t2i.backbone import BackboneConfig



# ---- Flax variables -> PyTorch state dicts ---------------------------------------------------

def export_unet(params: dict, config: BackboneConfig) -> dict[str, np.ndarray]:
  """U-Net params tree (no 'params' level) -> diffusers `UNet2DConditionModel` state dict."""
  return export_cond_unet(params, config.unet)


def export_vae(variables: dict, config: BackboneConfig) -> dict[str, np.ndarray]:
  """KL autoencoder variables {'params': ...} -> diffusers `AutoencoderKL` state dict."""
  return export_kl_autoencoder(variables, config.vae)


def export_text(variables: dict, prefix: str = "text_model.") -> dict[str, np.ndarray]:
  """Text encoder variables -> transformers `CLIPTextModel` state dict (no position_ids);
  `prefix` '' for transformers versions whose `CLIPTextModel` has no `text_model` wrapper in
  its state dict."""
  return export_text_encoder(variables, prefix=prefix)


# ---- torch modules from a BackboneConfig -----------------------------------------------------

def unet_kwargs(config: BackboneConfig) -> dict:
  """`UNet2DConditionModel` constructor arguments of `config.unet` (SD 1.x conventions:
  `attention_head_dim` holds the number of heads)."""
  c = config.unet
  return dict(sample_size=c.sample_size, in_channels=c.in_channels, out_channels=c.out_channels,
              block_out_channels=tuple(c.block_out_channels), layers_per_block=c.layers_per_block,
              down_block_types=tuple(c.down_block_types), up_block_types=tuple(c.up_block_types),
              attention_head_dim=c.num_attention_heads, cross_attention_dim=c.cross_attention_dim,
              norm_num_groups=c.norm_num_groups, norm_eps=c.norm_eps,
              flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=int(c.freq_shift),
              transformer_layers_per_block=c.transformer_layers_per_block,
              use_linear_projection=c.use_linear_projection)


def vae_kwargs(config: BackboneConfig) -> dict:
  """`AutoencoderKL` constructor arguments of `config.vae`."""
  c = config.vae
  attn = [c.resolution // 2 ** level in c.attn_resolutions for level in range(len(c.ch_mult))]
  return dict(in_channels=c.in_channels, out_channels=c.out_channels,
              down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D"
                                     for a in attn),
              up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D"
                                   for a in reversed(attn)),
              block_out_channels=tuple(c.ch * m for m in c.ch_mult),
              layers_per_block=c.num_res_blocks, latent_channels=c.z_channels,
              norm_num_groups=c.num_groups, sample_size=c.resolution,
              scaling_factor=c.scaling_factor)


def _load(module: torch.nn.Module, state: dict[str, np.ndarray], allowed_missing=()) -> None:
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # writable copies
  missing, unexpected = module.load_state_dict(tensors, strict=False)
  missing = [k for k in missing if not any(k.endswith(a) for a in allowed_missing)]
  if missing or unexpected:
    raise RuntimeError(f"{type(module).__name__}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")


def build_unet(config: BackboneConfig, params: dict, device: torch.device) -> torch.nn.Module:
  """diffusers `UNet2DConditionModel` with jaxgen's U-Net params (float32, on `device`)."""
  from diffusers import UNet2DConditionModel  # pylint: disable=import-outside-toplevel

  with torch.device(device):
    unet = UNet2DConditionModel(**unet_kwargs(config))
  _load(unet, export_unet(params, config))
  return unet


def build_vae(config: BackboneConfig, variables: dict, device: torch.device) -> torch.nn.Module:
  from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel

  with torch.device(device):
    vae = AutoencoderKL(**vae_kwargs(config))
  _load(vae, export_vae(variables, config))
  return vae.eval()


def build_text_encoder(config: BackboneConfig, variables: dict,
                       device: torch.device) -> torch.nn.Module:
  from transformers import CLIPTextConfig, CLIPTextModel  # pylint: disable=import-outside-toplevel

  c = config.text
  # bos / eos ids inside the vocabulary (transformers warns otherwise); unused by the forward.
  cfg = CLIPTextConfig(vocab_size=c.vocab_size, bos_token_id=0, eos_token_id=c.vocab_size - 1,
                       pad_token_id=c.vocab_size - 1, hidden_size=c.width,
                       intermediate_size=c.mlp_width, num_hidden_layers=c.layers,
                       num_attention_heads=c.heads, max_position_embeddings=c.max_length,
                       hidden_act=c.activation, layer_norm_eps=c.layer_norm_eps,
                       projection_dim=c.width)
  with torch.device(device):
    text = CLIPTextModel(cfg)
  prefix = "text_model." if any(k.startswith("text_model.") for k in text.state_dict()) else ""
  _load(text, export_text(variables, prefix), allowed_missing=("position_ids",))
  return text.eval()


def dpm_solver(config: BackboneConfig):
  """SD 1.x's `DPMSolverMultistepScheduler` (DPM-Solver++(2M), linspace, final sigma 0) on the
  backbone's betas; `jaxgen.t2i.schedules.SamplerSpec('dpmpp_2m')` is its grid."""
  from diffusers import DPMSolverMultistepScheduler  # pylint: disable=import-outside-toplevel

  sde = config.sde
  return DPMSolverMultistepScheduler(beta_start=sde.beta_start, beta_end=sde.beta_end,
                                     beta_schedule=sde.schedule,
                                     num_train_timesteps=sde.num_train_timesteps,
                                     prediction_type=config.prediction_type, steps_offset=1)


# ---- the timed work --------------------------------------------------------------------------

class UNetTrainStep:
  """One Adam step of the U-Net alone on the DDPM loss; `__call__` returns the loss (a tensor).

  `compile`: the U-Net's forward (and so its backward) through `torch.compile`; the loss, the
  noising and Adam stay eager. `autocast_dtype` (e.g. torch.bfloat16): mixed precision with
  float32 weights and optimiser state. Adam is `fused` on CUDA (torch's fastest Adam there).
  """

  def __init__(self, unet: torch.nn.Module, config: BackboneConfig, *, lr: float,
               compile: bool = False, compile_mode: str | None = None,
               autocast_dtype: torch.dtype | None = None):
    self.unet = unet.train()
    self.model = torch.compile(unet, mode=compile_mode) if compile else unet
    self.device = next(unet.parameters()).device
    self.opt = torch.optim.Adam(unet.parameters(), lr=lr, fused=self.device.type == "cuda")
    abar = np.cumprod(1.0 - config.sde.betas())
    self.sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32, device=self.device)
    self.sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - abar), dtype=torch.float32, device=self.device)
    self.num_train_timesteps = config.sde.num_train_timesteps
    self.autocast_dtype = autocast_dtype

  def __call__(self, x0: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    n = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=self.device)
    noise = torch.randn_like(x0)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    x_t = self.sqrt_abar[n].view(shape) * x0 + self.sqrt_1m_abar[n].view(shape) * noise
    with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                        enabled=self.autocast_dtype is not None):
      pred = self.model(x_t, n, encoder_hidden_states=context, return_dict=False)[0]
    loss = F.mse_loss(pred.float(), noise)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.detach()


class Img2Img:
  """Token ids -> CLIP text states (prompt and empty prompt) -> diffusers img2img pipeline ->
  images as numpy [B, H, W, 3] in [0, 1] (`output_type='np'`), under `torch.no_grad`.

  Modules are cast to `dtype` (diffusers' `pipe.to(torch_dtype)`); `compile` replaces
  `pipe.unet` by `torch.compile(pipe.unet)`, as diffusers' documentation does.
  """

  def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, text: torch.nn.Module,
               config: BackboneConfig, *, dtype: torch.dtype, compile: bool = False,
               compile_mode: str | None = None):
    import diffusers  # pylint: disable=import-outside-toplevel

    # `.to(dtype)` on a model built in code logs a "should be kept in float32: []" notice.
    diffusers.utils.logging.set_verbosity_error()
    self.text = text.to(dtype).eval()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      self.pipe = diffusers.StableDiffusionImg2ImgPipeline(
          vae=vae.to(dtype).eval(), text_encoder=None, tokenizer=None, unet=unet.to(dtype).eval(),
          scheduler=dpm_solver(config), safety_checker=None, feature_extractor=None,
          requires_safety_checker=False)
    self.pipe.set_progress_bar_config(disable=True)
    if compile:
      self.pipe.unet = torch.compile(self.pipe.unet, mode=compile_mode)

  @torch.no_grad()
  def __call__(self, images: torch.Tensor, ids: torch.Tensor, uncond_ids: torch.Tensor, *,
               strength: float, num_steps: int, guidance_scale: float) -> np.ndarray:
    context = self.text(ids)[0]
    uncond = self.text(uncond_ids)[0]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      return self.pipe(image=images, prompt_embeds=context, negative_prompt_embeds=uncond,
                       strength=strength, num_inference_steps=num_steps,
                       guidance_scale=guidance_scale, output_type="np").images


__all__ = ["Img2Img", "UNetTrainStep", "build_text_encoder", "build_unet", "build_vae",
           "dpm_solver", "export_text", "export_unet", "export_vae", "unet_kwargs", "vae_kwargs"]
