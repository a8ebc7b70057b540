"""jaxgen.nets.conv: the im2col path equals jax.lax.conv_general_dilated (the reference).

Tolerance: 1e-5 relative + 1e-5 absolute on float32 outputs and gradients (both paths sum the
same products in a different order).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxgen.nets import conv as conv_lib
from jaxgen.train import xla_cpu

NHWC = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input hw, cin, cout, kernel, stride, padding)
    (2, 8, 6, 3, 1, ((1, 1), (1, 1))),
    (1, 8, 6, 3, 1, ((1, 1), (1, 1))),
    (4, 5, 7, 3, 2, ((1, 1), (1, 1))),
    (4, 5, 7, 3, 1, "SAME"),
    (5, 3, 4, 2, 2, "VALID"),
    (8, 3, 4, 4, 4, "VALID"),  # ViT-style patch embedding, 2x2 output
    (3, 4, 4, 1, 1, ((0, 0), (0, 0))),  # 1x1 convolution
    (4, 3, 2, (3, 1), (1, 2), ((1, 2), (0, 1))),  # non-square kernel, asymmetric padding
]


def _reference(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _ours(x, w, strides, padding):
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  return conv_lib.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)


@pytest.mark.parametrize("hw,cin,cout,kernel,stride,padding", CASES)
def test_im2col_matches_lax_values_and_gradients(hw, cin, cout, kernel, stride, padding):
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  strides = (stride, stride) if isinstance(stride, int) else stride
  x = jax.random.normal(jax.random.key(0), (3, hw, hw, cin))
  w = jax.random.normal(jax.random.key(1), kernel + (cin, cout))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  assert conv_lib.uses_im2col(x.shape, w.shape, strides, padding, dimension_numbers=dn,
                              backend="cpu")
  np.testing.assert_allclose(_ours(x, w, strides, padding), _reference(x, w, strides, padding),
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, padding)))
  got = jax.grad(loss(_ours), argnums=(0, 1))(x, w)
  want = jax.grad(loss(_reference), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_routing_rules():
  dn = lambda xs, ws: lax.conv_dimension_numbers(xs, ws, NHWC)
  small, w = (2, 2, 2, 8), (3, 3, 8, 8)
  assert conv_lib.uses_im2col(small, w, (1, 1), "SAME", dimension_numbers=dn(small, w),
                              backend="cpu")
  assert not conv_lib.uses_im2col(small, w, (1, 1), "SAME", dimension_numbers=dn(small, w),
                                  backend="gpu")
  big = (2, 8, 8, 8)  # 64 output positions > SMALL_OUTPUT_POSITIONS
  assert not conv_lib.uses_im2col(big, w, (1, 1), "SAME", dimension_numbers=dn(big, w),
                                  backend="cpu")
  grouped = (3, 3, 1, 8)
  assert not conv_lib.uses_im2col(small, grouped, (1, 1), "SAME", feature_group_count=8,
                                  dimension_numbers=dn(small, grouped), backend="cpu")
  assert not conv_lib.uses_im2col(small, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                  dimension_numbers=dn(small, w), backend="cpu")


def test_flax_conv_same_params_and_outputs():
  """`Conv` has nn.Conv's parameter tree and, on the im2col path, its outputs."""
  x = jax.random.normal(jax.random.key(2), (2, 2, 2, 16))
  ours, ref = conv_lib.Conv(8, (3, 3)), nn.Conv(8, (3, 3))
  variables = ref.init(jax.random.key(3), x)
  assert jax.tree.structure(ours.init(jax.random.key(3), x)) == jax.tree.structure(variables)
  np.testing.assert_allclose(ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5,
                             atol=1e-5)
  if jax.default_backend() == "cpu":
    jaxpr = str(jax.make_jaxpr(lambda v: ours.apply(v, x))(variables))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr


# The 'eigen' route's two extra paths (jaxgen/train/xla_cpu.py): dense products on small maps and
# a weight gradient that reads a stored input. Same tolerance as above against lax.
DENSE_CASES = [  # (input hw, cin, cout, kernel, stride, padding): blocks <= taps
    (1, 8, 6, 3, 1, ((1, 1), (1, 1))),  # ResNet-18's last stage at 32x32: only the centre tap
    (2, 5, 7, 3, 2, ((1, 1), (1, 1))),  # the stride-2 convolution into it
    (2, 3, 4, (3, 2), (1, 2), ((1, 0), (0, 1))),  # non-square kernel, asymmetric padding
]


@pytest.mark.parametrize("hw,cin,cout,kernel,stride,padding", DENSE_CASES)
def test_eigen_route_dense_small_maps_match_lax(monkeypatch, hw, cin, cout, kernel, stride,
                                                padding):
  monkeypatch.setenv("JAXGEN_XLA_CPU_CONV", "eigen")
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  strides = (stride, stride) if isinstance(stride, int) else stride
  x = jax.random.normal(jax.random.key(0), (3, hw, hw, cin))
  w = jax.random.normal(jax.random.key(1), kernel + (cin, cout))
  if jax.default_backend() == "cpu":
    # The one product contracts over the input positions x channels, not im2col's taps x channels.
    jaxpr = str(jax.make_jaxpr(lambda x, w: _ours(x, w, strides, padding))(x, w))
    assert f"f32[3,{hw * hw * cin}]" in jaxpr and "conv_general_dilated" not in jaxpr, jaxpr
  np.testing.assert_allclose(_ours(x, w, strides, padding), _reference(x, w, strides, padding),
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, padding)))
  got = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)))(x, w)
  want = jax.grad(loss(_reference), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_eigen_route_stored_input_gradient_matches_lax(monkeypatch):
  """Large maps stay on lax's convolution with a custom gradient: the same operations, so the same
  gradients bit for bit (only where XLA keeps the input changes); second derivatives (a gradient
  penalty differentiates through it) and bfloat16 to rounding."""
  monkeypatch.setenv("JAXGEN_XLA_CPU_CONV", "eigen")
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 6))
  strides, padding = (1, 1), ((1, 1), (1, 1))
  if jax.default_backend() == "cpu":
    assert "custom_vjp" in str(jax.make_jaxpr(lambda x, w: _ours(x, w, strides, padding))(x, w))
  # The input comes out of an elementwise producer, the case the stored input is for.
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(jax.nn.relu(x * 1.5 - 0.1), w, strides,
                                                  padding)))
  options = xla_cpu.step_compiler_options("eigen")
  got = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)), compiler_options=options)(x, w)
  want = jax.jit(jax.grad(loss(_reference), argnums=(0, 1)), compiler_options=options)(x, w)
  for g, r in zip(got, want):
    np.testing.assert_array_equal(g, r)
  penalty = lambda f: lambda w: jnp.sum(jax.grad(loss(f))(x, w) ** 2)
  np.testing.assert_allclose(jax.jit(jax.grad(penalty(_ours)))(w),
                             jax.jit(jax.grad(penalty(_reference)))(w), rtol=1e-4, atol=1e-4)
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  got = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)))(xb, wb)
  want = jax.jit(jax.grad(loss(_reference), argnums=(0, 1)))(xb, wb)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=2e-2,
                               atol=2e-2)
