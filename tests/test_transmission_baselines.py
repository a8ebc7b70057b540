"""Lossy-codec baselines of MVLD's transmission study: codecs, byte counts, fills, RD fronts."""

import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from jaxgen.mvld import transmission_baselines as tb


def _views(n=3, v=4, size=16, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.integers(40, 200, (n, v, 1, 1, 3))
  ramp = np.linspace(0, 50, size)[None, None, :, None, None]
  return np.clip(base + ramp + rng.integers(0, 8, (n, v, size, size, 3)), 0, 255).astype(np.uint8)


def test_codecs_decode_like_pil_and_count_bytes():
  img = _views(1, 1)[0, 0]
  # JPEG: decoded pixels are PIL's; counted bytes = the file minus everything up to the end of the
  # SOS header (parsed by hand here: marker, 2-byte length L, then L - 2 bytes).
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=40)
  data = buf.getvalue()
  dec, counted, files = tb.codec_roundtrip(img[None], "jpeg", 40)
  np.testing.assert_array_equal(dec[0], np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
  sos = data.index(b"\xff\xda")
  assert files[0] == len(data) and counted[0] == len(data) - sos - 2 - (data[sos + 2] << 8 | data[sos + 3])
  assert data[-2:] == b"\xff\xd9" and 0 < counted[0] < files[0] - 300  # the JFIF tables are big
  # PNG is lossless; WebP lossy but close at q 95; downsampling keeps the shape.
  dec, counted, files = tb.codec_roundtrip(img[None], "png", 0)
  np.testing.assert_array_equal(dec[0], img)
  assert counted[0] == files[0]
  dec, _, _ = tb.codec_roundtrip(img[None], "webp", 95)
  assert dec.shape == (1, 16, 16, 3) and np.abs(dec.astype(int) - img).mean() < 6
  dec, counted, _ = tb.codec_roundtrip(img[None], "downsample", 4)
  small = np.asarray(Image.fromarray(img).resize((4, 4), Image.BOX))
  np.testing.assert_array_equal(dec[0], np.asarray(Image.fromarray(small).resize((16, 16), Image.BILINEAR)))
  png_small = io.BytesIO()
  Image.fromarray(small).save(png_small, format="PNG")
  assert counted[0] == len(png_small.getvalue())
  with pytest.raises(ValueError, match="codec"):
    tb.codec_roundtrip(img[None], "gif", 1)


def test_rd_front_and_bytes_at_psnr_follow_the_formula():
  pts = [(100, 20.0), (50, 18.0), (400, 26.0), (200, 19.0), (300, 24.0)]
  assert tb.rd_front(pts) == [(50, 18.0), (100, 20.0), (300, 24.0), (400, 26.0)]
  need, how = tb.bytes_at_psnr(pts, 22.0)  # halfway from (100, 20) to (300, 24) in log bytes
  assert how == "interpolated" and need == pytest.approx(math.sqrt(100 * 300), rel=1e-12)
  assert tb.bytes_at_psnr(pts, 17.0) == (50.0, "at most")
  assert tb.bytes_at_psnr(pts, 26.5) == (None, "not reached")
  need, how = tb.bytes_at_psnr(pts, 26.0)
  assert how == "interpolated" and need == pytest.approx(400.0, rel=1e-12)


def test_object_psnr_pools_the_views_of_an_object():
  from jaxgen.mvld.transmission import object_psnr
  true = np.zeros((2 * 4, 2, 2, 3), np.uint8)
  got = true.copy()
  got[0] = 10  # object 0: one view off by 10 of 4 -> MSE 25; object 1 exact -> inf
  assert object_psnr(got[:4], true[:4], 4) == pytest.approx(10 * math.log10(255 ** 2 / 25.0))
  assert object_psnr(got, true, 4) == math.inf
  assert tb.bytes_at_psnr([(10, 20.0), (50, math.inf)], 30.0) == (50, "at most")


def test_run_baselines_fills_and_averages_over_subsets():
  """Toy judge = mean absolute error; a 'generator' that returns the true views makes every
  generated row as good as its sent views allow, and a lossless PNG + generate row exact."""
  images = _views()
  n, v = images.shape[:2]
  labels = np.arange(n)
  calls = []

  def judge(got, true, lab):
    assert got.shape == true.shape and len(lab) == len(got)
    err = np.abs(got.astype(float) - true).mean(axis=(1, 2, 3))
    mse = ((got.astype(float) - true) ** 2).mean(axis=(1, 2, 3))
    return {"mse": mse, "ssim": np.zeros(len(got)), "lpips": err, "correct": np.zeros(len(got))}

  def oracle(key, received_images, received):
    calls.append(received_images.shape[0])
    assert received.shape == received_images.shape[:2]
    m = received_images.shape[0] // n
    return np.concatenate([images] * m)

  schemes = [("png", 0), ("jpeg", 30)]
  rows = tb.run_baselines(images, labels, judge, oracle, schemes=schemes, fills=["generate", "grey"],
                          key=jax.random.key(0))
  by = {(r["codec"], r["fill"], r["views_sent"]): r for r in rows}
  assert len(rows) == len(schemes) * (2 * (v - 1) + 1)
  assert calls == [n * len(schemes)] * (2 ** v - 2)  # one call per subset with something missing
  grey_err = np.abs(128.0 - images).mean(axis=(2, 3, 4))  # [N, V]
  grey_mse = ((128.0 - images.astype(float)) ** 2).mean(axis=(2, 3, 4))
  for k in range(1, v):
    assert by[("png", "generate", k)]["lpips"] == 0.0 and by[("png", "generate", k)]["psnr"] == np.inf
    # grey fill: the v - k unsent views are mid-grey; sent views exact (PNG): every view is unsent
    # in the same number of subsets, so the mean is (V - k) / V of the all-grey error
    assert by[("png", "grey", k)]["lpips"] == pytest.approx(grey_err.mean() * (v - k) / v, rel=1e-9)
    assert by[("jpeg", "generate", k)]["lpips"] < by[("jpeg", "grey", k)]["lpips"]
  # pooled PSNR for k = V - 1 by hand: each subset leaves out view u; the object's MSE is
  # grey_mse[:, u] / V
  expected = np.mean([10 * np.log10(255.0 ** 2 / (grey_mse[:, u] / v)) for u in range(v)])
  assert by[("png", "grey", v - 1)]["psnr"] == pytest.approx(expected, rel=1e-9)
  assert by[("png", "none", v)]["lpips"] == 0.0
  png = tb.codec_roundtrip(images, "png", 0)[1]
  assert by[("png", "none", v)]["bytes"] == pytest.approx(png.sum(1).mean() + 1)
  # bytes of k views: mean over subsets of the sent views' bytes, + the 1-byte mask (V = 4)
  assert by[("png", "grey", 1)]["bytes"] == pytest.approx(png.mean() * 1 + 1)


def test_equal_psnr_table_uses_mvld_front():
  mvld = [{"views_sent": 1, "bits": 8, "bytes": 65, "psnr": 20.0},
          {"views_sent": 1, "bits": 32, "bytes": 257, "psnr": 20.0},
          {"views_sent": 2, "bits": 8, "bytes": 129, "psnr": 22.0}]
  base = [{"codec": "jpeg", "param": q, "fill": "grey", "views_sent": 1, "bytes": b, "psnr": p}
          for q, b, p in ((10, 100, 19.0), (50, 400, 23.0))]
  base.append({"codec": "jpeg", "param": 50, "fill": "none", "views_sent": 4, "bytes": 1000, "psnr": 30.0})
  table = tb.equal_psnr_table(mvld, base)
  assert [(r["views_sent"], r["bits"]) for r in table] == [(1, 8), (2, 8)]
  need = table[0]["baselines"]["JPEG + grey"]
  expected = math.exp(math.log(100) + 0.25 * (math.log(400) - math.log(100)))
  assert need["how"] == "interpolated" and need["bytes"] == pytest.approx(expected)
  assert need["ratio"] == pytest.approx(expected / 65)
  # the all-views row is an operating point of the 'generate' family too
  assert table[1]["baselines"]["JPEG + generate"]["how"] == "at most"
