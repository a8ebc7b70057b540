"""MVLD's networks and the TrivialAugmentWide ops (checked against PIL's implementations)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from jaxgen.data import trivial_augment as ta
from jaxgen.nets.autoencoder import ViewAutoencoder
from jaxgen.nets.score_nets import ResidualMLPScoreNet, ViewAttentionScoreNet


def _image(seed=0, size=16):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _apply(img_u8, name, level, sign=1.0):
  x = jnp.asarray(img_u8, jnp.float32) / 127.5 - 1.0
  out = ta._apply_op(x, jnp.asarray(ta.OPS.index(name)), jnp.asarray(level, jnp.float32),
                     jnp.asarray(sign, jnp.float32))
  return np.clip(np.round((np.asarray(out) + 1.0) * 127.5), 0, 255)


# PIL rounds through 8-bit lookup tables: allow 2 grey levels.
@pytest.mark.parametrize("name, level, reference", [
    ("posterize", 1.0, lambda im: ImageOps.posterize(im, 2)),
    ("posterize", 0.5, lambda im: ImageOps.posterize(im, 5)),
    ("solarize", 0.5, lambda im: ImageOps.solarize(im, 127.5)),
    ("autocontrast", 0.3, ImageOps.autocontrast),
    ("brightness", 0.5, lambda im: ImageEnhance.Brightness(im).enhance(1.495)),
    ("color", 0.5, lambda im: ImageEnhance.Color(im).enhance(1.495)),
    ("identity", 0.7, lambda im: im),
])
def test_photometric_ops_match_pil(name, level, reference):
  img = _image()
  if name == "autocontrast":
    img = (img // 2 + 40).astype(np.uint8)  # a narrow range for autocontrast to stretch
  expected = np.asarray(reference(Image.fromarray(img)), np.float64)
  got = _apply(img, name, level)
  assert np.max(np.abs(got - expected)) <= 2


def test_geometric_ops_keep_range_and_translate_moves_content():
  img = np.zeros((16, 16, 3), np.uint8)
  img[:, 4:6] = 255
  shifted = _apply(img, "translate_x", 1.0)  # +16/7 ~ 2.3 px (sampling from x + shift)
  assert shifted.min() >= 0 and shifted.max() <= 255
  col = shifted[..., 0].mean(0)
  assert np.argmax(col) in (1, 2, 3)
  out = ta.trivial_augment_wide(jax.random.key(0), jnp.asarray(np.stack([img] * 8), jnp.float32) / 127.5 - 1)
  assert out.shape == (8, 16, 16, 3) and float(out.min()) >= -1.0 and float(out.max()) <= 1.0 + 1e-6
  again = ta.trivial_augment_wide(jax.random.key(0), jnp.asarray(np.stack([img] * 8), jnp.float32) / 127.5 - 1)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))  # deterministic per key


def test_autoencoder_shapes_and_score_nets_start_at_zero():
  ae = ViewAutoencoder(image_size=16, latent_dim=8, channels=(8, 16))
  x = jnp.zeros((2, 16, 16, 3))
  params = ae.init(jax.random.key(0), x)["params"]
  z = ae.apply({"params": params}, x, method=ViewAutoencoder.encode)
  assert z.shape == (2, 8) and ae.apply({"params": params}, x).shape == (2, 16, 16, 3)
  x = jax.random.normal(jax.random.key(1), (3, 4 * 8))
  tau = jnp.asarray([[0.0, 0.5, 0.5, 0.5]] * 3)
  for net in (ResidualMLPScoreNet(widths=(32, 16)), ViewAttentionScoreNet(num_views=4, width=16, depth=1, num_heads=2)):
    params = net.init(jax.random.key(2), x, tau)
    out = net.apply(params, x, tau)
    assert out.shape == x.shape
    np.testing.assert_array_equal(np.asarray(out), 0.0)  # zero-initialised output layer
