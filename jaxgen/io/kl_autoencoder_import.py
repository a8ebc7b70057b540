"""Weights of a Stable Diffusion / latent-diffusion KL autoencoder for `jaxgen.nets.kl_autoencoder`,
from either of the two layouts its checkpoints come in.

* CompVis (ldm `AutoencoderKL`, the single-file SD checkpoints):
  `encoder.down.0.block.0.conv1.weight`, `encoder.mid.attn_1.q.weight` (a 1x1 conv,
  [C, C, 1, 1]), `encoder.norm_out.weight`, `decoder.up.3.upsample.conv.weight`,
  `quant_conv.weight`, ...; inside a full SD checkpoint these sit under `first_stage_model.`
  (next to the UNet and text encoder, which are ignored), and a VAE training checkpoint's
  `loss.*` keys are ignored too. These are the VQ-GAN's names, so this path is
  `jaxgen.io.vqgan_import`'s.
* diffusers (`AutoencoderKL.state_dict()`, a pipeline's `vae/` folder):
  `encoder.down_blocks.0.resnets.0.conv1.weight`, `...resnets.1.conv_shortcut.weight`,
  `encoder.down_blocks.0.downsamplers.0.conv.weight`, `encoder.mid_block.resnets.0.*` /
  `attentions.0.*` (GroupNorm `group_norm`, Linear [C, C] `to_q`/`to_k`/`to_v`/`to_out.0`, or
  the older `query`/`key`/`value`/`proj_attn`), `encoder.conv_norm_out.*`, and the decoder's
  `up_blocks` numbered from the coarsest level (`decoder.up_blocks.0` is CompVis'
  `decoder.up.{levels-1}`).

The layout is detected from the names; diffusers names are translated to CompVis ones (Linear
attention weights reshaped to 1x1 convs) and the CompVis path does the rest. The input is a
`{name: np.ndarray}` mapping already read from disk (e.g. by `load_state_dict` of
`jaxgen.io.torch_state_dict` for a `.ckpt`); float16/bfloat16 weights become float32.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.torch_state_dict import to_flax_variables, to_torch_layout
from jaxgen.io.vqgan_import import torch_module_name
from jaxgen.nets.kl_autoencoder import KLAutoencoder, KLAutoencoderConfig

__all__ = ["LAYOUTS", "detect_layout", "diffusers_name", "export_kl_autoencoder",
           "import_kl_autoencoder"]

LAYOUTS = ("compvis", "diffusers")
_MODEL_ORDER = ("encoder", "quant_conv", "post_quant_conv", "decoder")
_MODEL_PREFIXES = tuple(f"{name}." for name in _MODEL_ORDER)
_SD_PREFIX = "first_stage_model."
_PROBE_KEY = "encoder.conv_in.weight"
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_DIFFUSERS_MARKERS = tuple(
    f"{part}.{name}" for part in ("encoder", "decoder")
    for name in ("down_blocks.", "up_blocks.", "mid_block.", "conv_norm_out."))
_COMPVIS_MARKERS = tuple(f"{part}.{name}" for part in ("encoder", "decoder")
                         for name in ("down.", "up.", "mid.", "norm_out."))
_LEGACY_ATTENTION = re.compile(r"\.attentions\.\d+\.(query|key|value|proj_attn)\.")

# CompVis name patterns (full parameter names).
_LEVEL = re.compile(
    r"^(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)$")
_RESAMPLE = re.compile(r"^(encoder|decoder)\.(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(\w+)$")
_MID = re.compile(r"^(encoder|decoder)\.mid\.(block|attn)_(\d+)\.(\w+)\.(weight|bias)$")
_NORM_OUT = re.compile(r"^(encoder|decoder)\.norm_out\.(weight|bias)$")
# CompVis attention part -> diffusers (current, legacy) part.
_ATTN_PARTS = {"norm": ("group_norm", "group_norm"), "q": ("to_q", "query"), "k": ("to_k", "key"),
               "v": ("to_v", "value"), "proj_out": ("to_out.0", "proj_attn")}
_ATTN_LINEARS = ("q", "k", "v", "proj_out")


def _attention_part(part: str, legacy: bool) -> str:
  return _ATTN_PARTS[part][int(legacy)]


def diffusers_name(compvis: str, num_levels: int, *, legacy_attention: bool = False) -> str:
  """The diffusers `AutoencoderKL` name of a CompVis parameter name, e.g. with 4 levels
  'decoder.up.3.block.0.nin_shortcut.weight' -> 'decoder.up_blocks.0.resnets.0.conv_shortcut.
  weight'; `legacy_attention` uses `query`/`key`/`value`/`proj_attn` for the attention."""
  if m := _LEVEL.match(compvis):
    part, direction, level, kind, index, sub, leaf = m.groups()
    blocks = "down_blocks" if direction == "down" else "up_blocks"
    # diffusers numbers decoder blocks in the order they run, coarsest first.
    level = int(level) if direction == "down" else num_levels - 1 - int(level)
    if kind == "block":
      sub = "conv_shortcut" if sub == "nin_shortcut" else sub
      return f"{part}.{blocks}.{level}.resnets.{index}.{sub}.{leaf}"
    sub = _attention_part(sub, legacy_attention)
    return f"{part}.{blocks}.{level}.attentions.{index}.{sub}.{leaf}"
  if m := _RESAMPLE.match(compvis):
    part, direction, level, kind, leaf = m.groups()
    if direction == "down":
      return f"{part}.down_blocks.{level}.downsamplers.0.conv.{leaf}"
    return f"{part}.up_blocks.{num_levels - 1 - int(level)}.upsamplers.0.conv.{leaf}"
  if m := _MID.match(compvis):
    part, kind, index, sub, leaf = m.groups()
    if kind == "block":
      sub = "conv_shortcut" if sub == "nin_shortcut" else sub
      return f"{part}.mid_block.resnets.{int(index) - 1}.{sub}.{leaf}"
    sub = _attention_part(sub, legacy_attention)
    return f"{part}.mid_block.attentions.{int(index) - 1}.{sub}.{leaf}"
  if m := _NORM_OUT.match(compvis):
    return f"{m.group(1)}.conv_norm_out.{m.group(2)}"
  return compvis  # conv_in, conv_out, quant_conv, post_quant_conv


def _is_attention_linear(compvis: str) -> bool:
  """Whether the diffusers counterpart of this CompVis weight is a Linear [C, C] (q/k/v/proj_out
  of an attention block) rather than a 1x1 conv."""
  parts = compvis.split(".")
  in_attention = any(p == "attn" or p.startswith("attn_") for p in parts)
  return in_attention and parts[-2] in _ATTN_LINEARS and parts[-1] == "weight"


def detect_layout(state_dict: Mapping[str, np.ndarray], *, prefix: str = "",
                  source: str = "state dict") -> str:
  """'diffusers' or 'compvis' from the names under `prefix`; 'compvis' when neither kind of
  name is there (the import then reports the missing CompVis keys).

  Raises:
    DataError: the state dict mixes both layouts.
  """
  keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
  diffusers = next((k for k in keys if k.startswith(_DIFFUSERS_MARKERS)), None)
  compvis = next((k for k in keys if k.startswith(_COMPVIS_MARKERS)), None)
  if diffusers and compvis:
    raise DataError(f"{source} mixes diffusers names ({prefix}{diffusers}) and CompVis names "
                    f"({prefix}{compvis}); expected one layout")
  return "diffusers" if diffusers else "compvis"


def _select_prefix(state_dict: Mapping[str, np.ndarray], prefix: str | None) -> str:
  if prefix is not None:
    return prefix
  if _PROBE_KEY not in state_dict and _SD_PREFIX + _PROBE_KEY in state_dict:
    return _SD_PREFIX
  return ""


def _listed(items: list[str]) -> str:
  return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """PyTorch shape of a Flax leaf: conv kernels HWIO -> OIHW, others unchanged."""
  if path[-1] == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


@functools.lru_cache(maxsize=8)
def _target(config: KLAutoencoderConfig) -> dict:
  """Shapes of `KLAutoencoder(config)`'s params (traced once per config: tracing is slow)."""
  side = config.resolution
  target = jax.eval_shape(KLAutoencoder(config).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, side, side, config.in_channels), jnp.float32))
  return {"params": target["params"]}


def import_kl_autoencoder(state_dict: Mapping[str, np.ndarray], config: KLAutoencoderConfig, *,
                          prefix: str | None = None, layout: str | None = None,
                          source: str = "KL autoencoder state dict") -> dict:
  """Flax variables `{'params': ...}` of `KLAutoencoder(config)` from a CompVis or diffusers
  state dict (PyTorch layouts: convs OIHW, Linear [out, in]).

  Strict: every parameter must be present with the right shape, and every key under `encoder.`,
  `decoder.`, `quant_conv.` or `post_quant_conv.` must be used; other keys (`loss.*`, a full SD
  checkpoint's UNet and text encoder) are ignored.

  Args:
    state_dict: `{name: array}`, e.g. `AutoencoderKL.state_dict()` as NumPy or
      `load_state_dict('v1-5-pruned-emaonly.ckpt')`.
    config: the checkpoint's sizes (`KLAutoencoderConfig.sd15()` for SD 1.x).
    prefix: prepended to every name; None takes '' or, when the plain names are absent,
      'first_stage_model.' (the autoencoder inside a single-file SD checkpoint).
    layout: 'compvis' or 'diffusers'; None detects it from the names (`detect_layout`).
    source: what the state dict is (e.g. the file name), for error messages.
  Raises:
    DataError: one line naming the first missing, unexpected or mis-shaped keys (in the source's
      names) with the shapes expected, and `source`.
  """
  prefix = _select_prefix(state_dict, prefix)
  if layout is None:
    layout = detect_layout(state_dict, prefix=prefix, source=source)
  elif layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS} or None")
  sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  legacy = layout == "diffusers" and any(_LEGACY_ATTENTION.search(k) for k in sd)
  target = _target(config)
  flat = traverse_util.flatten_dict(target)
  # Encoder first, decoder last, so errors name the earliest part that does not fit.
  paths = sorted(flat, key=lambda p: _MODEL_ORDER.index(p[1]))
  # CompVis name -> (name in the source layout, shape in the source layout, CompVis shape).
  plan: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}
  for path in paths:
    compvis = f"{torch_module_name(tuple(path[1:-1]))}.{_LEAF_NAMES[path[-1]]}"
    shape = _torch_shape(path, flat[path].shape)
    if layout == "compvis":
      plan[compvis] = (compvis, shape, shape)
    else:
      name = diffusers_name(compvis, len(config.ch_mult), legacy_attention=legacy)
      plan[compvis] = (name, shape[:2] if _is_attention_linear(compvis) else shape, shape)
  sizes = (f"ch={config.ch}, ch_mult={config.ch_mult}, num_res_blocks={config.num_res_blocks}, "
           f"attn_resolutions={config.attn_resolutions}, z_channels={config.z_channels}, "
           f"embed_dim={config.embed_dim}")
  what = f"a {layout}-layout KL autoencoder with {sizes}"
  missing = [f"{prefix}{name} (expected shape {shape})" for name, shape, _ in plan.values()
             if name not in sd]
  if missing:
    raise DataError(f"{source}: missing keys {_listed(missing)} for {what}; is this the right "
                    "checkpoint and config?")
  used = {name for name, _, _ in plan.values()}
  unexpected = [prefix + k for k in sd if k.startswith(_MODEL_PREFIXES) and k not in used]
  if unexpected:
    raise DataError(f"{source}: unexpected keys {_listed(unexpected)} for {what}; is this the "
                    "right checkpoint and config?")
  converted = {}
  for compvis, (name, shape, compvis_shape) in plan.items():
    value = np.asarray(sd[name])
    if tuple(value.shape) != shape:
      raise DataError(f"{source}: {prefix}{name} has shape {tuple(value.shape)}, expected {shape} "
                      f"for {what}")
    converted[compvis] = value.reshape(compvis_shape)  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
  variables = to_flax_variables(converted, target, torch_module_name, source)
  return jax.tree_util.tree_map(jnp.asarray, variables)


def export_kl_autoencoder(variables: dict, config: KLAutoencoderConfig, *,
                          layout: str = "diffusers") -> dict[str, np.ndarray]:
  """The inverse of `import_kl_autoencoder`: `{'params': ...}` -> float32 PyTorch state dict in
  the diffusers layout (attention projections as Linear), or the CompVis one under
  `first_stage_model.` (the single-file SD layout; attention projections as 1x1 convs)."""
  if layout not in LAYOUTS:
    raise ConfigError("kl_autoencoder.layout", layout, f"one of {LAYOUTS}")
  out = {}
  for path, value in traverse_util.flatten_dict(variables["params"]).items():
    name = f"{torch_module_name(path[:-1])}.{_LEAF_NAMES[path[-1]]}"
    value = to_torch_layout(path[-1], value)
    if layout == "compvis":
      out[_SD_PREFIX + name] = value
      continue
    linear = _is_attention_linear(name)
    out[diffusers_name(name, len(config.ch_mult))] = value[:, :, 0, 0] if linear else value
  return out
