"""DiffAugment (jaxgen.gan.diffaugment), op by op, on small constructed inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.gan import (POLICY_OPS, brightness, contrast, cutout, diff_augment, parse_policy,
                        saturation, translation)

KEY = jax.random.PRNGKey(0)
OPS = (brightness, saturation, contrast, translation, cutout)
MANY = 2000  # images per batch where a factor's range is recovered: each gets its own draw
SHAPE = (64, 8, 8, 3)  # one shape for most tests: fewer compilations


def _images(shape, low=-1.0, high=1.0, seed=1):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape, jnp.float32, low, high)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_and_dtype(dtype):
  x = _images(SHAPE).astype(dtype)
  for op in OPS:
    y = op(KEY, x)
    assert y.shape == x.shape and y.dtype == dtype, op.__name__


def test_brightness_constant_offset_per_image():
  x = _images((MANY, 2, 2, 3))
  d = np.asarray(brightness(KEY, x) - x)
  off = d[:, :1, :1, :1]
  np.testing.assert_allclose(d, np.broadcast_to(off, d.shape), atol=1e-6)
  assert off.min() >= -0.5 and off.max() <= 0.5
  assert off.min() < -0.49 and off.max() > 0.49
  assert len(np.unique(off)) > MANY // 2  # one draw per image


def test_saturation_keeps_channel_mean_and_range():
  x = _images(SHAPE)
  y = saturation(KEY, x)
  np.testing.assert_allclose(y.mean(axis=3), x.mean(axis=3), atol=1e-6)
  # Channels (-0.5, 0, 0.5): mean 0, so the output's last channel is 0.5 * s.
  px = jnp.broadcast_to(jnp.array([-0.5, 0.0, 0.5]), (MANY, 2, 2, 3))
  s = np.asarray(saturation(KEY, px))[..., 2] / 0.5
  np.testing.assert_allclose(s, np.broadcast_to(s[:, :1, :1], s.shape), atol=1e-6)  # per image
  assert s.min() >= 0.0 and s.max() <= 2.0
  assert s.min() < 0.02 and s.max() > 1.98


def test_contrast_keeps_image_mean_and_range():
  x = _images(SHAPE)
  y = contrast(KEY, x)
  np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-6)
  # Pixels +-0.5 in equal numbers: image mean 0, so output / input is the factor c.
  px = jnp.broadcast_to(jnp.array([0.5, -0.5]).reshape(1, 2, 1, 1), (MANY, 2, 2, 3))
  c = np.asarray(contrast(KEY, px) / px)
  np.testing.assert_allclose(c, np.broadcast_to(c[:, :1, :1, :1], c.shape), atol=1e-6)
  assert c.min() >= 0.5 and c.max() <= 1.5
  assert c.min() < 0.51 and c.max() > 1.49


def _shifted(img, dy, dx):
  """out[i, j] = img[i + dy, j + dx], 0 outside (numpy reference)."""
  h, w, _ = img.shape
  out = np.zeros_like(img)
  out[max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
      img[max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
  return out


@pytest.mark.parametrize("ratio,limit", [(0.125, 1), (0.25, 2)])  # 8 * ratio
def test_translation_is_a_zero_filled_shift(ratio, limit):
  x = np.asarray(_images(SHAPE, 0.1, 1.0))  # distinct, no zeros: the shift is identifiable
  y = np.asarray(translation(KEY, jnp.asarray(x), ratio))
  shifts = range(-limit, limit + 1)
  found = []
  for n in range(x.shape[0]):
    matches = [(dy, dx) for dy in shifts for dx in shifts
               if np.array_equal(y[n], _shifted(x[n], dy, dx))]
    assert len(matches) == 1, (n, matches)
    found.append(matches[0])
  dys, dxs = zip(*found)
  assert min(dys) == min(dxs) == -limit and max(dys) == max(dxs) == limit  # inclusive range
  assert len(set(found)) > 3  # per-image draws


def _zero_box(mask):
  """(rows, cols) of the zeroed region if it is one axis-aligned rectangle, else None."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if len(rows) == 0:
    return None
  box = np.zeros_like(mask)
  box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
  if not np.array_equal(box, mask):
    return None
  return rows, cols


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9)])
def test_cutout_one_square_of_half_size(h, w):
  ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  x = jnp.ones((SHAPE[0], h, w, 3))
  y = np.asarray(cutout(KEY, x))
  assert set(np.unique(y)) <= {0.0, 1.0}
  clipped = full = 0
  for n in range(y.shape[0]):
    zero = y[n] == 0
    assert np.array_equal(zero, np.broadcast_to(zero[..., :1], zero.shape))  # all channels
    box = _zero_box(zero[..., 0])
    assert box is not None, n
    for idx, size, cut in ((box[0], h, ch), (box[1], w, cw)):
      assert 1 <= len(idx) <= cut
      if len(idx) < cut:  # only the border may cut the square
        assert idx[0] == 0 or idx[-1] == size - 1
    if len(box[0]) == ch and len(box[1]) == cw:
      full += 1
    else:
      clipped += 1
  assert full > 0 and clipped > 0


def test_cutout_ratio():
  y = np.asarray(cutout(KEY, jnp.ones(SHAPE), ratio=0.25))
  assert (y == 0).sum(axis=(1, 2, 3)).max() == 4 * SHAPE[3]  # a 2x2 square


def test_diff_augment_gradients_flow():
  x = _images(SHAPE)
  w = _images(SHAPE, seed=2)

  @jax.jit
  def grads(v, weights):  # d/dv of sum(aug(v)) and of sum(w * aug(v))
    # One composed policy: a zero or NaN gradient from any op would show through the chain.
    aug = lambda u: diff_augment(KEY, u, "color,translation,cutout")  # noqa: E731
    return (jax.grad(lambda u: jnp.sum(aug(u)))(v),
            jax.grad(lambda u: jnp.sum(weights * aug(u)))(v))

  for g in grads(x, w):
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_diff_augment_jits_once_and_draws_per_key():
  traces = []

  def f(key, x):
    traces.append(None)
    return diff_augment(key, x, "color,translation,cutout")

  jf = jax.jit(f)
  x = _images(SHAPE)
  a = jf(jax.random.PRNGKey(1), x)
  b = jf(jax.random.PRNGKey(2), x)
  assert len(traces) == 1
  assert not np.allclose(a, b)
  np.testing.assert_allclose(jf(jax.random.PRNGKey(1), x), a)


def test_diff_augment_applies_ops_in_order():
  x = _images(SHAPE)
  k = jax.random.split(KEY, 3)
  want = contrast(k[2], saturation(k[1], brightness(k[0], x)))
  np.testing.assert_allclose(diff_augment(KEY, x, "color"), want, atol=1e-6)


def test_empty_policy_is_identity():
  x = _images(SHAPE)
  assert diff_augment(KEY, x, "") is x
  assert parse_policy("") == ()


def test_parse_policy():
  assert set(POLICY_OPS) == {"color", "translation", "cutout"}
  assert parse_policy("color,translation,cutout") == ("color", "translation", "cutout")
  assert parse_policy(" cutout , color") == ("cutout", "color")
  with pytest.raises(ValueError, match=r"'flip'.*color.*translation.*cutout"):
    parse_policy("color,flip")
  with pytest.raises(ValueError, match=r"''"):
    parse_policy("color,,cutout")
  with pytest.raises(ValueError, match="'rotate'"):
    diff_augment(KEY, jnp.zeros((1, 4, 4, 3)), "rotate")
