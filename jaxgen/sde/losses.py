"""Denoising score matching for the SDEs of `jaxgen.sde.sdes`, with masks for conditioning.

The model predicts the noise: `model_fn(x_t, t) -> eps_hat` with the shape of x_t and t of shape
[B], so score = -eps_hat / s(t) (Ho et al. 2020; Song et al. 2021 eq. 7 in the eps form), or, with
`prediction='v'` on a VP SDE, the velocity v = a(t) eps - s(t) x_0 (Salimans & Ho 2022), so
eps = a v + s x_t (`samplers.v_to_score_fn`). With a mask (paper 000 eqs. 4 and 6) only the
coordinates with mask == 1 are diffused and scored; the others stay at x_0 in the model input
and do not enter the loss.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.sde.sdes import SDE, VPSDE, DiscreteVPSDE, bcast

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

REDUCTIONS = ("diffused", "all")
PREDICTIONS = ("eps", "v")


def _log_expm1(u: float) -> float:
  """log(exp(u) - 1) without overflow for large u."""
  return u + math.log(-math.expm1(-u))


def vp_importance_constants(sde: VPSDE, t_eps: float) -> tuple[float, float]:
  """(L_0, Z) of the VP likelihood-weight density; see `sample_importance_t`."""
  l0 = _log_expm1(float(sde.integral_beta(t_eps)))
  l1 = _log_expm1(float(sde.integral_beta(sde.T)))
  return l0, l1 - l0


def sample_importance_t(key: Array, sde: VPSDE, batch: int, t_eps: float = 1e-3) -> Array:
  """Sample t in [t_eps, T] with density proportional to the VP likelihood weight g^2 / s^2.

  For the VP SDE w(t) = beta(t) / (1 - exp(-B(t))), and with u = B(t),
  int w dt = int du / (1 - e^-u) = log(e^u - 1). So the density is
      p(t) = w(t) / Z,  Z = log(e^{B(T)} - 1) - log(e^{B(t_eps)} - 1),
  and inverse-CDF sampling gives B(t) = softplus(L_0 + v Z), v ~ U(0, 1), L_0 = log(e^{B(t_eps)} - 1),
  then t = B^{-1}(.) from the quadratic B (Song et al. 2021b, "Maximum likelihood training", Sec. 5).
  """
  l0, z = vp_importance_constants(sde, t_eps)
  v = jax.random.uniform(key, (batch,))
  return jnp.clip(sde.inverse_integral_beta(jax.nn.softplus(l0 + v * z)), t_eps, sde.T)


def dsm_loss(key: Array, model_fn: ModelFn, sde: SDE, x0: Array, *,
             mask: Optional[Array] = None,
             example_weights: Optional[Array] = None,
             t: Optional[Array] = None,
             likelihood_weighting: bool = False,
             importance_sampling: bool = False,
             t_eps: float = 1e-3,
             reduce: str = "diffused",
             prediction: str = "eps") -> tuple[Array, dict[str, Any]]:
  """Eps-parameterised denoising score-matching loss with an optional diffusion mask.

  Implements paper 000 eq. 6 in the eps form: with t ~ U(t_eps, T) (or the caller's `t`, shape [B]),
  eps ~ N(0, I), x_t = a(t) x_0 + s(t) eps on the diffused coordinates and x_t = x_0 on the frozen
  ones (the masked forward SDE, paper 000 eq. 4), the per-example loss is

      l_b = w(t_b) * lambda_b * sum_i m_bi (eps_hat_bi - eps_bi)^2 / N_b,

  where m = `mask` (1 = diffused/missing, 0 = frozen; default all ones), lambda = `example_weights`
  (e.g. MVLD's 1 + |C|/|M|, computed by the caller; default 1) and w(t) = 1, or g^2/s^2 when
  `likelihood_weighting` (the score-form weight lambda(t) = g^2). The normaliser N_b is the number
  of diffused coordinates of example b when `reduce='diffused'` (a mean over diffused coordinates),
  or the total number of coordinates when `reduce='all'` (frozen coordinates count as zeros; with
  lambda = 1 + |C|/|M| = V/|M| over V equal views this equals the 'diffused' mean without lambda).
  An example with no diffused coordinate contributes 0. The loss is the mean of l_b over the batch.

  `importance_sampling` (VP only, needs `likelihood_weighting`) draws t from p(t) = w(t)/Z on
  [t_eps, T] (see `sample_importance_t`) and weights by Z/(T - t_eps) in place of w(t): the same
  expectation as uniform t with likelihood weighting, with a constant per-sample weight, so lower
  variance. With a caller-given `t` the plain weight w(t) is used instead.

  `prediction='v'` (VP SDE only, where a^2 + s^2 = 1) regresses the model on
  v = a(t) eps - s(t) x_0 instead of eps, the same sum with v in place of eps. An eps model's
  data prediction x0_hat = (x_t - s eps_hat) / a multiplies its error by s / a, about 150 at t = T
  of the default VP SDE, so a pixel model that is not yet accurate to ~1e-3 at high noise starts
  its samplers from garbage; with v, x0_hat = a x_t - s v_hat is never amplified.

  Returns (loss, aux) with aux = {'loss_per_example': l ([B]), 't': t ([B]),
  'mse': unweighted mean over diffused coordinates ([B])}.
  """
  if reduce not in REDUCTIONS:
    raise ConfigError("sde.loss_reduce", reduce, f"one of {REDUCTIONS}")
  if importance_sampling and not isinstance(sde, VPSDE):
    raise ConfigError("sde.importance_sampling", importance_sampling,
                      f"False for {type(sde).__name__} (importance sampling is defined for vpsde)")
  if importance_sampling and not likelihood_weighting:
    raise ConfigError("sde.importance_sampling", importance_sampling,
                      "False unless likelihood_weighting=True")
  if prediction not in PREDICTIONS:
    raise ConfigError("sde.prediction", prediction, f"one of {PREDICTIONS}")
  if prediction == "v" and not isinstance(sde, (VPSDE, DiscreteVPSDE)):
    raise ConfigError("sde.prediction", prediction,
                      f"'eps' for {type(sde).__name__} (v-prediction needs a VP SDE)")
  if not 0.0 <= t_eps < sde.T:
    raise ConfigError("sde.t_eps", t_eps, f"a number in [0, T={sde.T})")
  batch = x0.shape[0]
  key_t, key_eps = jax.random.split(key)
  use_is = importance_sampling and t is None
  if t is None:
    if use_is:
      t = sample_importance_t(key_t, sde, batch, t_eps)
    else:
      t = jax.random.uniform(key_t, (batch,), minval=t_eps, maxval=sde.T)
  t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), (batch,))

  m = jnp.ones_like(x0) if mask is None else jnp.broadcast_to(mask, x0.shape).astype(x0.dtype)
  eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
  mean, std = sde.marginal(x0, t)
  x_t = mean + bcast(std, x0) * eps
  x_t = m * x_t + (1.0 - m) * x0  # frozen coordinates stay at their time-0 value
  target = eps if prediction == "eps" else bcast(sde.mean_coeff(t), x0) * eps - bcast(std, x0) * x0
  out = model_fn(x_t, t)

  sq = (m * (out - target) ** 2).reshape(batch, -1)
  m_flat = m.reshape(batch, -1)
  n_diffused = jnp.sum(m_flat, axis=-1)
  mse = jnp.sum(sq, axis=-1) / jnp.maximum(n_diffused, 1.0)
  norm = jnp.maximum(n_diffused, 1.0) if reduce == "diffused" else float(m_flat.shape[1])
  per_example = jnp.sum(sq, axis=-1) / norm

  if use_is:
    _, z = vp_importance_constants(sde, t_eps)
    per_example = per_example * (z / (sde.T - t_eps))
  elif likelihood_weighting:
    per_example = per_example * sde.likelihood_weight(t)
  if example_weights is not None:
    per_example = per_example * jnp.asarray(example_weights, x0.dtype).reshape(batch)
  loss = jnp.mean(per_example)
  return loss, {"loss_per_example": per_example, "t": t, "mse": mse}
