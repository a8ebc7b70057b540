"""One entry point for pretrained weights on disk, whatever format they were published in.

`load_weights(path)` returns the flat `{dotted.torch.name: np.ndarray}` state dict of

* a `.safetensors` file (read by `jaxgen.io.safetensors`, memory-mapped);
* a `torch.save` file `.bin` / `.pt` / `.pth` / `.ckpt` (read by
  `jaxgen.io.torch_state_dict.load_state_dict`, which unwraps the `state_dict` nesting of
  PyTorch Lightning checkpoints such as the CompVis Stable Diffusion `.ckpt`);
* a diffusers / transformers model folder: its single weight file, safetensors preferred
  (`diffusion_pytorch_model.safetensors`, `model.safetensors`, then the `.bin` twins), or a
  sharded checkpoint through its `*.safetensors.index.json` / `*.bin.index.json` weight map.

Names and layouts are left as published (PyTorch OIHW convs, (out, in) linears); mapping them onto
a Flax tree is the job of each network's importer.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxgen.errors import DataError
from jaxgen.io.safetensors import load_safetensors
from jaxgen.io.torch_state_dict import load_state_dict
from jaxgen.io import paths

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Weight files of a model folder, most preferred first (diffusers names, then transformers').
FOLDER_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


def _folder_file(folder: str, variant: str | None) -> str:
  """The weight file (or shard index) of a diffusers/transformers model folder."""
  tag = f".{variant}" if variant else ""
  candidates = []
  for ext in (".safetensors", ".bin"):
    for stem in FOLDER_WEIGHT_NAMES:
      candidates += [f"{stem}{tag}{ext}", f"{stem}{tag}{ext}.index.json"]
  for name in candidates:
    if paths.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise DataError(f"model folder {folder} has no weight file (looked for "
                  f"{', '.join(candidates[:4])}, ...; variant={variant!r})")


def _load_sharded(index_path: str) -> dict[str, np.ndarray]:
  """Every shard named by a `*.index.json` weight map, merged into one state dict."""
  try:
    with paths.open(index_path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
    shards = sorted(set(weight_map.values()))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
    raise DataError(f"{index_path}: not a shard index with a weight_map ({err})") from None
  out: dict[str, np.ndarray] = {}
  folder = os.path.dirname(index_path)
  for shard in shards:
    out.update(load_weights(os.path.join(folder, shard)))
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise DataError(f"{index_path}: shards lack {len(missing)} listed tensors, e.g. {missing[0]}")
  return out


def load_weights(path: str, *, variant: str | None = None) -> dict[str, np.ndarray]:
  """Reads pretrained weights as `{name: np.ndarray}` from a file or a model folder.

  Args:
    path: a `.safetensors`, `.bin`, `.pt`, `.pth` or `.ckpt` file, a `*.index.json` shard index,
      or a diffusers/transformers model folder (e.g. `stable-diffusion-v1-5/unet`).
    variant: for a folder, the weight variant infix (`"fp16"` picks
      `diffusion_pytorch_model.fp16.safetensors`).
  Raises:
    DataError: the path does not exist, has an unknown suffix, or the file is unreadable.
  """
  if paths.isdir(path):
    return load_weights(_folder_file(path, variant))
  if not paths.exists(path):
    raise DataError(f"weight path {path} does not exist; jaxgen never downloads weights: fetch "
                    "them yourself and point the config at the file or model folder")
  if path.endswith(".index.json"):
    return _load_sharded(path)
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return load_state_dict(path)
  raise DataError(f"weight file {path} has an unknown suffix; expected .safetensors, "
                  f"{', '.join(TORCH_SUFFIXES)}, a *.index.json or a model folder")
