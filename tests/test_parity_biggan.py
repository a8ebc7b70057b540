"""Opt-in PyTorch parity of BigGAN G and projection D at 32x32 (run with -m torch).

The compact NCHW transcription of BigGAN-PyTorch's layers in `benchmarks.torch_biggan` (also the
reference of benchmarks/gan.py) gets the flax models' random weights (conv HWIO -> OIHW, linear
transposed) and u vectors; outputs agree in eval mode (running statistics, stored u) and in
training mode (batch statistics, one power iteration, the new u compared too).
"""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.nets.biggan import Discriminator, Generator

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from benchmarks import torch_biggan as tb  # noqa: E402  (needs torch)

K = 10


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
  tg = tb.Generator(K, 32, ch=ch, dim_z=dim_z, shared_dim=shared_dim, hierarchical=hierarchical,
                    attention=16)
  tb.load_flax_variables(tg, variables)
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


@pytest.mark.parametrize("pool_first", [False, True])
def test_discriminator_matches_torch(pool_first):
  ch = 8
  d = Discriminator(K, 32, ch=ch, attention=16)
  x = jax.random.uniform(jax.random.key(3), (4, 32, 32, 3), minval=-1, maxval=1)
  y = jax.nn.softmax(3 * jax.random.normal(jax.random.key(4), (4, K)))
  variables = _random_variables(d, 5, x, y)
  td = tb.Discriminator(K, 32, ch=ch, attention=16, pool_first=pool_first)
  tb.load_flax_variables(td, variables)
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
