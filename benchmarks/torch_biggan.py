"""PyTorch reference of jaxgen's BigGAN and Softlabel-GAN training step (NCHW).

A compact transcription of BigGAN-PyTorch's layers (SNLinear/SNConv2d power iteration, ccbn,
GBlock, DBlock, Attention) laid out as `jaxgen.nets.biggan` (same module names, so flax variables
carry over by name: `load_flax_variables`), DiffAugment with the ranges of
`jaxgen/gan/diffaugment.py`, and `SoftlabelGANStep`, the step of
`jaxgen.softlabel_gan.train.make_step_fn` for variants without Mixup. Used by
tests/test_parity_biggan.py (outputs and u vectors) and benchmarks/gan.py (steps/s).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from jaxgen.nets.biggan import BOTTOM_WIDTH, Z_CHUNK, arch_channels


# ---- layers ---------------------------------------------------------------------------------

def sn_weight(weight: torch.Tensor, u: torch.Tensor, training: bool) -> torch.Tensor:
  """BigGAN-PyTorch's power iteration on weight.view(out, -1); eval mode keeps the stored u
  (jaxgen's reading, see jaxgen/nets/spectral_norm.py)."""
  w = weight.view(weight.shape[0], -1)
  with torch.no_grad():
    v = F.normalize(u @ w, dim=0, eps=1e-12)
    if training:
      u.copy_(F.normalize(w @ v, dim=0, eps=1e-12))
  return weight / (u @ w @ v)


class SNLinear(nn.Linear):
  def __init__(self, i: int, o: int, bias: bool = True):
    super().__init__(i, o, bias)
    self.register_buffer("u", F.normalize(torch.randn(o), dim=0))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, sn_weight(self.weight, self.u, self.training), self.bias)


class SNConv2d(nn.Conv2d):
  def __init__(self, i: int, o: int, k: int = 3, bias: bool = True):
    super().__init__(i, o, k, padding=k // 2, bias=bias)
    self.register_buffer("u", F.normalize(torch.randn(o), dim=0))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, sn_weight(self.weight, self.u, self.training), self.bias,
                    padding=self.padding)


class Attention(nn.Module):
  """SA-GAN's non-local block, BigGAN-PyTorch `Attention`."""

  def __init__(self, c: int):
    super().__init__()
    self.theta = SNConv2d(c, c // 8, 1, bias=False)
    self.phi = SNConv2d(c, c // 8, 1, bias=False)
    self.g = SNConv2d(c, c // 2, 1, bias=False)
    self.o = SNConv2d(c // 2, c, 1, bias=False)
    self.gamma = nn.Parameter(torch.tensor(0.0))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    theta = self.theta(x).view(b, c // 8, h * w)
    phi = F.max_pool2d(self.phi(x), 2).view(b, c // 8, h * w // 4)
    g = F.max_pool2d(self.g(x), 2).view(b, c // 2, h * w // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, c // 2, h, w))
    return x + self.gamma * o


class CCBN(nn.Module):
  """BN(x) * (1 + W_g c) + W_b c, BigGAN-PyTorch `ccbn`."""

  def __init__(self, c: int, cond_dim: int):
    super().__init__()
    self.bn = nn.BatchNorm2d(c, affine=False, eps=1e-5, momentum=0.1)
    self.gain = SNLinear(cond_dim, c, bias=False)
    self.bias = SNLinear(cond_dim, c, bias=False)

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return self.bn(x) * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class GBlock(nn.Module):
  def __init__(self, i: int, o: int, cond_dim: int):
    super().__init__()
    self.bn1, self.bn2 = CCBN(i, cond_dim), CCBN(o, cond_dim)
    self.conv1, self.conv2, self.conv_sc = SNConv2d(i, o), SNConv2d(o, o), SNConv2d(i, o, 1)

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
    x = F.interpolate(x, scale_factor=2)
    h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
    return h + self.conv_sc(x)


def _attention_index(attention: int, block_res: list[int]) -> int | None:
  # jaxgen's rule: after the first block whose output is attention x attention.
  return block_res.index(attention) if attention else None


class Generator(nn.Module):
  """BigGAN-PyTorch G with the arguments of `jaxgen.nets.biggan.Generator`; y is a label vector."""

  def __init__(self, num_classes: int, resolution: int = 32, ch: int = 64, dim_z: int = 128,
               shared_dim: int = 128, hierarchical: bool = False, attention: int = 0):
    super().__init__()
    arch = arch_channels(resolution, ch)
    self.n_blocks, self.hier = len(arch["g_out"]), hierarchical
    chunk = Z_CHUNK if hierarchical else 0
    self.shared = nn.Linear(num_classes, shared_dim, bias=False)
    self.linear = SNLinear(chunk or dim_z, arch["g_in"][0] * BOTTOM_WIDTH ** 2)
    for i, (cin, cout) in enumerate(zip(arch["g_in"], arch["g_out"])):
      self.add_module(f"blocks_{i}", GBlock(cin, cout, shared_dim + chunk))
    self.attn_at = _attention_index(attention, arch["g_res"])
    if self.attn_at is not None:
      self.attention = Attention(arch["g_out"][self.attn_at])
    self.out_bn = nn.BatchNorm2d(arch["g_out"][-1], eps=1e-5, momentum=0.1)
    self.out_conv = SNConv2d(arch["g_out"][-1], 3)

  def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shared = self.shared(y)
    if self.hier:
      zs = torch.split(z, Z_CHUNK, 1)
      z, ys = zs[0], [torch.cat([shared, zi], 1) for zi in zs[1:]]
    else:
      ys = [shared] * self.n_blocks
    h = self.linear(z).view(z.shape[0], -1, BOTTOM_WIDTH, BOTTOM_WIDTH)
    for i in range(self.n_blocks):
      h = getattr(self, f"blocks_{i}")(h, ys[i])
      if i == self.attn_at:
        h = self.attention(h)
    return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class DBlock(nn.Module):
  """BigGAN-PyTorch `DBlock`. `pool_first=False` keeps its shortcut order (1x1 conv before the
  pool in preactivated blocks); True pools first as jaxgen does (same result, a quarter of the
  shortcut's FLOPs), for timing the same computation."""

  def __init__(self, i: int, o: int, preact: bool, down: bool, pool_first: bool = False):
    super().__init__()
    self.preact, self.down, self.pool_first = preact, down, pool_first
    self.conv1, self.conv2 = SNConv2d(i, o), SNConv2d(o, o)
    self.learnable_sc = i != o or down
    if self.learnable_sc:
      self.conv_sc = SNConv2d(i, o, 1)

  def shortcut(self, x: torch.Tensor) -> torch.Tensor:
    if self.preact and not self.pool_first:
      x = self.conv_sc(x) if self.learnable_sc else x
      return F.avg_pool2d(x, 2) if self.down else x
    x = F.avg_pool2d(x, 2) if self.down else x
    return self.conv_sc(x) if self.learnable_sc else x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(x) if self.preact else x
    h = self.conv2(F.relu(self.conv1(h)))
    h = F.avg_pool2d(h, 2) if self.down else h
    return h + self.shortcut(x)


class Discriminator(nn.Module):
  """Projection D with the arguments of `jaxgen.nets.biggan.Discriminator` (plus `pool_first`,
  see `DBlock`); y is a label vector through the SN embedding as a matrix."""

  def __init__(self, num_classes: int, resolution: int = 32, ch: int = 64, attention: int = 0,
               pool_first: bool = False):
    super().__init__()
    arch = arch_channels(resolution, ch)
    self.n_blocks = len(arch["d_out"])
    for i, (cin, cout, down) in enumerate(zip(arch["d_in"], arch["d_out"], arch["d_down"])):
      self.add_module(f"blocks_{i}", DBlock(cin, cout, i > 0, down, pool_first))
    self.attn_at = _attention_index(attention, arch["d_res"])
    if self.attn_at is not None:
      self.attention = Attention(arch["d_out"][self.attn_at])
    c = arch["d_out"][-1]
    self.linear = SNLinear(c, 1)
    self.embed = SNLinear(num_classes, c, bias=False)

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(self.n_blocks):
      h = getattr(self, f"blocks_{i}")(h)
      if i == self.attn_at:
        h = self.attention(h)
    h = torch.sum(F.relu(h), [2, 3])
    return self.linear(h)[:, 0] + torch.sum(self.embed(y) * h, 1)


# ---- flax variables across ------------------------------------------------------------------

_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def state_dict_from_flax(variables: Any) -> dict[str, torch.Tensor]:
  """A torch state dict of flax BigGAN variables (all collections): conv kernels HWIO -> OIHW,
  linear kernels transposed, BatchNorm mean/var -> running_mean/var, u vectors as buffers."""
  sd = {}
  for tree in variables.values():
    for (*mods, name), leaf in traverse_util.flatten_dict(dict(tree)).items():
      a = np.asarray(leaf)
      if name == "kernel":
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
      # np.array: a writable copy (jax's host arrays are read-only).
      sd[".".join([*mods, _NAMES.get(name, name)])] = torch.from_numpy(np.array(a))
  return sd


def load_flax_variables(model: nn.Module, variables: Any) -> None:
  """Copy flax variables into `model` in place; every tensor but num_batches_tracked must match."""
  missing, unexpected = model.load_state_dict(state_dict_from_flax(variables), strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"flax -> torch BigGAN: missing {missing}, unexpected {unexpected}")


# ---- DiffAugment ----------------------------------------------------------------------------

def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
  return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * (high - low) + low


def _shift(x: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
  """out[b, .., i, ..] = x[b, .., i + t_b, ..] along `dim` (2 or 3), 0 outside the image."""
  n = x.shape[dim]
  idx = torch.arange(n, device=x.device)[None, :] + t[:, None]
  shape = [x.shape[0], 1, 1, 1]
  shape[dim] = n
  valid = ((idx >= 0) & (idx < n)).view(shape)
  g = torch.gather(x, dim, idx.clamp(0, n - 1).view(shape).expand_as(x))
  return torch.where(valid, g, torch.zeros((), dtype=x.dtype, device=x.device))


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
  """DiffAugment on NCHW images in [-1, 1], ops and ranges of `jaxgen.gan.diffaugment` (brightness
  U(-0.5, 0.5), saturation U(0, 2), contrast U(0.5, 1.5), translation 1/8, cutout 1/2), one draw
  per image from torch's global generator."""
  names = [p.strip() for p in policy.split(",") if p.strip()]
  b, _, h, w = x.shape
  dev = x.device
  for name in names:
    if name == "color":
      x = x + _uniform(x, -0.5, 0.5)
      mean = x.mean(1, keepdim=True)
      x = (x - mean) * _uniform(x, 0.0, 2.0) + mean
      mean = x.mean((1, 2, 3), keepdim=True)
      x = (x - mean) * _uniform(x, 0.5, 1.5) + mean
    elif name == "translation":
      sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
      x = _shift(x, torch.randint(-sh, sh + 1, (b,), device=dev), 2)
      x = _shift(x, torch.randint(-sw, sw + 1, (b,), device=dev), 3)
    elif name == "cutout":
      ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
      oh = torch.randint(0, h + 1 - ch % 2, (b,), device=dev) - ch // 2
      ow = torch.randint(0, w + 1 - cw % 2, (b,), device=dev) - cw // 2
      rows = torch.arange(h, device=dev)[None, :] - oh[:, None]
      cols = torch.arange(w, device=dev)[None, :] - ow[:, None]
      box = (((rows >= 0) & (rows < ch))[:, None, :, None]
             & ((cols >= 0) & (cols < cw))[:, None, None, :])
      x = torch.where(box, torch.zeros((), dtype=x.dtype, device=dev), x)
    else:
      raise ValueError(f"unknown DiffAugment policy {name!r} in {policy!r}")
  return x


# ---- the training step ----------------------------------------------------------------------

def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
  if kind == "hinge":
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
  if kind == "nonsaturating":
    return F.softplus(-real).mean() + F.softplus(fake).mean()
  if kind == "wasserstein":
    return fake.mean() - real.mean()
  raise ValueError(f"unknown GAN loss {kind!r}")


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
  return F.softplus(-fake).mean() if kind == "nonsaturating" else -fake.mean()


class SoftlabelGANStep:
  """`jaxgen.softlabel_gan.train.make_step_fn` in PyTorch: `d_steps` D updates (real and fake
  through D in one call, one power iteration of D's SN each), one G update with D's stored u, Adam
  for both, then the EMA of G's parameters and buffers (from `ema_start` on; before it a copy).

  `compile=True` wraps the two loss computations (G forward, DiffAugment, D forward, loss) in
  `torch.compile`; the backward passes, Adam and the EMA stay eager (fused Adam on CUDA).
  """

  def __init__(self, g: Generator, d: Discriminator, *, num_classes: int, dim_z: int,
               d_steps: int, policy: str, loss: str = "hinge", g_lr: float = 2e-4,
               d_lr: float = 2e-4, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-6,
               ema_decay: float = 0.999, ema_start: int = 0, compile: bool = False,
               compile_mode: str | None = None):
    self.g, self.d = g.train(), d.train()
    self.g_ema = copy.deepcopy(g).eval()
    self.num_classes, self.dim_z, self.d_steps = num_classes, dim_z, d_steps
    self.policy, self.loss = policy, loss
    self.ema_decay, self.ema_start, self.step = ema_decay, ema_start, 0
    fused = next(g.parameters()).is_cuda or None  # None: torch's default (foreach) elsewhere
    self.g_opt = torch.optim.Adam(g.parameters(), g_lr, betas, eps, fused=fused)
    self.d_opt = torch.optim.Adam(d.parameters(), d_lr, betas, eps, fused=fused)
    pairs = list(zip(self.g_ema.parameters(), g.parameters()))
    pairs += list(zip(self.g_ema.buffers(), g.buffers()))
    self._ema_float = [(e, p) for e, p in pairs if e.is_floating_point()]
    self._ema_other = [(e, p) for e, p in pairs if not e.is_floating_point()]
    self._d_loss, self._g_loss = self._d_loss_eager, self._g_loss_eager
    if compile:
      self._d_loss = torch.compile(self._d_loss_eager, mode=compile_mode)
      self._g_loss = torch.compile(self._g_loss_eager, mode=compile_mode)

  def _fakes(self, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(b, self.dim_z, device=device)
    y = F.one_hot(torch.randint(0, self.num_classes, (b,), device=device), self.num_classes)
    y = y.float()
    return self.g(z, y), y

  def _d_loss_eager(self, x_u8: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    b = x_u8.shape[0]
    x_real = x_u8.float() / 127.5 - 1.0
    with torch.no_grad():  # G in training mode: its BN statistics and u still update
      x_fake, y_fake = self._fakes(b, x_u8.device)
    x = torch.cat([diff_augment(x_real, self.policy), diff_augment(x_fake, self.policy)])
    logits = self.d(x, torch.cat([y_real, y_fake]))
    return discriminator_loss(self.loss, logits[:b], logits[b:])

  def _g_loss_eager(self, b: int, device: torch.device) -> torch.Tensor:
    x_fake, y_fake = self._fakes(b, device)
    return generator_loss(self.loss, self.d(diff_augment(x_fake, self.policy), y_fake))

  def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """One step on uint8 NCHW images [d_steps * B, 3, H, W] and label vectors [d_steps * B, K];
    returns the losses as tensors (no host sync)."""
    b = images.shape[0] // self.d_steps
    d_losses = []
    for i in range(self.d_steps):
      loss = self._d_loss(images[i * b:(i + 1) * b], labels[i * b:(i + 1) * b])
      self.d_opt.zero_grad(set_to_none=True)
      loss.backward()
      self.d_opt.step()
      d_losses.append(loss.detach())
    # G update: D with its stored u (eval mode) and no weight gradients, as jaxgen's grad w.r.t.
    # G's parameters only.
    self.d.eval().requires_grad_(False)
    g_loss = self._g_loss(b, images.device)
    self.g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    self.g_opt.step()
    self.d.train().requires_grad_(True)
    with torch.no_grad():
      decay = self.ema_decay if self.step >= self.ema_start else 0.0
      torch._foreach_lerp_([e for e, _ in self._ema_float], [p for _, p in self._ema_float],
                           1.0 - decay)
      for e, p in self._ema_other:
        e.copy_(p)
    self.step += 1
    return {"d_loss": torch.stack(d_losses).mean(), "g_loss": g_loss.detach()}
