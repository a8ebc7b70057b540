"""Real Stable Diffusion 1.x weights for jaxgen's text-to-image backbone (`jaxgen.t2i.backbone`).

`load_stable_diffusion(path)` reads either published form of a checkpoint and returns the
`BackboneConfig`, the variables {'unet', 'vae', 'text'} and the CLIP tokenizer:

* a diffusers pipeline folder (`save_pretrained` / a hub snapshot, recognised by
  `model_index.json` or a `unet/` sub-folder): the sizes come from `unet/config.json`,
  `vae/config.json`, `text_encoder/config.json` (transformers' `CLIPTextConfig`) and
  `scheduler/scheduler_config.json`, the weights from each sub-folder's weight file
  (`jaxgen.io.weights.load_weights`), the tokenizer from `tokenizer/` when present (vocab.json
  and merges.txt, or the tokenizer.json that transformers 5 writes instead of them);
* a single-file CompVis checkpoint (`v1-5-pruned-emaonly.safetensors` / `.ckpt`) with the U-Net
  under `model.diffusion_model.`, the autoencoder under `first_stage_model.` and the CLIP text
  model under `cond_stage_model.transformer.`: such files carry no sizes, so SD 1.x's are used
  (or the caller's `config`), with the vocabulary size read from the token embedding (textual
  inversion may have grown it); the tokenizer comes from `tokenizer_path`, if given.

The per-network importers (`cond_unet_import`, `kl_autoencoder_import`, `text_encoder_import`)
do the name and layout mapping and report a missing, unexpected or mis-shaped tensor as a
one-line `DataError` naming the key. The three `*_config_from_*` readers translate the diffusers
/ transformers config.json dicts and refuse (ConfigError naming the key) settings these Flax
networks do not implement rather than silently building a different model. Nothing is ever
downloaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.cond_unet_import import LDM_PREFIX, config_from_diffusers, import_cond_unet
from jaxgen.io.files import read_json
from jaxgen.io.kl_autoencoder_import import import_kl_autoencoder
from jaxgen.io.text_encoder_import import import_text_encoder
from jaxgen.io.weights import load_weights
from jaxgen.nets.kl_autoencoder import KLAutoencoderConfig
from jaxgen.nets.text_encoder import TextEncoderConfig
from jaxgen.sde.sdes import BETA_SCHEDULES, DiscreteVPSDE
from jaxgen.t2i.backbone import PREDICTION_TYPES, BackboneConfig
from jaxgen.text.tokenizers import CLIPTokenizer
from jaxgen.io import paths

__all__ = ["load_stable_diffusion", "sde_from_scheduler_config", "text_config_from_transformers",
           "vae_config_from_diffusers"]

# diffusers AutoencoderKL settings the ldm autoencoder implements only at these values.
_VAE_FIXED = (("act_fn", "silu"), ("shift_factor", None), ("latents_mean", None),
              ("latents_std", None), ("use_quant_conv", True), ("use_post_quant_conv", True),
              ("mid_block_add_attention", True))
_VAE_DOWN = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}  # type -> attention
_VAE_UP = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
# Scheduler settings that change the training noise schedule itself (others, such as
# steps_offset or timestep_spacing, only concern a sampler and are left to `t2i.schedules`).
_SCHEDULE_FIXED = (("trained_betas", None), ("rescale_betas_zero_snr", False))
# Sub-folder -> config file of a diffusers Stable Diffusion pipeline.
_PIPELINE_CONFIGS = (("unet", "config.json"), ("vae", "config.json"),
                     ("text_encoder", "config.json"), ("scheduler", "scheduler_config.json"))
_VAE_PREFIX = "first_stage_model."
_TEXT_ROOT = "cond_stage_model.transformer."
_OPENCLIP_ROOT = "cond_stage_model.model."
_TOKEN_EMBEDDING = "embeddings.token_embedding.weight"


def _fixed(cfg: Mapping[str, Any], table: tuple, section: str) -> None:
  for key, default in table:
    value = cfg.get(key, default)
    if value != default:
      raise ConfigError(f"{section}.{key}", value, f"{default!r} (not supported here)")


def _side(value: Any, key: str) -> Any:
  """An int sample size from an int or a square [h, w]."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ConfigError(key, value, "an int or a square [size, size]")
    return value[0]
  return value


def vae_config_from_diffusers(cfg: Mapping[str, Any]) -> KLAutoencoderConfig:
  """`KLAutoencoderConfig` of a diffusers `AutoencoderKL` config.json dict.

  block_out_channels -> ch (the first entry) and ch_mult (each entry / ch, which must divide);
  layers_per_block -> num_res_blocks; latent_channels -> z_channels and embed_dim;
  norm_num_groups -> num_groups; sample_size -> resolution; scaling_factor (0.18215 when absent,
  as in SD 1.x's config, which predates the key). Attention sits in the middle blocks and in the
  levels whose block type is `AttnDownEncoderBlock2D` / `AttnUpDecoderBlock2D` (the up blocks,
  coarsest first, must mirror the down blocks): those levels' sizes sample_size // 2**level
  become `attn_resolutions` (empty for SD). Keys absent from `cfg` take diffusers' defaults;
  `force_upcast` (a float16 hint) is ignored.

  Raises:
    ConfigError: naming the diffusers key of a setting this autoencoder lacks (another block type,
      activation, a shift_factor or latents_mean/std, no quant convs, no middle attention) or of
      channels that are not multiples of the first.
  """
  _fixed(cfg, _VAE_FIXED, "kl_autoencoder")
  chans = cfg.get("block_out_channels", (64,))
  if (not isinstance(chans, (list, tuple)) or not chans
      or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in chans)):
    raise ConfigError("kl_autoencoder.block_out_channels", chans,
                      "a non-empty list of positive ints")
  ch = chans[0]
  if any(c % ch for c in chans):
    raise ConfigError("kl_autoencoder.block_out_channels", list(chans),
                      f"multiples of the first entry {ch} (ch * ch_mult)")
  levels = len(chans)
  down = list(cfg.get("down_block_types", ("DownEncoderBlock2D",)))
  up = list(cfg.get("up_block_types", ("UpDecoderBlock2D",)))
  for key, types, allowed in (("down_block_types", down, _VAE_DOWN),
                              ("up_block_types", up, _VAE_UP)):
    if len(types) != levels or any(t not in allowed for t in types):
      raise ConfigError(f"kl_autoencoder.{key}", types,
                        f"{levels} entries (one per block_out_channels) from {sorted(allowed)}")
  attention = [_VAE_DOWN[t] for t in down]
  if [_VAE_UP[t] for t in reversed(up)] != attention:
    raise ConfigError("kl_autoencoder.up_block_types", up, "attention at the levels where "
                      f"down_block_types {down} has it (up blocks run coarsest first)")
  side = _side(cfg.get("sample_size", 32), "kl_autoencoder.sample_size")
  if not isinstance(side, int) or isinstance(side, bool) or side < 1:
    raise ConfigError("kl_autoencoder.sample_size", side, "a positive int")
  latent = cfg.get("latent_channels", 4)
  scale = cfg.get("scaling_factor")
  return KLAutoencoderConfig(
      ch=ch, ch_mult=tuple(c // ch for c in chans), num_res_blocks=cfg.get("layers_per_block", 1),
      attn_resolutions=tuple(side // 2 ** level for level in range(levels) if attention[level]),
      z_channels=latent, embed_dim=latent, resolution=side,
      in_channels=cfg.get("in_channels", 3), out_channels=cfg.get("out_channels", 3),
      num_groups=cfg.get("norm_num_groups", 32),
      scaling_factor=0.18215 if scale is None else scale)


def text_config_from_transformers(cfg: Mapping[str, Any]) -> TextEncoderConfig:
  """`TextEncoderConfig` of a transformers `CLIPTextConfig` config.json dict (a full `CLIPConfig`
  is read through its `text_config`).

  vocab_size, max_position_embeddings -> max_length, hidden_size -> width, num_hidden_layers ->
  layers, num_attention_heads -> heads, intermediate_size (None when it is 4 * hidden_size, so SD
  1.x reads back as `TextEncoderConfig.sd15()`), hidden_act -> activation, layer_norm_eps.
  `projection_dim` (CLIPTextModelWithProjection) and the dropout / initialiser settings are
  ignored; absent keys take transformers' defaults.

  Raises:
    ConfigError: an activation other than quick_gelu / gelu, or impossible sizes.
  """
  if cfg.get("model_type") == "clip" and isinstance(cfg.get("text_config"), Mapping):
    cfg = cfg["text_config"]
  width = cfg.get("hidden_size", 512)
  mlp = cfg.get("intermediate_size", 2048)
  return TextEncoderConfig(
      vocab_size=cfg.get("vocab_size", 49408), max_length=cfg.get("max_position_embeddings", 77),
      width=width, layers=cfg.get("num_hidden_layers", 12), heads=cfg.get("num_attention_heads", 8),
      intermediate_size=None if isinstance(width, int) and mlp == 4 * width else mlp,
      activation=cfg.get("hidden_act", "quick_gelu"),
      layer_norm_eps=cfg.get("layer_norm_eps", 1e-5))


def sde_from_scheduler_config(cfg: Mapping[str, Any]) -> tuple[DiscreteVPSDE, str]:
  """(`DiscreteVPSDE`, prediction_type) of a diffusers scheduler_config.json dict.

  beta_start, beta_end, num_train_timesteps and beta_schedule ('scaled_linear' | 'linear')
  define the training noise schedule; prediction_type is 'epsilon' (the default) or
  'v_prediction'. Absent keys take the diffusers schedulers' defaults (0.0001, 0.02, 1000,
  'linear'). Sampler settings (steps_offset, timestep_spacing, clip_sample, ...) are ignored.

  Raises:
    ConfigError: trained_betas given, rescale_betas_zero_snr set, another beta_schedule or
      prediction_type.
  """
  _fixed(cfg, _SCHEDULE_FIXED, "scheduler")
  schedule = cfg.get("beta_schedule", "linear")
  if schedule not in BETA_SCHEDULES:
    raise ConfigError("scheduler.beta_schedule", schedule, f"one of {BETA_SCHEDULES}")
  prediction = cfg.get("prediction_type", "epsilon")
  if prediction not in PREDICTION_TYPES:
    raise ConfigError("scheduler.prediction_type", prediction, f"one of {PREDICTION_TYPES}")
  sde = DiscreteVPSDE(beta_start=cfg.get("beta_start", 0.0001), beta_end=cfg.get("beta_end", 0.02),
                      num_train_timesteps=cfg.get("num_train_timesteps", 1000), schedule=schedule)
  return sde, prediction


def _config_file(path: str, what: str) -> dict:
  """A JSON object from `path`, or a one-line DataError naming it and `what` it should hold."""
  if not paths.isfile(path):
    raise DataError(f"{path} does not exist; expected {what}")
  try:
    data = read_json(path)
  except (OSError, ValueError) as err:
    raise DataError(f"{path}: unreadable JSON ({err}); expected {what}") from None
  if not isinstance(data, dict):
    raise DataError(f"{path}: expected a JSON object ({what}), got {type(data).__name__}")
  return data


def load_clip_tokenizer(directory: str) -> CLIPTokenizer:
  """`CLIPTokenizer.from_pretrained(directory)` (vocab.json + merges.txt, or tokenizer.json, in
  `directory/tokenizer/` or `directory`), with a one-line error for a missing folder."""
  if not paths.isdir(directory):
    raise DataError(f"tokenizer folder {directory} does not exist; expected a folder with "
                    "vocab.json and merges.txt (or a diffusers folder with tokenizer/)")
  return CLIPTokenizer.from_pretrained(directory)


def _check_tokenizer(tokenizer: CLIPTokenizer, text: TextEncoderConfig, where: str) -> None:
  """Token ids must index the embedding, and encoded rows must fit the position embedding."""
  if tokenizer.vocab_size > text.vocab_size:
    raise DataError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the text "
                    f"encoder only {text.vocab_size} embedding rows (added tokens without their "
                    "learned embeddings?)")
  if tokenizer.max_length > text.max_length:
    raise DataError(f"{where}: the tokenizer pads to {tokenizer.max_length} tokens but the text "
                    f"encoder has {text.max_length} positions")


def _load_diffusers(folder: str, variant: str | None
                    ) -> tuple[BackboneConfig, dict[str, Any]]:
  for sub, name in _PIPELINE_CONFIGS:
    if not paths.isdir(os.path.join(folder, sub)):
      raise DataError(f"{folder} has no {sub}/ sub-folder; expected a diffusers Stable Diffusion "
                      f"pipeline folder with unet/, vae/, text_encoder/ and scheduler/")
  cfgs = {sub: _config_file(os.path.join(folder, sub, name),
                            f"the {sub} {name} of a diffusers Stable Diffusion pipeline")
          for sub, name in _PIPELINE_CONFIGS}
  sde, prediction = sde_from_scheduler_config(cfgs["scheduler"])
  config = BackboneConfig(unet=config_from_diffusers(cfgs["unet"]),
                          vae=vae_config_from_diffusers(cfgs["vae"]),
                          text=text_config_from_transformers(cfgs["text_encoder"]), sde=sde,
                          prediction_type=prediction)
  params = {}
  for sub in ("text_encoder", "vae", "unet"):
    where = os.path.join(folder, sub)
    weights = load_weights(where, variant=variant)
    if sub == "text_encoder":
      params["text"] = import_text_encoder(weights, config.text, source=where)
    elif sub == "vae":
      params["vae"] = import_kl_autoencoder(weights, config.vae, prefix="", source=where)
    else:
      params["unet"] = import_cond_unet(weights, config.unet, layout="diffusers", source=where)
    del weights  # one network's host copy at a time
  return config, params


def _text_prefix(state_dict: Mapping[str, np.ndarray]) -> str | None:
  """The prefix before `embeddings.` of the CLIP text model of a single-file checkpoint."""
  for prefix in (_TEXT_ROOT + "text_model.", _TEXT_ROOT):
    if prefix + _TOKEN_EMBEDDING in state_dict:
      return prefix
  return None


def _load_single_file(path: str, config: BackboneConfig | None
                      ) -> tuple[BackboneConfig, dict[str, Any]]:
  weights = load_weights(path)
  if any(k.startswith(_OPENCLIP_ROOT) for k in weights):
    raise DataError(f"{path}: an OpenCLIP text encoder ({_OPENCLIP_ROOT}*, SD 2.x) is not "
                    "supported in single-file form; load that model's diffusers folder instead")
  for prefix, what in ((LDM_PREFIX, "U-Net"), (_VAE_PREFIX, "autoencoder"),
                       (_TEXT_ROOT, "CLIP text model")):
    if not any(k.startswith(prefix) for k in weights):
      raise DataError(f"{path}: no {prefix}* keys; expected a single-file Stable Diffusion 1.x "
                      f"checkpoint with its {what} under {prefix}")
  text_prefix = _text_prefix(weights)
  if config is None:
    config = BackboneConfig.sd15()
    if text_prefix is not None:  # textual inversion may have appended embedding rows
      rows = int(weights[text_prefix + _TOKEN_EMBEDDING].shape[0])
      config = dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=rows))
  betas = weights.get("betas")
  if betas is not None and (np.shape(betas) != (config.sde.num_train_timesteps,) or not np.allclose(
      np.asarray(betas, np.float64), config.sde.betas(), rtol=1e-4, atol=1e-8)):
    raise DataError(f"{path}: the checkpoint's betas (shape {np.shape(betas)}) differ from the "
                    f"schedule {config.sde}; pass the matching config")
  params = {
      "text": import_text_encoder(weights, config.text, prefix=text_prefix, source=path),
      "vae": import_kl_autoencoder(weights, config.vae, prefix=_VAE_PREFIX, layout="compvis",
                                   source=path),
      "unet": import_cond_unet(weights, config.unet, layout="compvis", source=path)}
  return config, params


def load_stable_diffusion(path: str, *, tokenizer_path: str | None = None,
                          config: BackboneConfig | None = None, variant: str | None = None
                          ) -> tuple[BackboneConfig, dict[str, Any], CLIPTokenizer | None]:
  """Config, variables {'unet', 'vae', 'text'} and tokenizer of a Stable Diffusion checkpoint.

  Args:
    path: a diffusers pipeline folder (with `model_index.json` or `unet/`) or a single-file
      CompVis checkpoint (`.safetensors` or `.ckpt`; module docstring).
    tokenizer_path: a folder with vocab.json and merges.txt (or a diffusers folder with
      tokenizer/); for a pipeline folder it replaces the folder's own `tokenizer/`.
    config: the sizes of a single-file checkpoint (default: SD 1.x with the vocabulary size of
      its token embedding); must be None for a pipeline folder, whose config files give them.
    variant: a pipeline folder's weight-file infix, e.g. 'fp16' for
      `diffusion_pytorch_model.fp16.safetensors`.
  Returns:
    (config, params, tokenizer or None); the text encoder's vocab_size is at least the
    tokenizer's, and `params[name]` are Flax variables `{'params': ...}` in float32.
  Raises:
    DataError: a missing path, sub-folder or config file, unreadable weights, or a missing /
      unexpected / mis-shaped tensor (one line naming it).
    ConfigError: a config.json setting these networks do not implement, or inconsistent sizes.
  """
  if not paths.exists(path):
    raise DataError(f"Stable Diffusion checkpoint {path} does not exist; expected a diffusers "
                    "pipeline folder or a single-file .safetensors/.ckpt (jaxgen never downloads "
                    "weights)")
  if paths.isdir(path):
    if not (paths.isfile(os.path.join(path, "model_index.json"))
            or paths.isdir(os.path.join(path, "unet"))):
      raise DataError(f"{path} has neither model_index.json nor unet/; expected a diffusers "
                      "Stable Diffusion pipeline folder")
    if config is not None:
      raise ConfigError("load_stable_diffusion.config", type(config).__name__,
                        "None for a diffusers folder (its config.json files give the sizes)")
    config, params = _load_diffusers(path, variant)
    own_tokenizer = os.path.join(path, "tokenizer")
    tok_dir = tokenizer_path or (path if paths.isdir(own_tokenizer) else None)
  else:
    config, params = _load_single_file(path, config)
    tok_dir = tokenizer_path
  tokenizer = load_clip_tokenizer(tok_dir) if tok_dir is not None else None
  if tokenizer is not None:
    _check_tokenizer(tokenizer, config.text, tok_dir)
  return config, params, tokenizer
