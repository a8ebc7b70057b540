"""TrivialAugmentWide, op by op, against PIL and explicit NumPy transcriptions of torchvision.

Every op runs at several magnitude bins and both signs on a random uint8 image and on an image
with a flat channel and a sparse one (the equalize / autocontrast edge cases). Outputs are read
back as uint8 (round((x + 1) * 127.5)), which recovers the level exactly since the default mode
works on the uint8 grid.

Tolerances: 0 grey levels against the NumPy formulas (they are torchvision's float32 expressions,
evaluated in the same order) and against PIL where PIL computes the same thing (brightness,
posterize, solarize, equalize). 1 grey level against PIL where PIL rounds differently
(sharpness blends as degenerate + f * (img - degenerate); autocontrast builds its lut in double
precision): both then truncate values that can straddle an integer.
Geometric ops are compared with an explicit inverse map in float64 + nearest (half to even) +
fill, exactly except at source coordinates within 1e-4 of a rounding tie, where torchvision's
float32 grid decides (tests/test_parity_trivial_augment.py checks those against torchvision).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from jaxgen.data import trivial_augment as ta

F32 = np.float32
SIZE = 32
BINS = (0, 1, 5, 15, 20, 30)  # 20: rotate by 90 degrees; 30: the largest magnitudes


def _images() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  edge = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  edge[..., 1] = 77  # flat: equalize and autocontrast leave it unchanged
  edge[..., 2] = 200  # sparse: 20 pixels below the top level, step = 20 // 255 = 0 for equalize
  edge.reshape(-1, 3)[rng.choice(SIZE * SIZE, 20, replace=False), 2] = 10
  return {"random": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), "edge": edge}


IMAGES = _images()
COMBOS = [(op, b, n) for op in range(len(ta.OPS)) for b in BINS for n in (False, True)]


def _to_model(img_u8):
  return jnp.asarray(img_u8, jnp.float32) / 127.5 - 1.0


def _to_u8(x):
  return np.clip(np.round((np.asarray(x) + 1.0) * 127.5), 0, 255).astype(np.int32)


@functools.lru_cache(maxsize=None)
def _compiled(**options):
  """apply_op over every (op, bin, sign) of COMBOS for one image: one compilation per options."""
  ops, bins, negs = (jnp.asarray(v) for v in zip(*COMBOS))
  fn = jax.vmap(functools.partial(ta.apply_op, **options), in_axes=(None, 0, 0, 0))
  return jax.jit(lambda x: fn(x, ops, bins, negs))


def _run_all(img_u8, **options):
  """Our output for every combo of COMBOS: {combo: uint8 image [H, W, 3] (int32)}."""
  return dict(zip(COMBOS, _to_u8(_compiled(**options)(_to_model(img_u8)))))


@functools.lru_cache(maxsize=None)
def _ours(name: str):
  return _run_all(IMAGES[name])


def _magnitude(op_name, b, negate, h=SIZE, w=SIZE, translate_fraction=None):
  mags, signed = ta.augmentation_space(h, w, translate_fraction)[op_name]
  m = float(mags[b])
  return -m if (signed and negate) else m


# --- NumPy transcriptions of torchvision's uint8 tensor path (float32, same operation order) ---

def _blend(a, b, factor):
  return np.floor(np.clip(F32(factor) * a + F32(1.0 - factor) * b, 0, 255))


def _grey(a):
  grey = F32(0.2989) * a[..., 0] + F32(0.587) * a[..., 1] + F32(0.114) * a[..., 2]
  return np.floor(grey)[..., None]


def _blurred(a):
  kernel = np.ones((3, 3), F32)
  kernel[1, 1] = 5.0
  kernel /= kernel.sum()
  h, w = a.shape[:2]
  out = a.copy()
  out[1:-1, 1:-1] = np.round(sum(kernel[i, j] * a[i:i + h - 2, j:j + w - 2]
                                 for i in range(3) for j in range(3)))
  return out


def _autocontrast(a):
  lo, hi = a.min((0, 1), keepdims=True), a.max((0, 1), keepdims=True)
  flat = hi == lo
  scale = np.where(flat, F32(1), F32(255) / np.where(flat, F32(1), hi - lo))
  return np.floor(np.clip((a - np.where(flat, 0, lo)) * scale, 0, 255))


def _pil_per_image(fn):
  return lambda img, m: np.asarray(fn(Image.fromarray(img), m), F32)


NUMPY_REFERENCES = {
    "identity": lambda a, m: a,
    "brightness": lambda a, m: _blend(a, np.zeros_like(a), 1.0 + m),
    "color": lambda a, m: _blend(a, _grey(a), 1.0 + m),
    "contrast": lambda a, m: _blend(a, _grey(a).mean(dtype=F32), 1.0 + m),
    "sharpness": lambda a, m: _blend(a, _blurred(a), 1.0 + m),
    "posterize": lambda a, m: (a.astype(np.uint8) & np.uint8(256 - 2 ** (8 - int(m)))).astype(F32),
    "solarize": lambda a, m: np.where(a >= F32(m), 255 - a, a),
    "autocontrast": lambda a, m: _autocontrast(a),
}
PIL_REFERENCES = {  # op: (reference(uint8 image, magnitude), tolerance in grey levels)
    "brightness": (_pil_per_image(lambda im, m: ImageEnhance.Brightness(im).enhance(1.0 + m)), 0),
    "sharpness": (_pil_per_image(lambda im, m: ImageEnhance.Sharpness(im).enhance(1.0 + m)), 1),
    "posterize": (_pil_per_image(lambda im, m: ImageOps.posterize(im, int(m))), 0),
    "solarize": (_pil_per_image(lambda im, m: ImageOps.solarize(im, m)), 0),
    "autocontrast": (_pil_per_image(lambda im, m: ImageOps.autocontrast(im)), 1),
    "equalize": (_pil_per_image(lambda im, m: ImageOps.equalize(im)), 0),
}


PHOTOMETRIC = [n for n in ta.OPS if n in NUMPY_REFERENCES or n in PIL_REFERENCES]


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("op_name", PHOTOMETRIC)
def test_photometric_op_matches_references(op_name, image):
  img = IMAGES[image]
  a = img.astype(F32)
  op = ta.OPS.index(op_name)
  for b in BINS:
    for negate in (False, True):
      got = _ours(image)[(op, b, negate)]
      m = _magnitude(op_name, b, negate)
      if op_name in NUMPY_REFERENCES:
        expected = NUMPY_REFERENCES[op_name](a, m)
        np.testing.assert_array_equal(got, expected, err_msg=f"{op_name} bin {b} negate {negate}")
      if op_name in PIL_REFERENCES:
        reference, tol = PIL_REFERENCES[op_name]
        err = np.abs(got - reference(img, m)).max()
        assert err <= tol, (op_name, b, negate, err)


def test_equalize_and_autocontrast_edge_channels():
  """Flat channels come back unchanged, and equalize leaves a step == 0 channel unchanged."""
  img = IMAGES["edge"]
  equalized = _ours("edge")[(ta.OPS.index("equalize"), 0, False)]
  np.testing.assert_array_equal(equalized[..., 1:], img[..., 1:])
  assert equalized[..., 0].max() == 255 and not np.array_equal(equalized[..., 0], img[..., 0])
  stretched = _ours("edge")[(ta.OPS.index("autocontrast"), 0, False)]
  np.testing.assert_array_equal(stretched[..., 1], img[..., 1])
  np.testing.assert_array_equal(stretched[..., 2], np.where(img[..., 2] == 200, 255, 0))
  assert stretched[..., 0].min() == 0 and stretched[..., 0].max() == 255


def test_magnitude_tables_follow_torchvision():
  space = ta.augmentation_space(64, 64)
  assert list(space) == list(ta.OPS)
  signed = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
            "contrast", "sharpness"}
  assert {n for n, (_, s) in space.items() if s} == signed
  k = np.arange(ta.NUM_BINS)
  for name in ("shear_x", "shear_y", "brightness", "color", "contrast", "sharpness"):
    np.testing.assert_allclose(space[name][0], 0.99 * k / 30, atol=1e-6)
  np.testing.assert_allclose(space["rotate"][0], 4.5 * k, atol=1e-5)
  np.testing.assert_array_equal(space["solarize"][0], 255 - 8.5 * k)  # exact in float32
  np.testing.assert_array_equal(space["posterize"][0], [8] * 3 + [7] * 5 + [6] * 5 + [5] * 5 +
                                [4] * 5 + [3] * 5 + [2] * 3)
  # torch.linspace(0, 32, 31)[15] is 15.999999 in float32, so torchvision never shifts by 16.
  shifts = [int(m) for m in space["translate_x"][0]]
  assert shifts == list(range(16)) + list(range(17, 31)) + [32]
  assert [int(m) for m in ta.augmentation_space(64, 48, 0.25)["translate_x"][0]][-1] == 12


def _reference_warp(img, op_name, m, fill):
  """Explicit inverse map in pixel coordinates (float64) + nearest (half to even) + fill."""
  h, w = img.shape[:2]
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  xs, ys = x, y
  if op_name == "shear_x":  # torchvision shears about the top-left corner (center=[0, 0])
    xs = x + m * (y + 0.5)
  elif op_name == "shear_y":
    ys = y + m * (x + 0.5)
  elif op_name == "translate_x":  # content moves by +int(m)
    xs = x - int(m)
  elif op_name == "translate_y":
    ys = y - int(m)
  elif op_name == "rotate":  # counter-clockwise (y points down) about the image centre
    a = math.radians(m)
    xc, yc = x - (w - 1) / 2, y - (h - 1) / 2
    xs = math.cos(a) * xc - math.sin(a) * yc + (w - 1) / 2
    ys = math.sin(a) * xc + math.cos(a) * yc + (h - 1) / 2
  ix, iy = np.rint(xs).astype(int), np.rint(ys).astype(int)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = np.where(inside[..., None], img[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)], fill)
  near_tie = (np.abs(xs - np.floor(xs) - 0.5) < 1e-4) | (np.abs(ys - np.floor(ys) - 0.5) < 1e-4)
  return out, inside, near_tie


@pytest.mark.parametrize("op_name", ["shear_x", "shear_y", "translate_x", "translate_y", "rotate"])
def test_geometric_op_matches_inverse_map_and_fills_outside(op_name):
  img = IMAGES["random"]
  op = ta.OPS.index(op_name)
  outside_seen = 0
  for b in BINS:
    for negate in (False, True):
      m = _magnitude(op_name, b, negate)
      expected, inside, near_tie = _reference_warp(img, op_name, m, fill=0)
      got = _ours("random")[(op, b, negate)]
      assert near_tie.mean() < 0.1  # 135 degrees at 32x32: the anti-diagonals land on x.5
      np.testing.assert_array_equal(got[~near_tie], expected[~near_tie],
                                    err_msg=f"{op_name} bin {b} negate {negate}")
      np.testing.assert_array_equal(got[~inside], 0)  # the default fill -1.0 (black)
      outside_seen += int((~inside).sum())
  assert outside_seen > 0


def test_geometric_sign_conventions():
  img = IMAGES["random"]
  shift = _ours("random")[(ta.OPS.index("translate_x"), 5, False)]  # int(5.3333335) = 5 px
  np.testing.assert_array_equal(shift[:, 5:], img[:, :-5])
  np.testing.assert_array_equal(shift[:, :5], 0)
  down = _ours("random")[(ta.OPS.index("translate_y"), 5, True)]  # -5 px: content moves up
  np.testing.assert_array_equal(down[:-5], img[5:])
  rot = _ours("random")[(ta.OPS.index("rotate"), 20, False)]  # +90 degrees, counter-clockwise
  np.testing.assert_array_equal(rot, np.rot90(img))
  np.testing.assert_array_equal(_ours("random")[(ta.OPS.index("shear_x"), 30, True)][0, 0],
                                img[0, 0])  # the top-left corner is the shear's fixed point


def test_options_fill_translate_fraction_bilinear():
  img = IMAGES["random"]
  fill = 0.5  # (0.5 + 1) * 127.5 = 191.25 -> level 191
  ours = _run_all(img, fill=fill, translate_fraction=0.25, interpolation="bilinear")
  tx, ty, rot = ta.OPS.index("translate_x"), ta.OPS.index("translate_y"), ta.OPS.index("rotate")
  # Whole-pixel shifts: bilinear weights are 0 / 1, so they equal nearest exactly.
  np.testing.assert_array_equal(ours[(tx, 30, False)][:, 8:], img[:, :-8])  # 0.25 * 32 = 8 px
  np.testing.assert_array_equal(ours[(tx, 30, False)][:, :8], 191)
  t = int(-_magnitude("translate_y", 15, True, translate_fraction=0.25))  # int(3.9999998) = 3
  assert t == 3
  np.testing.assert_array_equal(ours[(ty, 15, True)][:-t], img[t:])
  np.testing.assert_array_equal(ours[(ty, 15, True)][-t:], 191)
  for negate in (False, True):  # 90 degrees: sources on whole pixels up to float32 rounding
    expected = np.rot90(img, 1 if not negate else -1)
    assert np.abs(ours[(rot, 20, negate)] - expected).max() <= 1
  # 67.5 degrees: sources more than a pixel outside get the fill alone; inside, neighbours mix.
  m = _magnitude("rotate", 15, False)
  nearest, inside, _ = _reference_warp(img, "rotate", m, fill=0)
  h, w = img.shape[:2]
  y, x = np.mgrid[0:h, 0:w] - (h - 1) / 2
  xs = math.cos(math.radians(m)) * x - math.sin(math.radians(m)) * y + (w - 1) / 2
  ys = math.sin(math.radians(m)) * x + math.cos(math.radians(m)) * y + (h - 1) / 2
  far = (xs < -1.01) | (xs > w + 0.01) | (ys < -1.01) | (ys > h + 0.01)
  assert far.sum() > 50
  np.testing.assert_array_equal(ours[(rot, 15, False)][far], 191)
  assert 0 < np.abs(ours[(rot, 15, False)] - nearest)[inside].mean() < 100
  for photometric in range(6, 14):  # the options only concern the geometric ops
    key = (photometric, 30, True)
    np.testing.assert_array_equal(ours[key], _ours("random")[key])
  with pytest.raises(ValueError, match="interpolation"):
    ta.apply_op(_to_model(img), 0, 0, False, interpolation="bicubic")


def test_quantize_false_stays_within_two_levels():
  img = IMAGES["random"]
  ops = np.asarray([c[0] for c in COMBOS])
  fn = _compiled(quantize=False)
  smooth = np.asarray(fn(_to_model(img)))
  exact = np.stack([_ours("random")[c] for c in COMBOS]) / 127.5 - 1.0
  err = np.abs(exact - smooth) * 127.5
  assert err.max() < 2.0  # color, contrast: greyscale and blend not truncated
  is_op = lambda *names: np.isin(ops, [ta.OPS.index(n) for n in names])  # noqa: E731
  assert err[is_op("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
                   "posterize", "solarize", "autocontrast", "equalize")].max() < 1e-3
  # Off the uint8 grid, the continuous input survives identity and whole-pixel shifts.
  rng = np.random.default_rng(1)
  x = jnp.clip(_to_model(img) + jnp.asarray(rng.uniform(-0.4, 0.4, img.shape) / 127.5, jnp.float32),
               -1.0, 1.0)
  off_grid = np.asarray(fn(x))
  identity = off_grid[is_op("identity")]
  np.testing.assert_allclose(identity, np.broadcast_to(x, identity.shape), atol=1e-6)
  shifted = off_grid[COMBOS.index((ta.OPS.index("translate_x"), 5, False))]
  np.testing.assert_allclose(shifted[:, 5:], np.asarray(x)[:, :-5], atol=1e-6)


def test_batched_draw_is_uniform_deterministic_and_in_range():
  rng = np.random.default_rng(2)
  images = _to_model(rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8))

  @jax.jit
  def augment_and_replay(key, x):  # one compilation for everything (XLA shares the common work)
    params = ta.sample_params(key, x.shape[0])
    many = ta.sample_params(jax.random.fold_in(key, 1), 14_000)
    return ta.trivial_augment_wide(key, x), jax.vmap(ta.apply_op)(x, *params), params, many

  out, replay, (ops, _, _), many = augment_and_replay(jax.random.key(0), images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(out), np.asarray(replay))  # the draw is sample_params'
  again, _, _, _ = augment_and_replay(jax.random.key(0), images)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))  # deterministic per key
  other, _, _, _ = augment_and_replay(jax.random.key(1), images)
  assert not np.array_equal(np.asarray(out), np.asarray(other))
  changed = np.abs(np.asarray(out) - np.asarray(images)).max(axis=(1, 2, 3)) > 0
  assert changed[np.asarray(ops) != 0].mean() > 0.7  # most non-identity draws change the image

  ops, bins, negate = (np.asarray(v) for v in many)
  counts = np.bincount(ops, minlength=len(ta.OPS))
  assert len(counts) == 14 and counts.min() > 850 and counts.max() < 1150  # 1000 +- ~5 sigma
  assert set(np.unique(bins)) == set(range(ta.NUM_BINS))
  assert 0.47 < negate.mean() < 0.53
