"""jaxgen.nets.resample_conv: a conv fused with the x2 resampling around it equals the plain
composition (upsample then conv, conv then average-pool) in value and gradients, and BigGAN's G and
D with `fused_resample=True` compute the networks they compute without it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgen.nets import resample_conv as rc
from jaxgen.nets.biggan import Discriminator, Generator
from jaxgen.nets.spectral_norm import SNConv

# Sums of a few hundred float32 products in another order: relative differences ~1e-6.
RTOL = 1e-5


def _plain_conv(x, w):
  """The reference: lax's convolution at full float32 precision, SAME padding."""
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


def _plain_pool(y):  # an independent formula: the mean of the four strided sub-grids
  return (y[:, ::2, ::2] + y[:, 1::2, ::2] + y[:, ::2, 1::2] + y[:, 1::2, 1::2]) / 4.0


def _plain_up(x):
  return jnp.broadcast_to(x[:, :, None, :, None, :], (x.shape[0], x.shape[1], 2, x.shape[2], 2,
                                                      x.shape[3])).reshape(
      x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3])


CASES = {
    "upsample_conv": (rc.upsample_conv, lambda x, w: _plain_conv(_plain_up(x), w)),
    "conv_avg_pool": (rc.conv_avg_pool, lambda x, w: _plain_pool(_plain_conv(x, w))),
}


def _close(a, b, rtol=RTOL):
  scale = float(jnp.max(jnp.abs(b)))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("shape", [(2, 6, 8, 5), (3, 4, 4, 16), (1, 2, 2, 3)])
def test_fused_equals_the_plain_composition_in_value_and_gradients(name, ksize, shape):
  fused, plain = CASES[name]
  x = jax.random.normal(jax.random.key(0), shape)
  w = jax.random.normal(jax.random.key(1), (ksize, ksize, shape[-1], 7))
  y_fused, y_plain = fused(x, w), plain(x, w)
  assert y_fused.shape == y_plain.shape
  _close(y_fused, y_plain)
  # Gradients of a generic scalar of the output, for the input and the kernel.
  probe = jax.random.normal(jax.random.key(2), y_plain.shape)
  g_fused = jax.grad(lambda x, w: jnp.sum(probe * fused(x, w)), argnums=(0, 1))(x, w)
  g_plain = jax.grad(lambda x, w: jnp.sum(probe * plain(x, w)), argnums=(0, 1))(x, w)
  for a, b in zip(g_fused, g_plain):
    _close(a, b)


def test_phase_and_pooled_kernels_follow_the_derivation():
  """The derived kernels on a kernel of distinct powers of two, checked tap by tap."""
  w = (2.0 ** jnp.arange(9.0)).reshape(3, 3, 1, 1)
  k = rc.phase_kernels(w)
  rows = {0: lambda m: [m[0], m[1] + m[2]], 1: lambda m: [m[0] + m[1], m[2]]}
  w2 = np.asarray(w[:, :, 0, 0])
  for a in (0, 1):
    for b in (0, 1):
      expected = np.array([rows[b](r) for r in rows[a](w2)])
      np.testing.assert_array_equal(np.asarray(k[a][b][:, :, 0, 0]), expected)
  pooled = np.asarray(rc.pooled_kernel(w)[:, :, 0, 0])
  expected = np.zeros((4, 4))
  for a in (0, 1):
    for b in (0, 1):
      expected[a:a + 3, b:b + 3] += w2 / 4
  np.testing.assert_array_equal(pooled, expected)


def test_bad_kernels_and_convs_are_refused():
  x = jnp.zeros((1, 4, 4, 3))
  with pytest.raises(ValueError, match="1x1 or 3x3"):
    rc.upsample_conv(x, jnp.zeros((5, 5, 3, 2)))
  with pytest.raises(ValueError, match="in = 3"):
    rc.conv_avg_pool(x, jnp.zeros((3, 3, 4, 2)))
  with pytest.raises(ValueError, match="even map sides, got 5x4"):
    rc.conv_avg_pool(jnp.zeros((1, 5, 4, 3)), jnp.zeros((3, 3, 3, 2)))
  with pytest.raises(ValueError, match="resample='sideways'"):
    SNConv(2, resample="sideways").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="strides"):
    SNConv(2, strides=2, resample="up", fused_resample=True).init(jax.random.key(0), x)


@pytest.mark.parametrize("resample", ["up", "down"])
def test_snconv_fused_resample_matches_plain_with_the_same_variables(resample):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  plain = SNConv(6, resample=resample)
  variables = plain.init(jax.random.key(1), x)
  fused = SNConv(6, resample=resample, fused_resample=True)
  assert jax.tree.structure(fused.init(jax.random.key(1), x)) == jax.tree.structure(variables)
  _close(fused.apply(variables, x), plain.apply(variables, x))


def test_biggan_with_fused_resample_computes_the_same_networks():
  """G (upsample + conv in every block) and D (conv + avg-pool in its down-blocks) at 32x32:
  same variables, outputs and parameter gradients equal to float rounding."""
  z = jax.random.normal(jax.random.key(0), (3, 16))
  y = jax.nn.one_hot(jnp.array([0, 1, 2]), 5)
  make_g = functools.partial(Generator, num_classes=5, resolution=32, ch=2, dim_z=16, shared_dim=8)
  make_d = functools.partial(Discriminator, num_classes=5, resolution=32, ch=2)
  g_vars = make_g().init(jax.random.key(1), z, y)
  images = make_g().apply(g_vars, z, y)
  d_vars = make_d().init(jax.random.key(2), images, y)
  for make, variables, args in ((make_g, g_vars, (z, y)), (make_d, d_vars, (images, y))):
    # one compiled program per variant (op-by-op, the gradients took ~30 s on 2 cores)
    @functools.partial(jax.jit, static_argnums=1)
    def out_and_grad(params, fused, make=make, variables=variables, args=args):
      def out(p):
        return make(fused_resample=fused).apply({**variables, "params": p}, *args)
      return out(params), jax.grad(lambda p: jnp.sum(out(p) ** 2))(params)
    (fused_out, fused_grad), (plain_out, plain_grad) = (
        out_and_grad(variables["params"], f) for f in (True, False))
    _close(fused_out, plain_out, rtol=1e-5)
    grads = [fused_grad, plain_grad]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
      _close(a, b, rtol=1e-4)


def test_the_config_key_reaches_both_networks():
  from configs.softlabel_gan import get_config
  from jaxgen.softlabel_gan.train import build_networks
  cfg = get_config("tiny").gan
  assert cfg.fused_resample is False
  assert not any(n.fused_resample for n in build_networks(cfg, 4, 32))
  cfg.fused_resample = True
  assert all(n.fused_resample for n in build_networks(cfg, 4, 32))


@pytest.mark.parametrize("shape", [(2, 6, 8, 5), (1, 2, 2, 3), (4, 32, 32, 3)])
def test_avg_pool_equals_flax_reduce_window_pool(shape):
  """avg_pool_2x2 (strided slices, summed pairwise) against flax.linen.avg_pool (a reduce-window):
  the same values to float rounding (XLA's reduce-window sums in an order that depends on how it
  is compiled) and the same input gradients bit for bit (each input gets a quarter of its
  window's cotangent either way)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.key(0), shape)
  g = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  ref = lambda v: nn.avg_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
  for f in (rc.avg_pool_2x2, ref):
    assert jax.jit(f)(x).shape == g.shape
  np.testing.assert_allclose(np.asarray(jax.jit(rc.avg_pool_2x2)(x)), np.asarray(jax.jit(ref)(x)),
                             rtol=1e-6, atol=1e-7)
  grad = lambda f: jax.jit(lambda v: jax.vjp(f, v)[1](g)[0])(x)  # noqa: E731
  np.testing.assert_array_equal(np.asarray(grad(rc.avg_pool_2x2)), np.asarray(grad(ref)))
  with pytest.raises(ValueError, match="even height and width"):
    rc.avg_pool_2x2(jnp.zeros((1, 5, 4, 3)))
