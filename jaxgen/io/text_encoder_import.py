"""Weights of a transformers `CLIPTextModel` for `jaxgen.nets.text_encoder.TextEncoder`.

The state-dict keys are transformers' (`text_model.embeddings.token_embedding.weight`,
`text_model.encoder.layers.0.self_attn.q_proj.weight`, `...layers.0.mlp.fc1.bias`,
`...layers.0.layer_norm1.weight`, `text_model.final_layer_norm.bias`), as in a diffusers
`text_encoder/` folder. transformers 5's `CLIPTextModel.state_dict()` drops the `text_model.`
level, and a single-file SD 1.x checkpoint puts `cond_stage_model.transformer.` in front; the
prefix is found by itself. The `position_ids` buffer and other keys (`text_projection.weight` of
CLIPTextModelWithProjection, the U-Net and VAE of a full checkpoint) are ignored. Reading the
file is the caller's business (e.g. `jaxgen.io.torch_state_dict.load_state_dict` for a `.bin` or
`.ckpt`, safetensors' `load_file` for a `.safetensors`); this module only maps names and layouts.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import DataError
from jaxgen.nets.text_encoder import TextEncoder, TextEncoderConfig

__all__ = ["PREFIXES", "export_text_encoder", "import_text_encoder", "torch_name"]

# What precedes `embeddings.` / `encoder.` / `final_layer_norm.`, in the order tried: hub and
# diffusers files (transformers 4 layout), `CLIPTextModel.state_dict()` of transformers 5 (no
# `text_model.` level), an SD 1.x single-file checkpoint, and older ones without `text_model.`.
PREFIXES = ("text_model.", "", "cond_stage_model.transformer.text_model.",
            "cond_stage_model.transformer.")
_IGNORED = ("embeddings.position_ids",)
_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")
_LAYER = re.compile(r"^layers_(\d+)$")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def torch_name(path: tuple[str, ...]) -> str:
  """Flax parameter path (without the 'params' collection) -> transformers key below the prefix,
  e.g. ('encoder', 'layers_0', 'mlp', 'fc1', 'kernel') -> 'encoder.layers.0.mlp.fc1.weight'."""
  parts = [f"layers.{m.group(1)}" if (m := _LAYER.match(p)) else p for p in path[:-1]]
  return ".".join(parts + [_LEAF_NAMES[path[-1]]])


def _target(config: TextEncoderConfig) -> dict:
  shapes = jax.eval_shape(TextEncoder(config).init, jax.random.key(0),
                          jnp.zeros((1, config.max_length), jnp.int32))
  return traverse_util.flatten_dict(shapes["params"])


def _shown(keys: list[str]) -> str:
  return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _select_prefix(state_dict: Mapping[str, np.ndarray], names: list[str]) -> str:
  """The candidate prefix under which most of `names` are present (the first on ties)."""
  found = [sum(p + n in state_dict for n in names) for p in PREFIXES]
  return PREFIXES[int(np.argmax(found))]


def import_text_encoder(state_dict: Mapping[str, np.ndarray], config: TextEncoderConfig, *,
                        prefix: str | None = None, source: str = "text encoder state dict") -> dict:
  """Flax variables `{'params': ...}` of `TextEncoder(config)` from a transformers-layout state
  dict of NumPy (or array-like) values, converted to float32.

  Linear weights (out, in) become Dense kernels (in, out); LayerNorm weight -> scale; embedding
  weights are used as they are. Strict: every parameter must be present with its shape, and every
  `embeddings.*` / `encoder.*` / `final_layer_norm.*` key under the prefix except
  `embeddings.position_ids` must be used.

  Args:
    state_dict: `{name: array}`, e.g. a diffusers `text_encoder/` weight file, a transformers
      `CLIPTextModel.state_dict()`, or a whole SD 1.x single-file checkpoint.
    config: the sizes the weights have (`TextEncoderConfig.sd15()` for SD 1.x; a vocabulary
      grown by textual inversion needs its larger vocab_size).
    prefix: what precedes `embeddings.` in the keys, e.g. 'text_model.' or
      'cond_stage_model.transformer.text_model.'; None picks the one of `PREFIXES` under which
      most expected keys are present.
    source: what the state dict is (e.g. the file name), for error messages.
  Raises:
    DataError: one line naming the first missing, unexpected or mis-shaped keys and `source`.
  """
  target = _target(config)
  names = {path: torch_name(path) for path in target}
  if prefix is None:
    prefix = _select_prefix(state_dict, list(names.values()))
  sizes = (f"width={config.width}, layers={config.layers}, vocab_size={config.vocab_size}, "
           f"max_length={config.max_length}")
  missing = [prefix + n for n in names.values() if prefix + n not in state_dict]
  if missing:
    raise DataError(f"{source}: missing keys {_shown(missing)} for a text encoder with {sizes}; "
                    "is this the right checkpoint and config?")
  used = {prefix + n for n in [*names.values(), *_IGNORED]}
  roots = tuple(prefix + r for r in _ROOTS)
  unexpected = [k for k in state_dict if k.startswith(roots) and k not in used]
  if unexpected:
    raise DataError(f"{source}: unexpected keys {_shown(unexpected)} for a text encoder with "
                    f"{sizes}; is this the right checkpoint and config?")
  out = {}
  for path, leaf in target.items():
    key = prefix + names[path]
    value = np.asarray(state_dict[key], dtype=np.float32)
    if path[-1] == "kernel":
      value = value.T
    if value.shape != tuple(leaf.shape):
      shown = value.shape[::-1] if path[-1] == "kernel" else value.shape
      wanted = tuple(leaf.shape)[::-1] if path[-1] == "kernel" else tuple(leaf.shape)
      raise DataError(f"{source}: {key} has shape {shown}, expected {wanted} for a text encoder "
                      f"with {sizes}")
    out[path] = jnp.asarray(value)
  return {"params": traverse_util.unflatten_dict(out)}


def export_text_encoder(params: dict, *, prefix: str = "text_model.") -> dict[str, np.ndarray]:
  """The inverse of `import_text_encoder`: `{'params': ...}` (or the params tree) -> float32
  `{prefix + transformers name: np.ndarray}` (no position_ids buffer; the default prefix is the
  hub / diffusers layout), e.g. to save learned textual-inversion rows with torch or
  safetensors."""
  tree = params["params"] if "params" in params else params
  out = {}
  for path, value in traverse_util.flatten_dict(tree).items():
    value = np.asarray(value, dtype=np.float32)
    out[prefix + torch_name(path)] = value.T if path[-1] == "kernel" else value
  return out
