"""Opt-in PyTorch parity of BigGAN G and projection D at 32x32 (run with -m torch).

A compact NCHW transcription of BigGAN-PyTorch's layers (SNLinear/SNConv2d power iteration, ccbn,
GBlock, DBlock, Attention), written for this test, gets the flax models' random weights (conv
HWIO -> OIHW, linear transposed) and u vectors; outputs agree in eval mode (running statistics,
stored u) and in training mode (batch statistics, one power iteration, the new u compared too).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.nets.biggan import Discriminator, Generator

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

K = 10


# ---- the PyTorch transcription -------------------------------------------------------------

def _sn_weight(weight, u, training):
  """BigGAN-PyTorch's power iteration on weight.view(out, -1); eval mode keeps the stored u
  (jaxgen's reading, see jaxgen/nets/spectral_norm.py)."""
  w = weight.view(weight.shape[0], -1)
  with torch.no_grad():
    v = F.normalize(u @ w, dim=0, eps=1e-12)
    if training:
      u.copy_(F.normalize(w @ v, dim=0, eps=1e-12))
  return weight / (u @ w @ v)


class TSNLinear(nn.Linear):
  def __init__(self, i, o, bias=True):
    super().__init__(i, o, bias)
    self.register_buffer("u", torch.zeros(o))

  def forward(self, x):
    return F.linear(x, _sn_weight(self.weight, self.u, self.training), self.bias)


class TSNConv(nn.Conv2d):
  def __init__(self, i, o, k=3, bias=True):
    super().__init__(i, o, k, padding=k // 2, bias=bias)
    self.register_buffer("u", torch.zeros(o))

  def forward(self, x):
    return F.conv2d(x, _sn_weight(self.weight, self.u, self.training), self.bias,
                    padding=self.padding)


class TAttention(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.c = c
    self.theta = TSNConv(c, c // 8, 1, bias=False)
    self.phi = TSNConv(c, c // 8, 1, bias=False)
    self.g = TSNConv(c, c // 2, 1, bias=False)
    self.o = TSNConv(c // 2, c, 1, bias=False)
    self.gamma = nn.Parameter(torch.tensor(0.0))

  def forward(self, x):
    b, c, h, w = x.shape
    theta = self.theta(x).view(b, c // 8, h * w)
    phi = F.max_pool2d(self.phi(x), 2).view(b, c // 8, h * w // 4)
    g = F.max_pool2d(self.g(x), 2).view(b, c // 2, h * w // 4)
    beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
    o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, c // 2, h, w))
    return x + self.gamma * o


class TCCBN(nn.Module):
  def __init__(self, c, cond_dim):
    super().__init__()
    self.bn = nn.BatchNorm2d(c, affine=False, eps=1e-5, momentum=0.1)
    self.gain = TSNLinear(cond_dim, c, bias=False)
    self.bias = TSNLinear(cond_dim, c, bias=False)

  def forward(self, x, y):
    return self.bn(x) * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class TGBlock(nn.Module):
  def __init__(self, i, o, cond_dim):
    super().__init__()
    self.bn1, self.bn2 = TCCBN(i, cond_dim), TCCBN(o, cond_dim)
    self.conv1, self.conv2, self.conv_sc = TSNConv(i, o), TSNConv(o, o), TSNConv(i, o, 1)

  def forward(self, x, y):
    h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2)
    x = F.interpolate(x, scale_factor=2)
    h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
    return h + self.conv_sc(x)


class TGenerator(nn.Module):
  """BigGAN-PyTorch G at 32x32 (ch * [4, 4, 4]) with attention after block `attn_at`."""

  def __init__(self, ch, dim_z, shared_dim, attn_at, hier):
    super().__init__()
    c, self.hier = 4 * ch, hier
    chunk = 20 if hier else 0
    self.shared = nn.Linear(K, shared_dim, bias=False)
    self.linear = TSNLinear(chunk or dim_z, 16 * c)
    for i in range(3):
      self.add_module(f"blocks_{i}", TGBlock(c, c, shared_dim + chunk))
    self.attn_at, self.attention = attn_at, TAttention(c)
    self.out_bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)
    self.out_conv = TSNConv(c, 3)

  def forward(self, z, y):
    shared = self.shared(y)
    if self.hier:
      zs = torch.split(z, 20, 1)
      z, ys = zs[0], [torch.cat([shared, zi], 1) for zi in zs[1:]]
    else:
      ys = [shared] * 3
    h = self.linear(z).view(z.shape[0], -1, 4, 4)
    for i in range(3):
      h = getattr(self, f"blocks_{i}")(h, ys[i])
      if i == self.attn_at:
        h = self.attention(h)
    return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class TDBlock(nn.Module):
  def __init__(self, i, o, preact, down):
    super().__init__()
    self.preact, self.down = preact, down
    self.conv1, self.conv2 = TSNConv(i, o), TSNConv(o, o)
    self.learnable_sc = i != o or down
    if self.learnable_sc:
      self.conv_sc = TSNConv(i, o, 1)

  def shortcut(self, x):  # BigGAN-PyTorch's order: conv first when preactivated
    if self.preact:
      x = self.conv_sc(x) if self.learnable_sc else x
      return F.avg_pool2d(x, 2) if self.down else x
    x = F.avg_pool2d(x, 2) if self.down else x
    return self.conv_sc(x) if self.learnable_sc else x

  def forward(self, x):
    h = F.relu(x) if self.preact else x
    h = self.conv2(F.relu(self.conv1(h)))
    h = F.avg_pool2d(h, 2) if self.down else h
    return h + self.shortcut(x)


class TDiscriminator(nn.Module):
  def __init__(self, ch, attn_at):
    super().__init__()
    c = 4 * ch
    for i, (cin, down) in enumerate(zip([3, c, c, c], [True, True, False, False])):
      self.add_module(f"blocks_{i}", TDBlock(cin, c, i > 0, down))
    self.attn_at, self.attention = attn_at, TAttention(c)
    self.linear = TSNLinear(c, 1)
    self.embed = TSNLinear(K, c, bias=False)  # SN embedding applied to label vectors

  def forward(self, x, y):
    h = x
    for i in range(4):
      h = getattr(self, f"blocks_{i}")(h)
      if i == self.attn_at:
        h = self.attention(h)
    h = torch.sum(F.relu(h), [2, 3])
    return self.linear(h)[:, 0] + torch.sum(self.embed(y) * h, 1)


# ---- weights across -------------------------------------------------------------------------

_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _state_dict(variables):
  sd = {}
  for tree in variables.values():
    for (*mods, name), leaf in traverse_util.flatten_dict(dict(tree)).items():
      a = np.asarray(leaf)
      if name == "kernel":
        a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T  # HWIO -> OIHW, [in, out] -> [out, in]
      sd[".".join([*mods, _NAMES.get(name, name)])] = torch.from_numpy(np.ascontiguousarray(a))
  return sd


def _load(model, variables):
  missing, unexpected = model.load_state_dict(_state_dict(variables), strict=False)
  assert not unexpected, unexpected
  assert all(k.endswith("num_batches_tracked") for k in missing), missing


def _random_variables(module, seed, *args):
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), *args)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "var":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    x = rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    return x / np.linalg.norm(x) if name == "u" else x
  return jax.tree_util.tree_map_with_path(fill, shapes)


def _close(actual, expected, tol=1e-4):
  expected = np.asarray(expected)
  scale = max(1.0, float(np.abs(expected).max()))
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def _u_vectors(variables):
  return {k[:-1]: np.asarray(v) for k, v in
          traverse_util.flatten_dict(dict(variables["spectral"])).items()}


def _check_u(torch_model, new_spectral):
  buffers = dict(torch_model.named_buffers())
  for path, u in _u_vectors({"spectral": new_spectral}).items():
    _close(u, buffers[".".join(path) + ".u"].numpy(), 1e-5)


# ---- tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("hierarchical", [False, True])
def test_generator_matches_torch(hierarchical):
  ch, shared_dim = 8, 16
  dim_z = 80 if hierarchical else 32
  g = Generator(K, 32, ch=ch, dim_z=dim_z, shared_dim=shared_dim, hierarchical=hierarchical,
                attention=16)
  z = jax.random.normal(jax.random.key(0), (4, dim_z))
  y = jax.nn.softmax(3 * jax.random.normal(jax.random.key(1), (4, K)))
  variables = _random_variables(g, 2, z, y)
  tg = TGenerator(ch, dim_z, shared_dim, attn_at=1, hier=hierarchical)
  _load(tg, variables)
  tz, ty = torch.from_numpy(np.array(z)), torch.from_numpy(np.array(y))

  tg.eval()
  with torch.no_grad():
    expected = tg(tz, ty).permute(0, 2, 3, 1).numpy()
  _close(jax.jit(g.apply)(variables, z, y), expected)

  tg.train()
  with torch.no_grad():
    expected = tg(tz, ty).permute(0, 2, 3, 1).numpy()
  out, new = jax.jit(functools.partial(g.apply, train=True, mutable=["batch_stats", "spectral"]))(
      variables, z, y)
  _close(out, expected)
  _check_u(tg, new["spectral"])
  buffers = dict(tg.named_buffers())
  # Running means agree; torch's running variance uses the unbiased batch variance, flax's not.
  for (*mods, name), v in traverse_util.flatten_dict(dict(new["batch_stats"])).items():
    if name == "mean":
      _close(v, buffers[".".join(mods) + ".running_mean"].numpy(), 1e-5)


def test_discriminator_matches_torch():
  ch = 8
  d = Discriminator(K, 32, ch=ch, attention=16)
  x = jax.random.uniform(jax.random.key(3), (4, 32, 32, 3), minval=-1, maxval=1)
  y = jax.nn.softmax(3 * jax.random.normal(jax.random.key(4), (4, K)))
  variables = _random_variables(d, 5, x, y)
  td = TDiscriminator(ch, attn_at=0)
  _load(td, variables)
  tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  ty = torch.from_numpy(np.array(y))

  td.eval()
  with torch.no_grad():
    expected = td(tx, ty).numpy()
  _close(jax.jit(d.apply)(variables, x, y), expected)

  td.train()
  with torch.no_grad():
    expected = td(tx, ty).numpy()
  out, new = jax.jit(functools.partial(d.apply, train=True, mutable=["spectral"]))(
      variables, x, y)
  _close(out, expected)
  _check_u(td, new["spectral"])
