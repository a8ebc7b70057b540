"""Few-step samplers for VP-type SDEs (DDIM, DPM-Solver++ 2M and 2S) and classifier-free guidance.

The reverse-SDE samplers of `samplers.py` need hundreds of score evaluations (NFE); the samplers
here integrate the same generative process with 10-50. Both work with the data prediction
x0_hat(x, t) = (x + s(t)^2 score(x, t)) / a(t) and the noise prediction eps_hat = -s(t) score of
an SDE with marginal q(x_t | x_0) = N(a(t) x_0, s(t)^2 I):

* `sample_ddim` (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12):
  x_{t'} = a' x0_hat + sqrt(s'^2 - sigma^2) eps_hat + sigma z, with
  sigma^2 = eta^2 s'^2 (1 - exp(-2 h)), h = lambda(t') - lambda(t), lambda = log(a / s). For the
  VP SDE a^2 = alpha_bar and s^2 = 1 - alpha_bar, so this is the paper's sigma_t(eta); written
  with (a, s) it is also exact for the sub-VP SDE. eta = 0 is deterministic (the first-order
  solver of the probability-flow ODE), eta = 1 samples the DDPM posterior q(x_{t'} | x_t, x0_hat).
* `sample_dpmpp_2m` (Lu et al. 2022, "DPM-Solver++", Alg. 2): multistep second-order solver of
  the probability-flow ODE in lambda, x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} (e^{-h} - 1) D_i with
  D_i = x0_i + (x0_i - x0_{i-1}) / (2 r_i), r_i = h_{i-1}/h_i; the first step is first order
  (D_0 = x0_0), the last too (as diffusers' `lower_order_final`), the others second order. The
  scan carry holds the previous data prediction, so every step costs one score evaluation.
* `sample_dpmpp_2s` (Lu et al. 2022, "DPM-Solver++", Alg. 1 with r = 1/2): the singlestep
  second-order solver. Each step t_i -> t_{i+1} evaluates the data prediction at t_i and at the
  midpoint in lambda, s_i = t(lambda_i + h_i / 2), reached by a first-order step u_i; then
  x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} (e^{-h} - 1) x0(u_i, s_i). Two score evaluations per step
  and no history, so no first-step or last-step special case.

Both run one `lax.scan` over a grid T = t_0 > ... > t_N = t_eps, uniform in lambda by default
(or in t), and share the signature and the masking contract of `samplers.py`: mask == 0
coordinates are clamped to `observed` in the initial state, after every step and in the data
prediction. `denoise=True` returns the data prediction x0_hat(x_{t_eps}, t_eps) (= the Tweedie
step of the other samplers), one extra score evaluation: NFE = num_steps + denoise.
`guided_score_fn` / `batched_guided_score_fn` build a classifier-free-guided score_fn usable by
every sampler of `jaxgen.sde`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.sde.samplers import ScoreFn, clamp, prepare, time_grid, tweedie_denoise
from jaxgen.sde.sdes import SDE, VESDE, SubVPSDE, VPSDE

Array = jax.Array

TIME_SPACINGS = ("logsnr", "uniform")


def guided_score_fn(cond_fn: ScoreFn, uncond_fn: ScoreFn, scale: Any) -> ScoreFn:
  """Classifier-free guidance (Ho & Salimans 2022): u + scale (c - u) with c, u the two outputs.

  The combination is linear, so it is the same for scores and for noise predictions
  (score = -eps / s(t)): guide either, then wrap with `eps_to_score_fn` if needed. scale = 1
  gives cond_fn, 0 gives uncond_fn, > 1 extrapolates away from the unconditional model. `scale`
  may be a traced array (e.g. an argument of a jitted sampler). Costs two network calls per
  evaluation; `batched_guided_score_fn` makes them one call on a doubled batch.
  """

  def score_fn(x: Array, t: Array) -> Array:
    u = uncond_fn(x, t)
    return u + scale * (cond_fn(x, t) - u)

  return score_fn


def batched_guided_score_fn(model_fn: Callable[[Array, Array, Any], Array], cond: Any,
                            uncond: Any, scale: Any) -> ScoreFn:
  """Classifier-free guidance with one call model_fn([x; x], [t; t], [cond; uncond]).

  `model_fn(x, t, c)` is a conditional score (or eps) model; `cond` and `uncond` (the null
  condition) are arrays or pytrees of arrays with leading batch axis B, the batch of x. The
  output of the doubled batch is split back into (c, u) and combined as in `guided_score_fn`.
  """

  def score_fn(x: Array, t: Array) -> Array:
    b = x.shape[0]
    c = jax.tree.map(lambda p, q: jnp.concatenate([p, q], axis=0), cond, uncond)
    out = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), c)
    out_c, out_u = out[:b], out[b:]
    return out_u + scale * (out_c - out_u)

  return score_fn


def _check_vp(sde: SDE, sampler: str) -> None:
  """VP-type: the signal decays, a(T) -> 0, towards the prior N(0, I) (VP, sub-VP and other
  variance-preserving schedules); the variance-exploding SDE keeps a = 1 and is refused."""
  if isinstance(sde, VESDE) or getattr(sde, "prior_std", None) != 1.0:
    raise ConfigError("sampler.name", sampler,
                      f"a sampler that supports {type(sde).__name__}: {sampler} needs a VP-type "
                      "SDE with prior N(0, I), e.g. vpsde or subvpsde")


def log_snr(sde: SDE, t: Array) -> Array:
  """Half log signal-to-noise ratio lambda(t) = log(a(t) / s(t)), decreasing in t."""
  return jnp.log(sde.mean_coeff(t)) - jnp.log(sde.marginal_std(t))


def _t_from_log_snr(sde: SDE, lam: Array) -> Array:
  """Inverse of `log_snr`: closed form for the linear-beta VP and sub-VP SDEs, else bisection.

  VP: e^B - 1 = e^{-2 lambda}; sub-VP: 2 sinh(B/2) = e^{-lambda}; then t solves the quadratic
  B(t) = beta_min t + k t^2 / 2 (k = (beta_max - beta_min)/T), written without cancellation.
  """
  if isinstance(sde, SubVPSDE):
    b = 2.0 * jnp.arcsinh(0.5 * jnp.exp(-lam))
  elif isinstance(sde, VPSDE):
    b = jax.nn.softplus(-2.0 * lam)
  else:
    return bisect_log_snr(sde, lam)
  k = (sde.beta_max - sde.beta_min) / sde.T
  return 2.0 * b / (jnp.sqrt(sde.beta_min ** 2 + 2.0 * k * b) + sde.beta_min)


def bisect_log_snr(sde: SDE, lam: Array, iters: int = 60) -> Array:
  """t in [0, T] with log_snr(sde, t) = lam, by bisection (lambda decreases in t); any SDE."""
  lam = jnp.asarray(lam, jnp.float32)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    above = log_snr(sde, mid) > lam  # mid is too early
    return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (jnp.zeros_like(lam), jnp.full_like(lam, sde.T)))
  return 0.5 * (lo + hi)


def fast_time_grid(sde: SDE, num_steps: int, t_eps: float, time_spacing: str) -> Array:
  """N + 1 times T = t_0 > ... > t_N = t_eps, uniform in t or in lambda = log(a/s)."""
  if time_spacing not in TIME_SPACINGS:
    raise ConfigError("sampler.time_spacing", time_spacing, f"one of {TIME_SPACINGS}")
  if time_spacing == "uniform":
    return time_grid(sde, num_steps, t_eps)
  lam = jnp.linspace(log_snr(sde, jnp.asarray(sde.T, jnp.float32)),
                     log_snr(sde, jnp.asarray(t_eps, jnp.float32)), num_steps + 1)
  ts = _t_from_log_snr(sde, lam)
  # exact end points; inside, the inversion is accurate to float32 rounding
  return ts.at[0].set(sde.T).at[-1].set(t_eps)


def _vec(t: Array, x: Array) -> Array:
  return jnp.full((x.shape[0],), t, x.dtype)


def _finish(score_fn: ScoreFn, sde: SDE, x: Array, t_end: Array, denoise: bool,
            observed: Optional[Array], mask: Optional[Array]) -> Array:
  # the data prediction at t_eps is exactly the Tweedie step of the other samplers
  if denoise:
    x = clamp(tweedie_denoise(score_fn, sde, x, t_end), observed, mask)
  return x


def _data_prediction(score_fn: ScoreFn, x: Array, t: Array, a_t: Array, s_t: Array,
                     observed: Optional[Array], mask: Optional[Array]) -> Array:
  """x0_hat(x, t) = (x + s^2 score) / a with the observed coordinates set to `observed`."""
  return clamp((x + s_t ** 2 * score_fn(x, _vec(t, x))) / a_t, observed, mask)


def _check_eta(eta: Any) -> None:
  if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta >= 0:
    raise ConfigError("sampler.eta", eta, "a number >= 0 (0 = deterministic DDIM, 1 = DDPM-like)")


def _check_times(times: Any, sde: SDE, sampler: str) -> Array:
  """A caller's grid: 1-D, at least 2 entries, and (when its values are known at trace time)
  strictly decreasing inside (0, T]."""
  arr = jnp.asarray(times, jnp.float32)
  if arr.ndim != 1 or arr.shape[0] < 2:
    raise ConfigError("sampler.times", tuple(arr.shape), f"a 1-D grid of >= 2 times for {sampler}")
  if not isinstance(times, jax.core.Tracer):
    host = jnp.asarray(times).tolist()
    if not (all(a > b for a, b in zip(host, host[1:])) and host[-1] > 0 and host[0] <= sde.T):
      raise ConfigError("sampler.times", host, f"strictly decreasing times in (0, T={sde.T}]")
  return arr


def _setup(key: Array, sde: SDE, sampler: str, shape: tuple[int, ...], num_steps: int,
           t_eps: float, time_spacing: str, observed: Optional[Array], mask: Optional[Array],
           times: Optional[Array] = None, x_init: Optional[Array] = None):
  """Validate; draw the clamped x_T (or take `x_init`); tabulate t, a(t), s(t) on the grid (the
  caller's `times` or a `fast_time_grid`) and the lambda steps h."""
  _check_vp(sde, sampler)
  if time_spacing not in TIME_SPACINGS:
    raise ConfigError("sampler.time_spacing", time_spacing, f"one of {TIME_SPACINGS}")
  if times is not None:
    ts = _check_times(times, sde, sampler)
    num_steps, t_eps = ts.shape[0] - 1, sde.T * 0.5  # t_eps is only range-checked by prepare
  x, observed, mask, key_steps = prepare(key, sde, shape, num_steps, t_eps, observed, mask)
  if times is None:
    if not t_eps > 0:  # lambda(0) = +inf: the solvers' step sizes would be infinite
      raise ConfigError("sde.t_eps", t_eps, f"a number in (0, T={sde.T}) for {sampler}")
    ts = fast_time_grid(sde, num_steps, t_eps, time_spacing)
  if x_init is not None:
    if tuple(x_init.shape) != tuple(shape):
      raise ConfigError("sampler.x_init.shape", tuple(x_init.shape), f"the sample shape {shape}")
    x = clamp(jnp.asarray(x_init, x.dtype), observed, mask)
  h = log_snr(sde, ts[1:]) - log_snr(sde, ts[:-1])
  return x, observed, mask, key_steps, ts, sde.mean_coeff(ts), sde.marginal_std(ts), h


def _active(i: Array, start_index: Optional[Array], x: Array) -> Optional[Array]:
  """[B, 1, ..] booleans: which examples have reached their first step (None: all of them)."""
  if start_index is None:
    return None
  return (i >= start_index).reshape((-1,) + (1,) * (x.ndim - 1))


def _keep_inactive(active: Optional[Array], new: Array, old: Array) -> Array:
  return new if active is None else jnp.where(active, new, old)


def sample_ddim(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], num_steps: int,
                *, eta: float = 0.0, observed: Optional[Array] = None,
                mask: Optional[Array] = None, t_eps: float = 1e-3, denoise: bool = True,
                time_spacing: str = "logsnr", times: Optional[Array] = None,
                x_init: Optional[Array] = None, start_index: Optional[Array] = None) -> Array:
  """DDIM (Song, Meng & Ermon 2021, eq. 12) from T to t_eps; one score evaluation per step.

  Per step t -> t': eps = -s score(x, t), x0 = (x - s eps) / a (observed coordinates set to
  `observed`), x' = a' x0 + sqrt(s'^2 - sigma^2) eps + sigma z with
  sigma = eta s' sqrt(1 - (a s' / (a' s))^2). eta = 0: deterministic (no noise is drawn);
  eta = 1: DDPM posterior; for eta > 1 sigma is capped at s'. Grid uniform in lambda = log(a/s)
  (`time_spacing="logsnr"`, default: better than uniform t at 10-50 steps) or in t ("uniform",
  DDIM's evenly spaced sub-sequence). VP-type SDEs only (VESDE: ConfigError).

  `times` (N + 1 decreasing times) replaces the grid (`num_steps`, `t_eps` and `time_spacing` are
  then unused), e.g. a scheduler's discrete timesteps. `x_init` replaces the prior draw as the
  state at times[0]; with `start_index` [B] (ints) example b instead starts at grid index
  start_index[b] from x_init[b] (which must be a sample at times[start_index[b]]) and is left
  unchanged by the earlier steps, so examples with different start times share one compiled
  scan (SDEdit with per-example strength).
  """
  _check_eta(eta)
  x, observed, mask, key_steps, ts, a, s, h = _setup(key, sde, "ddim", shape, num_steps, t_eps,
                                                     time_spacing, observed, mask, times, x_init)
  num_steps = ts.shape[0] - 1
  sigma = jnp.minimum(eta * s[1:] * jnp.sqrt(-jnp.expm1(-2.0 * h)), s[1:])
  c_eps = jnp.sqrt(jnp.maximum(s[1:] ** 2 - sigma ** 2, 0.0))

  def body(x, inp):
    i, t, a_i, s_i, a_n, sig, ce = inp
    eps = -s_i * score_fn(x, _vec(t, x))
    x0 = clamp((x - s_i * eps) / a_i, observed, mask)
    x_new = a_n * x0 + ce * eps
    if eta > 0:  # static: eta = 0 draws no noise at all
      x_new = x_new + sig * jax.random.normal(jax.random.fold_in(key_steps, i), x.shape, x.dtype)
    return clamp(_keep_inactive(_active(i, start_index, x), x_new, x), observed, mask), None

  inputs = (jnp.arange(num_steps), ts[:-1], a[:-1], s[:-1], a[1:], sigma, c_eps)
  x, _ = jax.lax.scan(body, x, inputs)
  return _finish(score_fn, sde, x, ts[-1], denoise, observed, mask)


def sample_dpmpp_2m(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
                    num_steps: int, *, observed: Optional[Array] = None,
                    mask: Optional[Array] = None, t_eps: float = 1e-3, denoise: bool = True,
                    time_spacing: str = "logsnr", times: Optional[Array] = None,
                    x_init: Optional[Array] = None, start_index: Optional[Array] = None,
                    lower_order_final: bool = True) -> Array:
  """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): data-prediction multistep solver, one NFE per step.

  Grid uniform in lambda = log(a/s) (`time_spacing="logsnr"`, default) or in t ("uniform").
  Step i (t_i -> t_{i+1}, h_i = lambda_{i+1} - lambda_i): x0_i = x0_hat(x_i, t_i) with observed
  coordinates set to `observed`, D_i = x0_i + c_i (x0_i - x0_{i-1}),
  x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} expm1(-h_i) D_i. c_i = 1 / (2 r_i), r_i = h_{i-1}/h_i
  (second order), except c = 0 (first order, DDIM) at the first step, which has no history, and
  at the last step, whose h can dwarf h_{i-1} on a uniform-t grid and make the extrapolation
  unstable (diffusers' `lower_order_final`; the global error stays second order). The scan carry
  is (x_i, x0_{i-1}). VP-type SDEs only (VESDE: ConfigError).

  `times`, `x_init` and `start_index` as in `sample_ddim`; an example's first step is first
  order wherever it starts. `lower_order_final=False` keeps the last step second order: right
  when `denoise` follows it at a time well above zero, as in diffusers' schedule whose final step
  to sigma = 0 is exactly the data prediction.
  """
  x, observed, mask, _, ts, a, s, h = _setup(key, sde, "dpmpp_2m", shape, num_steps, t_eps,
                                             time_spacing, observed, mask, times, x_init)
  c = jnp.concatenate([jnp.zeros((1,), h.dtype), 0.5 * h[1:] / h[:-1]])
  if lower_order_final:
    c = c.at[-1].set(0.0)
  ratio_s = s[1:] / s[:-1]
  coef_d = -a[1:] * jnp.expm1(-h)

  def body(carry, inp):
    x, x0_prev = carry
    i, t, a_i, s_i, c_i, rs, cd = inp
    x0 = _data_prediction(score_fn, x, t, a_i, s_i, observed, mask)
    if start_index is not None:  # an example's first step has no history: first order
      c_i = jnp.where(i > start_index, c_i, 0.0).reshape((-1,) + (1,) * (x.ndim - 1))
    d = x0 + c_i * (x0 - x0_prev)  # c = 0 at a first step: the initial x0_prev is never used
    x_new = clamp(rs * x + cd * d, observed, mask)
    return (_keep_inactive(_active(i, start_index, x), x_new, x), x0), None

  inputs = (jnp.arange(ts.shape[0] - 1), ts[:-1], a[:-1], s[:-1], c, ratio_s, coef_d)
  (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), inputs)
  return _finish(score_fn, sde, x, ts[-1], denoise, observed, mask)


def sample_dpmpp_2s(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
                    num_steps: int, *, observed: Optional[Array] = None,
                    mask: Optional[Array] = None, t_eps: float = 1e-3, denoise: bool = True,
                    time_spacing: str = "logsnr", times: Optional[Array] = None,
                    x_init: Optional[Array] = None) -> Array:
  """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, r = 1/2): singlestep, two NFE per step.

  Step i (t_i -> t_{i+1}, h = lambda_{i+1} - lambda_i, midpoint m = t(lambda_i + h/2)):
  x0_i = x0_hat(x_i, t_i), u = (s_m/s_i) x_i - a_m expm1(-h/2) x0_i (a first-order step to m),
  D = x0_hat(u, m), x_{i+1} = (s_{i+1}/s_i) x_i - a_{i+1} expm1(-h) D, observed coordinates set
  to `observed` in every data prediction and state. With (1 - 1/(2r)) = 0 at r = 1/2 the update
  uses the midpoint prediction alone (Alg. 1's D_i). NFE = 2 num_steps + denoise: compare it with
  the one-evaluation-per-step samplers at equal NFE, not equal steps. Grid, `times` and `x_init`
  as in `sample_ddim`. VP-type SDEs only (VESDE: ConfigError).
  """
  x, observed, mask, _, ts, a, s, h = _setup(key, sde, "dpmpp_2s", shape, num_steps, t_eps,
                                             time_spacing, observed, mask, times, x_init)
  lam = log_snr(sde, ts)
  tm = _t_from_log_snr(sde, lam[:-1] + 0.5 * h)  # the midpoints, exact in lambda
  am, sm = sde.mean_coeff(tm), sde.marginal_std(tm)

  def body(x, inp):
    t, a_i, s_i, t_m, a_m, s_m, a_n, s_n, h_i = inp
    x0 = _data_prediction(score_fn, x, t, a_i, s_i, observed, mask)
    u = clamp((s_m / s_i) * x - a_m * jnp.expm1(-0.5 * h_i) * x0, observed, mask)
    d = _data_prediction(score_fn, u, t_m, a_m, s_m, observed, mask)
    return clamp((s_n / s_i) * x - a_n * jnp.expm1(-h_i) * d, observed, mask), None

  inputs = (ts[:-1], a[:-1], s[:-1], tm, am, sm, a[1:], s[1:], h)
  x, _ = jax.lax.scan(body, x, inputs)
  return _finish(score_fn, sde, x, ts[-1], denoise, observed, mask)
