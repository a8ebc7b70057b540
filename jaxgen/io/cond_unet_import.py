"""Weights of a Stable Diffusion 1.x U-Net for `jaxgen.nets.cond_unet.CondUNet`, from either of
the two public layouts (PyTorch tensors as NumPy arrays, e.g. from `load_state_dict` or a
safetensors reader):

* diffusers (`unet/diffusion_pytorch_model.*`): `UNet2DConditionModel` module names, e.g.
  `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`. Our Flax path is the same
  with '.' before a list index replaced by '_', so the mapping is mechanical.
* CompVis / single-file (`v1-5-pruned*.ckpt`, `.safetensors`): the LDM `UNetModel` under
  `model.diffusion_model.` (the VAE, text encoder, `model_ema.*` and schedule buffers beside it
  are ignored). The names are translated to diffusers' as follows, with n = layers_per_block:

    time_embed.0 / .2                 -> time_embedding.linear_1 / linear_2
    input_blocks.0.0                  -> conv_in
    input_blocks.{1+L(n+1)+j}.0       -> down_blocks.L.resnets.j    (j < n)
    input_blocks.{1+L(n+1)+j}.1       -> down_blocks.L.attentions.j
    input_blocks.{1+L(n+1)+n}.0.op    -> down_blocks.L.downsamplers.0.conv
    middle_block.0 / .1 / .2          -> mid_block.resnets.0 / attentions.0 / resnets.1
    output_blocks.{U(n+1)+j}.0        -> up_blocks.U.resnets.j      (j <= n, U = 0 coarsest)
    output_blocks.{U(n+1)+j}.1        -> up_blocks.U.attentions.j
    output_blocks.{U(n+1)+n}.{1|2}.conv -> up_blocks.U.upsamplers.0.conv (2 after attention)
    out.0 / out.2                     -> conv_norm_out / conv_out

  and inside a ResNet block in_layers.0 / in_layers.2 / emb_layers.1 / out_layers.0 /
  out_layers.3 / skip_connection -> norm1 / conv1 / time_emb_proj / norm2 / conv2 /
  conv_shortcut. Transformer (SpatialTransformer) names are already diffusers'.

Layouts change as usual: Linear [out, in] -> kernel [in, out], Conv OIHW -> HWIO, GroupNorm /
LayerNorm weight -> scale; half-precision weights become float32.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.torch_state_dict import to_torch_layout
from jaxgen.nets.cond_unet import CondUNetConfig, param_shapes

__all__ = ["LDM_PREFIX", "compvis_name", "compvis_to_diffusers", "config_from_diffusers",
           "diffusers_module_name", "diffusers_shapes", "export_cond_unet", "import_cond_unet"]

LDM_PREFIX = "model.diffusion_model."
_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.")
# diffusers ModuleList attributes: a Flax name `<list>_<i>` is the torch name `<list>.<i>`.
_LIST_ITEM = re.compile(
    r"^(down_blocks|up_blocks|resnets|attentions|transformer_blocks|downsamplers|upsamplers|"
    r"to_out|net)_(\d+)$")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_SIMPLE_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
# diffusers config entries this U-Net implements only at these (SD 1.x/2.x) values.
_DIFFUSERS_FIXED = (
    ("center_input_sample", False), ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("only_cross_attention", False), ("downsample_padding", 1), ("mid_block_scale_factor", 1),
    ("act_fn", "silu"), ("encoder_hid_dim", None), ("dual_cross_attention", False),
    ("class_embed_type", None), ("addition_embed_type", None), ("num_class_embeds", None),
    ("resnet_time_scale_shift", "default"), ("resnet_skip_time_act", False),
    ("resnet_out_scale_factor", 1.0), ("time_embedding_type", "positional"),
    ("time_embedding_act_fn", None), ("timestep_post_act", None), ("time_cond_proj_dim", None),
    ("conv_in_kernel", 3), ("conv_out_kernel", 3), ("attention_type", "default"),
    ("cross_attention_norm", None), ("reverse_transformer_layers_per_block", None))
_BLOCK = re.compile(r"^(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?"
                    r"(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")


def config_from_diffusers(cfg: Mapping[str, Any]) -> CondUNetConfig:
  """`CondUNetConfig` of a diffusers `UNet2DConditionModel` config.json dict.

  Head counts come from `num_attention_heads` or, when that is null (SD 1.x/2.x), from
  `attention_head_dim`, as diffusers itself reads them (SD 1.x's 8 is the number of heads).
  `upcast_attention` (SD 2.1) needs nothing: attention logits are float32 here anyway.
  Raises:
    ConfigError: the config uses a feature this U-Net lacks (class/addition embeddings, other
      block types, cross-only attention, per-level transformer depths, ...).
  """
  d = CondUNetConfig()
  for key, default in _DIFFUSERS_FIXED:
    value = cfg.get(key, default)
    if any(v != default for v in (value if isinstance(value, (list, tuple)) else [value])):
      raise ConfigError(f"cond_unet.{key}", value, f"{default!r} (not supported here)")
  heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
  depth = cfg.get("transformer_layers_per_block", 1)
  if isinstance(depth, (list, tuple)):
    if len(set(depth)) != 1:
      raise ConfigError("cond_unet.transformer_layers_per_block", depth, "one depth for all levels")
    depth = depth[0]
  side = cfg.get("sample_size") or d.sample_size
  get = lambda key: tuple(v) if isinstance(v := cfg.get(key, getattr(d, key)), list) else v
  return CondUNetConfig(
      in_channels=get("in_channels"), out_channels=get("out_channels"),
      block_out_channels=get("block_out_channels"), layers_per_block=get("layers_per_block"),
      down_block_types=get("down_block_types"), up_block_types=get("up_block_types"),
      num_attention_heads=tuple(heads) if isinstance(heads, list) else heads,
      cross_attention_dim=cfg.get("cross_attention_dim", 1280),
      transformer_layers_per_block=depth, norm_num_groups=get("norm_num_groups"),
      norm_eps=get("norm_eps"), flip_sin_to_cos=get("flip_sin_to_cos"),
      freq_shift=get("freq_shift"), time_embed_dim=cfg.get("time_embedding_dim"),
      use_linear_projection=get("use_linear_projection"),
      sample_size=side[0] if isinstance(side, (list, tuple)) else side)


def diffusers_module_name(path: tuple[str, ...]) -> str:
  """Flax module path -> diffusers module name, e.g. ('down_blocks_0', 'attentions_0',
  'transformer_blocks_0', 'attn1', 'to_out_0') -> 'down_blocks.0.attentions.0.transformer_blocks.0
  .attn1.to_out.0'."""
  return ".".join(".".join(m.groups()) if (m := _LIST_ITEM.match(p)) else p for p in path)


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


@functools.lru_cache(maxsize=8)
def _shapes(config: CondUNetConfig) -> tuple:
  # Cached: tracing the SD 1.5 U-Net for its shapes takes seconds.
  return tuple((f"{diffusers_module_name(path[:-1])}.{_LEAF_NAMES[path[-1]]}",
                (path, _torch_shape(path, tuple(leaf.shape))))
               for path, leaf in traverse_util.flatten_dict(param_shapes(config)).items())


def diffusers_shapes(config: CondUNetConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """{diffusers key: (Flax params path, PyTorch-layout shape)} for every parameter of
  `CondUNet(config)`, in parameter-tree order."""
  return dict(_shapes(config))


def compvis_name(key: str, config: CondUNetConfig) -> str:
  """diffusers key -> CompVis LDM key (without `model.diffusion_model.`), per the module table."""
  module, leaf = key.rsplit(".", 1)
  if module in _SIMPLE_LDM:
    return f"{_SIMPLE_LDM[module]}.{leaf}"
  m = _BLOCK.match(key)
  if m is None:
    raise ValueError(f"{key} is not a parameter of a diffusers UNet2DConditionModel")
  part, index, kind, j, rest = m.groups()
  n, j = config.layers_per_block, int(j)
  if kind == "resnets":
    first, _, tail = rest.partition(".")
    rest = f"{_RESNET_LDM[first]}.{tail}"
  if part == "mid_block":
    return f"middle_block.{1 if kind == 'attentions' else 2 * j}.{rest}"
  level = int(index)
  if part == "down_blocks":
    if kind == "downsamplers":
      return f"input_blocks.{1 + level * (n + 1) + n}.0.op.{rest.removeprefix('conv.')}"
    return f"input_blocks.{1 + level * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"
  if kind == "upsamplers":
    slot = 2 if config.up_attention(level) else 1
    return f"output_blocks.{level * (n + 1) + n}.{slot}.{rest}"
  return f"output_blocks.{level * (n + 1) + j}.{0 if kind == 'resnets' else 1}.{rest}"


def _shown(keys: list[str]) -> str:
  return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _sizes(config: CondUNetConfig) -> str:
  return (f"block_out_channels={config.block_out_channels}, layers_per_block="
          f"{config.layers_per_block}, down_block_types={config.down_block_types}, "
          f"cross_attention_dim={config.cross_attention_dim}")


def compvis_to_diffusers(state_dict: Mapping[str, np.ndarray], config: CondUNetConfig, *,
                         prefix: str = LDM_PREFIX, source: str = "U-Net state dict"
                         ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Renames the CompVis U-Net keys under `prefix` to diffusers keys (see the module docstring).

  Returns:
    ({diffusers key: array}, {diffusers key: original key}); keys outside `prefix` are dropped.
  Raises:
    DataError: a key under `prefix` that no parameter of `CondUNet(config)` maps to.
  """
  table = {compvis_name(k, config): k for k in diffusers_shapes(config)}
  renamed, original, unexpected = {}, {}, []
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    name = table.get(key[len(prefix):])
    if name is None:
      unexpected.append(key)
      continue
    renamed[name], original[name] = value, key
  if unexpected:
    raise DataError(f"{source}: unexpected keys {_shown(unexpected)} for a CompVis U-Net with "
                    f"{_sizes(config)}; is this the right checkpoint and config?")
  return renamed, original


def _layout(state_dict: Mapping[str, np.ndarray], layout: str) -> tuple[str, str]:
  """(layout, prefix) with 'auto' resolved from the keys."""
  if layout not in ("auto", "diffusers", "compvis"):
    raise ConfigError("cond_unet_import.layout", layout, "'auto', 'diffusers' or 'compvis'")
  if layout == "diffusers":
    return layout, ""
  if any(k.startswith(LDM_PREFIX) for k in state_dict):
    return "compvis", LDM_PREFIX
  if layout == "compvis" or any(k.startswith(_LDM_ROOTS) for k in state_dict):
    return "compvis", ""
  return "diffusers", ""


def import_cond_unet(state_dict: Mapping[str, np.ndarray], config: CondUNetConfig, *,
                     layout: str = "auto", source: str = "U-Net state dict") -> dict:
  """Flax variables `{'params': ...}` of `CondUNet(config)` from a PyTorch U-Net state dict.

  Strict: every parameter must be present with the right shape and, in the diffusers layout,
  every key must be used (in the CompVis layout, every key under `model.diffusion_model.`).

  Args:
    state_dict: `{name: array}` in the diffusers or CompVis layout (module docstring).
    config: the U-Net's sizes (`CondUNetConfig.sd15()` for SD 1.x; `config_from_diffusers` reads
      a diffusers config.json).
    layout: 'diffusers', 'compvis' or 'auto' (CompVis when some key starts with
      `model.diffusion_model.`, `input_blocks.`, `middle_block.` or `output_blocks.`).
    source: what the state dict is (e.g. the file name), for error messages.
  Raises:
    DataError: one line naming the missing, unexpected or mis-shaped key(s) (in the state dict's
      own naming) and the PyTorch shape the config expects.
  """
  layout, prefix = _layout(state_dict, layout)
  expected = diffusers_shapes(config)
  if layout == "compvis":
    sd, original = compvis_to_diffusers(state_dict, config, prefix=prefix, source=source)
    shown = lambda k: original.get(k) or prefix + compvis_name(k, config)
  else:
    sd, shown = dict(state_dict), lambda k: k
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
      raise DataError(f"{source}: unexpected keys {_shown(unexpected)} for a diffusers U-Net with "
                      f"{_sizes(config)}; is this the right checkpoint and config?")
  missing = [k for k in expected if k not in sd]
  if missing:
    first = missing[0]
    raise DataError(f"{source}: missing keys {_shown([shown(k) for k in missing])} (the first of "
                    f"shape {expected[first][1]}) for a U-Net with {_sizes(config)}; is this the "
                    "right checkpoint and config?")
  flat = {}
  for key, (path, shape) in expected.items():
    value = np.asarray(sd[key], dtype=np.float32)
    if value.shape != shape:
      raise DataError(f"{source}: {shown(key)} has shape {value.shape}, expected {shape} for a "
                      f"U-Net with {_sizes(config)}, use_linear_projection="
                      f"{config.use_linear_projection}; is this the right checkpoint and config?")
    if value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
      value = value.T
    flat[path] = jnp.asarray(value)
  return {"params": traverse_util.unflatten_dict(flat)}


def export_cond_unet(params: dict, config: CondUNetConfig, *,
                     layout: str = "diffusers") -> dict[str, np.ndarray]:
  """The inverse of `import_cond_unet`: `{'params': ...}` (or the params tree) -> float32 PyTorch
  state dict in the diffusers layout, or the CompVis one under `model.diffusion_model.`."""
  if layout not in ("diffusers", "compvis"):
    raise ConfigError("cond_unet.layout", layout, "'diffusers' or 'compvis'")
  flat = traverse_util.flatten_dict(params["params"] if "params" in params else params)
  out = {}
  for name, (path, shape) in diffusers_shapes(config).items():
    value = to_torch_layout(path[-1], flat[path])
    if value.shape != shape:
      raise DataError(f"U-Net parameter {'/'.join(path)} has shape {value.shape} in torch layout, "
                      f"expected {shape}")
    out[LDM_PREFIX + compvis_name(name, config) if layout == "compvis" else name] = value
  return out
