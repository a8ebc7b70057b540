"""EM for a full-covariance Gaussian mixture in JAX, following scikit-learn exactly (paper 004 sec. 3.2).

`fit_gmm` reproduces `sklearn.mixture.GaussianMixture(covariance_type='full', n_init=1)`:

- per iteration an E-step on the current parameters, then an M-step; the iteration's mean
  log-likelihood (sklearn's `lower_bound_`) is the E-step's, i.e. of the parameters *before* that
  iteration's M-step; convergence when |change| < tol; after the loop one more E-step gives the
  labels (sklearn's `fit_predict`);
- M-step: n_k = sum_i r_ik + 10 * eps(dtype), means = r^T x / n_k, covariances
  sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T / n_k + reg_covar * I, weights n_k / sum n_k;
- initial parameters from responsibilities without renormalising the weights (`jaxgen.gmm.init`).

The whole loop is one compiled `lax.while_loop`. The data are sharded over the mesh's 'data' axis
(padded rows carry zero weight) and XLA reduces the sufficient statistics across devices.

Two forms, chosen by shape (`form='auto'`):
- 'full' (N >= d): d x d covariances, blocked Cholesky (`jaxgen.gmm.linalg`).
- 'dual' (N < d): Sigma_k = A_k^T A_k + reg I with A_k = diag(sqrt(w_k)) (X - 1 mu_k^T) and
  w_k = r_k / n_k. Woodbury and the matrix determinant lemma turn every d x d factorisation into an
  N x N one, M_k = reg I + A_k A_k^T, whose entries come from the data's Gram matrix G = X X^T
  (computed once). The d x d covariances are formed only when `.covariances` is read.
  Per component only its active set (the points whose dropped weight stays below one rounding)
  enters the factorisation: about N / K points instead of N when responsibilities are near-hard.

Float32 in the dual form: the centring direction sqrt(w_k) is an exact null vector of A_k A_k^T,
so reg I + A_k A_k^T has an eigenvalue of exactly reg that rounding would corrupt; it is lifted to
reg + trace and corrected analytically (it is an eigenvector). For a point of the cluster, the
Mahalanobis term is computed as (1 - reg [M^{-1}]_jj) / w_j, which avoids the cancellation of
(|u|^2 - u^T A^T M^{-1} A u) / reg; each point uses the form with the smaller error bound.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.errors import ConfigError
from jaxgen.gmm import linalg
from jaxgen.gmm.init import INITS, initial_responsibilities
from jaxgen.parallel.mesh import to_host

FORMS = ("auto", "full", "dual")
_LOG_2PI = math.log(2.0 * math.pi)


@flax.struct.dataclass
class GaussianMixture:
  """A fitted mixture. Dual-form fits keep the data (`support`) instead of d x d covariances."""

  weights: jax.Array  # [K]
  means: jax.Array  # [K, d]
  full_covariances: jax.Array | None  # [K, d, d] ('full' form) else None
  support: jax.Array | None  # [N, d] the training data ('dual' form)
  support_weights: jax.Array | None  # [K, N] w_ik = r_ik / n_k ('dual' form)
  reg_covar: jax.Array
  log_likelihood: jax.Array  # [max_iter] mean log-likelihood per iteration, NaN after num_iters
  lower_bound: jax.Array  # the last iteration's value (sklearn's lower_bound_)
  converged: jax.Array
  num_iters: jax.Array
  labels: jax.Array  # [N] argmax responsibilities of the final E-step (sklearn's fit_predict)

  @property
  def form(self) -> str:
    return "full" if self.full_covariances is not None else "dual"

  @property
  def covariances(self) -> jax.Array:
    """[K, d, d]; in the dual form formed here, on demand (K d^2 memory)."""
    if self.full_covariances is not None:
      return self.full_covariances
    return _dual_covariances(self.support, self.support_weights, self.means, self.reg_covar)


@jax.jit
def _dual_covariances(x, w, means, reg):
  def one(wk, mk):
    diff = x - mk
    return (diff * wk[:, None]).T @ diff
  covs = jax.lax.map(lambda a: one(*a), (w, means))
  return covs + reg * jnp.eye(x.shape[1], dtype=x.dtype)


# --------------------------------------------------------------------------- M-step

def _m_step_stats(x, resp):
  eps = jnp.finfo(x.dtype).eps
  nk = jnp.sum(resp, axis=0) + 10 * eps
  means = (resp.T @ x) / nk[:, None]
  return nk, means


def _full_covariances(x, resp, nk, means, reg):
  def one(args):
    rk, mk, n = args
    diff = x - mk
    return (diff * rk[:, None]).T @ diff / n
  covs = jax.vmap(lambda r, m, n: one((r, m, n)))(resp.T, means, nk)
  return covs + reg * jnp.eye(x.shape[1], dtype=x.dtype)


# --------------------------------------------------------------------------- E-step

def _full_log_probs(x, means, covs, reg, block, replicate=lambda t: t, pure=False):
  """log N(x_j | mu_k, Sigma_k) [N, K] from d x d covariances."""
  d = x.shape[1]
  diff_t = jnp.swapaxes(x[None] - means[:, None], 1, 2)  # [K, d, N]
  z, _, logdet = linalg.whiten(replicate(covs), replicate(diff_t), reg, block, pure)
  quad = jnp.sum(z * z, axis=1)  # [K, N]
  return (-0.5 * (d * _LOG_2PI + logdet[:, None] + quad)).T


# Active-set sizes tried per component, as fractions of N (one compiled branch each).
ACTIVE_FRACTIONS = (1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4)
MIN_ACTIVE = 64  # below this size a smaller factorisation saves too little to be worth a branch


def active_sizes(n: int) -> tuple[int, ...]:
  """The static active-set sizes the dual E-step may use for N = n points (always ends with n)."""
  sizes = {int(math.ceil(f * n)) for f in ACTIVE_FRACTIONS}
  return tuple(sorted(m for m in sizes if MIN_ACTIVE <= m < n)) + (n,)


def active_size_index(w: jax.Array, c_diag: jax.Array, reg: jax.Array, sizes: tuple[int, ...]
                      ) -> tuple[jax.Array, jax.Array]:
  """(index into `sizes`, points by decreasing weight) for one component.

  Dropping the points of rank >= m changes Sigma_k by a PSD matrix of trace
  sum_{dropped} w_j C_jj; when that is at most eps * reg (Sigma_k's smallest eigenvalue is >= reg)
  every quadratic form and the determinant change by less than one rounding, so the smallest such
  m is exact in the working precision. Near-hard responsibilities (separated clusters in high
  dimension, the paper's regime) make m about the cluster's size instead of N.
  """
  order = jnp.argsort(-w)
  contrib = (w * c_diag)[order]
  tail = jnp.cumsum(contrib[::-1])[::-1]  # tail[i] = sum of contrib[i:]
  tail = jnp.concatenate([tail, jnp.zeros((1,), tail.dtype)])
  ok = jnp.stack([tail[m] <= jnp.finfo(w.dtype).eps * reg for m in sizes])
  return jnp.argmax(ok), order


def _dual_log_probs(gram, w, d, reg, block, replicate=lambda t: t, pure=False, active_set=True):
  """log N(x_j | mu_k, Sigma_k) [N, K] of the training points, Sigma_k = A^T A + reg I (dual).

  Per component only the m points that carry weight enter the N x N system (`active_size_index`):
  the others' rows of A_k vanish to working precision, so M_k is reg I on them and the
  factorisation is m x m. The components run one after another (`lax.map`), each in the branch of
  its own m.
  """
  n = gram.shape[0]
  gram_diag = jnp.diagonal(gram)
  sizes = active_sizes(n) if active_set else (n,)

  def active(m, wk, g, s_, c_diag, order):
    # All N points keep their order (no gather): the same arithmetic as without active sets.
    p = order[:m] if m < n else jnp.arange(n)
    take = (lambda a, axis=0: jnp.take(a, p, axis=axis)) if m < n else (lambda a, axis=0: a)
    wp = take(wk)
    v = jnp.sqrt(wp)
    # Rows P of C = (X - 1 mu^T)(X - 1 mu^T)^T = G - g 1^T - 1 g^T + (w.g) 1 1^T; B = diag(v) C_P.
    c_rows = take(gram) - take(g)[:, None] - g[None, :] + s_  # [m, N]
    b = v[:, None] * c_rows
    sigma = jnp.sum(wp)
    alpha = jnp.sum(wp * take(c_diag))  # trace(A A^T)
    lifted = (take(b, 1) * v[None, :] + reg * jnp.eye(m, dtype=gram.dtype)
              + (alpha / sigma) * jnp.outer(v, v))
    z, diag_inv_p, logdet = linalg.whiten(replicate(lifted[None]), replicate(b[None]), reg, block,
                                          pure)
    corr = (1.0 / reg - 1.0 / (reg + alpha)) / sigma  # undo the lift along v / |v|
    h = jnp.sum(z[0] * z[0], axis=0) + corr * (v @ b) ** 2
    diag_inv = jnp.full((n,), 1.0 / reg, gram.dtype).at[p].set(diag_inv_p[0] + corr * v ** 2)
    logdet = logdet[0] - jnp.log(reg + alpha) + jnp.log(reg) + (d - m) * jnp.log(reg)
    return h, diag_inv, logdet

  def one(wk):
    g = gram @ wk
    s_ = wk @ g
    c_diag = gram_diag - 2.0 * g + s_
    index, order = active_size_index(wk, c_diag, reg, sizes)
    branches = [functools.partial(active, m) for m in sizes]
    h, diag_inv, logdet = jax.lax.switch(index, branches, wk, g, s_, c_diag, order)
    quad_woodbury = (c_diag - h) / reg
    quad_leverage = (1.0 - reg * diag_inv) / jnp.maximum(wk, jnp.finfo(wk.dtype).tiny)
    # Error bounds ~ eps * C_jj / reg and eps / w_j: take the smaller one per point.
    quad = jnp.where(wk * c_diag > reg, quad_leverage, quad_woodbury)
    return -0.5 * (d * _LOG_2PI + logdet + jnp.maximum(quad, 0.0))

  return jax.lax.map(one, w).T


def _e_step(log_probs, weights, valid):
  weighted = log_probs + jnp.log(weights)[None]
  lpn = jax.nn.logsumexp(weighted, axis=1)
  resp = jnp.exp(weighted - lpn[:, None]) * valid[:, None]
  mean_ll = jnp.sum(jnp.where(valid > 0, lpn, 0.0)) / jnp.sum(valid)
  return mean_ll, resp


# --------------------------------------------------------------------------- the loop

@functools.partial(jax.jit, static_argnames=("form", "max_iter", "block", "from_params", "mesh",
                                             "active_set"))
def _fit(x, valid, resp0, weights0, means0, covs0, tol, reg, *, form, max_iter, block, from_params,
         mesh, active_set):
  n, d = x.shape

  def replicate(t):
    # The factorisations (LAPACK custom calls, and the eigh fallback inside a lax.cond) run on
    # replicated operands: partitioning them deadlocked XLA:CPU with 8 devices.
    return t if mesh is None else jax.lax.with_sharding_constraint(t, NamedSharding(mesh, P()))

  pure = mesh is not None and mesh.size > 1 and jax.default_backend() == "cpu"

  k = resp0.shape[1]
  n_valid = jnp.sum(valid)
  gram = x @ x.T if form == "dual" else None

  def m_step(resp):
    nk, means = _m_step_stats(x, resp)
    weights = nk / jnp.sum(nk)
    if form == "dual":
      return weights, means, (resp / nk[None]).T
    return weights, means, _full_covariances(x, resp, nk, means, reg)

  def log_probs(params):
    weights, means, extra = params
    if form == "dual":
      return _dual_log_probs(gram, extra, d, reg, block, replicate, pure, active_set)
    return _full_log_probs(x, means, extra, reg, block, replicate, pure)

  # The first E-step: from the given parameters, or from sklearn's initial M-step on resp0.
  if from_params:
    lp0 = _full_log_probs(x, means0, covs0, reg, block, replicate, pure)
    ll, resp = _e_step(lp0, weights0, valid)
  else:
    weights, means, extra = m_step(resp0)
    nk, _ = _m_step_stats(x, resp0)
    ll, resp = _e_step(log_probs((weights, means, extra)), nk / n_valid, valid)

  extra_shape = (k, n) if form == "dual" else (k, d, d)
  params = (jnp.zeros((k,), x.dtype), jnp.zeros((k, d), x.dtype), jnp.zeros(extra_shape, x.dtype))
  history = jnp.full((max_iter,), jnp.nan, x.dtype)
  state = (jnp.int32(0), jnp.asarray(-jnp.inf, x.dtype), ll, resp, params, history, jnp.bool_(False))

  def cond(state):
    it, _, _, _, _, _, converged = state
    return (it < max_iter) & jnp.logical_not(converged)

  def body(state):
    it, prev, ll, resp, _, history, _ = state
    params = m_step(resp)
    converged = jnp.abs(ll - prev) < tol
    history = history.at[it].set(ll)
    new_ll, new_resp = _e_step(log_probs(params), params[0], valid)
    return it + 1, ll, new_ll, new_resp, params, history, converged

  it, lower_bound, _, resp, params, history, converged = jax.lax.while_loop(cond, body, state)
  return params, history, lower_bound, converged, it, jnp.argmax(resp, axis=1)


# --------------------------------------------------------------------------- public API

def _check(x: np.ndarray, num_components: int, init: Any, max_iter: int, tol: float,
           reg_covar: float, form: str) -> None:
  if x.ndim != 2 or x.shape[0] < 2:
    raise ConfigError("gmm.x", tuple(x.shape), "data [N, d] with N >= 2")
  if not np.all(np.isfinite(x)):
    raise ConfigError("gmm.x", "non-finite values", "finite data")
  if not (isinstance(num_components, int) and 1 <= num_components <= x.shape[0]):
    raise ConfigError("gmm.num_components", num_components, f"an integer in [1, N={x.shape[0]}]")
  if isinstance(init, str) and init not in INITS:
    raise ConfigError("gmm.init", init, "one of " + ", ".join(INITS) + " or (weights, means, covariances)")
  if not (isinstance(max_iter, int) and max_iter >= 0):
    raise ConfigError("gmm.max_iter", max_iter, "a non-negative integer")
  if not tol >= 0:
    raise ConfigError("gmm.tol", tol, "a non-negative number")
  if not reg_covar > 0:
    raise ConfigError("gmm.reg_covar", reg_covar, "a positive number (the covariance floor)")
  if form not in FORMS:
    raise ConfigError("gmm.form", form, "one of " + ", ".join(FORMS))


def _explicit_init(init: tuple, k: int, d: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
  if len(init) != 3:
    raise ConfigError("gmm.init", f"tuple of {len(init)}", "(weights [K], means [K, d], covariances [K, d, d])")
  weights, means, covs = (np.asarray(a, dtype) for a in init)
  for name, arr, shape in (("weights", weights, (k,)), ("means", means, (k, d)),
                           ("covariances", covs, (k, d, d))):
    if arr.shape != shape:
      raise ConfigError(f"gmm.init.{name}", arr.shape, f"shape {shape}")
  return jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs)


def fit_gmm(x: Any, num_components: int, *, init: str | tuple = "kmeans++", max_iter: int = 100,
            tol: float = 1e-3, reg_covar: float = 1e-6, key: jax.Array | None = None,
            mesh: Mesh | None = None, form: str = "auto",
            block: int = linalg.DEFAULT_BLOCK, active_set: bool = True) -> GaussianMixture:
  """Fit a K-component full-covariance mixture to x [N, d] by EM (see the module docstring).

  init: 'kmeans++' | 'kmeans' | 'random_from_data' (drawn with `key`) or explicit
  (weights [K], means [K, d], covariances [K, d, d]). Works in x's float dtype (float64 needs
  jax_enable_x64). mesh: rows are sharded over its 'data' axis (padded with zero-weight rows).
  active_set: in the dual form, factorise only the points that carry weight in each component
  (exact to working precision, see `active_size_index`); False factorises all N (the worst case,
  for benchmarks).
  """
  x_np = np.asarray(x)
  _check(x_np, num_components, init, max_iter, tol, reg_covar, form)
  dtype = jnp.float64 if (x_np.dtype == np.float64 and jax.config.jax_enable_x64) else jnp.float32
  n, d = x_np.shape
  k = num_components
  if form == "auto":
    form = "dual" if n < d else "full"
  shards = mesh.shape["data"] if mesh is not None else 1
  pad = (-n) % shards
  xp = jnp.asarray(np.concatenate([x_np, np.zeros((pad, d), x_np.dtype)]), dtype)
  valid = jnp.asarray(np.r_[np.ones(n), np.zeros(pad)], dtype)
  if mesh is not None:
    rows = NamedSharding(mesh, P("data"))
    xp = jax.device_put(xp, NamedSharding(mesh, P("data", None)))
    valid = jax.device_put(valid, rows)
  from_params = not isinstance(init, str)
  if from_params:
    weights0, means0, covs0 = _explicit_init(init, k, d, dtype)
    resp0 = jnp.zeros((n + pad, k), dtype)
  else:
    if key is None:
      raise ConfigError("gmm.key", None, f"a PRNG key for init={init!r}")
    resp0 = initial_responsibilities(key, xp, k, init, valid)
    weights0, means0, covs0 = None, None, None
  if max_iter == 0:  # sklearn: the initial parameters, no iteration
    raise ConfigError("gmm.max_iter", 0, "at least 1 iteration (the parameters come from the EM)")
  params, history, lower_bound, converged, it, labels = _fit(
      xp, valid, resp0, weights0, means0, covs0, jnp.asarray(tol, dtype), jnp.asarray(reg_covar, dtype),
      form=form, max_iter=max_iter, block=block, from_params=from_params, mesh=mesh,
      active_set=bool(active_set))
  weights, means, extra = params
  mixture = GaussianMixture(
      weights=weights, means=means,
      full_covariances=extra if form == "full" else None,
      support=xp[:n] if form == "dual" else None,
      support_weights=extra[:, :n] if form == "dual" else None,
      reg_covar=jnp.asarray(reg_covar, dtype), log_likelihood=history, lower_bound=lower_bound,
      converged=converged, num_iters=it, labels=labels[:n])
  if jax.process_count() > 1:
    # Rows were sharded over every host's devices: give each host the whole (small) result, so
    # what follows (sampling, NumPy) runs on it locally.
    mixture = jax.tree.map(lambda a: jnp.asarray(to_host(a)), mixture)
  return mixture


# --------------------------------------------------------------------------- using a fit

@functools.partial(jax.jit, static_argnames=("block",))
def _component_log_probs_full(mixture, x, block):
  return _full_log_probs(x, mixture.means, mixture.full_covariances, mixture.reg_covar, block)


@jax.jit
def _component_log_probs_dual(mixture, x):
  """Woodbury form for arbitrary points, quad = (|u|^2 - u^T A^T M^{-1} A u) / reg, with the same
  lift of the centring direction as the training E-step (so M factorises in float32 too)."""
  sup, w, reg = mixture.support, mixture.support_weights, mixture.reg_covar
  n, d = sup.shape

  def one(wk, mk):
    v = jnp.sqrt(wk)
    a = v[:, None] * (sup - mk)  # [N, d]
    s = a @ a.T
    sigma, alpha = jnp.sum(wk), jnp.trace(s)
    lifted = s + reg * jnp.eye(n, dtype=sup.dtype) + (alpha / sigma) * jnp.outer(v, v)
    u = x - mk  # [m, d]
    au = a @ u.T  # [N, m]
    z, _, logdet = linalg.whiten(lifted[None], au[None], reg)
    corr = (1.0 / reg - 1.0 / (reg + alpha)) / sigma
    h = jnp.sum(z[0] ** 2, 0) + corr * (v @ au) ** 2
    logdet = logdet[0] - jnp.log(reg + alpha) + jnp.log(reg) + (d - n) * jnp.log(reg)
    quad = (jnp.sum(u * u, 1) - h) / reg
    return -0.5 * (d * _LOG_2PI + logdet + jnp.maximum(quad, 0.0))

  return jax.lax.map(lambda t: one(*t), (w, mixture.means)).T


def component_log_probs(mixture: GaussianMixture, x: Any) -> jax.Array:
  """log N(x_j | mu_k, Sigma_k) [M, K] for new points x [M, d]."""
  x = jnp.asarray(x, mixture.means.dtype)
  if mixture.form == "full":
    return _component_log_probs_full(mixture, x, linalg.DEFAULT_BLOCK)
  return _component_log_probs_dual(mixture, x)


def score_samples(mixture: GaussianMixture, x: Any) -> jax.Array:
  """log p(x_j) [M] under the mixture (sklearn's `score_samples`)."""
  return jax.nn.logsumexp(component_log_probs(mixture, x) + jnp.log(mixture.weights), axis=1)


def predict_proba(mixture: GaussianMixture, x: Any) -> jax.Array:
  """Posterior component probabilities [M, K] (sklearn's `predict_proba`)."""
  return jax.nn.softmax(component_log_probs(mixture, x) + jnp.log(mixture.weights), axis=1)


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sample(mixture, key, num_samples):
  k_comp, k_eps, k_iso = jax.random.split(key, 3)
  comps = jax.random.categorical(k_comp, jnp.log(mixture.weights), shape=(num_samples,))
  d = mixture.means.shape[1]
  if mixture.full_covariances is not None:
    chol = jax.vmap(jnp.linalg.cholesky)(mixture.full_covariances)
    eps = jax.random.normal(k_eps, (num_samples, d), mixture.means.dtype)
    z = jnp.einsum("bij,bj->bi", chol[comps], eps)
  else:  # Sigma = A^T A + reg I: z = A^T e_N + sqrt(reg) e_d, no d x d matrix needed
    sup, w = mixture.support, mixture.support_weights
    e_n = jax.random.normal(k_eps, (num_samples, sup.shape[0]), sup.dtype) * jnp.sqrt(w[comps])
    centred = e_n @ sup - jnp.sum(e_n, 1, keepdims=True) * mixture.means[comps]
    z = centred + jnp.sqrt(mixture.reg_covar) * jax.random.normal(k_iso, (num_samples, d), sup.dtype)
  return z + mixture.means[comps], comps


def sample(mixture: GaussianMixture, key: jax.Array, num_samples: int) -> tuple[jax.Array, jax.Array]:
  """(samples [n, d], component of each [n]) drawn from the full mixture with an explicit key."""
  return _sample(mixture, key, num_samples)
