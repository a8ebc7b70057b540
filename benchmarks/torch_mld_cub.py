"""PyTorch reference of `jaxgen.nets.mld_autoencoder.MLDCubAutoencoder` (NCHW, pixels in [0, 1]).

A compact transcription of the MLD authors' CUB image autoencoder (their
`src/unimodal/CUB/image_resnet_limit.py`, deterministic path). Module names and `nn.Sequential`
indices follow theirs (`encoder.resnet.{0,2,4}` blocks with pooling at the odd indices, `fc_mu`,
`fc`, `conv_img`), so a state dict of their trained AE (minus `encoder.fc_logvar.*`) loads into
`MLDCubAE` as is. Like theirs it works on [0, 1] images; the flax module's [-1, 1] convention is
`encode((x + 1) / 2)` and `2 * decode(z) - 1`. `state_dict_from_flax` carries flax params over.
Used by tests/test_parity_mld_autoencoder.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def actvn(x: torch.Tensor) -> torch.Tensor:
  return F.leaky_relu(x, 0.2)


class ResBlock(nn.Module):
  def __init__(self, fin: int, fout: int):
    super().__init__()
    hidden = min(fin, fout)
    self.conv_0 = nn.Conv2d(fin, hidden, 3, padding=1)
    self.conv_1 = nn.Conv2d(hidden, fout, 3, padding=1)
    self.conv_s = nn.Conv2d(fin, fout, 1, bias=False) if fin != fout else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.conv_s is None else self.conv_s(x)
    return shortcut + 0.1 * self.conv_1(actvn(self.conv_0(actvn(x))))


def _widths(nf: int, nf_max: int, levels: int) -> list[int]:
  return [min(nf * 2 ** i, nf_max) for i in range(levels + 1)]


class Encoder(nn.Module):
  def __init__(self, latent_dim: int = 64, size: int = 64, nf: int = 64, nf_max: int = 1024,
               s0: int = 16):
    super().__init__()
    levels = int(np.log2(size / s0))
    c = _widths(nf, nf_max, levels)
    layers: list[nn.Module] = [ResBlock(nf, nf)]
    for i in range(levels):
      layers += [nn.AvgPool2d(3, stride=2, padding=1), ResBlock(c[i], c[i + 1])]
    self.conv_img = nn.Conv2d(3, nf, 3, padding=1)
    self.resnet = nn.Sequential(*layers)
    self.fc_mu = nn.Linear(c[-1] * s0 * s0, latent_dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.resnet(self.conv_img(x))
    return self.fc_mu(actvn(h).flatten(1))  # NCHW flattening, as theirs


class Decoder(nn.Module):
  def __init__(self, latent_dim: int = 64, size: int = 64, nf: int = 64, nf_max: int = 512,
               s0: int = 16):
    super().__init__()
    levels = int(np.log2(size / s0))
    c = _widths(nf, nf_max, levels)
    self.s0, self.c0 = s0, c[-1]
    self.fc = nn.Linear(latent_dim, c[-1] * s0 * s0)
    layers: list[nn.Module] = []
    for i in range(levels):
      layers += [ResBlock(c[levels - i], c[levels - i - 1]), nn.Upsample(scale_factor=2)]
    layers.append(ResBlock(nf, nf))
    self.resnet = nn.Sequential(*layers)
    self.conv_img = nn.Conv2d(nf, 3, 3, padding=1)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = self.fc(z).view(z.shape[0], self.c0, self.s0, self.s0)
    return self.conv_img(actvn(self.resnet(h)))  # no sigmoid, as theirs


class MLDCubAE(nn.Module):
  def __init__(self, latent_dim: int = 64, size: int = 64, nf: int = 64, s0: int = 16):
    super().__init__()
    self.encoder = Encoder(latent_dim, size, nf, 1024, s0)
    self.decoder = Decoder(latent_dim, size, nf, 512, s0)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.decoder(self.encoder(x))


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  if hasattr(tree, "items"):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (str(k),)))
    return out
  return {prefix: np.asarray(tree)}


def _torch_name(mod: str) -> str:
  """flax 'blockI' -> 'resnet.{2I}': their nn.Sequential interleaves the blocks with the pooling
  (encoder: block, pool, block, ...) or upsampling (decoder: block, upsample, ..., block) layers."""
  return f"resnet.{2 * int(mod[5:])}" if mod.startswith("block") else mod


def _chw_from_hwc(a: np.ndarray, c: int, axis: int) -> np.ndarray:
  """Reorder `axis` of `a`, a flattened (h, w, c) map with h == w, into (c, h, w) order."""
  a = np.moveaxis(a, axis, 0)
  s = int(round((a.shape[0] // c) ** 0.5))
  a = a.reshape((s, s, c) + a.shape[1:]).transpose((2, 0, 1) + tuple(range(3, a.ndim + 2)))
  return np.moveaxis(a.reshape((-1,) + a.shape[3:]), 0, axis)


def _last_block_channels(tree: Any) -> int:
  last = max(int(k[5:]) for k in tree if k.startswith("block"))
  return tree[f"block{last}"]["conv_1"]["kernel"].shape[-1]


def state_dict_from_flax(params: Any) -> dict[str, torch.Tensor]:
  """Torch state dict of `MLDCubAutoencoder` params (the `params` collection, or {'params': ..}).

  Conv kernels HWIO -> OIHW, Dense kernels [in, out] -> Linear weights [out, in]. Flax flattens
  NHWC maps and PyTorch NCHW ones, so the `fc_mu` inputs and the decoder `fc` outputs (weight and
  bias) are also permuted from (h, w, c) to (c, h, w) order.
  """
  params = params.get("params", params)
  enc_c = _last_block_channels(params["encoder"])  # channels of the map fc_mu flattens
  dec_c = params["decoder"]["block0"]["conv_0"]["kernel"].shape[2]  # channels fc produces
  sd = {}
  for path, a in _flat(params).items():
    part, *mods, leaf = path
    if mods == ["fc_mu"] and leaf == "kernel":
      a = _chw_from_hwc(a, enc_c, 0)
    elif mods == ["fc"]:
      a = _chw_from_hwc(a, dec_c, a.ndim - 1)
    if leaf == "kernel":
      a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
    name = ".".join([part, *map(_torch_name, mods), "weight" if leaf == "kernel" else leaf])
    # np.array: a writable copy (jax's host arrays are read-only).
    sd[name] = torch.from_numpy(np.array(a, dtype=np.float32))
  return sd


def load_flax_params(model: MLDCubAE, params: Any) -> None:
  """Copy flax params into `model` in place; every tensor must match by name and shape."""
  missing, unexpected = model.load_state_dict(state_dict_from_flax(params), strict=False)
  if missing or unexpected:
    raise ValueError(f"flax -> torch MLD CUB AE: missing {missing}, unexpected {unexpected}")
