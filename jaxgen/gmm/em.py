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


def _dual_log_probs(gram, w, d, reg, block, replicate=lambda t: t, pure=False):
  """log N(x_j | mu_k, Sigma_k) [N, K] of the training points, Sigma_k = A^T A + reg I (dual)."""
  n = gram.shape[0]

  gram_diag = jnp.diagonal(gram)
  eye = jnp.eye(n, dtype=gram.dtype)

  def prepare(wk):
    g = gram @ wk
    s_ = wk @ g
    v = jnp.sqrt(wk)
    # B = diag(v) C with C = (X - 1 mu^T)(X - 1 mu^T)^T = G - g 1^T - 1 g^T + (w.g) 1 1^T.
    b = v[:, None] * (gram - g[:, None] - g[None, :] + s_)
    c_diag = gram_diag - 2.0 * g + s_
    sigma = jnp.sum(wk)
    alpha = jnp.sum(wk * c_diag)  # trace(A A^T)
    lifted = b * v[None, :] + reg * eye + (alpha / sigma) * jnp.outer(v, v)
    return lifted, b, c_diag, v, sigma, alpha

  lifted, b, c_diag, v, sigma, alpha = jax.vmap(prepare)(w)
  z, diag_inv, logdet = linalg.whiten(replicate(lifted), replicate(b), reg, block, pure)
  corr = (1.0 / reg - 1.0 / (reg + alpha)) / sigma  # [K]: undo the lift along v / |v|
  vb = jnp.einsum("kn,knm->km", v, b)
  h = jnp.sum(z * z, axis=1) + corr[:, None] * vb ** 2
  diag_inv = diag_inv + corr[:, None] * v ** 2
  logdet = logdet - jnp.log(reg + alpha) + jnp.log(reg) + (d - n) * jnp.log(reg)
  quad_woodbury = (c_diag - h) / reg
  quad_leverage = (1.0 - reg * diag_inv) / jnp.maximum(w, jnp.finfo(w.dtype).tiny)
  # Error bounds ~ eps * C_jj / reg and eps / w_j: take the smaller one per point.
  quad = jnp.where(w * c_diag > reg, quad_leverage, quad_woodbury)
  quad = jnp.maximum(quad, 0.0)
  return (-0.5 * (d * _LOG_2PI + logdet[:, None] + quad)).T


def _e_step(log_probs, weights, valid):
  weighted = log_probs + jnp.log(weights)[None]
  lpn = jax.nn.logsumexp(weighted, axis=1)
  resp = jnp.exp(weighted - lpn[:, None]) * valid[:, None]
  mean_ll = jnp.sum(jnp.where(valid > 0, lpn, 0.0)) / jnp.sum(valid)
  return mean_ll, resp


# --------------------------------------------------------------------------- the loop

@functools.partial(jax.jit, static_argnames=("form", "max_iter", "block", "from_params", "mesh"))
def _fit(x, valid, resp0, weights0, means0, covs0, tol, reg, *, form, max_iter, block, from_params,
         mesh):
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
      return _dual_log_probs(gram, extra, d, reg, block, replicate, pure)
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
            block: int = linalg.DEFAULT_BLOCK) -> GaussianMixture:
  """Fit a K-component full-covariance mixture to x [N, d] by EM (see the module docstring).

  init: 'kmeans++' | 'kmeans' | 'random_from_data' (drawn with `key`) or explicit
  (weights [K], means [K, d], covariances [K, d, d]). Works in x's float dtype (float64 needs
  jax_enable_x64). mesh: rows are sharded over its 'data' axis (padded with zero-weight rows).
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
      form=form, max_iter=max_iter, block=block, from_params=from_params, mesh=mesh)
  weights, means, extra = params
  return GaussianMixture(
      weights=weights, means=means,
      full_covariances=extra if form == "full" else None,
      support=xp[:n] if form == "dual" else None,
      support_weights=extra[:, :n] if form == "dual" else None,
      reg_covar=jnp.asarray(reg_covar, dtype), log_likelihood=history, lower_bound=lower_bound,
      converged=converged, num_iters=it, labels=labels[:n])


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
