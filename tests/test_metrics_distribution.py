"""Distribution metrics against independent references: SciPy `sqrtm` for the Frechet distance,
NumPy for streaming moments, and plain NumPy transcriptions of the published KID, IS and PRDC
formulas. JAX runs in float32 here (x64 off), so tolerances are float32-sized and stated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import Mesh

from jaxgen.errors import DataError
from jaxgen.metrics import (coherence, coherence_from_logits, extract_features, feature_statistics,
                            fid, fid_from_stats, finalize_stats, frechet_distance, inception_score,
                            init_stats, intra_class, kid, kid_subset_indices, load_stats, prdc,
                            save_stats, update_stats)


def _scipy_frechet(mu1, c1, mu2, c2):
  covmean = scipy.linalg.sqrtm(c1 @ c2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2)
               - 2 * np.trace(np.real(covmean)))


def _gauss_feats(rng, n, d, shift=0.0, mix=0.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  a = a + mix * rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ a + shift


# ---------------------------------------------------------------- Frechet distance and FID
def _frechet_case(n1, n2, d, close):
  rng = np.random.default_rng(d + n1)
  x = _gauss_feats(rng, n1, d, shift=2.0)
  if close:  # same mixing matrix and mean, small perturbation
    y = _gauss_feats(np.random.default_rng(d + n1), n2, d, shift=2.0)
    y = y + 0.01 * rng.normal(size=y.shape)
  else:
    y = _gauss_feats(rng, n2, d, shift=0.5, mix=0.5)
  return x, y, (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


CASES = [(800, 900, 32, False),   # full rank, different
         (800, 800, 32, True),    # nearly equal
         (20, 25, 48, True)]      # rank-deficient (n < d): near-singular covariances


@pytest.mark.parametrize("n1,n2,d,close", CASES)
def test_frechet_matches_scipy_sqrtm_float32(n1, n2, d, close):
  x, y, (mu1, c1, mu2, c2) = _frechet_case(n1, n2, d, close)
  ref = _scipy_frechet(mu1, c1, mu2, c2)
  got = float(frechet_distance(mu1, c1, mu2, c2))
  # float32 Bures form: absolute error ~1e-7 x trace for full rank -> allow 1e-5 x trace; with
  # exactly-zero eigenvalues each contributes up to sqrt(eps32 * |C|) -> allow 1e-4 x trace.
  tol = (1e-4 if n1 < d else 1e-5) * (np.trace(c1) + np.trace(c2))
  assert abs(got - ref) < tol, (got, ref, tol)
  assert abs(float(fid(x, y)) - ref) < tol


def _data_space_frechet(x, y):
  """Exact for sample covariances: the eigenvalues of C1 C2 are the squared singular values of
  Xc Yc^T / sqrt((n1-1)(n2-1)), so no square root of a near-zero eigenvalue is ever taken."""
  xc, yc = x - x.mean(0), y - y.mean(0)
  nuc = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
  return float(np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(np.cov(x, rowvar=False))
               + np.trace(np.cov(y, rowvar=False)) - 2 * nuc)


@pytest.mark.parametrize("n1,n2,d,close", CASES)
def test_frechet_matches_scipy_sqrtm_float64(n1, n2, d, close):
  x, y, (mu1, c1, mu2, c2) = _frechet_case(n1, n2, d, close)
  with jax.enable_x64(True):
    got = frechet_distance(mu1, c1, mu2, c2)
    assert got.dtype == np.float64
  got, tr = float(got), np.trace(c1) + np.trace(c2)
  # float64: 1e-8 x trace against the data-space form (seen: ~1e-13 full rank, ~1e-9 singular).
  assert abs(got - _data_space_frechet(x, y)) < 1e-8 * tr
  # sqrtm of a singular product itself loses digits (~sqrt(eps64)): 1e-6 x trace there.
  tol = (1e-6 if n1 < d else 1e-8) * tr
  assert abs(got - _scipy_frechet(mu1, c1, mu2, c2)) < tol


def test_frechet_singular_covariance_exact():
  # Rank-1 covariances along orthogonal axes: W2^2 = |dmu|^2 + 1 + 4 in closed form.
  c1, c2 = np.diag([1.0, 0, 0, 0]), np.diag([0, 4.0, 0, 0])
  mu1, mu2 = np.zeros(4), np.array([0, 0, 3.0, 0])
  np.testing.assert_allclose(float(frechet_distance(mu1, c1, mu2, c2)), 14.0, rtol=1e-6)
  same = float(frechet_distance(mu1, c1, mu1, c1))
  assert abs(same) < 1e-6  # identical Gaussians: 0 up to float32 rounding


# ---------------------------------------------------------------- streaming statistics
def test_streaming_stats_match_numpy_uneven_batches():
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(2000, 64)) * rng.uniform(0.5, 2, 64) + 500.0  # large offset
  sizes = [1, 7, 300, 513, 64, 2, 900, 213]
  assert sum(sizes) == 2000
  stats, start = init_stats(64), 0
  for s in sizes:
    stats = update_stats(stats, feats[start:start + s].astype(np.float32))
    start += s
  mean, cov = finalize_stats(stats)
  # float32 inputs around 500: mean to 1e-6 relative; covariance (entries ~1) to 5e-5 absolute
  # (seen: 4e-6), which the naive E[xx^T] - mu mu^T form misses by far (seen: 0.7).
  np.testing.assert_allclose(np.asarray(mean), feats.mean(0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(cov), np.cov(feats, rowvar=False), atol=5e-5)


def test_streaming_mask_and_fid_from_stats(tmp_path):
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(300, 16)), rng.normal(size=(250, 16)) * 1.2 + 0.3
  padded = np.concatenate([a[200:], np.full((60, 16), 1e4)])  # padding rows must not count
  sa = update_stats(update_stats(init_stats(16), a[:200]), padded, np.arange(160) < 100)
  sb = update_stats(init_stats(16), b)
  ref = _scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  np.testing.assert_allclose(float(fid_from_stats(sa, sb)), ref, rtol=1e-4)  # float32 path
  path = str(tmp_path / "ref.npz")
  save_stats(path, *finalize_stats(sb))
  np.testing.assert_allclose(float(fid_from_stats(sa, load_stats(path))), ref, rtol=1e-4)
  with pytest.raises(DataError):
    load_stats(str(tmp_path / "missing.npz"))


# ---------------------------------------------------------------- KID
def _np_mmd2_unbiased(x, y, degree=3, coef0=1.0):
  g = 1.0 / x.shape[1]
  k = lambda a, b: (g * a @ b.T + coef0) ** degree  # noqa: E731
  m, n = len(x), len(y)
  kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
  return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
          - 2 * kxy.mean())


def test_kid_full_subsets_equal_unbiased_mmd():
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(120, 10)), rng.normal(size=(120, 10)) + 0.2
  mean, std = kid(x, y, num_subsets=4, subset_size=500)  # m = 120: every subset is everything
  ref = _np_mmd2_unbiased(x, y)
  np.testing.assert_allclose(float(mean), ref, rtol=1e-4, atol=1e-6)  # float32 kernel sums
  assert float(std) < 1e-5 * max(1.0, abs(ref))  # permutations of one set give one value


def test_kid_subsets_match_numpy():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) * 1.3
  key = jax.random.PRNGKey(7)
  mean, std = jax.jit(lambda a, b: kid(a, b, num_subsets=6, subset_size=50, key=key))(x, y)
  ia, ib = map(np.asarray, kid_subset_indices(key, 200, 150, 6, 50))
  assert all(len(set(r)) == 50 for r in ia)  # drawn without replacement
  vals = np.array([_np_mmd2_unbiased(x[i], y[j]) for i, j in zip(ia, ib)])
  np.testing.assert_allclose([float(mean), float(std)], [vals.mean(), vals.std()], rtol=1e-4)


# ---------------------------------------------------------------- Inception Score
def test_inception_score_matches_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(103, 12)) * 3  # 103 rows: splits of unequal size
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  for s in range(10):  # Salimans et al.'s reference loop, transcribed
    part = p[s * 103 // 10:(s + 1) * 103 // 10]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  mean, std = inception_score(logits, num_splits=10)
  np.testing.assert_allclose([float(mean), float(std)], [np.mean(scores), np.std(scores)],
                             rtol=1e-4)  # float32 softmax/log: 1e-4 relative
  # Sanity bounds from the definition: uniform predictions give 1, confident distinct ones K.
  assert abs(float(inception_score(np.zeros((20, 5)), 2)[0]) - 1.0) < 1e-5
  np.testing.assert_allclose(float(inception_score(np.eye(5) * 50, 1)[0]), 5.0, rtol=1e-4)


# ---------------------------------------------------------------- PRDC
def _np_prdc(real, fake, k):
  """Naeem et al. 2020 / Kynkaanniemi et al. 2019 definitions, written out directly."""
  def dist(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
  d_rr, d_ff, d_rf = dist(real, real), dist(fake, fake), dist(real, fake)
  r_real = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
  r_fake = np.sort(d_ff, axis=1)[:, k]
  inside = d_rf < r_real[:, None]         # inside[i, j]: fake j in the k-NN ball of real i
  return {
      "precision": inside.any(0).mean(),
      "recall": (d_rf < r_fake[None, :]).any(1).mean(),
      "density": inside.sum(0).mean() / k,
      "coverage": (d_rf.min(1) < r_real).mean(),
  }


@pytest.mark.parametrize("block_size", [37, 1024])  # 37: several padded blocks; 1024: one block
def test_prdc_matches_numpy_definitions(block_size):
  rng = np.random.default_rng(6)
  real = rng.normal(size=(150, 6)) + 3.0
  fake = rng.normal(size=(130, 6)) * 1.3 + 3.4
  got = prdc(real, fake, k=5, block_size=block_size)
  ref = _np_prdc(real, fake, 5)
  for name in ref:
    # Each metric is a count / N; float32 vs float64 distances could flip a borderline point,
    # so allow one point (1/130) but no more.
    np.testing.assert_allclose(float(got[name]), ref[name], atol=1.0 / 130, err_msg=name)


# ---------------------------------------------------------------- coherence
def _toy_classifier(images):
  """Class = which third of [0, 255] the mean intensity falls in (3 logits)."""
  m = jnp.mean(images.astype(jnp.float32), axis=(1, 2, 3))
  return -jnp.abs(m[:, None] - jnp.array([42.0, 127.0, 212.0]))


def test_coherence_toy_classifier():
  rng = np.random.default_rng(8)
  labels = rng.integers(0, 3, 70)
  level = np.array([30, 127, 220])[labels]
  images = np.broadcast_to(level[:, None, None, None], (70, 4, 4, 1)).astype(np.uint8).copy()
  wrong = labels.copy()
  wrong[:21] = (wrong[:21] + 1) % 3  # 21 of 70 labels disagree with the image
  assert coherence(_toy_classifier, images, labels, batch_size=16) == 1.0
  assert abs(coherence(_toy_classifier, images, wrong, batch_size=16) - 49 / 70) < 1e-12
  chunks = iter([images[:5], images[5:40], {"image": images[40:]}])  # uneven iterator input
  assert abs(coherence(_toy_classifier, chunks, wrong, batch_size=16) - 49 / 70) < 1e-12
  assert abs(float(coherence_from_logits(_toy_classifier(images), wrong)) - 49 / 70) < 1e-6
  with pytest.raises(DataError):
    coherence(_toy_classifier, images, labels[:10], batch_size=16)


# ---------------------------------------------------------------- sharded extraction
def _feature_fn(images):
  x = images.astype(jnp.float32) / 255.0
  w = jnp.linspace(-1.0, 1.0, x.shape[-1] * 6).reshape(x.shape[-1], 6)
  return jnp.tanh(jnp.mean(x, axis=(1, 2)) @ w + jnp.max(x, axis=(1, 2, 3))[:, None])


def test_sharded_extract_features_equals_unsharded():
  # tests/conftest.py gives 8 simulated CPU devices; use the largest power of two available.
  n_dev = min(8, 1 << (jax.device_count().bit_length() - 1))
  mesh = Mesh(np.array(jax.devices()[:n_dev]), ("data",))
  rng = np.random.default_rng(9)
  images = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)  # 50 = 3 x 16 + 2 (padding)
  direct = np.asarray(_feature_fn(jnp.asarray(images)))
  plain = extract_features(_feature_fn, images, batch_size=16)
  sharded = extract_features(_feature_fn, images, batch_size=16, mesh=mesh)
  assert sharded.shape == (50, 6)
  np.testing.assert_allclose(plain, direct, rtol=1e-6, atol=1e-6)     # batching changes nothing
  np.testing.assert_allclose(sharded, plain, rtol=1e-6, atol=1e-6)    # nor does sharding
  stats = feature_statistics(_feature_fn, iter([images[:9], images[9:]]), batch_size=16, mesh=mesh)
  mean, cov = finalize_stats(stats)
  np.testing.assert_allclose(np.asarray(mean), direct.mean(0), atol=1e-6)
  np.testing.assert_allclose(np.asarray(cov), np.cov(direct, rowvar=False), atol=1e-6)


# ---------------------------------------------------------------- intra-class
def test_intra_class_fid_prdc_and_one_set():
  rng = np.random.default_rng(10)
  a, b = rng.normal(size=(90, 4)), rng.normal(size=(75, 4)) + 0.5
  # Equal class sizes within each set keep each metric to one compilation.
  ya, yb = np.tile([0, 1, 2], 30), np.repeat([0, 1, 2], 25)
  res = intra_class(fid, a, ya, b, yb)
  per = [float(fid(a[ya == c], b[yb == c])) for c in range(3)]
  assert sorted(res["per_class"]) == [0, 1, 2]
  np.testing.assert_allclose([res["per_class"][c] for c in range(3)], per, rtol=1e-6)
  np.testing.assert_allclose([res["mean"], res["std"]], [np.mean(per), np.std(per)], rtol=1e-6)
  res_p = intra_class(lambda x, y: prdc(x, y, k=3), a, ya, b, yb)
  assert set(res_p["mean"]) == {"precision", "recall", "density", "coverage"}
  res_1 = intra_class(lambda x: jnp.mean(x), a, ya)  # one-set metric (e.g. LPIPS diversity)
  np.testing.assert_allclose(res_1["mean"], np.mean([a[ya == c].mean() for c in range(3)]),
                             rtol=1e-6)
  res_k = intra_class(lambda x, y: kid(x, y, num_subsets=3, subset_size=15), a, ya, b, yb)
  assert len(res_k["mean"]) == 2  # kid's (mean, std) tuple, averaged leaf by leaf
  with pytest.raises(DataError):
    intra_class(fid, a, ya, b, np.repeat([0, 1, 3], 25))  # class 2 missing from b
