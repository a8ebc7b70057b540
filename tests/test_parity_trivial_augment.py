"""Opt-in parity of `jaxgen.data.trivial_augment` with torchvision (run with -m torch).

Every (op, magnitude bin, sign) of TrivialAugmentWide is applied to uint8 tensors by
torchvision's own `autoaugment._apply_op` (the code path of `transforms.TrivialAugmentWide`,
tensor input, interpolation NEAREST, fill None) and by `apply_op`; the default options must
agree exactly (0 grey levels) on random images, a narrow-range image and an image with flat and
sparse channels, rounding ties of the nearest-neighbour geometric ops included. The magnitude
tables must be torchvision's float32 values bit for bit. Bilinear interpolation is allowed 1
grey level (torch and we compute the bilinear weights in a different float32 order).

`transforms.v2.TrivialAugmentWide` is a different implementation: its color / sharpness /
autocontrast round differently (within 1 grey level of v1) and its solarize threshold is
255 * linspace(1, 0) in float32, which at even bins lands a hair off the integer v1 threshold, so
pixels exactly at the threshold can differ. That test documents those differences.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import trivial_augment as ta

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from torchvision.transforms import InterpolationMode, v2  # noqa: E402
from torchvision.transforms import autoaugment as tv_autoaugment  # noqa: E402

TV_NAMES = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
            "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
COMBOS = [(op, b, n) for op in range(len(ta.OPS)) for b in range(ta.NUM_BINS) for n in (0, 1)]


def _images():
  rng = np.random.default_rng(0)
  edge = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  edge[..., 1] = 77
  edge[..., 2] = 200
  edge.reshape(-1, 3)[rng.choice(32 * 32, 20, replace=False), 2] = 10
  return {
      "random32": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
      "random64": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
      "narrow48x40": np.clip(rng.normal(128, 20, (48, 40, 3)), 0, 255).astype(np.uint8),
      "edge32": edge,
  }


IMAGES = _images()


@functools.lru_cache(maxsize=None)
def _ours(name, **options):
  """[len(COMBOS), H, W, 3] int32 levels for every (op, bin, sign)."""
  ops, bins, negs = (jnp.asarray(v) for v in zip(*COMBOS))
  fn = jax.jit(jax.vmap(functools.partial(ta.apply_op, **options), in_axes=(None, 0, 0, 0)))
  out = fn(jnp.asarray(IMAGES[name], jnp.float32) / 127.5 - 1.0, ops, bins, negs.astype(bool))
  return np.clip(np.round((np.asarray(out) + 1.0) * 127.5), 0, 255).astype(np.int32)


def _torchvision(img, op, b, negate, interpolation=InterpolationMode.NEAREST, fill=None):
  space = tv_autoaugment.TrivialAugmentWide()._augmentation_space(ta.NUM_BINS)
  mags, signed = space[TV_NAMES[op]]
  magnitude = float(mags[b].item()) if mags.ndim > 0 else 0.0
  if signed and negate:
    magnitude *= -1.0
  t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
  out = tv_autoaugment._apply_op(t, TV_NAMES[op], magnitude, interpolation=interpolation, fill=fill)
  return out.permute(1, 2, 0).numpy().astype(np.int32)


def _errors(name, ours, **tv_kwargs):
  """Per op: (max abs error in grey levels, number of differing pixel values)."""
  errors = {}
  for i, (op, b, n) in enumerate(COMBOS):
    d = np.abs(ours[i] - _torchvision(IMAGES[name], op, b, n, **tv_kwargs))
    worst, count = errors.get(ta.OPS[op], (0, 0))
    errors[ta.OPS[op]] = (max(worst, int(d.max())), count + int((d > 0).sum()))
  return errors


def test_magnitude_tables_are_torchvision_bits():
  space = tv_autoaugment.TrivialAugmentWide()._augmentation_space(ta.NUM_BINS)
  ours = ta.augmentation_space(64, 64)
  for name, tv_name in zip(ta.OPS, TV_NAMES):
    mags, signed = space[tv_name]
    expected = np.broadcast_to(mags.numpy().astype(np.float32), (ta.NUM_BINS,))
    np.testing.assert_array_equal(ours[name][0], expected, err_msg=name)
    assert ours[name][1] == signed, name
  for fraction in (32 / 224, 0.25, 0.3, 0.5):  # the translate_fraction tables use torch's linspace
    for size in (16, 48, 64):
      np.testing.assert_array_equal(ta.augmentation_space(size, size, fraction)["translate_x"][0],
                                    torch.linspace(0.0, fraction * size, ta.NUM_BINS).numpy())


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_op_bin_and_sign_matches_torchvision_exactly(name):
  errors = _errors(name, _ours(name))
  assert set(errors) == set(ta.OPS)
  assert all(worst == 0 for worst, _ in errors.values()), errors


def test_fill_and_bilinear_options_match_torchvision():
  name = "random32"
  geometric = [i for i, c in enumerate(COMBOS) if 1 <= c[0] <= 5]
  ours = _ours(name, fill=0.5)  # torchvision fill=[191.25] * 3, rounded back to uint8: 191
  for i in geometric:
    expected = _torchvision(IMAGES[name], *COMBOS[i], fill=[191.25] * 3)
    np.testing.assert_array_equal(ours[i], expected, err_msg=str(COMBOS[i]))
  ours = _ours(name, interpolation="bilinear")  # fill=None: outside taps weigh in as 0
  diffs = [np.abs(ours[i] - _torchvision(IMAGES[name], *COMBOS[i],
                                         interpolation=InterpolationMode.BILINEAR))
           for i in geometric]
  assert max(int(d.max()) for d in diffs) <= 1
  assert np.mean([(d > 0).mean() for d in diffs]) < 0.01


def test_translate_fraction_matches_torchvision_at_the_scaled_magnitudes():
  name, fraction = "random64", 0.25
  ours = _ours(name, translate_fraction=fraction)
  space = ta.augmentation_space(64, 64, fraction)
  t = torch.from_numpy(IMAGES[name]).permute(2, 0, 1).contiguous()
  for i, (op, b, n) in enumerate(COMBOS):
    if ta.OPS[op] in ("translate_x", "translate_y"):
      magnitude = float(space[ta.OPS[op]][0][b]) * (-1.0 if n else 1.0)
      expected = tv_autoaugment._apply_op(t, TV_NAMES[op], magnitude,
                                          interpolation=InterpolationMode.NEAREST, fill=None)
      np.testing.assert_array_equal(ours[i], expected.permute(1, 2, 0).numpy())


def test_transforms_v2_differs_by_at_most_one_level_except_solarize_at_threshold():
  augment = v2.TrivialAugmentWide()
  v1_thresholds = ta.augmentation_space(32, 32)["solarize"][0]
  for name in ("random32", "narrow48x40"):
    img = IMAGES[name]
    ours = _ours(name)
    t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    for i, (op, b, n) in enumerate(COMBOS):
      make, signed = augment._AUGMENTATION_SPACE[TV_NAMES[op]]
      mags = make(ta.NUM_BINS, img.shape[0], img.shape[1])
      magnitude = float(mags[b]) if mags is not None and mags.ndim > 0 else 0.0
      if signed and n:
        magnitude *= -1.0
      ref = augment._apply_image_or_video_transform(
          t, TV_NAMES[op], magnitude, interpolation=InterpolationMode.NEAREST, fill=augment._fill)
      d = np.abs(ours[i] - ref.permute(1, 2, 0).numpy().astype(np.int32))
      if ta.OPS[op] == "solarize":
        assert np.all(img[d > 0] == v1_thresholds[b]), (name, b)
      else:
        assert d.max() <= 1, (name, ta.OPS[op], b, n, int(d.max()))
