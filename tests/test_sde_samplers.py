"""Samplers of jaxgen.sde driven by the exact analytic score of noised Gaussian (mixture) data.

A Gaussian mixture sum_k w_k N(mu_k, S_k) noised by a linear SDE stays a mixture
sum_k w_k N(a mu_k, a^2 S_k + s^2 I), so its score is known in closed form; samples are compared
with the true parameters (NumPy) at the tolerances stated in each test."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import ConfigError
from jaxgen.sde import (eps_to_score_fn, get_sampler, get_sde, repaint_schedule,
                        sample_euler_maruyama, sample_ode, sample_pc, sample_repaint)

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-2.0, -1.0], [1.5, 1.0]])
COVS = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.4, -0.15], [-0.15, 0.3]]])


def mixture_score(sde, weights=WEIGHTS, means=MEANS, covs=COVS):
  """Exact score of the noised mixture at time t (t of shape [B])."""
  logw, mu, cov0 = jnp.log(jnp.asarray(weights)), jnp.asarray(means), jnp.asarray(covs)

  def score(x, t):
    a, s = sde.mean_coeff(t), sde.marginal_std(t)
    cov = a[:, None, None, None] ** 2 * cov0 + s[:, None, None, None] ** 2 * jnp.eye(2)
    diff = x[:, None, :] - a[:, None, None] * mu  # [B, K, 2]
    # closed-form 2x2 inverse: much cheaper on CPU than a batched LU solve
    c00, c01, c11 = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    det = c00 * c11 - c01 ** 2
    sol = jnp.stack([c11 * diff[..., 0] - c01 * diff[..., 1],
                     c00 * diff[..., 1] - c01 * diff[..., 0]], -1) / det[..., None]
    logp = logw - 0.5 * jnp.sum(diff * sol, -1) - 0.5 * jnp.log(det)
    resp = jax.nn.softmax(logp, axis=1)
    return -jnp.sum(resp[..., None] * sol, axis=1)

  return score


def _component_log_lik(x):
  out = []
  for w, m, c in zip(WEIGHTS, MEANS, COVS):
    d = x - m
    out.append(math.log(w) - 0.5 * np.einsum("bi,ij,bj->b", d, np.linalg.inv(c), d)
               - 0.5 * math.log(np.linalg.det(c)))
  return np.stack(out, 1)


# (sde name, sampler name, keyword arguments, number of steps)
CASES = [
    ("vpsde", "euler_maruyama", {}, 300),
    ("vpsde", "pc", {"predictor": "reverse_diffusion"}, 200),
    ("vpsde", "pc", {"predictor": "euler_maruyama", "n_corrector_steps": 2}, 200),
    ("vpsde", "ode", {"method": "euler"}, 300),
    ("vpsde", "ode", {"method": "heun"}, 60),
    ("vpsde", "repaint", {"jump_length": 10, "num_repeats": 3}, 120),
    ("subvpsde", "euler_maruyama", {}, 300),
    ("subvpsde", "ode", {"method": "heun"}, 60),
    ("vesde", "pc", {"predictor": "reverse_diffusion"}, 300),
    ("vesde", "ode", {"method": "heun"}, 120),
]


@pytest.mark.parametrize("sde_name,sampler,kw,steps", CASES)
def test_samplers_recover_gaussian_mixture(sde_name, sampler, kw, steps):
  """3000 samples, jitted. Each sample is assigned to the component of highest posterior; the
  weight of component 0 is within 0.04 of 0.3 (about 5 standard errors), every component mean is
  within 0.07 and every component covariance entry within 0.07 of the truth (standard errors
  are ~0.02; the rest is time-discretisation bias, observed below 0.04)."""
  sde = get_sde(sde_name)
  n = 3000
  fn = get_sampler(sampler)
  score = mixture_score(sde)
  x = jax.jit(lambda key: fn(key, score, sde, (n, 2), steps, **kw))(jax.random.key(0))
  x = np.asarray(x, np.float64)
  assert np.all(np.isfinite(x))
  label = np.argmax(_component_log_lik(x), 1)
  assert abs(np.mean(label == 0) - WEIGHTS[0]) < 0.04
  for k in range(2):
    xk = x[label == k]
    np.testing.assert_allclose(xk.mean(0), MEANS[k], atol=0.07)
    np.testing.assert_allclose(np.cov(xk.T), COVS[k], atol=0.07)


# Conditional test: x ~ N(MU, S); coordinate 1 is observed, coordinate 0 is generated.
MU = np.array([0.5, -1.0])
S = np.array([[1.0, 0.8], [0.8, 1.5]])
SLOPE = S[0, 1] / S[1, 1]
COND_VAR = S[0, 0] - S[0, 1] ** 2 / S[1, 1]


def conditional_score(sde):
  """Exact score of q(x^M_t | x^C): x^M_t ~ N(a m_c(x^C), a^2 v_c + s^2), with x^C read from the
  clamped (clean) coordinate 1 of the state; the score of the observed coordinate is ignored."""

  def score(x, t):
    a, s = sde.mean_coeff(t), sde.marginal_std(t)
    m_c = MU[0] + SLOPE * (x[:, 1] - MU[1])
    s0 = -(x[:, 0] - a * m_c) / (a ** 2 * COND_VAR + s ** 2)
    return jnp.stack([s0, jnp.zeros_like(s0)], 1)

  return score


COND_CASES = [
    ("euler_maruyama", {}, 300),
    ("pc", {"predictor": "reverse_diffusion"}, 200),
    ("ode", {"method": "heun"}, 60),
    ("repaint", {"jump_length": 10, "num_repeats": 5}, 100),
    ("repaint", {"jump_length": 5, "num_repeats": 3, "predictor": "euler_maruyama"}, 150),
]


@pytest.mark.parametrize("sampler,kw,steps", COND_CASES)
def test_masked_sampling_recovers_conditional(sampler, kw, steps):
  """3000 examples with x^C drawn from its marginal and mask = (1, 0): observed values are returned
  bit-exactly; the residual x^M - E[x^M | x^C] has mean within 0.06 of 0 (4 standard errors) and
  std within 5% of sqrt(v_c); the regression slope of x^M on x^C is within 0.05 of S01/S11."""
  sde = get_sde("vpsde")
  n = 3000
  obs_c = MU[1] + math.sqrt(S[1, 1]) * np.random.default_rng(0).standard_normal(n)
  observed = jnp.asarray(np.stack([np.zeros(n), obs_c], 1), jnp.float32)
  mask = jnp.array([1.0, 0.0])
  fn = get_sampler(sampler)
  run = jax.jit(lambda key, obs: fn(key, conditional_score(sde), sde, (n, 2), steps,
                                    observed=obs, mask=mask, **kw))
  x = np.asarray(run(jax.random.key(1), observed), np.float64)
  np.testing.assert_array_equal(x[:, 1], np.asarray(observed[:, 1]))
  resid = x[:, 0] - (MU[0] + SLOPE * (x[:, 1] - MU[1]))
  assert abs(resid.mean()) < 0.06
  assert abs(resid.std() / math.sqrt(COND_VAR) - 1) < 0.05
  slope = np.polyfit(x[:, 1], x[:, 0], 1)[0]
  assert abs(slope - SLOPE) < 0.05


def _reference_jump_schedule(t_T, jump_length, jump_n_sample):
  """RePaint's jump schedule (Lugmayr et al. 2022, Sec. 4.2) written out as the paper states it:
  indices t_T - 1 .. -1, and after arriving at each j in range(0, t_T - L, L) go back up L steps,
  jump_n_sample - 1 times. The MLD authors add 1 to every index."""
  jumps = dict.fromkeys(range(0, t_T - jump_length, jump_length), jump_n_sample - 1)
  t, ts = t_T, []
  while t >= 1:
    t -= 1
    ts.append(t)
    if jumps.get(t, 0) > 0:
      jumps[t] -= 1
      for _ in range(jump_length):
        t += 1
        ts.append(t)
  ts.append(-1)
  return np.asarray(ts) + 1


def test_repaint_schedule():
  """The authors' schedule exactly (N = 250, L = 10, R = 10: 2,410 downward steps = network
  evaluations); starts at N, ends at 0, moves by +-1; R = 1 is the plain descending sequence."""
  for n, length, repeats in ((250, 10, 10), (50, 10, 4), (20, 5, 3), (7, 3, 2), (10, 10, 3)):
    sched = repaint_schedule(n, length, repeats)
    np.testing.assert_array_equal(sched, _reference_jump_schedule(n, length, repeats))
  sched = repaint_schedule(250, 10, 10)
  assert np.sum(np.diff(sched) == -1) == 2410
  n, length, repeats = 50, 10, 4
  sched = repaint_schedule(n, length, repeats)
  n_jumps = len(range(0, n - length, length))
  assert sched.shape == (n + 2 * length * (repeats - 1) * n_jumps + 1,)
  assert sched[0] == n and sched[-1] == 0
  assert set(np.diff(sched).tolist()) == {-1, 1}
  assert sched.min() == 0 and sched.max() == n
  for j in range(0, n - length, length):  # each jump point (level j + 1) is reached R times
    arrivals = np.sum((sched[1:] == j + 1) & (np.diff(sched) == -1))
    assert arrivals == repeats
  np.testing.assert_array_equal(repaint_schedule(7, 3, 1), np.arange(7, -1, -1))
  np.testing.assert_array_equal(repaint_schedule(4, 2, 2), [4, 3, 2, 1, 2, 3, 2, 1, 0])
  with pytest.raises(ConfigError, match="jump_length"):
    repaint_schedule(5, 6, 2)
  with pytest.raises(ConfigError, match="num_repeats"):
    repaint_schedule(5, 2, 0)


def test_eps_to_score_and_argument_errors():
  """eps_to_score_fn gives -eps / s(t) (rtol 1e-6); bad sampler arguments raise ConfigError."""
  sde = get_sde("vpsde")
  x = jax.random.normal(jax.random.key(2), (4, 3, 2))
  t = jnp.array([0.1, 0.3, 0.6, 1.0])
  score = eps_to_score_fn(lambda x, t: 2.0 * x, sde)(x, t)
  np.testing.assert_allclose(score, -2.0 * x / sde.marginal_std(t)[:, None, None], rtol=1e-6)
  sc = mixture_score(sde)
  with pytest.raises(ConfigError, match="sampler.name"):
    get_sampler("no_such_sampler")
  with pytest.raises(ConfigError, match="num_steps"):
    sample_euler_maruyama(jax.random.key(0), sc, sde, (2, 2), 0)
  with pytest.raises(ConfigError, match="mask"):
    sample_ode(jax.random.key(0), sc, sde, (2, 2), 3, observed=jnp.zeros((2, 2)))
  with pytest.raises(ConfigError, match="predictor"):
    sample_pc(jax.random.key(0), sc, sde, (2, 2), 3, predictor="ancestral")
  with pytest.raises(ConfigError, match="ode_method"):
    sample_ode(jax.random.key(0), sc, sde, (2, 2), 3, method="rk45")
  with pytest.raises(ConfigError, match="predictor"):
    sample_repaint(jax.random.key(0), sc, sde, (2, 2), 3, jump_length=1, predictor="x")
