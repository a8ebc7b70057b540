"""PyTorch reference of `jaxgen.nets.unet_mlp.UnetMLP`, the MLD authors' MLP U-Net score network.

A compact transcription (same layout as the authors' src/components/mlp_unet.py with
use_attention=False) whose modules carry the flax module names, so flax params load by name
(`load_flax_params`: Dense kernel [in, out] -> Linear weight [out, in], GroupNorm scale/bias ->
weight/bias). forward(x, tau) returns what the flax module returns: eps_hat, i.e. minus the
authors' unweighted output (see the module docstring of jaxgen/nets/unet_mlp.py). Used by
tests/test_parity_unet_mlp.py and as the PyTorch side of the score-net benchmark.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock(nn.Module):
  """Linear(SiLU(GN(x))) + time term -> Linear(SiLU(GN(.))) -> + x (Linear(x) if widths differ)."""

  def __init__(self, dim_in: int, width: int, time_dim: int, groups: int, shift_scale: bool):
    super().__init__()
    self.shift_scale = shift_scale
    self.time = nn.Linear(time_dim, 2 * width if shift_scale else width)
    self.norm1 = nn.GroupNorm(groups, dim_in)
    self.dense1 = nn.Linear(dim_in, width)
    self.norm2 = nn.GroupNorm(groups, width)
    self.dense2 = nn.Linear(width, width)
    self.skip = nn.Linear(dim_in, width) if dim_in != width else None

  def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    t = self.time(F.silu(temb))
    h = self.dense1(F.silu(self.norm1(x)))
    if self.shift_scale:
      scale, shift = t.chunk(2, dim=-1)
      h = h * (scale + 1.0) + shift
    else:
      h = h + t
    h = self.dense2(F.silu(self.norm2(h)))
    return h + (x if self.skip is None else self.skip(x))


class UnetMLP(nn.Module):
  """eps_hat(x [B, dim], tau [B, num_views]); defaults: the paper size (4 views x 64 latents)."""

  def __init__(self, dim: int = 256, num_views: int = 4, init_dim: int = 1536,
               dim_mults: Sequence[int] = (1, 1), time_dim: int = 512, groups: int = 32,
               shift_scale: bool = False):
    super().__init__()
    dims = [init_dim] + [init_dim * m for m in dim_mults]
    self.levels = list(zip(dims[:-1], dims[1:]))

    def block(d_in: int, width: int) -> ResnetBlock:
      return ResnetBlock(d_in, width, time_dim, groups, shift_scale)

    self.time_in = nn.Linear(num_views, time_dim)
    self.time_out = nn.Linear(time_dim, time_dim)
    self.init = nn.Linear(dim, init_dim)
    for i, (d_in, d_out) in enumerate(self.levels):
      setattr(self, f"down{i}", block(d_in, d_in))
      setattr(self, f"downsample{i}", nn.Linear(d_in, d_out))
      setattr(self, f"up{i}", block(d_out + d_in, d_out))
      setattr(self, f"upsample{i}", nn.Linear(d_out, d_in))
    self.mid1 = block(dims[-1], dims[-1])
    self.mid2 = block(dims[-1], dims[-1])
    self.final = block(2 * init_dim, init_dim)
    self.out_norm = nn.GroupNorm(groups, init_dim)
    self.out = nn.Linear(init_dim, dim)
    nn.init.zeros_(self.out.weight)
    nn.init.zeros_(self.out.bias)

  def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    temb = self.time_out(F.gelu(self.time_in(tau.to(x.dtype))))
    h = self.init(x)
    projected = h
    skips = []
    for i in range(len(self.levels)):
      h = getattr(self, f"down{i}")(h, temb)
      skips.append(h)
      h = getattr(self, f"downsample{i}")(h)
    h = self.mid2(self.mid1(h, temb), temb)
    for i in reversed(range(len(self.levels))):
      h = getattr(self, f"up{i}")(torch.cat([h, skips.pop()], dim=-1), temb)
      h = getattr(self, f"upsample{i}")(h)
    h = self.final(torch.cat([h, projected], dim=-1), temb)
    return self.out(F.silu(self.out_norm(h)))


# ---- flax params across ---------------------------------------------------------------------

_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def state_dict_from_flax(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """Torch state dict of flax `UnetMLP` params (the tree under "params", or the whole variables)."""
  params = params.get("params", params)
  sd = {}
  for (*mods, name), leaf in _flatten(params).items():
    a = np.asarray(leaf)
    if name == "kernel":
      a = a.T  # Dense [in, out] -> Linear [out, in]
    # np.array: a writable copy (jax's host arrays are read-only).
    sd[".".join([*mods, _NAMES[name]])] = torch.from_numpy(np.array(a, np.float32))
  return sd


def load_flax_params(model: UnetMLP, params: Mapping[str, Any]) -> None:
  """Copy flax params into `model` in place; every tensor must match by name and shape."""
  model.load_state_dict(state_dict_from_flax(params), strict=True)
