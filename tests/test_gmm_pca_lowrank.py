"""jaxgen.gmm.pca (P0, paper 004 eqs. 1-2) and jaxgen.gmm.lowrank (eqs. 3-4).

References: scikit-learn's `PCA(whiten=True)` for P0 and its adjoint; exact rational arithmetic
for the d_k rule; NumPy eigendecompositions of the fitted covariances for the low-rank factors;
Monte Carlo for the sample covariance (tolerance from the sampling error of 20k draws).
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.decomposition import PCA

from jaxgen.errors import ConfigError
from jaxgen.gmm import em, lowrank, pca


def _latents(seed, n=6, h=8, w=8, c=10):
  """Latent maps [N, h, w, c] whose pixels have well separated PCA eigenvalues and a mean."""
  rng = np.random.default_rng(seed)
  q = np.linalg.qr(rng.normal(size=(c, c)))[0]
  scales = 3.0 * 0.75 ** np.arange(c)  # eigenvalue gaps of ~44%: eigenvectors well determined
  pix = (rng.normal(size=(n * h * w, c)) * scales) @ q.T + rng.normal(size=c)
  return pix.reshape(n, h, w, c)


def _align_signs(a, b):
  """Flip a's columns to agree with b's (PCA components are defined up to sign)."""
  return a * np.sign(np.sum(a * b, axis=0))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_projector_matches_sklearn_whitened_pca(dtype, tol):
  """P0 of [N, h, w, c] latents, flattened to pixels, equals scikit-learn's
  PCA(n_components=q, whiten=True).fit_transform in float64 up to per-component sign (tol 1e-10
  float64, 1e-5 float32 on O(1) whitened values); the fitted mean, variances and components too.
  The sign convention (largest-magnitude entry of each component positive) is checked."""
  y = _latents(0)
  n, h, w, c = y.shape
  q = 4
  pix = y.reshape(-1, c)
  ref = PCA(n_components=q, whiten=True, svd_solver="full")
  ref_codes = ref.fit_transform(pix)
  with jax.enable_x64(dtype == np.float64):
    proj = pca.fit_projector(jnp.asarray(y, dtype), q)
    codes = np.asarray(pca.project(proj, jnp.asarray(y, dtype)))
    comps = np.asarray(proj.components, np.float64)
    assert codes.dtype == dtype and proj.num_channels == q
    flat_codes = np.asarray(pca.project(pca.fit_projector(jnp.asarray(pix, dtype), q),
                                        jnp.asarray(pix, dtype)))
  assert codes.shape == (n, h, w, q)
  codes = codes.reshape(-1, q).astype(np.float64)
  np.testing.assert_allclose(codes, flat_codes.astype(np.float64), atol=tol)
  err = np.max(np.abs(_align_signs(codes, ref_codes) - ref_codes))
  assert err < tol * np.max(np.abs(ref_codes))
  np.testing.assert_allclose(np.asarray(proj.mean, np.float64), ref.mean_, rtol=tol, atol=tol)
  np.testing.assert_allclose(np.asarray(proj.variances, np.float64), ref.explained_variance_,
                             rtol=tol)
  aligned = comps * np.sign(np.sum(comps * ref.components_, axis=1))[:, None]
  np.testing.assert_allclose(aligned, ref.components_, atol=tol)
  np.testing.assert_allclose(comps @ comps.T, np.eye(q), atol=tol)
  pivots = comps[np.arange(q), np.argmax(np.abs(comps), axis=1)]
  assert np.all(pivots > 0)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_unproject_is_rank_q_reconstruction(dtype, tol):
  """P0*(P0(y)) equals scikit-learn's inverse_transform(transform(y)) of the whitened PCA (the
  rank-q reconstruction, tol relative to max |y|), also for new latents; with q = c it is the
  identity."""
  y = _latents(1)
  c = y.shape[-1]
  new = _latents(2, n=2)
  pix, new_pix = y.reshape(-1, c), new.reshape(-1, c)
  scale = np.max(np.abs(pix))
  for q in (3, c):
    ref = PCA(n_components=q, whiten=True, svd_solver="full").fit(pix)
    with jax.enable_x64(dtype == np.float64):
      proj = pca.fit_projector(jnp.asarray(y, dtype), q)
      back = np.asarray(pca.unproject(proj, pca.project(proj, jnp.asarray(y, dtype))), np.float64)
      back_new = np.asarray(pca.unproject(proj, pca.project(proj, jnp.asarray(new, dtype))),
                            np.float64)
    assert back.shape == y.shape
    np.testing.assert_allclose(back.reshape(-1, c), ref.inverse_transform(ref.transform(pix)),
                               atol=tol * scale)
    np.testing.assert_allclose(back_new.reshape(-1, c),
                               ref.inverse_transform(ref.transform(new_pix)), atol=tol * scale)
    if q == c:
      np.testing.assert_allclose(back, y, atol=tol * scale)
      np.testing.assert_allclose(back_new, new, atol=tol * scale)


def test_projector_bad_num_channels():
  """q outside [1, c] or not an integer raises ConfigError (one line)."""
  y = jnp.asarray(_latents(0), jnp.float32)
  for q in (0, -1, 11, 2.0):
    with pytest.raises(ConfigError) as err:
      pca.fit_projector(y, q)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- d_k

def test_component_dims_formula_fixed_and_cap():
  """d_k = max(1, floor(lambda pi_k d0)) against exact rational arithmetic (including products
  that are integers in exact arithmetic but not in binary floating point), `fixed`, and the cap
  at min(d0, max_rank)."""
  cases = [
      ([0.5, 0.3, 0.15, 0.05], 256, 0.12),
      ([0.25, 0.25, 0.25, 0.25], 100, 0.12),  # 0.12 * 0.25 * 100 = 3 exactly
      ([0.7, 0.2, 0.1], 100, 0.3),  # 0.3 * 0.7 * 100 = 21, 0.3 * 0.1 * 100 = 3
      ([0.999, 0.001], 64, 0.12),  # tiny component -> 1
      ([0.6, 0.4], 10, 5.0),  # above d0 -> capped at d0
  ]
  for weights, d0, lam in cases:
    exact = [max(1, math.floor(Fraction(str(lam)) * Fraction(str(p)) * d0)) for p in weights]
    expected = np.minimum(exact, d0)
    got = lowrank.component_dims(np.array(weights), d0, temperature=lam)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32
  dims = lowrank.component_dims
  np.testing.assert_array_equal(dims(np.array([0.5, 0.3, 0.15, 0.05]), 256), [15, 9, 4, 1])
  np.testing.assert_array_equal(dims(np.array([0.9, 0.1]), 256, fixed=7), [7, 7])
  np.testing.assert_array_equal(dims(np.array([0.9, 0.1]), 256, fixed=300), [256, 256])
  np.testing.assert_array_equal(
      lowrank.component_dims(np.array([0.9, 0.1]), 256, temperature=0.5, max_rank=20), [20, 12])
  np.testing.assert_array_equal(
      lowrank.component_dims(np.array([0.9, 0.1]), 256, fixed=30, max_rank=20), [20, 20])
  np.testing.assert_array_equal(
      lowrank.component_dims(np.array([0.9, 0.1]), 256, temperature=None, fixed=3), [3, 3])


def test_component_dims_bad_values():
  """Non-positive temperature (or none without `fixed`) and non-positive/non-integer `fixed`
  raise ConfigError (one line)."""
  w = np.array([0.5, 0.5])
  for kw in (dict(temperature=0.0), dict(temperature=-0.1), dict(temperature=None),
             dict(fixed=0), dict(fixed=-2), dict(fixed=2.5)):
    with pytest.raises(ConfigError) as err:
      lowrank.component_dims(w, 16, **kw)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- low rank

def _fit(form):
  """A float64 fit (call inside enable_x64): 'full' N=300 > d=8, 'dual' N=30 < d=50."""
  rng = np.random.default_rng(3)
  n, d = (300, 8) if form == "full" else (30, 50)
  centres = rng.normal(size=(2, d)) * 4.0
  x = np.concatenate([c + rng.normal(size=(n // 2, d)) * rng.uniform(0.5, 2.0, d) for c in centres])
  init = (np.full(2, 0.5), centres, np.stack([np.eye(d)] * 2))
  f = em.fit_gmm(x, 2, init=init, max_iter=10, tol=0.0)
  assert f.form == form
  return f


@pytest.mark.parametrize("form", ["full", "dual"])
def test_low_rank_full_rank_reconstructs_covariance(form):
  """With d_k at its maximum the factors reproduce Sigma_k. 'full' (d_k = d0): V diag(s^2) V^T =
  Sigma_k to 1e-10 relative. 'dual' (d_k = N): Sigma_k = A_k^T A_k + reg I has A_k^T A_k of rank
  <= N - 1 < d0, and only its range is represented (eigenpairs lam + reg); on the complement
  Sigma_k is reg I, so V diag(s^2) V^T = Sigma_k - reg (I - V V^T), to 1e-10, i.e. Sigma_k up to
  reg_covar. Kept columns are orthonormal; s^2 are Sigma_k's leading eigenvalues (NumPy eigh)."""
  with jax.enable_x64(True):
    f = _fit(form)
    d = f.means.shape[1]
    rank = d if form == "full" else f.support.shape[0]
    lr = lowrank.low_rank(f, np.full(2, rank, np.int32))
    covs, reg = np.asarray(f.covariances), float(f.reg_covar)
    bases, scales = np.asarray(lr.bases), np.asarray(lr.scales)
  np.testing.assert_array_equal(np.asarray(lr.dims), [rank, rank])
  assert bases.shape == (2, d, rank) and scales.shape == (2, rank)
  for k in range(2):
    v, s = bases[k], scales[k]
    nonzero = np.linalg.norm(v, axis=0) > 0.5
    if form == "full":
      assert nonzero.all()
    vk = v[:, nonzero]
    np.testing.assert_allclose(vk.T @ vk, np.eye(vk.shape[1]), atol=1e-10)
    rec = (v * s ** 2) @ v.T
    scale = np.max(np.abs(covs[k]))
    if form == "dual":
      rec = rec + reg * (np.eye(d) - vk @ vk.T)
      assert np.max(np.abs((v * s ** 2) @ v.T - covs[k])) <= reg * (1 + 1e-6)
    assert np.max(np.abs(rec - covs[k])) < 1e-10 * scale
    ref_evals = np.linalg.eigvalsh(covs[k])[::-1]
    m = int(nonzero.sum())
    np.testing.assert_allclose(s[:m] ** 2, ref_evals[:m], rtol=1e-10, atol=1e-10 * scale)


def test_low_rank_bad_dims():
  """d_k outside [1, d0] ('full') or [1, min(d0, N)] ('dual'), or a wrong length: ConfigError."""
  with jax.enable_x64(True):
    full, dual = _fit("full"), _fit("dual")
    for f, dims in ((full, [0, 2]), (full, [9, 2]), (full, [2]), (dual, [31, 2]), (dual, [2, 0])):
      with pytest.raises(ConfigError):
        lowrank.low_rank(f, np.array(dims))


@pytest.mark.parametrize("form", ["full", "dual"])
def test_sample_low_rank_covariance_span_and_shared_coefficients(form):
  """20k samples of component 0 with d_k = 3: the empirical covariance matches V diag(s^2) V^T
  within 5% of its spectral norm (sampling error ~ sqrt(2 / 20000) = 1% per entry scale) and the
  mean within 5 standard errors; every sample lies in mean + span(V_k[:, :d_k]) (residual 1e-10,
  float64). The same key with other d_k (d_k = 5 for both components: another factor width)
  reuses the same eps: the first min(d_k) coefficients agree (paper Fig. 8)."""
  n_samples = 20000
  with jax.enable_x64(True):
    f = _fit(form)
    lr = lowrank.low_rank(f, np.array([3, 2]))
    key = jax.random.key(7)
    comps = np.zeros(n_samples, np.int32)
    z, c = lowrank.sample_low_rank(lr, key, n_samples, components=comps)
    z = np.asarray(z)
    v, s, mu = np.asarray(lr.bases[0]), np.asarray(lr.scales[0]), np.asarray(lr.means[0])
    others = {}
    for dims in ([5, 5],):  # every d_k and the factor width r_max change
      other = lowrank.low_rank(f, np.array(dims))
      zo, _ = lowrank.sample_low_rank(other, key, 64, components=comps[:64])
      others[dims[0]] = (np.asarray(zo), np.asarray(other.bases[0]), np.asarray(other.scales[0]))
    # Without explicit components the component draw follows the weights.
    _, c_mix = lowrank.sample_low_rank(lr, key, n_samples)  # same compilation
    weights = np.asarray(lr.weights)
  np.testing.assert_array_equal(np.asarray(c), comps)
  assert v.shape[1] == 3 and np.all(s > 0)
  centred = z - mu
  target = (v * s ** 2) @ v.T
  emp = centred.T @ centred / n_samples
  assert np.linalg.norm(emp - target, 2) < 0.05 * np.linalg.norm(target, 2)
  assert np.all(np.abs(centred.mean(0)) < 5 * np.sqrt(np.diag(target) / n_samples) + 1e-12)
  resid = centred - centred @ v @ v.T
  assert np.max(np.abs(resid)) < 1e-10 * np.max(np.abs(centred))
  coef = centred[:64] @ v / s
  for dk, (zo, vo, so) in others.items():
    co = (zo - mu) @ vo[:, :dk] / so[:dk]
    m = min(dk, 3)
    np.testing.assert_allclose(co[:, :m], coef[:, :m], atol=1e-8)
    off = (zo - mu) - (zo - mu) @ vo[:, :dk] @ vo[:, :dk].T
    assert np.max(np.abs(off)) < 1e-10 * np.max(np.abs(zo - mu))
  frac = np.bincount(np.asarray(c_mix), minlength=2) / len(c_mix)
  assert np.all(np.abs(frac - weights) < 5 * np.sqrt(weights * (1 - weights) / len(c_mix)))


def test_num_parameters():
  """K (d_k + 1) d0 + K d_k + K stored numbers (paper supp. sec. 3), counted by hand."""
  lr = lowrank.LowRankMixture(weights=jnp.ones(2) / 2, means=jnp.zeros((2, 10)),
                              bases=jnp.zeros((2, 10, 4)), scales=jnp.zeros((2, 4)),
                              dims=jnp.asarray([4, 1]))
  assert lowrank.num_parameters(lr) == (5 * 10 + 4 + 1) + (2 * 10 + 1 + 1)


@pytest.mark.xfail(strict=True, reason="'dual' low_rank: near-null eigenvalues of A A^T (rounding "
                   "noise, lam > 0) give basis columns A^T q / sqrt(lam) that are not unit vectors")
def test_low_rank_dual_bases_orthonormal_with_soft_responsibilities():
  """A 'dual' fit with soft responsibilities (reg_covar = 2 keeps tiny but nonzero w_ik): the
  d_k = N factor's nonzero columns must be orthonormal (1e-6). Fails today: for eigenvalues of
  A_k A_k^T at rounding level, A_k^T q has norm ~ sqrt(eps |A|^2) rather than sqrt(lam), so
  `basis = A^T q / sqrt(lam)` has columns of norm ~0.2-2 (seen: 1.16, 2.04, 0.21), each sampled
  with scale sqrt(lam + reg) ~ sqrt(reg)."""
  rng = np.random.default_rng(1)
  n, d = 30, 50
  centres = rng.normal(size=(2, d))
  x = np.concatenate([c + rng.normal(size=(n // 2, d)) for c in centres])
  init = (np.full(2, 0.5), centres, np.stack([np.eye(d)] * 2))
  with jax.enable_x64(True):
    f = em.fit_gmm(x, 2, init=init, max_iter=10, tol=0.0, reg_covar=2.0)
    bases = np.asarray(lowrank.low_rank(f, np.full(2, n, np.int32)).bases)
  for v in bases:
    vk = v[:, np.linalg.norm(v, axis=0) > 1e-6]
    np.testing.assert_allclose(vk.T @ vk, np.eye(vk.shape[1]), atol=1e-6)
