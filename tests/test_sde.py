"""Tests for jaxgen.sde SDEs and the DSM loss against SciPy quadrature, Monte Carlo simulation and
closed-form Gaussian expectations. Tolerances are stated next to each assertion."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from jaxgen.errors import ConfigError
from jaxgen.sde import VESDE, VPSDE, SubVPSDE, dsm_loss, get_sde, sample_importance_t

SDE_NAMES = ["vpsde", "subvpsde", "vesde"]


# Independent NumPy transcriptions of f(t) (drift coefficient) and g(t)^2 from Song et al. 2021.
def _f_and_g2(name, t):
  if name == "vesde":
    smin, smax = 0.01, 50.0
    sigma = smin * (smax / smin) ** t
    return 0.0, sigma ** 2 * 2 * math.log(smax / smin)
  beta = 0.1 + t * (20.0 - 0.1)
  if name == "vpsde":
    return -0.5 * beta, beta
  big_b = 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2
  return -0.5 * beta, beta * (1 - math.exp(-2 * big_b))


def test_get_sde_registry_and_validation():
  assert get_sde("vpsde") == VPSDE(0.1, 20.0, 1.0)
  assert get_sde("subvpsde", beta_max=10.0).beta_max == 10.0
  assert get_sde("vesde", sigma_max=80.0) == VESDE(0.01, 80.0, 1.0)
  with pytest.raises(ConfigError, match="sde.name"):
    get_sde("edm")
  with pytest.raises(ConfigError, match="sde.sigma_max"):
    get_sde("vpsde", sigma_max=3.0)
  with pytest.raises(ConfigError, match="sde.beta_max"):
    VPSDE(beta_min=1.0, beta_max=0.5)
  with pytest.raises(ConfigError, match="sde.sigma_max"):
    VESDE(sigma_min=1.0, sigma_max=0.5)
  hash(SubVPSDE())  # frozen dataclasses: usable as static jit arguments


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_matches_quadrature(name):
  """a(t) = exp(int_0^t f) and s(t)^2 = int_0^t g(u)^2 exp(2 int_u^t f) du (linear-SDE moments),
  each integral by scipy.integrate.quad; float32 closed forms agree to rtol 1e-4."""
  sde = get_sde(name)
  f_int = lambda lo, hi: integrate.quad(lambda u: _f_and_g2(name, u)[0], lo, hi)[0]
  ts = np.array([1e-3, 0.05, 0.3, 0.7, 1.0])
  a_ref = np.array([math.exp(f_int(0, t)) for t in ts])
  var_ref = np.array([
      integrate.quad(lambda u: _f_and_g2(name, u)[1] * math.exp(2 * f_int(u, t)), 0, t,
                     epsabs=0, epsrel=1e-10)[0] for t in ts])
  mean, std = sde.marginal(jnp.ones((len(ts), 1)), jnp.asarray(ts, jnp.float32))
  np.testing.assert_allclose(np.asarray(mean[:, 0]), a_ref, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(std) ** 2, var_ref, rtol=1e-4)
  _, g = sde.drift_and_diffusion(jnp.ones((len(ts), 1)), jnp.asarray(ts, jnp.float32))
  np.testing.assert_allclose(np.asarray(g) ** 2, [_f_and_g2(name, t)[1] for t in ts], rtol=1e-4)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_matches_forward_euler_maruyama(name):
  """20000 particles per starting point, 1000 Euler-Maruyama steps of drift_and_diffusion from 0 to
  T; at t = 0.25 and t = 1 the sample mean agrees with `marginal` within 4 standard errors + 0.01
  and the sample std within 3% (sampling error ~0.5%, discretisation error below 1%)."""
  sde = get_sde(name)
  n_steps, n_particles = 1000, 20000
  x0 = jnp.broadcast_to(jnp.array([-2.0, 0.0, 1.5]), (n_particles, 3))
  dt = sde.T / n_steps

  def body(x, inp):
    i, key = inp
    t = jnp.full((n_particles,), i * dt)
    f, g = sde.drift_and_diffusion(x, t)
    x = x + f * dt + g[:, None] * math.sqrt(dt) * jax.random.normal(key, x.shape)
    return x, x

  keys = jax.random.split(jax.random.key(0), n_steps)
  _, path = jax.jit(lambda x: jax.lax.scan(body, x, (jnp.arange(n_steps), keys)))(x0)
  for t_check in (0.25, 1.0):
    xs = np.asarray(path[int(round(t_check / dt)) - 1])
    mean, std = sde.marginal(x0[:1], jnp.full((1,), t_check))
    se = float(std[0]) / math.sqrt(n_particles)
    np.testing.assert_allclose(xs.mean(0), np.asarray(mean[0]), atol=4 * se + 0.01)
    np.testing.assert_allclose(xs.std(0), float(std[0]), rtol=0.03)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_transition_discretize_and_per_example_time(name):
  """Chapman-Kolmogorov for the exact transition: r a(s) = a(t), r^2 s(s)^2 + v = s(t)^2 (rtol 1e-5);
  a [B] time vector broadcasts over [B, 2, 3] exactly as a per-example loop."""
  sde = get_sde(name)
  s, t = jnp.array([0.1, 0.4, 0.8]), jnp.array([0.2, 0.41, 1.0])
  one = jnp.ones((3, 1))
  r, v = sde.transition(one, s, t)
  (a_s, std_s), (a_t, std_t) = sde.marginal(one, s), sde.marginal(one, t)
  np.testing.assert_allclose(r * a_s, a_t, rtol=1e-5)
  np.testing.assert_allclose(r[:, 0] ** 2 * std_s ** 2 + v ** 2, std_t ** 2, rtol=1e-5)
  f_d, g_d = sde.discretize(one, t, t - s)
  np.testing.assert_allclose(f_d + one, r, rtol=1e-6)
  np.testing.assert_allclose(g_d, v, rtol=1e-6)
  x = jax.random.normal(jax.random.key(1), (3, 2, 3))
  mean, std = sde.marginal(x, t)
  f, g = sde.drift_and_diffusion(x, t)
  for b in range(3):
    mb, sb = sde.marginal(x[b:b + 1], t[b:b + 1])
    fb, gb = sde.drift_and_diffusion(x[b:b + 1], t[b:b + 1])
    np.testing.assert_allclose(mean[b], mb[0], rtol=1e-6)
    np.testing.assert_allclose(f[b], fb[0], rtol=1e-6)
    assert std[b] == sb[0] and g[b] == gb[0]


@pytest.mark.parametrize("name", SDE_NAMES)
def test_prior(name):
  """prior_logp equals scipy.stats.norm.logpdf summed over non-batch axes (rtol 1e-5); prior
  samples have the prior std (within 2%, 20000 values)."""
  sde = get_sde(name)
  z = sde.prior_sample(jax.random.key(2), (1000, 4, 5))
  assert z.shape == (1000, 4, 5)
  assert abs(float(jnp.std(z)) / sde.prior_std - 1) < 0.02
  ref = stats.norm.logpdf(np.asarray(z[:3]), scale=sde.prior_std).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(np.asarray(sde.prior_logp(z[:3])), ref, rtol=1e-5)


# A 2-D Gaussian data distribution N(MU, SIGMA): the exact noise predictor is
# eps*(x_t, t) = E[eps | x_t] = s (a^2 SIGMA + s^2 I)^-1 (x_t - a MU), and the expected per-coordinate
# loss at time t is tr(I - s^2 (a^2 SIGMA + s^2 I)^-1) / 2 (the posterior variance of eps).
MU = np.array([0.5, -1.0])
SIGMA = np.array([[1.0, 0.6], [0.6, 0.8]])


def _exact_eps_fn(sde, scale=1.0):
  mu, sigma = jnp.asarray(MU), jnp.asarray(SIGMA)

  def eps_fn(x, t):
    a, s = sde.mean_coeff(t), sde.marginal_std(t)
    cov = a[:, None, None] ** 2 * sigma + s[:, None, None] ** 2 * jnp.eye(2)
    sol = jnp.linalg.solve(cov, (x - a[:, None] * mu)[..., None])[..., 0]
    return scale * s[:, None] * sol

  return eps_fn


def _expected_loss(sde, t):
  a, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
  cov = a ** 2 * SIGMA + s ** 2 * np.eye(2)
  return float(np.trace(np.eye(2) - s ** 2 * np.linalg.inv(cov))) / 2


def _data(n, key=3):
  return jnp.asarray(np.random.default_rng(key).multivariate_normal(MU, SIGMA, n), jnp.float32)


def _check_mc(loss, aux, ref, n):
  se = float(jnp.std(aux["loss_per_example"])) / math.sqrt(n)
  assert abs(float(loss) - ref) < 4 * se, (float(loss), ref, se)
  return se


def test_dsm_loss_matches_analytic_expectation():
  """Exact eps: the Monte Carlo loss (20000 examples) matches the analytic expectation
  E_t[tr(I - s^2 C^-1)/2], E_t by quad over U(t_eps, T), within 4 standard errors; at fixed t it
  matches the per-t formula; the same holds with likelihood weighting, both with uniform t and with
  importance-sampled t, whose per-example spread is smaller. A wrong eps (scaled by 1.3) has a
  strictly larger loss."""
  sde, n, t_eps = VPSDE(), 20000, 1e-3
  x0 = _data(n)
  eps_fn = _exact_eps_fn(sde)
  key = jax.random.key(4)
  loss, aux = dsm_loss(key, eps_fn, sde, x0)
  ref = integrate.quad(lambda t: _expected_loss(sde, t), t_eps, 1.0, limit=200)[0] / (1 - t_eps)
  _check_mc(loss, aux, ref, n)
  wrong, _ = dsm_loss(key, _exact_eps_fn(sde, 1.3), sde, x0)
  assert float(wrong) > float(loss) + 0.01

  loss_t, aux_t = dsm_loss(key, eps_fn, sde, x0, t=jnp.full((n,), 0.3))
  np.testing.assert_allclose(np.asarray(aux_t["t"]), 0.3)
  _check_mc(loss_t, aux_t, _expected_loss(sde, 0.3), n)

  w = lambda t: float(sde.likelihood_weight(t))
  ref_lw = integrate.quad(lambda t: w(t) * _expected_loss(sde, t), t_eps, 1.0,
                          points=[0.01, 0.1], limit=200)[0] / (1 - t_eps)
  loss_u, aux_u = dsm_loss(key, eps_fn, sde, x0, likelihood_weighting=True)
  se_u = _check_mc(loss_u, aux_u, ref_lw, n)
  loss_is, aux_is = dsm_loss(key, eps_fn, sde, x0, likelihood_weighting=True,
                             importance_sampling=True)
  se_is = _check_mc(loss_is, aux_is, ref_lw, n)
  assert se_is < 0.5 * se_u


def test_importance_density_matches_likelihood_weight():
  """t from sample_importance_t passes a Kolmogorov-Smirnov test (p > 0.01, 20000 draws) against
  the CDF of g^2/s^2 on [t_eps, T] obtained by numerical quadrature."""
  sde, t_eps = VPSDE(), 1e-3
  ts = np.asarray(sample_importance_t(jax.random.key(5), sde, 20000, t_eps))
  assert ts.min() >= t_eps and ts.max() <= 1.0
  grid = np.concatenate([np.geomspace(t_eps, 0.1, 2000), np.linspace(0.1, 1.0, 2000)[1:]])
  dens = np.asarray(sde.likelihood_weight(jnp.asarray(grid, jnp.float32)), np.float64)
  cdf = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
  cdf /= cdf[-1]
  assert stats.kstest(ts, lambda q: np.interp(q, grid, cdf)).pvalue > 0.01


def test_dsm_loss_mask_and_weights():
  """Frozen coordinates (mask 0) enter the model exactly at x0 and do not affect the loss; the
  loss is the mean over diffused coordinates (exact to rtol 1e-6 against a NumPy recomputation),
  example_weights multiply per example, reduce='all' divides by all coordinates instead."""
  sde, n = VPSDE(), 6
  x0 = jax.random.normal(jax.random.key(6), (n, 2, 3))
  mask = (jax.random.uniform(jax.random.key(7), (n, 2, 3)) < 0.5).astype(jnp.float32)
  mask = mask.at[0].set(1.0).at[1].set(0.0)
  seen = {}

  def model(x, t):
    seen["x"] = x
    return jnp.sin(3 * x) + (1 - mask) * 100.0  # huge error on frozen coordinates only

  key = jax.random.key(8)
  loss, aux = dsm_loss(key, model, sde, x0, mask=mask)
  x_t = np.asarray(seen["x"])
  m = np.asarray(mask, bool)
  np.testing.assert_array_equal(x_t[~m], np.asarray(x0)[~m])
  assert np.all(x_t[m] != np.asarray(x0)[m])
  # Recompute with NumPy: eps is recoverable from the diffused coordinates.
  mean, std = sde.marginal(x0, aux["t"])
  eps = (x_t - np.asarray(mean)) / np.asarray(std)[:, None, None]
  sq = np.where(m, (np.sin(3 * x_t) - eps) ** 2, 0.0).reshape(n, -1)
  n_diff = m.reshape(n, -1).sum(-1)
  ref = sq.sum(-1) / np.maximum(n_diff, 1)
  np.testing.assert_allclose(np.asarray(aux["loss_per_example"]), ref, rtol=1e-5, atol=1e-6)
  assert float(aux["loss_per_example"][1]) == 0.0  # nothing diffused
  np.testing.assert_allclose(float(loss), ref.mean(), rtol=1e-5)

  ew = jnp.arange(1.0, n + 1)
  _, aux_w = dsm_loss(key, model, sde, x0, mask=mask, example_weights=ew)
  np.testing.assert_allclose(np.asarray(aux_w["loss_per_example"]), ref * np.arange(1, n + 1),
                             rtol=1e-5, atol=1e-6)
  _, aux_all = dsm_loss(key, model, sde, x0, mask=mask, reduce="all")
  np.testing.assert_allclose(np.asarray(aux_all["loss_per_example"]), sq.sum(-1) / 6, rtol=1e-5,
                             atol=1e-6)


def test_dsm_loss_jit_grad_and_errors():
  """The loss is differentiable under jit; invalid options raise ConfigError."""
  sde = SubVPSDE()
  x0 = _data(64)

  def loss_of(w, key):
    return dsm_loss(key, lambda x, t: w * x, sde, x0, mask=jnp.array([1.0, 0.0]))[0]

  g = jax.jit(jax.grad(loss_of))(jnp.float32(0.5), jax.random.key(9))
  assert np.isfinite(float(g))
  with pytest.raises(ConfigError, match="importance_sampling"):
    dsm_loss(jax.random.key(0), lambda x, t: x, VESDE(), x0, likelihood_weighting=True,
             importance_sampling=True)
  with pytest.raises(ConfigError, match="importance_sampling"):
    dsm_loss(jax.random.key(0), lambda x, t: x, VPSDE(), x0, importance_sampling=True)
  with pytest.raises(ConfigError, match="loss_reduce"):
    dsm_loss(jax.random.key(0), lambda x, t: x, VPSDE(), x0, reduce="sum")


def test_v_prediction_loss_and_score_match_the_eps_forms():
  """v = a eps - s x0: the exact v predictor is (eps* - s x_t) / a, its expected loss at time t is
  the eps loss / a^2 (given x_t, v is an affine map of eps), and v_to_score_fn of it is the exact
  score; v needs a VP SDE."""
  from jaxgen.sde import eps_to_score_fn, v_to_score_fn
  sde, n, t = VPSDE(), 20000, 0.3
  x0, eps_fn = _data(n), _exact_eps_fn(sde)

  def v_fn(x, tt):
    a, s = sde.mean_coeff(tt)[:, None], sde.marginal_std(tt)[:, None]
    return (eps_fn(x, tt) - s * x) / a

  loss, aux = dsm_loss(jax.random.key(4), v_fn, sde, x0, t=jnp.full((n,), t), prediction="v")
  _check_mc(loss, aux, _expected_loss(sde, t) / float(sde.mean_coeff(t)) ** 2, n)
  x, tt = x0[:8] * 0.7 + 0.1, jnp.linspace(0.05, 1.0, 8)
  np.testing.assert_allclose(np.asarray(v_to_score_fn(v_fn, sde)(x, tt)),
                             np.asarray(eps_to_score_fn(eps_fn, sde)(x, tt)), rtol=2e-4, atol=1e-5)
  with pytest.raises(ConfigError, match="sde.prediction"):
    dsm_loss(jax.random.key(0), v_fn, VESDE(), x0[:4], prediction="v")
  with pytest.raises(ConfigError, match="sde.prediction"):
    dsm_loss(jax.random.key(0), v_fn, sde, x0[:4], prediction="x0")
