"""MLDCubAutoencoder (the MLD authors' CUB image AE): shapes, pixel-range map, parameter count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nets.mld_autoencoder import MLDCubAutoencoder

B = 2


def _block(fin, fout):
  """ResBlock(fin, fout): 3x3 fin->h and 3x3 h->fout with biases (h = min(fin, fout)), plus a
  bias-free 1x1 shortcut fin->fout when fin != fout."""
  h = min(fin, fout)
  return 9 * fin * h + h + 9 * h * fout + fout + (fin * fout if fin != fout else 0)


# Closed form at the defaults (nf=64, 64x64 -> 16x16x256, latent 64):
#   encoder: conv 3->64 (1,792) + blocks 64->64, 64->128, 128->256 + Dense 16*16*256 -> 64
#   decoder: Dense 64 -> 16*16*256 + blocks 256->128, 128->64, 64->64 + conv 64->3 (1,731)
ENCODER = 27 * 64 + 64 + _block(64, 64) + _block(64, 128) + _block(128, 256) + 65536 * 64 + 64
DECODER = 64 * 65536 + 65536 + _block(256, 128) + _block(128, 64) + _block(64, 64) + 9 * 64 * 3 + 3


@pytest.fixture(scope="module")
def model_and_params():
  """Params with init's shapes and zero biases; kernels ~ N(0, 1 / fan_in) drawn with numpy, since
  `model.init` compiles a truncated normal per kernel shape (tens of seconds on a loaded CPU)."""
  model = MLDCubAutoencoder()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  rng = np.random.default_rng(0)

  def fill(leaf):
    if leaf.ndim == 1:
      return np.zeros(leaf.shape, np.float32)
    return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
  return model, jax.tree_util.tree_map(fill, shapes)


def test_parameter_count_closed_form():
  shapes = jax.eval_shape(MLDCubAutoencoder().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert set(shapes) == {"params"}  # no BatchNorm statistics or other mutable state
  count = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(t))
  assert (ENCODER, DECODER) == (4_864_512, 4_929_731)
  assert count(shapes["params"]["encoder"]) == ENCODER
  assert count(shapes["params"]["decoder"]) == DECODER
  assert count(shapes) == ENCODER + DECODER == 9_794_243


def _zero_last_conv(params):
  zeroed = jax.tree_util.tree_map(jnp.zeros_like, params["decoder"]["conv_img"])
  return {**params, "decoder": {**params["decoder"], "conv_img": zeroed}}


@pytest.fixture(scope="module")
def outputs(model_and_params):
  """One compiled call: encode of [2 random images, 2 all -1 images], decode of 2 random latents
  (also with the last conv zeroed), reconstruction of the 2 random images."""
  model, params = model_and_params
  x = jax.random.uniform(jax.random.key(1), (B, 64, 64, 3), minval=-1.0, maxval=1.0)
  x = jnp.concatenate([x, -jnp.ones_like(x)])
  z = jax.random.normal(jax.random.key(2), (B, 64))

  @jax.jit
  def run(params, x, z):
    apply = functools.partial(model.apply, {"params": params})
    return dict(z=apply(x, method="encode"), dec=apply(z, method="decode"), rec=apply(x[:B]),
                black=model.apply({"params": _zero_last_conv(params)}, z, method="decode"))
  return jax.tree_util.tree_map(np.asarray, run(params, x, z))


def test_shapes_and_dtype(outputs):
  assert outputs["z"].shape == (2 * B, 64)
  assert outputs["dec"].shape == outputs["rec"].shape == (B, 64, 64, 3)
  for a in outputs.values():
    assert a.dtype == np.float32 and np.isfinite(a).all()
  # Nothing squashes the output (as the authors'); at init it stays around the middle of [-1, 1].
  assert np.abs(outputs["rec"]).max() < 10.0


def test_pixel_range_map(outputs):
  """Our -1 is their 0: with zero biases (as at init) an all -1 image encodes to exactly 0, and a
  decoder whose last conv outputs their 0 gives exactly -1."""
  np.testing.assert_array_equal(outputs["z"][B:], 0.0)
  assert np.abs(outputs["z"][:B]).max() > 0.01
  np.testing.assert_array_equal(outputs["black"], -1.0)


def test_image_size_field():
  # The level count follows the authors' log2(size / 16): 32x32 has one pooling level.
  out = jax.eval_shape(lambda: MLDCubAutoencoder(image_size=32).init_with_output(
      jax.random.key(0), jnp.zeros((B, 32, 32, 3)))[0])
  assert out.shape == (B, 32, 32, 3)
  with pytest.raises(ValueError, match="image_size 48"):
    MLDCubAutoencoder(image_size=48).init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
