"""Weights of a CompVis/taming-transformers VQ-GAN (`VQModel`) for `jaxgen.nets.vqgan`.

taming saves PyTorch Lightning checkpoints (`last.ckpt`: a `torch.save` pickle whose
'state_dict' entry holds the weights). The model's keys are `encoder.*`, `decoder.*`,
`quant_conv.*` and `post_quant_conv.*`, e.g. `encoder.down.0.block.1.norm1.weight`,
`encoder.mid.attn_1.q.weight`, `decoder.up.3.upsample.conv.weight`. The codebook
`quantize.embedding.weight` [n_embed, embed_dim] is returned on request; the training losses
(`loss.discriminator.*`, `loss.perceptual_loss.*`) and any other key are ignored. A transformer
checkpoint holding the VQ-GAN as `first_stage_model.*` is read the same way.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import DataError
from jaxgen.io.torch_state_dict import load_state_dict, to_flax_variables
from jaxgen.nets.vqgan import VQGANAutoencoder, VQGANConfig

__all__ = ["CODEBOOK_KEY", "VQGAN_HINT", "import_vqgan", "load_vqgan", "torch_module_name"]

CODEBOOK_KEY = "quantize.embedding.weight"
VQGAN_HINT = ("the taming-transformers README (github.com/CompVis/taming-transformers) links the "
              "FFHQ and CelebA-HQ VQ-GAN checkpoints; download the one you need yourself and point "
              "the config at its .ckpt file (jaxgen never downloads weights)")
_MODEL_ORDER = ("encoder", "quant_conv", "post_quant_conv", "decoder")
_MODEL_PREFIXES = tuple(f"{name}." for name in _MODEL_ORDER)
_TRANSFORMER_PREFIX = "first_stage_model."
_PROBE_KEY = "encoder.conv_in.weight"
# Flax submodule name -> taming module path: down_1_block_0 -> down.1.block.0, mid_attn_1 ->
# mid.attn_1, up_2_upsample -> up.2.upsample.
_LEVEL = re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$")
_RESAMPLE = re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$")
_MID = re.compile(r"^mid_((?:block|attn)_\d+)$")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_module_name(path: tuple[str, ...]) -> str:
  """Flax module path (without collection and leaf) -> taming module name, e.g.
  ('encoder', 'down_0_block_1', 'norm1') -> 'encoder.down.0.block.1.norm1'."""
  parts = []
  for name in path:
    if m := _LEVEL.match(name):
      parts.append(".".join(m.groups()))
    elif m := _RESAMPLE.match(name):
      parts.append(".".join(m.groups()))
    elif m := _MID.match(name):
      parts.append(f"mid.{m.group(1)}")
    else:
      parts.append(name)
  return ".".join(parts)


def _shown(keys: list[str]) -> str:
  return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _select_prefix(state_dict: Mapping[str, np.ndarray], prefix: str | None) -> str:
  if prefix is not None:
    return prefix
  if _PROBE_KEY in state_dict or _TRANSFORMER_PREFIX + _PROBE_KEY not in state_dict:
    return ""
  return _TRANSFORMER_PREFIX


def import_vqgan(state_dict: Mapping[str, np.ndarray], config: VQGANConfig, *,
                 prefix: str | None = None, source: str = "VQ-GAN state dict",
                 return_codebook: bool = False) -> dict | tuple[dict, np.ndarray | None]:
  """Flax variables `{'params': ...}` of `VQGANAutoencoder(config)` from a taming state dict.

  Conv weights go OIHW -> HWIO, GroupNorm weight/bias -> scale/bias (`to_flax_variables`).
  Strict: every Flax parameter must be present with the right shape and every `encoder.*`,
  `decoder.*`, `quant_conv.*`, `post_quant_conv.*` key must be used; `quantize.*`, `loss.*` and
  other keys are ignored.

  Args:
    state_dict: `{taming name: array}`, e.g. `load_state_dict(path)` of a Lightning checkpoint.
    config: the sizes the checkpoint was trained with (`VQGANConfig.ffhq_f16()` for FFHQ /
      CelebA-HQ f=16).
    prefix: prepended to every taming name; None takes '' or, when the plain names are absent,
      'first_stage_model.' (the VQ-GAN inside a taming transformer checkpoint).
    source: what the state dict is (e.g. the file name), for error messages.
    return_codebook: also return the codebook `quantize.embedding.weight` as float32
      [n_embed, embed_dim] (None if the state dict has none).
  Returns:
    variables, or (variables, codebook) with `return_codebook`.
  Raises:
    DataError: one line naming the first missing, unexpected or mis-shaped keys and `source`.
  """
  prefix = _select_prefix(state_dict, prefix)
  sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  model = VQGANAutoencoder(config)
  side = config.resolution
  target = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, side, side, config.in_channels), jnp.float32))
  target = {"params": target["params"]}
  # Encoder first, decoder last, so errors name the earliest part that does not fit.
  paths = sorted(traverse_util.flatten_dict(target), key=lambda p: _MODEL_ORDER.index(p[1]))
  expected = {f"{torch_module_name(tuple(p[1:-1]))}.{_LEAF_NAMES[p[-1]]}": None for p in paths}
  sizes = (f"ch={config.ch}, ch_mult={config.ch_mult}, num_res_blocks={config.num_res_blocks}, "
           f"attn_resolutions={config.attn_resolutions}, resolution={config.resolution}")
  missing = [k for k in expected if k not in sd]
  if missing:
    raise DataError(f"{source}: missing keys {_shown([prefix + k for k in missing])} for a VQ-GAN "
                    f"with {sizes}; is this the right checkpoint and config?")
  unexpected = [k for k in sd if k.startswith(_MODEL_PREFIXES) and k not in expected]
  if unexpected:
    raise DataError(f"{source}: unexpected keys {_shown([prefix + k for k in unexpected])} for a "
                    f"VQ-GAN with {sizes}; is this the right checkpoint and config?")
  variables = to_flax_variables(sd, target, torch_module_name, source)
  variables = jax.tree_util.tree_map(jnp.asarray, variables)
  if not return_codebook:
    return variables
  codebook = sd.get(CODEBOOK_KEY)
  if codebook is not None:
    codebook = np.asarray(codebook, np.float32)
    if codebook.ndim != 2 or codebook.shape[1] != config.embed_dim:
      raise DataError(f"{source}: {prefix}{CODEBOOK_KEY} has shape {codebook.shape}, expected "
                      f"(n_embed, {config.embed_dim})")
  return variables, codebook


def load_vqgan(path: str, config: VQGANConfig, *, prefix: str | None = None,
               return_codebook: bool = False) -> dict | tuple[dict, np.ndarray | None]:
  """`import_vqgan(load_state_dict(path), config)` for a taming `.ckpt` (weights under
  'state_dict') or a plain `.pth` state dict, read without torch.

  Raises:
    DataError: the file is missing (naming it and where checkpoints come from), unreadable, or
      does not fit `config`. A checkpoint whose pickle names classes besides tensors (newer
      Lightning versions store callback objects) is refused, with how to extract its weights.
  """
  try:
    state_dict = load_state_dict(path, hint=VQGAN_HINT)
  except DataError as err:
    if "refusing to load global" not in str(err):
      raise
    raise DataError(
        f"{err}; extract the weights once with torch from a checkpoint you trust: "
        f"torch.save(torch.load('{path}', map_location='cpu', weights_only=False)['state_dict'], "
        "'vqgan_weights.pth') and load that file") from None
  return import_vqgan(state_dict, config, prefix=prefix, source=path,
                      return_codebook=return_codebook)
