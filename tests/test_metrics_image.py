"""PSNR and SSIM against scikit-image (`skimage.metrics`), the independent float64 reference."""

import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxgen.errors import DataError
from jaxgen.metrics import psnr, ssim


def _structured(n, h, w, c, rng):
  """Smooth gradients, a disc and stripes plus mild noise: images with real structure."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  out = []
  for i in range(n):
    r = np.hypot(yy - h * (0.3 + 0.1 * i), xx - w * 0.5)
    chans = [128 + 100 * np.sin(xx / (3 + i + k)) * (r < h / 3) + 0.5 * yy + 10 * k
             for k in range(c)]
    img = np.stack(chans, -1) + rng.normal(0, 4, (h, w, c))
    out.append(np.clip(img, 0, 255))
  return np.round(np.stack(out)).astype(np.uint8)


def _sk_ssim(a, b, data_range):
  return np.array([structural_similarity(x.astype(np.float64), y.astype(np.float64),
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=data_range,
                                         channel_axis=-1) for x, y in zip(a, b)])


def _sk_psnr(a, b, data_range):
  return np.array([peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64),
                                           data_range=data_range) for x, y in zip(a, b)])


@pytest.fixture(scope="module")
def pairs():
  rng = np.random.default_rng(0)
  rand_a = rng.integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
  rand_b = rng.integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
  struct_a = _structured(3, 32, 28, 3, rng)
  noise = rng.normal(0, 12, struct_a.shape)
  struct_b = np.clip(struct_a + noise, 0, 255).astype(np.uint8)
  return {"random": (rand_a, rand_b), "structured": (struct_a, struct_b)}


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_uint8_matches_skimage(pairs, kind):
  a, b = pairs[kind]
  got = np.asarray(jax.jit(ssim)(a, b))
  # float32 JAX vs float64 scikit-image: 1e-5 absolute on values in [-1, 1] (seen: ~1e-6).
  np.testing.assert_allclose(got, _sk_ssim(a, b, 255.0), atol=1e-5)


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_ssim_float_matches_skimage(pairs, kind):
  a, b = pairs[kind]
  fa, fb = a.astype(np.float32) / 127.5 - 1.0, b.astype(np.float32) / 127.5 - 1.0  # [-1, 1]
  got = np.asarray(ssim(fa, fb, data_range=2.0))
  np.testing.assert_allclose(got, _sk_ssim(fa, fb, 2.0), atol=1e-5)  # same tolerance as uint8


def test_ssim_single_channel_and_hwc(pairs):
  a, b = pairs["structured"]
  a1, b1 = a[..., :1], b[..., :1]
  ref = _sk_ssim(a1, b1, 255.0)
  np.testing.assert_allclose(np.asarray(ssim(a1, b1)), ref, atol=1e-5)
  np.testing.assert_allclose(float(ssim(a1[0], b1[0])), ref[0], atol=1e-5)  # HWC -> scalar


def test_ssim_identity_and_errors(pairs):
  a, _ = pairs["structured"]
  np.testing.assert_allclose(np.asarray(ssim(a, a)), 1.0, atol=1e-6)  # exact up to rounding
  with pytest.raises(DataError):
    ssim(a[:, :8, :8], a[:, :8, :8])  # smaller than the 11x11 window
  with pytest.raises(DataError):
    ssim(a, a[:, :-1])


@pytest.mark.parametrize("kind", ["random", "structured"])
def test_psnr_matches_skimage(pairs, kind):
  a, b = pairs[kind]
  got = np.asarray(jax.jit(psnr)(a, b))
  np.testing.assert_allclose(got, _sk_psnr(a, b, 255.0), rtol=1e-5)  # float32 log10: 1e-5 rel
  fa, fb = a.astype(np.float32) / 255.0, b.astype(np.float32) / 255.0
  np.testing.assert_allclose(np.asarray(psnr(fa, fb, data_range=1.0)), _sk_psnr(fa, fb, 1.0),
                             rtol=1e-5)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_float_images_need_an_explicit_data_range(pairs, metric):
  """Float inputs without data_range are refused in one line (not scored as [0, 255]: PSNR of
  [0, 1] images would come out ~48 dB too high); uint8 keeps 255; a bad range is refused too."""
  a, b = pairs["random"]
  fa, fb = a.astype(np.float32) / 255.0, b.astype(np.float32) / 255.0
  for x, y in ((fa, fb), (a, fb)):
    with pytest.raises(DataError, match="without data_range; expected uint8 images or an explicit") as err:
      metric(x, y)
    assert "\n" not in str(err.value)
  with pytest.raises(DataError, match="data_range=0"):
    metric(a, b, data_range=0)
  np.testing.assert_allclose(np.asarray(metric(a, b)), np.asarray(metric(a, b, data_range=255.0)))
  np.testing.assert_allclose(np.asarray(metric(fa, fb, data_range=1.0)),
                             np.asarray(metric(a, b)), rtol=1e-4)


def test_psnr_identical_is_inf(pairs):
  a, _ = pairs["random"]
  assert np.all(np.isinf(np.asarray(psnr(a, a))))
  with pytest.raises(DataError):
    psnr(a[0, 0], a[0, 0])  # 2-D input is not an image batch
