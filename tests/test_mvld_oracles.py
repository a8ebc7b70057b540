"""Oracles for MVLD's evaluation: Table I and the transmission study with a toy judge and known
images (a generator returning the true views gives the maxima, a grey one closed-form values), and
a round trip through the Python API on a hand-built, untrained workdir."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from jaxgen.errors import DataError
from jaxgen.mvld import evaluate as mvld_eval
from jaxgen.mvld import transmission

N, V, SIZE, GREY = 6, 4, 16, 128
# The toy judge's two classes: the nearer of these mean colours (class 1 is grey). Two classes keep
# the number of intra-class KID shapes, hence compilations, small.
PROTOTYPES = np.array([[200, 50, 50], [128, 128, 128]], np.float64)
# Object colours and labels: objects 1 and 3 are grey-ish (class 1); object 5 is grey-ish but
# labelled 0, so the toy judge is right on 5 of the 6 objects' real views.
COLOURS = np.array([[200, 60, 50], [120, 135, 125], [190, 40, 70], [135, 120, 130], [210, 80, 40],
                    [125, 130, 135]], np.float64)
LABELS = np.array([0, 1, 0, 1, 0, 0])
REAL_COHERENCE = 5 / 6


def _known_images() -> np.ndarray:
  """uint8 [N, V, 16, 16, 3]: each object's colour, a per-view brightness offset and a fixed
  texture (so SSIM and per-image PSNR differ between images)."""
  rng = np.random.default_rng(0)
  offsets = np.array([-15.0, -5.0, 5.0, 15.0])
  texture = rng.uniform(-25, 25, (N, V, SIZE, SIZE, 3))
  x = COLOURS[:, None, None, None, :] + offsets[None, :, None, None, None] + texture
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _as_f64(x):
  return np.asarray(x, np.float64)


def _mean_rgb(x):
  return _as_f64(x).mean(axis=(1, 2))


def _toy_logits(x):
  """Negative squared distance of the mean colour to each prototype: argmax = nearest class."""
  return -(((_mean_rgb(x)[:, None, :] - PROTOTYPES[None]) / 255.0) ** 2).sum(-1)


def _toy_features(x):
  """Per-channel means and standard deviations on the [0, 1] scale: [N, 6]."""
  f = _as_f64(x) / 255.0
  return np.concatenate([f.mean(axis=(1, 2)), f.std(axis=(1, 2))], axis=-1)


def _toy_lpips(x, y):
  """Mean absolute pixel difference on the [0, 1] scale: [N]."""
  return np.abs(_as_f64(x) - _as_f64(y)).mean(axis=(1, 2, 3)) / 255.0


def _toy_judges():
  return mvld_eval.Judges(logits=_toy_logits, features=_toy_features, lpips=_toy_lpips,
                          feature_network="toy means/stds", lpips_network="toy L1")


def _psnr_np(x, y):
  mse = ((_as_f64(x) - _as_f64(y)) ** 2).mean()
  return 10.0 * np.log10(255.0 ** 2 / mse)


def _run_table1(generate, reconstruct, images, batch_size=4):
  return mvld_eval.evaluate_table1(generate, reconstruct, images, LABELS, _toy_judges(),
                                   observed_counts=[1, 2, 3], key=jax.random.key(0),
                                   batch_size=batch_size, seed=0)


def _expected_counts():
  # N objects x C(V, k) conditioning sets x (V - k) missing views.
  return {k: N * math.comb(V, k) * (V - k) for k in (1, 2, 3)}


def test_known_images_are_judged_as_designed():
  """The construction the other oracles rely on: the toy judge labels each object's views with
  the class of its colour (so it is right on 5 of 6 objects), and a grey image is class 1."""
  images = _known_images()
  judged = np.argmax(_toy_logits(images.reshape((-1, SIZE, SIZE, 3))), -1).reshape(N, V)
  np.testing.assert_array_equal(judged, np.repeat([[0], [1], [0], [1], [0], [1]], V, axis=1))
  assert np.mean(judged == LABELS[:, None]) == REAL_COHERENCE
  grey = np.full((1, SIZE, SIZE, 3), GREY, np.uint8)
  assert int(np.argmax(_toy_logits(grey), -1)[0]) == 1


def test_table1_of_a_generator_returning_the_true_views_is_the_maximum():
  """Oracle generator (returns the true views) and identity autoencoder: every column has
  PSNR = +inf, SSIM = 1 (atol 1e-6), LPIPS = 0 (exact, toy L1), coherence = the toy judge's
  accuracy on real views (5/6, = real_views coherence), FID ~ 0 (atol 1e-4: float32 Bures form on
  [0, 1]-scale features), and N * C(V, k) * (V - k) generated views per k."""
  images = _known_images()
  calls = []

  def oracle(key, batch, observed):
    calls.append(np.asarray(observed).copy())
    return np.array(batch)

  table, examples = _run_table1(oracle, lambda x: np.array(x), images)
  counts = _expected_counts()
  for column in ("1", "2", "3", "autoencoder"):
    row = table[column]
    assert row["psnr"] == np.inf, (column, row["psnr"])
    assert row["ssim"] == pytest.approx(1.0, abs=1e-6), column
    assert row["lpips"] == 0.0, column
    assert row["coherence"] == pytest.approx(REAL_COHERENCE, abs=1e-6), column
    assert abs(row["fid"]) < 1e-4, (column, row["fid"])
  for k, n in counts.items():
    assert table[str(k)]["num_generated_views"] == n
    assert table[str(k)]["fid_num_images"] == min(counts.values())  # equal-size FID subsamples
  assert table["real_views"]["coherence"] == pytest.approx(REAL_COHERENCE, abs=1e-12)
  # Every conditioning set was asked for, in batches of 4 then 2 objects, with its own mask.
  masks = {tuple(m[0].astype(int)) for m in calls}
  assert masks == {tuple(int(v in s) for v in range(V)) for k in (1, 2, 3)
                   for s in itertools.combinations(range(V), k)}
  assert all((m == m[0]).all() and m.shape[1] == V for m in calls)
  assert sorted({len(m) for m in calls}) == [2, 4]
  assert examples[1][0] == (0,) and examples[1][1].shape == images.shape


def test_table1_of_a_grey_generator_matches_closed_forms():
  """Grey generator (missing views mid-grey 128, observed views returned as given) and a grey
  autoencoder: each column equals values computed here in float64 from the known images.

  Every view is missing equally often across the conditioning sets of one size, so each k's
  means equal the mean over all N * V images of: PSNR 10 log10(255^2 / MSE) per image (rtol 1e-5),
  scikit-image SSIM per image (abs 5e-5: jaxgen's float32 SSIM of these bright, low-contrast
  views against a constant image is measured 2.0e-5 below scikit-image's float64 on the mean,
  1.2e-5 to 3.0e-5 per image, all low; float64 JAX agrees to 1e-13), toy LPIPS (rtol 1e-6).
  Coherence = fraction of objects labelled 1 (the toy judge's class of grey) = 1/3. FID of k = 3
  and of the autoencoder (their subsample is every image) = ||f_grey - mu||^2 + tr(C) (rtol 1e-4),
  as grey features have zero covariance."""
  images = _known_images()
  flat = images.reshape((-1, SIZE, SIZE, 3))
  grey = np.full_like(flat, GREY)

  def grey_generator(key, batch, observed):
    keep = np.asarray(observed, bool)[:, :, None, None, None]
    return np.where(keep, batch, np.uint8(GREY))

  table, _ = _run_table1(grey_generator, lambda x: np.full_like(np.asarray(x), GREY), images)
  psnr = np.mean([_psnr_np(g, t) for g, t in zip(grey, flat)])
  ssim = np.mean([structural_similarity(t, g, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255,
                                        channel_axis=-1) for g, t in zip(grey, flat)])
  lpips = np.mean(np.abs(flat.astype(np.float64) - GREY)) / 255.0
  coherence = np.mean(LABELS == 1)
  assert 0.3 < coherence < 0.4 and 5.0 < psnr < 20.0 and 0.0 < ssim < 0.5  # not degenerate
  feats = _toy_features(flat)
  f_grey = np.array([GREY / 255.0] * 3 + [0.0] * 3)
  fid = np.sum((f_grey - feats.mean(0)) ** 2) + np.trace(np.cov(feats, rowvar=False))
  counts = _expected_counts()
  for column in ("1", "2", "3", "autoencoder"):
    row = table[column]
    assert row["psnr"] == pytest.approx(psnr, rel=1e-5), column
    assert row["ssim"] == pytest.approx(ssim, abs=5e-5), column
    assert row["lpips"] == pytest.approx(lpips, rel=1e-6), column
    assert row["coherence"] == pytest.approx(coherence, abs=1e-6), column
  for column in ("3", "autoencoder"):
    assert table[column]["fid"] == pytest.approx(fid, rel=1e-4), column
  for k, n in counts.items():
    assert table[str(k)]["num_generated_views"] == n
  assert table["real_views"]["coherence"] == pytest.approx(REAL_COHERENCE, abs=1e-12)


# --- transmission study --------------------------------------------------------------------------

LATENT = 5
BITS = [32, 4]


def _toy_encode(images):
  """Standardised latents [N, V, 5]: mean colour, a brightness and a constant, all O(1)."""
  m = _as_f64(images).mean(axis=(2, 3)) / 64.0 - 2.0
  return np.concatenate([m, m.mean(-1, keepdims=True) ** 2, np.ones(m.shape[:-1] + (1,))],
                        axis=-1).astype(np.float32)


def _grey_mse(images):
  """mean((true - 128)^2) per view: [N, V]."""
  return ((_as_f64(images) - GREY) ** 2).mean(axis=(2, 3, 4))


def _study(images, receive, view_loss_prob=0.0):
  z = _toy_encode(images)
  lo, hi = z.reshape(-1, LATENT).min(0), z.reshape(-1, LATENT).max(0)
  hi = np.where(hi > lo, hi, lo + 1.0)  # the constant dimension needs a range

  def judge(generated, true, labels):
    assert generated.shape == true.shape == (N * V, SIZE, SIZE, 3) and len(labels) == N * V
    return {"psnr": transmission.object_psnr(generated, true, V),
            "lpips": float(np.mean(_toy_lpips(generated, true)))}

  rows = transmission.run_study(_toy_encode, receive, images, LABELS, judge, latent_dim=LATENT,
                                bits_list=BITS, bit_error_rate=0.0, view_loss_prob=view_loss_prob,
                                lo=lo, hi=hi, key=jax.random.key(0), seed=0)
  return rows, z, lo, hi


def _check_bytes(rows):
  expected = [(k, b) for k in range(1, V + 1) for b in BITS]
  assert [(r["views_sent"], r["bits"]) for r in rows] == expected
  for r in rows:
    k, bits = r["views_sent"], r["bits"]
    assert r["bytes"] == math.ceil(V / 8) + math.ceil(k * LATENT * bits / 8), r
    assert r["raw_bytes"] == k * SIZE * SIZE * 3 and r["png_bytes"] > 0
  for v in (2, 8, 9, 16, 17):  # the V-bit header beyond one byte (not reached at V = 4)
    expected_bytes = math.ceil(v / 8) + math.ceil(3 * LATENT * 4 / 8)
    assert transmission.payload_bytes(3, LATENT, 4, v) == expected_bytes, v


def test_transmission_study_of_an_oracle_receiver_is_the_maximum():
  """A receiver returning the true views whatever arrives: every row has PSNR = +inf and toy
  LPIPS = 0 (exact), and bytes = ceil(V / 8) + ceil(k * L * bits / 8) (V-bit header). The latents
  it receives are the sent views' (bit-exact at 32 bits, within half a level at 4 bits) and zero
  for the views not sent."""
  images = _known_images()
  seen = []

  def oracle(key, z_rx, received):
    seen.append((np.asarray(z_rx).copy(), np.asarray(received).copy()))
    return images.copy()

  rows, z, lo, hi = _study(images, oracle)
  _check_bytes(rows)
  for r in rows:
    assert r["psnr"] == np.inf and r["lpips"] == 0.0, r
  calls = iter(seen)
  for k in range(1, V + 1):
    for bits in BITS:
      for subset in itertools.combinations(range(V), k):
        z_rx, received = next(calls)
        expected = np.zeros((N, V), np.float32)
        expected[:, list(subset)] = 1.0
        np.testing.assert_array_equal(received, expected)
        sent = list(subset)
        unsent = [v for v in range(V) if v not in subset]
        assert (z_rx[:, unsent] == 0).all()
        if bits == 32:
          np.testing.assert_array_equal(z_rx[:, sent], z[:, sent])
        else:
          step = (hi - lo) / (2 ** bits - 1)
          assert (np.abs(z_rx[:, sent] - z[:, sent]) <= step / 2 + 1e-6).all()
  assert next(calls, None) is None


def test_transmission_study_with_grey_unsent_views_matches_the_pooled_psnr():
  """Receiver: the true view where received, grey 128 elsewhere. Per object the MSE is pooled over
  its V views, so with the views of S exact MSE_i = (1/V) sum_{v not in S} mean((x_iv - 128)^2);
  each row's PSNR is the mean over subsets of size k of mean_i 10 log10(255^2 / MSE_i)
  (rtol 1e-9, both float64), +inf for k = V. With every view lost (view_loss_prob = 1) the bytes
  are unchanged and every row is the all-grey value."""
  images = _known_images()

  def grey_receiver(key, z_rx, received):
    keep = np.asarray(received, bool)[:, :, None, None, None]
    return np.where(keep, images, np.uint8(GREY))

  mse = _grey_mse(images)
  # One subset directly: S = {0} of V = 4, so MSE_i = (V - 1)/V * mean of the 3 unsent views' MSE.
  out = np.where(np.arange(V)[None, :, None, None, None] == 0, images, np.uint8(GREY))
  direct = transmission.object_psnr(out.reshape((-1, SIZE, SIZE, 3)),
                                    images.reshape((-1, SIZE, SIZE, 3)), V)
  closed = np.mean(10 * np.log10(255.0 ** 2 / ((V - 1) / V * mse[:, 1:].mean(1))))
  assert direct == pytest.approx(closed, rel=1e-9)

  rows, _, _, _ = _study(images, grey_receiver)
  _check_bytes(rows)
  for r in rows:
    k = r["views_sent"]
    if k == V:
      assert r["psnr"] == np.inf, r
      continue
    per_subset = []
    for subset in itertools.combinations(range(V), k):
      unsent = [v for v in range(V) if v not in subset]
      pooled = mse[:, unsent].sum(1) / V
      per_subset.append(np.mean(10 * np.log10(255.0 ** 2 / pooled)))
    assert r["psnr"] == pytest.approx(np.mean(per_subset), rel=1e-9), r
  psnrs = [r["psnr"] for r in rows if r["bits"] == 32]
  assert all(a < b for a, b in zip(psnrs, psnrs[1:]))  # more views sent, higher PSNR

  lost, _, _, _ = _study(images, grey_receiver, view_loss_prob=1.0)
  _check_bytes(lost)
  all_grey = np.mean(10 * np.log10(255.0 ** 2 / mse.mean(1)))
  for r in lost:
    assert r["psnr"] == pytest.approx(all_grey, rel=1e-9), r


# --- Python API round trip -----------------------------------------------------------------------

def _random_params(init, *shapes, seed):
  """Small random parameters with the shapes `init` would give (jax.eval_shape: compiling the
  real initialisers costs ~15 s on a loaded CPU): kernels N(0, 1 / fan_in), biases 0, norm
  scales 1."""
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name or "embedding" in name:
      return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(s.dtype)
    return (np.ones if "scale" in name else np.zeros)(s.shape, s.dtype)

  shapes = jax.eval_shape(init, jax.random.key(0), *shapes)["params"]
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _write_workdir(path):
  """An untrained tiny MVLD workdir, written as the run writes it: config.json, the autoencoder and
  score-network parameters (msgpack) and latent_stats.npz (mean, std, lo, hi)."""
  from configs import mvld as mvld_config
  from jaxgen.io.files import atomic_save_npz, atomic_write_json
  from jaxgen.io.params import save_params
  from jaxgen.mvld import model

  config = mvld_config.get_config("tiny")
  config.sampler.num_steps = 3
  spec = model.build_spec(config)
  size, v, latent = config.data.image_size, config.data.num_views, config.autoencoder.latent_dim
  f32 = jax.ShapeDtypeStruct
  ae = _random_params(spec.autoencoder.init, f32((1, size, size, 3), jnp.float32), seed=1)
  score = _random_params(spec.score_net.init, f32((1, v * latent), jnp.float32),
                         f32((1, v), jnp.float32), seed=2)
  rng = np.random.default_rng(3)
  mean = rng.normal(size=latent).astype(np.float32)
  std = rng.uniform(1.0, 3.0, latent).astype(np.float32)
  atomic_write_json(str(path / "config.json"), config.to_dict())
  save_params(str(path / "models" / "autoencoder.msgpack"), ae)
  save_params(str(path / "models" / "score_net.msgpack"), score)
  atomic_save_npz(str(path / "models" / "latent_stats.npz"), mean=mean, std=std,
                  lo=-4 * np.ones(latent, np.float32), hi=4 * np.ones(latent, np.float32))
  return config, spec, ae


def test_python_api_round_trip_on_a_hand_built_workdir(tmp_path):
  """MVLD.from_workdir on an untrained tiny workdir: generate gives uint8 [B, V, H, W, 3]; the
  observed views equal, exactly, the autoencoder reconstruction decode(encode(x)) computed here
  from the parameters written (not through the API; the standardise/unstandardise round trip
  could in principle move a value by 1 ulp, none is seen on CPU); the same key gives identical
  output, another key other missing views (every object) and the same observed views; the pixels
  of missing views are ignored; bad inputs and a missing workdir are one-line DataErrors."""
  from jaxgen.mvld.api import MVLD
  from jaxgen.nets.common import to_model_range, to_uint8

  config, spec, ae = _write_workdir(tmp_path)
  model = MVLD.from_workdir(str(tmp_path))
  assert (model.spec.num_views, model.spec.image_size, model.spec.latent_dim) == (4, 16, 16)
  assert model.config.sampler.num_steps == config.sampler.num_steps == 3

  b, v, size = 3, 4, 16
  images = np.random.default_rng(4).integers(0, 256, (b, v, size, size, 3), dtype=np.uint8)
  observed = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]], bool)
  out = model.generate(images, observed, jax.random.key(0))
  assert out.shape == images.shape and out.dtype == np.uint8

  # The reconstruction straight from the parameters written above, not through the API.
  @jax.jit
  def reconstruct(x):
    z = spec.autoencoder.apply({"params": ae}, to_model_range(x), method="encode")
    return to_uint8(spec.autoencoder.apply({"params": ae}, z, method="decode"))
  recon = np.asarray(reconstruct(images.reshape((-1, size, size, 3)))).reshape(images.shape)
  np.testing.assert_array_equal(out[observed], recon[observed])

  again = model.generate(images, observed, jax.random.key(0))
  np.testing.assert_array_equal(again, out)
  other = model.generate(images, observed, jax.random.key(1))
  np.testing.assert_array_equal(other[observed], out[observed])
  for i in range(b):  # every object's missing views change with the key
    assert (other[i][~observed[i]] != out[i][~observed[i]]).any(), i
  scrambled = np.where(observed[:, :, None, None, None], images, np.uint8(0))
  np.testing.assert_array_equal(model.generate(scrambled, observed, jax.random.key(0)), out)

  all_observed = observed.copy()
  all_observed[1] = True  # one row with nothing left to generate
  bad_inputs = [
      (images.astype(np.float32), observed, "dtype"),
      (images[:, :3], observed[:, :3], "shape"),
      (images[:, :, :8, :8], observed, "shape"),
      (images, all_observed, "unobserved"),
      (images, observed[:, :3], "observed_mask"),
  ]
  for x, m, match in bad_inputs:
    with pytest.raises(DataError, match=match) as err:
      model.generate(x, m, jax.random.key(0))
    assert "\n" not in str(err.value)
  with pytest.raises(DataError, match="not found") as err:
    MVLD.from_workdir(str(tmp_path / "missing"))
  assert "\n" not in str(err.value)


def test_python_api_on_a_workdir_without_latent_stats_is_a_data_error(tmp_path):
  """A workdir where only config.json and the autoencoder exist (the run was stopped after
  train_autoencoder) is a one-line DataError naming the missing file, as a missing score network
  is."""
  from jaxgen.io.files import atomic_write_json
  from jaxgen.io.params import save_params
  from jaxgen.mvld.api import MVLD
  from configs import mvld as mvld_config

  atomic_write_json(str(tmp_path / "config.json"), mvld_config.get_config("tiny").to_dict())
  save_params(str(tmp_path / "models" / "autoencoder.msgpack"), {"w": np.zeros(2, np.float32)})
  with pytest.raises(DataError, match="latent_stats"):
    MVLD.from_workdir(str(tmp_path))
