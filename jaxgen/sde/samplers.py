"""Reverse-time samplers for the SDEs of `jaxgen.sde.sdes` (Song et al. 2021, Sec. 4 and App. D-G).

Every sampler is a pure function whose loop over steps is one `lax.scan`, so a caller compiles it
once with `jax.jit` (close over the network parameters or pass them through the jitted wrapper):

    sample = jax.jit(lambda params, key: sample_euler_maruyama(
        key, lambda x, t: score(params, x, t), sde, shape, num_steps))

`score_fn(x, t) -> score` takes x of `shape` and t of shape [B]. Time runs on the uniform grid
T = t_0 > t_1 > ... > t_N = t_eps. With `(observed, mask)` (paper 000 eq. 5) coordinates with
mask == 0 are clamped to `observed` (their time-0 values) in the initial state and after every
(sub)step, so the score network always sees the clean conditioning values; only mask == 1
coordinates are generated. `denoise=True` ends with the Tweedie step
x_0 = (x + s(t_eps)^2 score(x, t_eps)) / a(t_eps) (Efron 2011; Song et al. 2021 App. G).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.sde.sdes import SDE, bcast

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
StepFn = Callable[[Array, Array, Array, Array], Array]

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
ODE_METHODS = ("euler", "heun")


def eps_to_score_fn(eps_fn: ScoreFn, sde: SDE) -> ScoreFn:
  """Turn a noise predictor eps_fn(x, t) into score_fn(x, t) = -eps_fn(x, t) / s(t)."""

  def score_fn(x: Array, t: Array) -> Array:
    return -eps_fn(x, t) / bcast(sde.marginal_std(t), x)

  return score_fn


def v_to_score_fn(v_fn: ScoreFn, sde: SDE) -> ScoreFn:
  """Turn a velocity predictor v_fn(x, t) (v = a eps - s x_0, VP SDEs: a^2 + s^2 = 1) into
  score_fn(x, t) = -(a v + s x) / s, since eps = a v + s x_t."""

  def score_fn(x: Array, t: Array) -> Array:
    a, s = bcast(sde.mean_coeff(t), x), bcast(sde.marginal_std(t), x)
    return -(a * v_fn(x, t) + s * x) / s

  return score_fn


def clamp(x: Array, observed: Optional[Array], mask: Optional[Array]) -> Array:
  """Keep mask == 0 coordinates at `observed` (paper 000 eq. 5); identity without a mask."""
  if mask is None:
    return x
  return mask * x + (1.0 - mask) * observed


def _check_int(key: str, value: int, low: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ConfigError(key, value, f"an integer >= {low}")


def prepare(key: Array, sde: SDE, shape: tuple[int, ...], num_steps: int, t_eps: float,
            observed: Optional[Array], mask: Optional[Array]
            ) -> tuple[Array, Optional[Array], Optional[Array], Array]:
  """Validate sampler arguments and draw the initial state x_T ~ prior (observed values clamped).

  Returns (x_T, observed, mask as float arrays of `shape` or None, key for the steps).
  """
  _check_int("sde.num_steps", num_steps, 1)
  if not 0.0 <= t_eps < sde.T:
    raise ConfigError("sde.t_eps", t_eps, f"a number in [0, T={sde.T})")
  if (observed is None) != (mask is None):
    raise ConfigError("sampler.mask", "observed given without mask" if mask is None
                      else "mask given without observed", "both observed and mask, or neither")
  key_init, key_steps = jax.random.split(key)
  x = sde.prior_sample(key_init, tuple(shape))
  if mask is not None:
    mask = jnp.broadcast_to(jnp.asarray(mask), x.shape).astype(x.dtype)
    observed = jnp.broadcast_to(jnp.asarray(observed), x.shape).astype(x.dtype)
  return clamp(x, observed, mask), observed, mask, key_steps


def time_grid(sde: SDE, num_steps: int, t_eps: float) -> Array:
  """The N + 1 times T = t_0 > ... > t_N = t_eps of a sampler with N steps."""
  return jnp.linspace(sde.T, t_eps, num_steps + 1)


def _vec(t: Array, x: Array) -> Array:
  return jnp.full((x.shape[0],), t, x.dtype)


def tweedie_denoise(score_fn: ScoreFn, sde: SDE, x: Array, t: Array) -> Array:
  """Posterior mean E[x_0 | x_t] = (x_t + s(t)^2 score(x_t, t)) / a(t) (Tweedie's formula)."""
  t = _vec(t, x)
  a = bcast(sde.mean_coeff(t), x)
  s = bcast(sde.marginal_std(t), x)
  return (x + s ** 2 * score_fn(x, t)) / a


def euler_maruyama_step(key: Array, score_fn: ScoreFn, sde: SDE, x: Array, t: Array,
                        t_next: Array) -> Array:
  """One Euler-Maruyama step of the reverse SDE (paper 000 eq. 3) from t to t_next < t.

  x_next = x + (f - g^2 score) dt + g sqrt(|dt|) z with dt = t_next - t < 0.
  """
  tv = _vec(t, x)
  dt = t_next - t
  drift = sde.reverse_drift(x, tv, score_fn(x, tv))
  g = bcast(sde.diffusion(tv), x)
  return x + drift * dt + g * jnp.sqrt(-dt) * jax.random.normal(key, x.shape, x.dtype)


def reverse_diffusion_step(key: Array, score_fn: ScoreFn, sde: SDE, x: Array, t: Array,
                           t_next: Array) -> Array:
  """Reverse-diffusion predictor (Song et al. 2021 eq. 46) from t to t_next < t.

  With the discretised forward step x_t = x_{t'} + f_d + G z (`sde.discretize`),
  x_next = x - f_d + G^2 score + G z.
  """
  tv = _vec(t, x)
  f_d, g_d = sde.discretize(x, tv, t - t_next)
  g_d = bcast(g_d, x)
  return x - f_d + g_d ** 2 * score_fn(x, tv) + g_d * jax.random.normal(key, x.shape, x.dtype)


def _per_example_norm(v: Array) -> Array:
  return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1))


def langevin_step(key: Array, score_fn: ScoreFn, sde: SDE, x: Array, t: Array, snr: float,
                  mask: Optional[Array] = None) -> Array:
  """One Langevin corrector step at time t (Song et al. 2021 Alg. 4 with alpha = 1).

  eps = 2 (snr mean_b ||z_b|| / mean_b ||score_b||)^2, x <- x + eps score + sqrt(2 eps) z. The
  norms are averaged over the batch, as in score_sde: a per-example ratio explodes for examples
  whose score is near zero (a mode), which breaks low-dimensional data. With a mask the norms are
  taken over the diffused coordinates only.
  """
  tv = _vec(t, x)
  grad = score_fn(x, tv)
  z = jax.random.normal(key, x.shape, x.dtype)
  m = 1.0 if mask is None else mask
  ratio = (jnp.mean(_per_example_norm(m * z))
           / jnp.maximum(jnp.mean(_per_example_norm(m * grad)), 1e-12))
  step = 2.0 * (snr * ratio) ** 2
  return x + step * grad + jnp.sqrt(2.0 * step) * z


def ode_euler_step(score_fn: ScoreFn, sde: SDE, x: Array, t: Array, t_next: Array) -> Array:
  """Euler step of the probability-flow ODE dx/dt = f - g^2 score / 2 (Song et al. 2021 eq. 13)."""
  tv = _vec(t, x)
  return x + (t_next - t) * sde.reverse_drift(x, tv, score_fn(x, tv), probability_flow=True)


def ode_heun_step(score_fn: ScoreFn, sde: SDE, x: Array, t: Array, t_next: Array,
                  observed: Optional[Array] = None, mask: Optional[Array] = None) -> Array:
  """Heun (explicit trapezoidal, 2nd order) step of the probability-flow ODE from t to t_next.

  d1 = v(x, t), x_e = x + dt d1, d2 = v(x_e, t_next), x_next = x + dt (d1 + d2) / 2
  (Karras et al. 2022 Alg. 1); the Euler predictor x_e is clamped before d2 is evaluated.
  """
  dt = t_next - t
  tv, tnv = _vec(t, x), _vec(t_next, x)
  d1 = sde.reverse_drift(x, tv, score_fn(x, tv), probability_flow=True)
  x_e = clamp(x + dt * d1, observed, mask)
  d2 = sde.reverse_drift(x_e, tnv, score_fn(x_e, tnv), probability_flow=True)
  return x + 0.5 * dt * (d1 + d2)


def _run(key: Array, step: StepFn, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
         num_steps: int, t_eps: float, denoise: bool, observed: Optional[Array],
         mask: Optional[Array]) -> Array:
  """Scan `step(key_i, x, t_i, t_{i+1})` over the time grid, clamping after every step."""
  x, observed, mask, key_steps = prepare(key, sde, shape, num_steps, t_eps, observed, mask)
  ts = time_grid(sde, num_steps, t_eps)

  def body(x, inp):
    i, t, t_next = inp
    x = step(jax.random.fold_in(key_steps, i), x, t, t_next)
    return clamp(x, observed, mask), None

  x, _ = jax.lax.scan(body, x, (jnp.arange(num_steps), ts[:-1], ts[1:]))
  if denoise:
    x = clamp(tweedie_denoise(score_fn, sde, x, ts[-1]), observed, mask)
  return x


def sample_euler_maruyama(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
                          num_steps: int, *, observed: Optional[Array] = None,
                          mask: Optional[Array] = None, t_eps: float = 1e-3,
                          denoise: bool = True) -> Array:
  """Sample by Euler-Maruyama on the (masked) reverse SDE, paper 000 eqs. 3 and 5."""

  def step(k, x, t, t_next):
    return euler_maruyama_step(k, score_fn, sde, x, t, t_next)

  return _run(key, step, score_fn, sde, shape, num_steps, t_eps, denoise, observed, mask)


def sample_pc(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], num_steps: int, *,
              predictor: str = "reverse_diffusion", snr: float = 0.16,
              n_corrector_steps: int = 1, observed: Optional[Array] = None,
              mask: Optional[Array] = None, t_eps: float = 1e-3, denoise: bool = True) -> Array:
  """Predictor-corrector sampling (Song et al. 2021 Alg. 1-3).

  At each grid time t_i: `n_corrector_steps` Langevin corrector steps with signal-to-noise ratio
  `snr`, then one predictor step to t_{i+1}; `predictor` is 'reverse_diffusion' or
  'euler_maruyama'. Observed coordinates are clamped after every predictor and corrector step.
  """
  if predictor not in PREDICTORS:
    raise ConfigError("sampler.predictor", predictor, f"one of {PREDICTORS}")
  _check_int("sampler.n_corrector_steps", n_corrector_steps, 0)
  if not snr > 0:
    raise ConfigError("sampler.snr", snr, "a positive number")
  pred = reverse_diffusion_step if predictor == "reverse_diffusion" else euler_maruyama_step
  m = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, jnp.float32), tuple(shape))
  obs = None if observed is None else jnp.broadcast_to(jnp.asarray(observed), tuple(shape))

  def step(k, x, t, t_next):
    def corrector(j, x):
      x = langevin_step(jax.random.fold_in(k, j + 1), score_fn, sde, x, t, snr, m)
      return clamp(x, obs, m)

    x = jax.lax.fori_loop(0, n_corrector_steps, corrector, x)
    return pred(jax.random.fold_in(k, 0), score_fn, sde, x, t, t_next)

  return _run(key, step, score_fn, sde, shape, num_steps, t_eps, denoise, observed, mask)


def sample_ode(key: Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...], num_steps: int, *,
               method: str = "heun", observed: Optional[Array] = None,
               mask: Optional[Array] = None, t_eps: float = 1e-3, denoise: bool = True) -> Array:
  """Integrate the probability-flow ODE (Song et al. 2021 eq. 13) from x_T ~ prior to t_eps.

  `method` is 'euler' (1 score evaluation per step) or 'heun' (2 per step, second order). Only the
  initial state is random; with a mask the ODE of the missing coordinates is integrated with the
  observed ones clamped (the probability flow of paper 000 eq. 5).
  """
  if method not in ODE_METHODS:
    raise ConfigError("sampler.ode_method", method, f"one of {ODE_METHODS}")
  m = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, jnp.float32), tuple(shape))
  obs = None if observed is None else jnp.broadcast_to(jnp.asarray(observed), tuple(shape))

  def step(k, x, t, t_next):
    del k
    if method == "euler":
      return ode_euler_step(score_fn, sde, x, t, t_next)
    return ode_heun_step(score_fn, sde, x, t, t_next, obs, m)

  return _run(key, step, score_fn, sde, shape, num_steps, t_eps, denoise, observed, mask)
