"""DDIM, DPM-Solver++(2M) and classifier-free guidance of jaxgen.sde, driven by exact scores.

A Gaussian mixture sum_k w_k N(mu_k, S_k) noised by a VP-type SDE is the mixture
sum_k w_k N(a mu_k, a^2 S_k + s^2 I) at every t, so its score (and the score of its conditional
given observed coordinates) is known in closed form; it is written below in JAX with the
eigendecomposition S_k = U diag(l) U^T, so a^2 S_k + s^2 I = U diag(a^2 l + s^2) U^T. The targets
(component CDFs along 1-D projections, the conditional CDF) are computed independently in
NumPy/SciPy. The components are thin (std 0.13-0.16 across, 0.55-0.64 along), as for data near a
low-dimensional set: the regime in which few-step ODE solvers beat Euler-Maruyama (with wide,
round components, std ~0.5, EM at 10-20 steps is about as good as uniform-t DDIM).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgen.errors import ConfigError
from jaxgen.sde import (VESDE, batched_guided_score_fn, get_sampler, get_sde, guided_score_fn,
                        sample_ddim, sample_dpmpp_2m, sample_dpmpp_2s, sample_euler_maruyama,
                        sample_ode)
from jaxgen.sde.fast_samplers import bisect_log_snr, fast_time_grid, log_snr
from jaxgen.sde.samplers import prepare

WEIGHTS = np.array([0.3, 0.7])
MEANS = np.array([[-1.5, 0.0], [1.5, 0.5]])
COVS = np.array([[[0.02, 0.03], [0.03, 0.3]], [[0.03, -0.04], [-0.04, 0.4]]])
N_SAMPLES = 4000
# unit directions of the 1-D projections whose CDFs are compared
DIRS = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]])


def noised_mixture_score(x, a, s, logw, means, evals, evecs):
  """Score at x [B, D] of sum_k w_k N(a mu_k, a^2 U_k diag(l_k) U_k^T + s^2 I).

  a, s: [B]; logw: [K]; means: [K, D]; evals: [K, D]; evecs: [K, D, D] (columns = eigenvectors)."""
  a, s = a[:, None, None], s[:, None, None]
  var = a ** 2 * evals + s ** 2  # [B, K, D] in each component's eigenbasis
  proj = jnp.einsum("bkd,kde->bke", x[:, None, :] - a * means, evecs)
  logp = logw - 0.5 * jnp.sum(proj ** 2 / var, -1) - 0.5 * jnp.sum(jnp.log(var), -1)
  resp = jax.nn.softmax(logp, axis=-1)
  return -jnp.einsum("bk,kde,bke->bd", resp, evecs, proj / var)


def mixture_score(sde, weights=WEIGHTS, means=MEANS, covs=COVS):
  evals, evecs = np.linalg.eigh(covs)
  consts = [jnp.asarray(v, jnp.float32) for v in (np.log(weights), means, evals, evecs)]

  def score(x, t):
    return noised_mixture_score(x, sde.mean_coeff(t), sde.marginal_std(t), *consts)

  return score


def projection_ks(x):
  """Largest KS statistic of x @ d against the exact mixture CDF, over the directions DIRS."""
  out = []
  for d in DIRS:
    mu, sd = MEANS @ d, np.sqrt(np.einsum("i,kij,j->k", d, COVS, d))
    cdf = lambda y: np.sum(WEIGHTS * stats.norm.cdf((y[:, None] - mu) / sd), 1)  # noqa: E731
    out.append(stats.kstest(x @ d, cdf).statistic)
  return max(out)


def component_errors(x):
  """Assign each sample to its most likely component; return |weight_0 error| and the largest
  error of any component mean / covariance entry."""
  ll = np.stack([math.log(w) + stats.multivariate_normal(m, c).logpdf(x)
                 for w, m, c in zip(WEIGHTS, MEANS, COVS)], 1)
  label = ll.argmax(1)
  w_err = abs(np.mean(label == 0) - WEIGHTS[0])
  m_err = max(np.abs(x[label == k].mean(0) - MEANS[k]).max() for k in range(2))
  c_err = max(np.abs(np.cov(x[label == k].T) - COVS[k]).max() for k in range(2))
  return w_err, m_err, c_err


# (name, sampler, number of steps, keywords); all from the same key, hence the same x_T
RUNS = [
    ("em10", sample_euler_maruyama, 10, {}), ("em20", sample_euler_maruyama, 20, {}),
    ("ddim10", sample_ddim, 10, {}), ("ddim20", sample_ddim, 20, {}),
    ("ddim80", sample_ddim, 80, {}), ("dpm10", sample_dpmpp_2m, 10, {}),
    ("dpm20", sample_dpmpp_2m, 20, {}), ("dpm80", sample_dpmpp_2m, 80, {}),
    ("dpm_uniform80", sample_dpmpp_2m, 80, {"time_spacing": "uniform"}),
    # DPM-Solver++(2S) spends two evaluations per step: 5 / 10 steps are NFE 11 / 21
    ("dpm2s5", sample_dpmpp_2s, 5, {}), ("dpm2s10", sample_dpmpp_2s, 10, {}),
    ("dpm2s40", sample_dpmpp_2s, 40, {}),
    ("ode_ref", sample_ode, 400, {"method": "heun"}),
]


@pytest.fixture(scope="module")
def mixture_samples():
  """4000 samples of the VP mixture from every run of RUNS, compiled as one program (one compile
  instead of ten keeps the file fast)."""
  sde = get_sde("vpsde")
  score = mixture_score(sde)

  @jax.jit
  def run_all(key):
    return {name: fn(key, score, sde, (N_SAMPLES, 2), steps, **kw)
            for name, fn, steps, kw in RUNS}

  out = {k: np.asarray(v, np.float64) for k, v in run_all(jax.random.key(0)).items()}
  assert all(np.all(np.isfinite(v)) for v in out.values())
  return out


def test_fast_samplers_beat_euler_maruyama_at_low_nfe(mixture_samples):
  """At 10 and 20 steps (NFE 11 and 21 with the final denoising evaluation, the same for all
  three) the largest projection KS statistic of DDIM(eta=0) and DPM-Solver++(2M) is below 0.8 x
  that of Euler-Maruyama (measured: EM 0.19 / 0.077, DDIM 0.09 / 0.045, DPM++ 0.08 / 0.02; the
  sampling noise of the statistic with 4000 samples is ~0.015). DPM++ at 20 steps is also
  below 0.035 outright."""
  ks = {k: projection_ks(v) for k, v in mixture_samples.items() if k[-2:] in ("10", "20")}
  for steps in ("10", "20"):
    em = ks["em" + steps]
    assert ks["ddim" + steps] < 0.8 * em and ks["dpm" + steps] < 0.8 * em, ks
  assert ks["dpm20"] < 0.035, ks
  # DPM-Solver++(2S) at the same NFE (5 and 10 steps of two evaluations each)
  assert projection_ks(mixture_samples["dpm2s5"]) < 0.8 * ks["em10"]
  assert projection_ks(mixture_samples["dpm2s10"]) < 0.8 * ks["em20"]


def test_deterministic_samplers_converge_to_the_ode_solution(mixture_samples):
  """DDIM(eta=0) and DPM-Solver++ map x_T (the same draw) to the probability-flow ODE solution,
  here `sample_ode` (Heun, 400 steps). The median per-sample distance falls from 20 to 80 steps by
  > 2.8x for DDIM (first order: 4x; measured 4.0x) and > 8x for DPM++ (second order: 16x;
  measured 18x), and at 80 steps it is < 0.03 for DDIM (measured 0.017) and < 2e-3 for DPM++
  (measured 6e-4). (Medians: samples near the boundary between the modes may switch mode at few
  steps.)"""
  ref = mixture_samples["ode_ref"]
  for name, min_ratio, tol in (("ddim", 2.8, 0.03), ("dpm", 8.0, 2e-3)):
    err = [np.median(np.linalg.norm(mixture_samples[f"{name}{steps}"] - ref, axis=1))
           for steps in (20, 80)]
    assert err[0] / err[1] > min_ratio and err[1] < tol, (name, err)
  # DPM-Solver++(2S), second order too: 10 -> 40 steps divides the error by ~16 (measured 12.8;
  # 2.0e-3 at 40 steps, i.e. 80 evaluations, where 2M's 80 steps reach 6e-4)
  err = [np.median(np.linalg.norm(mixture_samples[f"dpm2s{steps}"] - ref, axis=1))
         for steps in (10, 40)]
  assert err[0] / err[1] > 8.0 and err[1] < 4e-3, err


@pytest.mark.parametrize("name", ["ddim80", "dpm80", "dpm_uniform80", "dpm2s40"])
def test_samplers_recover_the_mixture_at_high_nfe(mixture_samples, name):
  """At 80 steps: projection KS < 0.04, component weight within 0.03, component means and
  covariance entries within 0.05 of the truth (sampling noise ~0.01-0.02)."""
  x = mixture_samples[name]
  assert projection_ks(x) < 0.04
  w_err, m_err, c_err = component_errors(x)
  assert w_err < 0.03 and m_err < 0.05 and c_err < 0.05, (w_err, m_err, c_err)


def ddim_gaussian_variance(sde, v, steps, eta, time_spacing):
  """Exact final variance of DDIM on 1-D data N(0, v) with the exact score (NumPy, float64):
  x0_hat = a v / V x, eps_hat = (x - a x0_hat) / s are linear in x, so
  Var' = (a' k0 + c_eps k_eps)^2 Var + sigma^2 step by step, then the denoising factor k0^2."""
  ts = np.asarray(fast_time_grid(sde, steps, 1e-3, time_spacing), np.float64)
  a = np.exp(-0.5 * (sde.beta_min * ts + 0.5 * (sde.beta_max - sde.beta_min) * ts ** 2))
  s = np.sqrt(1.0 - a ** 2)
  var = 1.0  # prior
  for i in range(steps):
    post = 1.0 - (a[i] * s[i + 1] / (a[i + 1] * s[i])) ** 2  # DDIM paper: sigma_t(1)^2 / s'^2
    sig2 = eta ** 2 * s[i + 1] ** 2 * post
    k0 = a[i] * v / (a[i] ** 2 * v + s[i] ** 2)
    k_eps = (1.0 - a[i] * k0) / s[i]
    var = (a[i + 1] * k0 + math.sqrt(s[i + 1] ** 2 - sig2) * k_eps) ** 2 * var + sig2
  return (a[-1] * v / (a[-1] ** 2 * v + s[-1] ** 2)) ** 2 * var


def test_ddim_variance_matches_its_exact_recursion():
  """Data N(0, v = 0.05) in 16000 independent coordinates; eta = 1 on the default log-SNR grid
  and eta = 0.5 on the uniform grid, 10 and 100 steps. The sample variance / v is within 4%
  (~3.5 standard errors; measured <= 1.3%) of the exact variance of the DDIM scheme, a NumPy
  recursion of the paper's eq. 12, so sigma_t(eta) is right. That prediction is far from 1 at
  10 steps (0.45 and 0.30: each step's x0_hat is a posterior mean, and eta = 1 adds only the
  posterior variance given it) and tends to 1: at 100 steps it is within 0.15 of 1 and its error
  is < 0.4x that at 10 steps."""
  sde, v = get_sde("vpsde"), 0.05

  def score(x, t):
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    return -x / (a ** 2 * v + s ** 2)

  cases = [(eta, spacing, steps) for eta, spacing in ((1.0, "logsnr"), (0.5, "uniform"))
           for steps in (10, 100)]
  run = jax.jit(lambda key: [sample_ddim(key, score, sde, (4000, 4), steps, eta=eta,
                                         time_spacing=spacing) for eta, spacing, steps in cases])
  err10 = None
  for (eta, spacing, steps), x in zip(cases, run(jax.random.key(6))):
    predicted = ddim_gaussian_variance(sde, v, steps, eta, spacing) / v
    measured = float(jnp.mean(x ** 2)) / v
    assert abs(measured / predicted - 1) < 0.04, (eta, steps, predicted, measured)
    if steps == 10:
      err10 = abs(predicted - 1)
    else:
      assert abs(predicted - 1) < min(0.15, 0.4 * err10), (eta, spacing, predicted, err10)


def test_ddim_equals_first_order_dpmpp_and_log_snr_grid():
  """With 2 steps DPM-Solver++ takes only first-order steps (the first has no history, the last
  is first order), i.e. DDIM(eta=0) steps: same output to float32 rounding (atol 1e-5), here
  for the sub-VP SDE on the uniform grid. The 'logsnr' grid of both VP-type SDEs runs from T to
  t_eps with lambda = log(a/s) evenly spaced (rtol 1e-4), and bisection inverts lambda to the
  same times (rtol 1e-5)."""
  sde = get_sde("subvpsde")
  score = mixture_score(sde)
  run = jax.jit(lambda key: [fn(key, score, sde, (64, 2), 2, time_spacing="uniform")
                             for fn in (sample_ddim, sample_dpmpp_2m)])
  a, b = run(jax.random.key(3))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for sde in (get_sde("vpsde"), get_sde("subvpsde", beta_max=15.0, T=2.0)):
    ts = fast_time_grid(sde, 12, 2e-3, "logsnr")
    assert ts[0] == sde.T and float(ts[-1]) == pytest.approx(2e-3) and np.all(np.diff(ts) < 0)
    lam = np.asarray(log_snr(sde, ts), np.float64)
    np.testing.assert_allclose(np.diff(lam), np.full(12, (lam[-1] - lam[0]) / 12), rtol=1e-4)
    # the generic bisection (used for other VP-type SDEs) agrees with the closed forms
    np.testing.assert_allclose(bisect_log_snr(sde, lam[1:-1]), ts[1:-1], rtol=1e-5)


# Conditioning: each example observes one coordinate o (half o = 1, half o = 0) and generates g.
def conditional_params(c, o):
  """Exact mixture conditional of x_g given x_o = c for one observed index o (NumPy): weights
  [B, K], means [B, K], variances [K]. Component k: w_k N(c; mu_ko, S_koo) times
  N(x_g; mu_kg + S_k01 / S_koo (c - mu_ko), S_kgg - S_k01^2 / S_koo)."""
  g = 1 - o
  s_oo, s_gg, s_01 = COVS[:, o, o], COVS[:, g, g], COVS[:, 0, 1]  # [K]
  mu_o, mu_g = MEANS[:, o], MEANS[:, g]
  logw = np.log(WEIGHTS) + stats.norm.logpdf(c[:, None], mu_o, np.sqrt(s_oo))
  w = np.exp(logw - logw.max(1, keepdims=True))
  means = mu_g + s_01 / s_oo * (c[:, None] - mu_o)
  return w / w.sum(1, keepdims=True), means, s_gg - s_01 ** 2 / s_oo


def conditional_score(sde, observed, obs_index):
  """Score of the noised conditional, placed in the generated coordinate of each example. The
  conditioning values are read from the state (which the samplers keep clamped); any mismatch
  with `observed` poisons the whole output with NaN, so clean conditioning is checked at every
  evaluation."""
  o = jnp.asarray(obs_index)
  onehot_o = jax.nn.one_hot(o, 2)
  covs, means, logw0 = (jnp.asarray(v, jnp.float32) for v in (COVS, MEANS, np.log(WEIGHTS)))

  def score(x, t):
    c, y = jnp.sum(x * onehot_o, 1), jnp.sum(x * (1 - onehot_o), 1)
    s_oo = covs[:, o, o].T  # [B, K]
    s_gg, s_01 = covs[:, 1 - o, 1 - o].T, covs[:, 0, 1][None]
    mu_o, mu_g = means[:, o].T, means[:, 1 - o].T
    logw = logw0 - 0.5 * (c[:, None] - mu_o) ** 2 / s_oo - 0.5 * jnp.log(s_oo)
    m = mu_g + s_01 / s_oo * (c[:, None] - mu_o)
    v = s_gg - s_01 ** 2 / s_oo
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    var = a ** 2 * v + s ** 2
    resp = jax.nn.softmax(logw - 0.5 * (y[:, None] - a * m) ** 2 / var - 0.5 * jnp.log(var), 1)
    sg = -jnp.sum(resp * (y[:, None] - a * m) / var, 1)
    poison = jnp.where(jnp.all(x * onehot_o == observed * onehot_o), 0.0, jnp.nan)
    return sg[:, None] * (1 - onehot_o) + poison

  return score


def test_masked_sampling_matches_the_exact_conditional():
  """4000 examples, x_o drawn from the mixture, a per-example mask; DPM-Solver++ (20 steps) and
  DDIM (eta=0, 100 steps). Observed values come back bit-exactly and the score always saw them
  (no NaN). For both halves (o = 1: bimodal conditional of x_0; o = 0: unimodal) the PIT values
  F(x_g | x_o) pass a KS test against U(0, 1) (statistic < 0.05; the 1% critical value for 2000
  samples is 0.036, measured <= 0.025) and the standardised residual (x_g - E[x_g | x_o]) / sd
  has mean within 0.06 (~3 standard errors; measured <= 0.01) and mean square within 0.1 of 1
  (measured within 0.07 over three seeds)."""
  sde, n = get_sde("vpsde"), N_SAMPLES
  rng = np.random.default_rng(0)
  k = rng.random(n) < WEIGHTS[0]
  x_true = np.where(k[:, None], rng.multivariate_normal(MEANS[0], COVS[0], n),
                    rng.multivariate_normal(MEANS[1], COVS[1], n))
  o = (np.arange(n) % 2 == 0).astype(np.int32)  # even examples observe coordinate 1
  mask = np.eye(2)[1 - o]  # 1 = generated
  observed = jnp.asarray(x_true * (1 - mask), jnp.float32)
  score = conditional_score(sde, observed, o)

  @jax.jit
  def run(key, obs, m):
    return [fn(key, score, sde, (n, 2), steps, observed=obs, mask=m)
            for fn, steps in ((sample_dpmpp_2m, 20), (sample_ddim, 100), (sample_dpmpp_2s, 10))]

  for x in run(jax.random.key(4), observed, jnp.asarray(mask, jnp.float32)):
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(x[mask == 0], np.asarray(observed)[mask == 0])
    c, y = x[mask == 0], x[mask == 1]
    for half in (o == 1, o == 0):
      w, m, v = conditional_params(c[half], o[half][0])
      pit = np.sum(w * stats.norm.cdf((y[half][:, None] - m) / np.sqrt(v)), 1)
      assert stats.kstest(pit, "uniform").statistic < 0.05
      mean = np.sum(w * m, 1)
      sd = np.sqrt(np.sum(w * (v + m ** 2), 1) - mean ** 2)
      z = (y[half] - mean) / sd
      assert abs(z.mean()) < 0.06 and abs(np.mean(z ** 2) - 1) < 0.1, (z.mean(), np.mean(z ** 2))


# Guidance: cond and uncond data share the covariance SIG, so u + w (c - u) is exactly the score of
# N(m_u + w (m_c - m_u), SIG) noised: a guided sample has that mean and covariance SIG.
SIG = np.array([[0.2, 0.05], [0.05, 0.1]])


def gaussian_model(sde):
  """model_fn(x, t, c): score of N(c, SIG) noised to time t; c is a per-example mean [B, 2]."""
  sig = jnp.asarray(SIG, jnp.float32)

  def model_fn(x, t, c):
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    d = x - a * c
    c00, c01, c11 = a ** 2 * sig[0, 0] + s ** 2, a ** 2 * sig[0, 1], a ** 2 * sig[1, 1] + s ** 2
    # closed-form 2x2 inverse (a batched LU solve is slow on CPU)
    return -jnp.concatenate([c11 * d[:, :1] - c01 * d[:, 1:], c00 * d[:, 1:] - c01 * d[:, :1]],
                            1) / (c00 * c11 - c01 ** 2)

  return model_fn


def test_guided_score_fn_limits_and_batched_form():
  """scale 1 gives cond, 0 gives uncond, 2.5 gives u + 2.5 (c - u); the batched form (one call
  on the doubled batch, here with a pytree condition) equals the two-call form (all to float32
  rounding, rtol 1e-6)."""
  x = jax.random.normal(jax.random.key(0), (6, 2))
  t = jnp.linspace(0.05, 1.0, 6)
  calls = []

  def model(x, t, c):  # a toy conditional model; c = {"w": [B, 1], "b": [B]}
    calls.append(x.shape[0])
    return c["w"] * x + (c["b"] * t)[:, None]

  cond_c = {"w": jnp.full((6, 1), 2.0), "b": jnp.arange(6.0)}
  null_c = {"w": jnp.full((6, 1), -1.0), "b": jnp.zeros(6)}
  cond, uncond = (lambda x, t: model(x, t, cond_c)), (lambda x, t: model(x, t, null_c))
  c, u = cond(x, t), uncond(x, t)
  np.testing.assert_allclose(guided_score_fn(cond, uncond, 1.0)(x, t), c, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guided_score_fn(cond, uncond, 0.0)(x, t), u)
  np.testing.assert_allclose(guided_score_fn(cond, uncond, 2.5)(x, t), u + 2.5 * (c - u),
                             rtol=1e-6)
  calls.clear()
  batched = batched_guided_score_fn(model, cond_c, null_c, 2.5)(x, t)
  assert calls == [12]
  np.testing.assert_allclose(batched, u + 2.5 * (c - u), rtol=1e-6)


def test_guided_sampling_moves_the_mean_and_compiles_once():
  """DPM-Solver++ with the batched guided score, jitted with (means, scale) as arguments: scales
  0, 1 and 3 put the sample mean (3000 samples) within 0.04 (4 standard errors) of
  m_u + w (m_c - m_u) and the covariance entries within 0.025 of SIG; the sampler is traced
  once for all three calls."""
  sde, n = get_sde("vpsde"), 3000
  model, traces = gaussian_model(sde), []

  @jax.jit
  def run(key, m_c, m_u, scale):
    traces.append(1)
    score = batched_guided_score_fn(model, jnp.broadcast_to(m_c, (n, 2)),
                                    jnp.broadcast_to(m_u, (n, 2)), scale)
    return sample_dpmpp_2m(key, score, sde, (n, 2), 15)

  m_c, m_u = np.array([1.0, -0.5]), np.array([-0.5, 0.25])
  for w in (0.0, 1.0, 3.0):
    x = np.asarray(run(jax.random.key(7), jnp.asarray(m_c), jnp.asarray(m_u), w), np.float64)
    np.testing.assert_allclose(x.mean(0), m_u + w * (m_c - m_u), atol=0.04)
    np.testing.assert_allclose(np.cov(x.T), SIG, atol=0.025)
  assert len(traces) == 1


def test_one_scan_and_one_score_evaluation_per_step():
  """Jitted with the score parameters as an argument, stochastic DDIM compiles once for two
  parameter values. Each sampler's trace holds one scan and calls score_fn twice (the scan body,
  run num_steps times, and the final denoising), once with denoise=False."""
  sde = get_sde("vpsde")
  calls = []

  def sample(fn, params, key, denoise=True):
    def score(x, t):
      calls.append(1)
      return -(x - params) / (sde.marginal_std(t)[:, None] ** 2 + 1.0)

    kw = {"eta": 0.5} if fn is sample_ddim else {}
    return fn(key, score, sde, (8, 2), 5, denoise=denoise, **kw)

  jitted = jax.jit(lambda p, k: sample(sample_ddim, p, k))
  x0, x1 = jitted(jnp.zeros(2), jax.random.key(0)), jitted(jnp.ones(2), jax.random.key(1))
  assert len(calls) == 2 and jitted._cache_size() == 1 and not np.allclose(x0, x1)
  for fn in (sample_ddim, sample_dpmpp_2m, sample_dpmpp_2s):
    per_step = 2 if fn is sample_dpmpp_2s else 1  # the scan body holds this many calls
    for denoise, n_calls in ((True, per_step + 1), (False, per_step)):
      calls.clear()
      jaxpr = jax.make_jaxpr(lambda p, k: sample(fn, p, k, denoise))(jnp.zeros(2),
                                                                     jax.random.key(0))
      assert len(calls) == n_calls
      assert sum(e.primitive.name == "scan" for e in jaxpr.eqns) == 1


def test_argument_errors_and_registry():
  """Bad eta / time_spacing / t_eps / num_steps and a VE SDE raise ConfigError naming the key;
  get_sampler knows both samplers."""
  sde, key = get_sde("vpsde"), jax.random.key(0)
  sc = mixture_score(sde)
  assert get_sampler("ddim") is sample_ddim and get_sampler("dpmpp_2m") is sample_dpmpp_2m
  assert get_sampler("dpmpp_2s") is sample_dpmpp_2s
  with pytest.raises(ConfigError, match="sampler.eta"):
    sample_ddim(key, sc, sde, (2, 2), 3, eta=-0.1)
  with pytest.raises(ConfigError, match="sampler.eta"):
    sample_ddim(key, sc, sde, (2, 2), 3, eta="1")
  for fn in (sample_ddim, sample_dpmpp_2m, sample_dpmpp_2s):
    with pytest.raises(ConfigError, match="sampler.time_spacing"):
      fn(key, sc, sde, (2, 2), 3, time_spacing="quadratic")
    with pytest.raises(ConfigError, match="sampler.name.*VP-type"):
      fn(key, sc, VESDE(), (2, 2), 3)
    with pytest.raises(ConfigError, match="num_steps"):
      fn(key, sc, sde, (2, 2), 0)
    with pytest.raises(ConfigError, match="t_eps"):
      fn(key, sc, sde, (2, 2), 3, t_eps=0.0)
    with pytest.raises(ConfigError, match="mask"):
      fn(key, sc, sde, (2, 2), 3, mask=jnp.ones((2, 2)))


@pytest.mark.parametrize("sampler", [sample_ddim, sample_dpmpp_2m])
def test_explicit_grid_and_per_example_start_index(sampler):
  """`times` equal to the default grid reproduces the default run exactly; with `start_index`
  every example of a batch equals its own run on the grid's tail times[k:] from x_init (same
  arithmetic, float32 rounding only: atol 1e-5), which is SDEdit with per-example strength."""
  sde = get_sde("vpsde")
  score = mixture_score(sde)
  key = jax.random.key(5)
  grid = fast_time_grid(sde, 8, 1e-3, "logsnr")
  np.testing.assert_array_equal(sampler(key, score, sde, (16, 2), 8),
                                sampler(key, score, sde, (16, 2), 0, times=grid))
  starts = jnp.array([0, 3, 5, 7])
  x0 = jnp.asarray(MEANS[[0, 1, 1, 0]], jnp.float32)
  z = jax.random.normal(jax.random.key(6), x0.shape)
  t0 = grid[starts]
  x_init = sde.mean_coeff(t0)[:, None] * x0 + sde.marginal_std(t0)[:, None] * z
  batch = sampler(key, score, sde, (4, 2), 0, times=grid, x_init=x_init, start_index=starts)
  for b, k in enumerate(starts.tolist()):
    alone = sampler(key, score, sde, (1, 2), 0, times=grid[k:], x_init=x_init[b:b + 1])
    np.testing.assert_allclose(batch[b], alone[0], atol=1e-5)
  with pytest.raises(ConfigError, match="sampler.times"):
    sampler(key, score, sde, (4, 2), 0, times=jnp.array([0.5, 0.7]))
  with pytest.raises(ConfigError, match="sampler.x_init.shape"):
    sampler(key, score, sde, (4, 2), 0, times=grid, x_init=x_init[:2])


def test_second_order_solvers_halve_the_step_quarter_the_error_on_a_gaussian():
  """1-D data N(0, v) with its exact score: the probability-flow ODE keeps x_t / sqrt(a^2 v + s^2)
  constant, so x_{t_eps} is known in closed form from x_T. Doubling the steps (16 -> 32 -> 64, no
  final denoising) divides the largest error of DPM-Solver++ 2S and 2M by about 4 (second order;
  measured 3.75 / 3.89 and 3.40 / 3.89, asserted in (3, 5)) and DDIM's by about 2 (first order;
  measured 1.93 / 1.96, asserted in (1.7, 2.3)). Fewer steps are outside the asymptotic regime
  (2S: 2.8 from 4 to 8 steps; 2M's error at 8 steps happens to cancel to 1e-3).
  """
  sde, v = get_sde("vpsde"), 0.25
  t_eps = 1e-3

  def score(x, t):
    a, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    return -x / (a ** 2 * v + s ** 2)

  def scale(t):
    return np.sqrt(float(sde.mean_coeff(jnp.float32(t))) ** 2 * v +
                   float(sde.marginal_std(jnp.float32(t))) ** 2)

  key = jax.random.key(3)
  x_T = np.asarray(prepare(key, sde, (64, 1), 1, t_eps, None, None)[0], np.float64)  # their draw
  exact = x_T * scale(t_eps) / scale(sde.T)
  for fn, lo, hi in ((sample_dpmpp_2s, 3.0, 5.0), (sample_dpmpp_2m, 3.0, 5.0),
                     (sample_ddim, 1.7, 2.3)):
    err = [np.max(np.abs(np.asarray(fn(key, score, sde, (64, 1), steps, t_eps=t_eps,
                                       denoise=False), np.float64) - exact))
           for steps in (16, 32, 64)]
    ratios = [err[0] / err[1], err[1] / err[2]]
    assert all(lo < r < hi for r in ratios), (fn.__name__, err, ratios)
