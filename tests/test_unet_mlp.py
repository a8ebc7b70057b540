"""UnetMLP (the MLD authors' score network): shapes, zero output at init, dependence on tau, and
the parameter count at the paper size (abstractly, via jax.eval_shape)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nets.unet_mlp import UnetMLP

V, L = 4, 8
SMALL = dict(init_dim=64, time_dim=32, groups=32)


def _inputs(batch=3, seed=0):
  kx, kt = jax.random.split(jax.random.key(seed))
  tau = jax.random.uniform(kt, (batch, V)).at[0, 1].set(0.0)  # one observed view
  return jax.random.normal(kx, (batch, V * L)), tau


def _count(tree):
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _block_count(d_in, width, t, shift_scale=False):
  """Params of one residual block d_in -> width with time width t (Linear = in*out + out)."""
  time = t * width * (2 if shift_scale else 1) + width * (2 if shift_scale else 1)
  skip = d_in * width + width if d_in != width else 0
  return time + 2 * d_in + d_in * width + width + 2 * width + width * width + width + skip


def _structural_count(flat, views, init_dim, dim_mults, t, shift_scale=False):
  """Params counted layer by layer, following the authors' construction."""
  dims = [init_dim] + [init_dim * m for m in dim_mults]
  n = (views * t + t) + (t * t + t) + (flat * init_dim + init_dim)  # time MLP, input projection
  for a, b in zip(dims[:-1], dims[1:]):
    n += _block_count(a, a, t, shift_scale) + a * b + b  # down block + Linear a -> b
    n += _block_count(b + a, b, t, shift_scale) + b * a + a  # up block + Linear b -> a
  n += 2 * _block_count(dims[-1], dims[-1], t, shift_scale)  # middle
  n += _block_count(2 * init_dim, init_dim, t, shift_scale)  # final block after the global skip
  return n + 2 * init_dim + init_dim * flat + flat  # output GroupNorm + zero-init Linear


@pytest.fixture(scope="module")
def small():
  """One real init for the whole file (eager per-op compiles dominate the run time)."""
  model = UnetMLP(**SMALL)
  x, tau = _inputs()
  return model, jax.jit(model.init)(jax.random.key(1), x, tau), x, tau  # one compile


def test_zero_output_at_init(small):
  model, params, x, tau = small
  out = model.apply(params, x, tau)
  assert out.shape == x.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output layer
  assert _count(params) == _structural_count(V * L, V, 64, (1, 1), 32)
  # PyTorch nn.Linear's default init elsewhere: 0 < |w| <= 1/sqrt(fan_in).
  kernel = np.asarray(params["params"]["init"]["kernel"])
  assert 0 < np.abs(kernel).max() <= 1 / math.sqrt(V * L)


@pytest.mark.parametrize("dim_mults,shift_scale", [((1, 2), False), ((2, 2), True)])
def test_shapes_and_count_when_widening(dim_mults, shift_scale):
  model = UnetMLP(dim_mults=dim_mults, shift_scale=shift_scale, **SMALL)
  x, tau = _inputs()
  params = jax.eval_shape(model.init, jax.random.key(1), x, tau)
  out = jax.eval_shape(model.apply, params, x, tau)
  assert out.shape == x.shape
  assert "skip" in params["params"]["up1"]  # width changes -> Dense skip in the block
  assert _count(params) == _structural_count(V * L, V, 64, dim_mults, 32, shift_scale)


def test_tau_and_x_affect_output(small):
  model, params, x, tau = small
  params = jax.tree_util.tree_map(lambda a: a, params)  # a copy: the fixture is shared
  shape = params["params"]["out"]["kernel"].shape
  params["params"]["out"]["kernel"] = np.random.default_rng(2).normal(0, 0.1, shape)
  base = np.asarray(model.apply(params, x, tau))
  assert np.abs(base).max() > 1e-3
  one_view = np.asarray(model.apply(params, x, tau.at[:, 2].set(0.0)))  # view 2 now observed
  assert np.abs(one_view - base).max() > 1e-4
  assert np.abs(np.asarray(model.apply(params, x + 0.5, tau)) - base).max() > 1e-4


def test_paper_size_parameter_count():
  """4 views x 64 latents (D = 256), init_dim N = 1536, time_dim T = 512, dim_mults (1, 1).

  Closed form for dim_mults (1, 1): 4 blocks N -> N (2 down, 2 middle) of 2N^2 + TN + 7N each,
  3 blocks 2N -> N (2 up, 1 final) of 5N^2 + TN + 10N each, 4 Linear N -> N, the time MLP
  VT + 2T + T^2, the input projection DN + N and the output GroupNorm + Linear 2N + ND + D:
    27 N^2 + 7 TN + 65 N + 2 DN + D + T^2 + VT + 2T = 70,357,760,
  the count of the authors' PyTorch UnetMLP at these sizes as well.
  """
  views, flat, n, t = 4, 256, 1536, 512
  closed = 27 * n * n + 7 * t * n + 65 * n + 2 * flat * n + flat + t * t + views * t + 2 * t
  assert closed == 70_357_760
  assert closed == _structural_count(flat, views, n, (1, 1), t)
  model = UnetMLP()  # the defaults are the paper size
  x = jax.ShapeDtypeStruct((2, flat), jnp.float32)
  tau = jax.ShapeDtypeStruct((2, views), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, tau)  # no allocation
  assert _count(shapes) == closed
