"""benchmarks/winograd.py (a contender of `benchmarks/conv_cpu.py --winograd`) computes the
convolution it is timed as: values and autodiff gradients against jax.lax.conv_general_dilated at
HIGHEST precision. Tolerance: 2e-5 of the output's largest magnitude (F(4, 3)'s transforms have
entries up to 8 and 1/24, so its float32 rounding is ~10x F(2, 3)'s; measured <= 1e-5)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks.winograd import winograd_conv  # noqa: E402


def _reference(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matches_direct_convolution(m):
  b, h, w, cin, cout = 2, 5, 7, 6, 4  # odd sizes: partial tiles are cropped
  x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
  k = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) / np.sqrt(9 * cin)
  g = jax.random.normal(jax.random.key(2), (b, h, w, cout))
  def value_and_grads(conv):
    y, vjp = jax.vjp(conv, x, k)
    return (y,) + vjp(g)

  ours = jax.jit(lambda: value_and_grads(lambda x, k: winograd_conv(x, k, m=m)))()
  ref = jax.jit(lambda: value_and_grads(_reference))()
  for a, r in zip(ours, ref):
    scale = float(jnp.max(jnp.abs(r)))
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=0, atol=2e-5 * scale)
