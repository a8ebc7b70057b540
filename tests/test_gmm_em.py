"""jaxgen.gmm.em / init / linalg against scikit-learn's GaussianMixture and NumPy.

Every fit that is compared with scikit-learn runs in float64 (`jax.enable_x64`) from the same
explicit initial parameters (scikit-learn's `weights_init`, `means_init`, `precisions_init`), so
the two implementations follow the same EM trajectory; the observed agreement is ~1e-10 relative
and the asserted tolerance (1e-4 relative, as the EM amplifies rounding through the
responsibilities) leaves room for other BLAS builds.
"""

import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from jaxgen.errors import ConfigError
from jaxgen.gmm import em, init as gmm_init, linalg
from jaxgen.parallel.mesh import make_mesh

RTOL = 1e-4  # float64 vs scikit-learn; observed ~1e-10

# (cluster sizes, d, centre spread per coordinate): N > d ('full' by default) and N < d ('dual');
# N = 110 and 39 are not multiples of 8, so the sharded runs take the padding path.
CASES = {
    "n_gt_d": ((60, 35, 15), 6, 1.2),
    "n_lt_d": ((20, 12, 7), 50, 0.3),
}


def _blobs(seed, sizes, d, sep):
  """Anisotropic Gaussian clusters of different sizes, shuffled; returns (x, labels, centres)."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(len(sizes), d)) * sep
  scales = rng.uniform(0.5, 1.5, size=(len(sizes), d))
  x = np.concatenate([c + s * rng.normal(size=(n, d)) for c, s, n in zip(centres, scales, sizes)])
  perm = rng.permutation(len(x))
  return x[perm], np.repeat(np.arange(len(sizes)), sizes)[perm], centres


def _init_params(seed, centres, spread):
  """Explicit (weights, means, covariances): perturbed centres, random SPD covariances."""
  rng = np.random.default_rng(seed + 100)
  k, d = centres.shape
  w = rng.uniform(0.5, 1.5, k)
  w /= w.sum()
  m = centres + spread * rng.normal(size=centres.shape)
  a = rng.normal(size=(k, d, d)) / np.sqrt(d)
  c = 0.5 * a @ np.swapaxes(a, 1, 2) + 2.0 * np.eye(d)
  return w, m, c


def _sklearn(x, init, max_iter, tol, reg_covar=1e-6):
  w, m, c = init
  g = SkGaussianMixture(len(w), covariance_type="full", tol=tol, reg_covar=reg_covar,
                        max_iter=max_iter, weights_init=w, means_init=m,
                        precisions_init=np.linalg.inv(c))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ConvergenceWarning when tol=0
    g.fit(x)
  return g


def _numpy_fit(f):
  """All fields of a GaussianMixture as NumPy (call inside the x64 context that made it)."""
  n = int(f.num_iters)
  return dict(weights=np.asarray(f.weights), means=np.asarray(f.means),
              covariances=np.asarray(f.covariances), lower_bound=float(f.lower_bound),
              history=np.asarray(f.log_likelihood), log_likelihood=np.asarray(f.log_likelihood)[:n],
              num_iters=n, converged=bool(f.converged), labels=np.asarray(f.labels), form=f.form)


def _fit64(x, k, **kw):
  with jax.enable_x64(True):
    return _numpy_fit(em.fit_gmm(np.asarray(x, np.float64), k, **kw))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _assert_matches_sklearn(f, g, x):
  errs = dict(weights=_rel(f["weights"], g.weights_), means=_rel(f["means"], g.means_),
              covariances=_rel(f["covariances"], g.covariances_),
              lower_bound=_rel(f["lower_bound"], g.lower_bound_))
  if hasattr(g, "lower_bounds_"):
    assert len(f["log_likelihood"]) == len(g.lower_bounds_)
    errs["history"] = _rel(f["log_likelihood"], g.lower_bounds_)
  assert max(errs.values()) < RTOL, errs
  assert f["num_iters"] == g.n_iter_
  assert f["converged"] == g.converged_
  np.testing.assert_array_equal(f["labels"], g.predict(x))
  return max(errs.values())


# --------------------------------------------------------------------------- 1. exactness

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("form", ["full", "dual"])
def test_matches_sklearn_from_explicit_init(case, form):
  """Both forms, both shapes (N > d and N < d), after 1, 2 and 10 iterations and run to
  convergence (tol=1e-3): weights, means, covariances, lower bounds per iteration, n_iter_,
  converged_ and predict(X) equal scikit-learn's from the same explicit start (rtol 1e-4).
  Exactly 2 iterations come from tol=1e300 (the first change, from -inf, is never < tol; the second
  always is), in both libraries, so that run reuses the max_iter=10 compilation."""
  sizes, d, sep = CASES[case]
  x, _, centres = _blobs(0, sizes, d, sep)
  init = _init_params(0, centres, 0.5 * sep)
  for max_iter, tol, iters in ((1, 0.0, 1), (10, 1e300, 2), (10, 0.0, 10), (10, 1e-3, None)):
    f = _fit64(x, 3, init=init, max_iter=max_iter, tol=tol, form=form)
    g = _sklearn(x, init, max_iter, tol)
    assert f["form"] == form
    assert np.all(np.isnan(f["history"][f["num_iters"]:]))
    if iters is None:  # run to convergence
      assert g.converged_ and 2 < g.n_iter_ < max_iter
    else:
      assert g.n_iter_ == iters
    _assert_matches_sklearn(f, g, x)


@pytest.mark.parametrize("form", ["full", "dual"])
def test_matches_sklearn_soft_dual_regime(form):
  """N < d with a large reg_covar (1.0) keeps the EM moving for several iterations; both forms
  match scikit-learn after 10 iterations (rtol 1e-4)."""
  sizes, d, sep = CASES["n_lt_d"]
  x, _, centres = _blobs(1, sizes, d, sep)
  init = _init_params(1, centres, 0.5 * sep)
  f = _fit64(x, 3, init=init, max_iter=10, tol=0.0, reg_covar=1.0, form=form)
  _assert_matches_sklearn(f, _sklearn(x, init, 10, 0.0, reg_covar=1.0), x)


def test_dual_active_set_matches_sklearn():
  """Separated clusters (N=203 < d=300, hard responsibilities): the dual E-step factorises only
  each component's active set (smaller than N, checked), and still matches scikit-learn after 10
  iterations (rtol 1e-4; the dropped points carry less than eps * reg of trace). (The dual form
  sharded over 8 devices equals one device: test_sharded_fit_equals_single_device[n_lt_d].)"""
  x, _, centres = _blobs(2, (70, 50, 50, 33), 300, 1.0)
  init = _init_params(2, centres, 0.2)
  g = _sklearn(x, init, 10, 0.0)
  with jax.enable_x64(True):
    fit = em.fit_gmm(x, 4, init=init, max_iter=10, tol=0.0)
    sup, w = fit.support, fit.support_weights
    gram = sup @ sup.T
    sizes = em.active_sizes(len(x))
    used = []
    for wk in w:
      g_k = gram @ wk
      c_diag = jnp.diagonal(gram) - 2.0 * g_k + wk @ g_k
      used.append(sizes[int(em.active_size_index(wk, c_diag, fit.reg_covar, sizes)[0])])
    one = _numpy_fit(fit)
  assert one["form"] == "dual" and max(used) < len(x), used
  _assert_matches_sklearn(one, g, x)


# --------------------------------------------------------------------------- 2. new points

@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("form", ["full", "dual"])
def test_score_samples_and_predict_proba_on_new_points(case, form):
  """score_samples / predict_proba / component_log_probs on unseen points equal scikit-learn's
  (`score_samples`, `predict_proba`, `_estimate_log_prob`) for the same fitted model (rtol 1e-4
  on log-densities, atol 1e-6 on probabilities), float64."""
  sizes, d, sep = CASES[case]
  x, _, centres = _blobs(0, sizes, d, sep)
  new, _, _ = _blobs(7, (7, 5, 3), d, sep)
  new = new + centres[0]  # mostly near the data
  init = _init_params(0, centres, 0.5 * sep)
  g = _sklearn(x, init, 10, 0.0)
  with jax.enable_x64(True):
    f = em.fit_gmm(x, 3, init=init, max_iter=10, tol=0.0, form=form)
    scores = np.asarray(em.score_samples(f, new))
    proba = np.asarray(em.predict_proba(f, new))
    comp = np.asarray(em.component_log_probs(f, new))
  assert scores.shape == (len(new),) and proba.shape == (len(new), 3)
  assert _rel(scores, g.score_samples(new)) < RTOL
  assert _rel(comp, g._estimate_log_prob(new)) < RTOL
  np.testing.assert_allclose(proba, g.predict_proba(new), atol=1e-6)


# --------------------------------------------------------------------------- 3. float32

def test_float32_dual_close_to_sklearn_float64():
  """N=256 < d=512, K=4 in float32 (the 'dual' form): after 3 iterations the mean
  log-likelihood is within 1e-3 relative of scikit-learn's float64 run from the same start
  (float32 rounding through N x N factorisations; observed ~1e-7)."""
  sizes, d = (100, 70, 50, 36), 512
  x, _, centres = _blobs(3, sizes, d, 3.0)
  w0 = np.full(4, 0.25)
  m0 = centres + 0.3 * np.random.default_rng(4).normal(size=centres.shape)
  c0 = np.broadcast_to(1.5 * np.eye(d), (4, d, d)).copy()
  f = em.fit_gmm(x.astype(np.float32), 4, init=(w0, m0, c0), max_iter=3, tol=0.0)
  assert f.form == "dual" and f.means.dtype == jnp.float32
  g = _sklearn(x, (w0, m0, c0), 3, 0.0)
  ll = np.asarray(f.log_likelihood, np.float64)
  err = np.abs(ll - g.lower_bounds_) / np.abs(g.lower_bounds_)
  assert np.all(err < 1e-3), (ll, g.lower_bounds_)
  assert abs(float(f.lower_bound) - g.lower_bound_) / abs(g.lower_bound_) < 1e-3


# --------------------------------------------------------------------------- 4. singular clusters

def _subspace_blobs(seed, num_clusters, per_cluster=10, d=40, rank=3, sep=10.0):
  """Clusters, each in a `rank`-dimensional affine subspace of R^d (singular covariances)."""
  rng = np.random.default_rng(seed)
  xs = []
  for _ in range(num_clusters):
    basis = np.linalg.qr(rng.normal(size=(d, rank)))[0]
    xs.append(sep * rng.normal(size=d) + rng.normal(size=(per_cluster, rank)) @ basis.T)
  x = np.concatenate(xs)
  centres = np.stack([c.mean(0) for c in xs])
  return x, np.repeat(np.arange(num_clusters), per_cluster), centres


@pytest.mark.parametrize("num_clusters", [6, 3])  # N=60 > d=40 ('full'), N=30 < d ('dual')
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_singular_covariances_no_nan(num_clusters, dtype):
  """Rank-3 clusters in d=40: no NaN anywhere in float32 or float64 (whiten's fallback or the
  dual form's lift take over where Cholesky breaks down), valid labels that recover the
  clusters, and in float64 the same numbers as scikit-learn after 5 iterations (rtol 1e-4)."""
  x, truth, centres = _subspace_blobs(5, num_clusters)
  k, d = num_clusters, x.shape[1]
  init = (np.full(k, 1.0 / k), centres + 0.1, np.broadcast_to(np.eye(d), (k, d, d)).copy())
  with jax.enable_x64(dtype == np.float64):
    f = _numpy_fit(em.fit_gmm(x.astype(dtype), k, init=init, max_iter=5, tol=0.0))
  assert f["form"] == ("full" if x.shape[0] > d else "dual")
  assert f["weights"].dtype == dtype
  for name in ("weights", "means", "covariances", "log_likelihood"):
    assert np.all(np.isfinite(f[name])), name
  assert f["num_iters"] == 5
  assert np.all((f["labels"] >= 0) & (f["labels"] < k))
  assert adjusted_rand_score(truth, f["labels"]) == 1.0
  if dtype == np.float64:
    _assert_matches_sklearn(f, _sklearn(x, init, 5, 0.0), x)


# --------------------------------------------------------------------------- 5. initialisations

def _well_separated(seed=0):
  return _blobs(seed, (40, 25, 15, 10), 5, 8.0)


# Jitted once per (K, init); eager calls would retrace the k-means loops every time.
_initial_resp = jax.jit(gmm_init.initial_responsibilities, static_argnums=(2, 3))


@pytest.mark.parametrize("init", ["kmeans++", "kmeans", "random_from_data"])
def test_random_inits_reproducible_per_key(init):
  """Same key -> identical initial responsibilities; another key -> different ones (pure
  functions of the key, float32); for one init, two whole fits with the same key are
  bit-identical (each eager k-means init costs a retrace, so only the cheap one is refitted)."""
  x, _, _ = _well_separated()
  xj = jnp.asarray(x, jnp.float32)
  valid = jnp.ones((len(x),), jnp.float32)
  resp = [np.asarray(_initial_resp(jax.random.key(s), xj, 4, init, valid))
          for s in (0, 0, 1)]
  np.testing.assert_array_equal(resp[0], resp[1])
  assert not np.array_equal(resp[0], resp[2])
  assert resp[0].shape == (len(x), 4) and set(np.unique(resp[0])) <= {0.0, 1.0}
  if init == "random_from_data":
    fits = [em.fit_gmm(x.astype(np.float32), 4, init=init, key=jax.random.key(0), max_iter=5)
            for _ in range(2)]
    for a, b in zip(jax.tree.leaves(fits[0]), jax.tree.leaves(fits[1])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kmeans_recovers_true_partition():
  """On well-separated blobs the 'kmeans' init's hard labels and the fitted labels equal the
  true partition up to relabelling (adjusted Rand index exactly 1)."""
  x, truth, _ = _well_separated()
  xj = jnp.asarray(x, jnp.float32)
  resp = _initial_resp(jax.random.key(1), xj, 4, "kmeans", jnp.ones((len(x),), jnp.float32))
  np.testing.assert_array_equal(np.asarray(resp).sum(1), 1.0)
  assert adjusted_rand_score(truth, np.asarray(resp).argmax(1)) == 1.0
  f = em.fit_gmm(x.astype(np.float32), 4, init="kmeans", key=jax.random.key(0), max_iter=5)
  assert adjusted_rand_score(truth, np.asarray(f.labels)) == 1.0


class _SkFromResp(SkGaussianMixture):
  """scikit-learn's GaussianMixture with its own `_initialize(X, resp)` fed a given resp."""

  def __init__(self, n_components=1, *, resp=None, **kw):
    super().__init__(n_components, **kw)
    self.resp = resp

  def _initialize_parameters(self, X, random_state, xp=None):
    self._initialize(X, self.resp, xp=xp)


@pytest.mark.parametrize("init", ["kmeans++", "random_from_data"])
def test_one_hot_inits_and_unnormalised_first_weights(init):
  """kmeans++ / random_from_data responsibilities have exactly one 1 per column, at distinct
  rows. From them scikit-learn's `_initialize` derives weights n_k / N (NOT renormalised, they
  sum to K (1 + 10 eps) / N), means and reg_covar * I covariances. The first-iteration
  log-likelihood of the key-driven fit equals (rtol 1e-10) both scikit-learn run through its own
  `_initialize(X, resp)` and jaxgen fed those parameters explicitly; the later iterations too.
  (scikit-learn's `weights_init` rejects unnormalised weights, hence the `_initialize` hook.)"""
  sizes, d, sep = CASES["n_gt_d"]  # shapes of test 1 and the sharding test: cached compilations
  x, _, _ = _blobs(0, sizes, d, sep)
  n, k, reg = len(x), 3, 1e-6
  with jax.enable_x64(True):
    key = jax.random.key(3)
    resp = np.asarray(_initial_resp(key, jnp.asarray(x), k, init, jnp.ones((n,), jnp.float64)))
    fit_key = _numpy_fit(em.fit_gmm(x, k, init=init, key=key, max_iter=10, tol=0.0))
  assert np.all(resp.sum(0) == 1.0) and set(np.unique(resp)) == {0.0, 1.0}
  rows = resp.argmax(0)
  assert len(set(rows.tolist())) == k
  assert np.count_nonzero(resp) == k
  nk, means, covs = _estimate_gaussian_parameters(x, resp, reg, "full")
  weights = nk / n
  np.testing.assert_allclose(covs, np.broadcast_to(reg * np.eye(x.shape[1]), covs.shape),
                             rtol=1e-12, atol=1e-20)
  assert abs(weights.sum() - k / n) < 1e-12  # unnormalised
  fit_explicit = _fit64(x, k, init=(weights, means, covs), max_iter=10, tol=0.0)
  g = _SkFromResp(k, resp=resp, tol=0.0, max_iter=10, reg_covar=reg)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    g.fit(x)
  assert _rel(fit_key["log_likelihood"][0], g.lower_bounds_[0]) < 1e-10
  assert _rel(fit_explicit["log_likelihood"][0], g.lower_bounds_[0]) < 1e-10
  for f in (fit_key, fit_explicit):
    _assert_matches_sklearn(f, g, x)


# --------------------------------------------------------------------------- 6. sharding

@pytest.mark.parametrize("case", list(CASES))  # 'full' (N=110) and 'dual' (N=39), N % 8 != 0
def test_sharded_fit_equals_single_device(case):
  """Rows sharded over an (8, 1) ('data', 'model') mesh, N padded to a multiple of 8 with
  zero-weight rows, give the single-device fit to 1e-10 relative (float64), from the explicit
  init of test 1 and, for N > d, from a key-driven 'kmeans++' init (results must not depend on
  the device count)."""
  assert jax.device_count() == 8
  mesh = make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
  assert dict(mesh.shape) == {"data": 8, "model": 1}
  sizes, d, sep = CASES[case]
  x, _, centres = _blobs(0, sizes, d, sep)
  assert len(x) % 8 != 0
  inits = [dict(init=_init_params(0, centres, 0.5 * sep))]
  if case == "n_gt_d":
    inits.append(dict(init="kmeans++", key=jax.random.key(1)))
  for kw in inits:
    one = _fit64(x, 3, max_iter=10, tol=0.0, **kw)
    many = _fit64(x, 3, max_iter=10, tol=0.0, mesh=mesh, **kw)
    assert one["form"] == many["form"] == ("full" if len(x) > d else "dual")
    for name in ("weights", "means", "covariances", "lower_bound", "log_likelihood"):
      assert _rel(many[name], one[name]) < 1e-10, name
    assert many["num_iters"] == one["num_iters"] and many["converged"] == one["converged"]
    np.testing.assert_array_equal(many["labels"], one["labels"])


# --------------------------------------------------------------------------- 7. bad inputs

def test_bad_inputs_raise_config_error():
  """User errors raise ConfigError with a one-line message, before any compilation."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 3)).astype(np.float32)
  ok = (np.full(2, 0.5), np.zeros((2, 3)), np.stack([np.eye(3)] * 2))
  bad_x = x.copy()
  bad_x[3, 1] = np.nan
  inf_x = x.copy()
  inf_x[0, 0] = np.inf
  cases = [
      (x, 11, dict(init=ok)),  # K > N
      (x, 0, dict(init="kmeans", key=jax.random.key(0))),
      (x, 2, dict(init=(ok[0][:1], ok[1], ok[2]))),  # weights shape
      (x, 2, dict(init=(ok[0], ok[1][:, :2], ok[2]))),  # means shape
      (x, 2, dict(init=(ok[0], ok[1], ok[2][:, :2]))),  # covariances shape
      (x, 2, dict(init=ok[:2])),  # not a triple
      (x, 2, dict(init="k-means++", key=jax.random.key(0))),  # unknown init string
      (x, 2, dict(init=ok, reg_covar=0.0)),
      (x, 2, dict(init=ok, reg_covar=-1e-6)),
      (bad_x, 2, dict(init=ok)),
      (inf_x, 2, dict(init=ok)),
      (x, 2, dict(init="kmeans++")),  # missing key
      (x, 2, dict(init="random_from_data")),
      (x, 2, dict(init="kmeans", key=None)),
      (x, 2, dict(init=ok, form="sparse")),
      (x, 2, dict(init=ok, max_iter=0)),
      (x, 2, dict(init=ok, tol=-1.0)),
      (x[:, 0], 2, dict(init=ok)),  # not [N, d]
  ]
  for data, k, kw in cases:
    with pytest.raises(ConfigError) as err:
      em.fit_gmm(data, k, **kw)
    assert "\n" not in str(err.value) and str(err.value).startswith("config.gmm.")


# --------------------------------------------------------------------------- 8. linear algebra

def _spd(rng, n):
  b = rng.normal(size=(n, n))
  return b @ b.T / n + 0.5 * np.eye(n)


@pytest.mark.parametrize("n", [5, 128, 200, 300])
def test_inverse_cholesky_matches_numpy(n):
  """Blocked inverse Cholesky factor and log det equal NumPy's inv(cholesky(a)) and slogdet
  (1e-10 relative, float64; well-conditioned SPD), for block 64 and the default block."""
  a = _spd(np.random.default_rng(n), n)
  ref_inv = np.linalg.inv(np.linalg.cholesky(a))
  ref_logdet = np.linalg.slogdet(a)[1]
  with jax.enable_x64(True):
    for block in (64, linalg.DEFAULT_BLOCK):
      inv, logdet = jax.jit(linalg.inverse_cholesky, static_argnums=1)(jnp.asarray(a), block)
      inv = np.asarray(inv)
      assert _rel(inv, ref_inv) < 1e-10
      assert np.all(np.triu(inv, 1) == 0.0)
      assert abs(float(logdet) - ref_logdet) / abs(ref_logdet) < 1e-10
      b = np.random.default_rng(1).normal(size=(n, 3))
      lm = np.asarray(linalg.lower_matmul(jnp.asarray(inv), jnp.asarray(b), block))
      assert _rel(lm, ref_inv @ b) < 1e-10


def test_whiten_cholesky_path_float64():
  """whiten on well-conditioned batches: W b with W^T W = a^{-1}, diag(a^{-1}) and log det equal
  NumPy's (1e-10 relative, float64)."""
  rng = np.random.default_rng(0)
  a = np.stack([_spd(rng, 150) for _ in range(2)])
  b = rng.normal(size=(2, 150, 4))
  with jax.enable_x64(True):
    whiten = jax.jit(linalg.whiten, static_argnums=3)
    z, dinv, logdet = whiten(jnp.asarray(a), jnp.asarray(b), jnp.asarray(0.5), 64)
    z, dinv, logdet = np.asarray(z), np.asarray(dinv), np.asarray(logdet)
  for k in range(2):
    inv = np.linalg.inv(a[k])
    assert _rel(np.sum(z[k] ** 2, 0), np.einsum("nm,nm->m", b[k], inv @ b[k])) < 1e-10
    assert _rel(dinv[k], np.diag(inv)) < 1e-10
    assert abs(logdet[k] - np.linalg.slogdet(a[k])[1]) < 1e-10 * abs(logdet[k])


def test_whiten_float32_rank_deficient_cluster_covariance():
  """What the float32 E-step meets: the covariance of 10 centred points in a 3-dim subspace of
  R^40 (spread 20) + reg I, formed in float32, where rounding (~eps |S| = 5e-5) swamps
  reg = 1e-6 and Cholesky breaks down. whiten's fallback gives finite outputs, the points'
  Mahalanobis terms b^T a^{-1} b match float64 (1e-4 relative; they live in the informative
  subspace), and log det is >= the exact one (the fallback can only raise the unresolvable
  eigenvalues; their exact value reg is below float32's resolution of `a`)."""
  rng = np.random.default_rng(0)
  d, reg = 40, 1e-6
  basis = np.linalg.qr(rng.normal(size=(d, 3)))[0]
  pts = 20.0 * rng.normal(size=(10, 3)) @ basis.T
  pts -= pts.mean(0)
  p32 = jnp.asarray(pts, jnp.float32)
  a32 = p32.T @ p32 / 10 + reg * jnp.eye(d, dtype=jnp.float32)
  inv, _ = linalg.inverse_cholesky(a32)
  assert not np.all(np.isfinite(np.asarray(inv)))  # the case the fallback exists for
  z, dinv, logdet = linalg.whiten(a32[None], p32.T[None], jnp.float32(reg))
  z, dinv, logdet = np.asarray(z, np.float64), np.asarray(dinv), float(logdet[0])
  assert np.all(np.isfinite(z)) and np.all(np.isfinite(dinv)) and np.isfinite(logdet)
  a64 = pts.T @ pts / 10 + reg * np.eye(d)
  quad_ref = np.einsum("dm,dm->m", pts.T, np.linalg.solve(a64, pts.T))
  assert _rel(np.sum(z[0] ** 2, 0), quad_ref) < 1e-4
  assert logdet >= np.linalg.slogdet(a64)[1] - 1e-3


def test_whiten_float32_huge_rank2_plus_reg():
  """reg I + U U^T with |U U^T| ~ 1e8 in float32: Cholesky breaks down (rounding ~ eps |a| >> reg),
  whiten's fallback gives finite outputs; the informative part is right: for b in span(U) the
  quadratic form b^T a^{-1} b matches float64 (1e-2 relative), and since the fallback can only
  raise the unresolved eigenvalues the log det is >= the exact one (the information below float32
  rounding of `a` itself is lost, so the null-space values cannot be exact)."""
  rng = np.random.default_rng(0)
  d, reg = 12, 1e-3
  u = rng.normal(size=(d, 2)) * 1e4
  a = reg * np.eye(d) + u @ u.T
  a32 = jnp.asarray(a, jnp.float32)
  inv, _ = linalg.inverse_cholesky(a32)
  assert not np.all(np.isfinite(np.asarray(inv)))  # the case the fallback exists for
  b = u @ rng.normal(size=(2, 3))
  z, dinv, logdet = linalg.whiten(a32[None], jnp.asarray(b, jnp.float32)[None], jnp.float32(reg))
  z, dinv, logdet = np.asarray(z, np.float64), np.asarray(dinv), float(logdet[0])
  assert np.all(np.isfinite(z)) and np.all(np.isfinite(dinv)) and np.isfinite(logdet)
  assert np.all(dinv > 0)
  quad_ref = np.einsum("nm,nm->m", b, np.linalg.solve(a, b))
  assert _rel(np.sum(z[0] ** 2, 0), quad_ref) < 1e-2
  assert logdet >= np.linalg.slogdet(a)[1] - 1e-3


# --------------------------------------------------------------------------- known defects

@pytest.mark.xfail(strict=True, reason="float32 'dual' component_log_probs on training points: "
                   "the Woodbury (|u|^2 - |z|^2) / reg cancels catastrophically for points in the span")
def test_float32_dual_score_samples_finite():
  """score_samples of a float32 'dual' fit are finite and close (1e-3 relative) to
  scikit-learn's float64 ones from the same start. Fails today (here finite but 10% off; on
  other data NaN): `_component_log_probs_dual` factorises reg I + A_k A_k^T, whose centring
  null vector sqrt(w_k) rounds to a negative eigenvalue once eps |A_k|^2 > reg (Cholesky NaN),
  and for points near
  the training data (|u|^2 - |L^{-1} A u|^2) / reg cancels catastrophically in float32 (the
  training E-step avoids both with the lift and the leverage form)."""
  sizes, d, sep = CASES["n_lt_d"]
  x, _, centres = _blobs(0, sizes, d, sep)
  x, centres = 3.0 * x, 3.0 * centres  # cluster spread 3: eps32 * |A_k|^2 ~ 1e-6 = reg_covar
  init = _init_params(0, centres, 0.5 * sep)
  f = em.fit_gmm(x.astype(np.float32), 3, init=init, max_iter=10, tol=0.0)
  assert f.form == "dual"
  assert np.all(np.isfinite(np.asarray(f.log_likelihood)))  # the fit itself is fine
  scores = np.asarray(em.score_samples(f, x[:8].astype(np.float32)))
  ref = _sklearn(x, init, 10, 0.0).score_samples(x[:8])  # float64
  assert np.all(np.isfinite(scores)) and _rel(scores, ref) < 1e-3


@pytest.mark.xfail(strict=True, reason="float32 'dual' E-step on rank-deficient clusters: the "
                   "centred Gram matrix from the uncentred one loses ~eps |x|^2 >> reg_covar")
def test_float32_dual_singular_log_likelihood_accuracy():
  """On the rank-3 clusters of test_singular_covariances_no_nan (N=30 < d=40), the float32 fit's
  mean log-likelihood is within 1e-3 relative of scikit-learn's float64 one (the float32 'full'
  form achieves ~1e-5 on the same data). Fails today by ~3%: B = diag(v)(G - g 1^T - 1 g^T + s)
  cancels entries of size |x|^2 ~ 4e3 down to O(1), leaving float32 noise ~2e-4 on the
  in-cluster null eigenvalues that should equal reg_covar = 1e-6."""
  x, _, centres = _subspace_blobs(5, 3)
  k, d = 3, x.shape[1]
  init = (np.full(k, 1.0 / k), centres + 0.1, np.broadcast_to(np.eye(d), (k, d, d)).copy())
  f = em.fit_gmm(x.astype(np.float32), k, init=init, max_iter=5, tol=0.0)
  g = _sklearn(x, init, 5, 0.0)
  ll = np.asarray(f.log_likelihood, np.float64)
  err = np.abs(ll - g.lower_bounds_) / np.abs(g.lower_bounds_)
  assert np.all(err < 1e-3), (ll, g.lower_bounds_)
