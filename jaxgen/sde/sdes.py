"""Forward SDEs of score-based generative modelling (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", eqs. 9-11 and App. B).

Every SDE here is linear with a scalar, time-only diffusion, the form of paper 000 eq. 2:

    dx = f(t) x dt + g(t) dW,      q(x_t | x_0) = N(a(t) x_0, s(t)^2 I).

Each SDE is a frozen dataclass (hashable, so it can be a static argument of `jax.jit`) exposing
`drift_and_diffusion`, `marginal`, `transition`, `discretize`, `prior_sample`, `prior_logp` and `T`.
Time `t` is a per-example vector of shape [B] (a scalar is also accepted); it is broadcast over the
remaining dimensions of `x`. Diffusion coefficients and standard deviations are returned with the
shape of `t` ([B]); use `bcast(v, x)` to broadcast them against `x`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError

Array = jax.Array


def bcast(v: Array, x: Array) -> Array:
  """Reshape a per-example vector `v` ([B] or scalar) so it broadcasts against `x` ([B, ...])."""
  v = jnp.asarray(v)
  if v.ndim == 0:
    return v
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _sum_except_batch(x: Array) -> Array:
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


class _LinearSDE:
  """Shared machinery for SDEs with marginal q(x_t | x_0) = N(a(t) x_0, s(t)^2 I).

  Subclasses define `mean_coeff(t)` (a), `marginal_std(t)` (s), `drift_coeff(t)` (f(t), so that
  the drift is f(t) x), `diffusion(t)` (g), `prior_std` and `T`.
  """

  T: float
  prior_std: float

  def drift_and_diffusion(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Forward SDE coefficients (paper 000 eq. 2): drift f(x, t) (shape of x) and g(t) ([B])."""
    return bcast(self.drift_coeff(t), x) * x, self.diffusion(t)

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """Perturbation kernel q(x_t | x_0) = N(mean, std^2 I): returns mean (shape of x0), std ([B])."""
    return bcast(self.mean_coeff(t), x0) * x0, self.marginal_std(t)

  def transition(self, x_s: Array, s: Array, t: Array) -> tuple[Array, Array]:
    """Exact forward transition q(x_t | x_s) for s <= t: returns mean (shape of x_s), std ([B]).

    For a linear SDE the transition is Gaussian with x_t = r x_s + N(0, v), r = a(t)/a(s), and since
    Var(x_t | x_0) = r^2 Var(x_s | x_0) + v, the variance is v = s(t)^2 - r^2 s(s)^2.
    """
    r = self.mean_coeff(t) / self.mean_coeff(s)
    var = self.marginal_std(t) ** 2 - r ** 2 * self.marginal_std(s) ** 2
    return bcast(r, x_s) * x_s, jnp.sqrt(jnp.maximum(var, 0.0))

  def discretize(self, x: Array, t: Array, dt: Union[float, Array]) -> tuple[Array, Array]:
    """Discretised forward step over [t - dt, t]: x_t = x + f_d + G z (Song et al. 2021 eq. 45).

    Uses the exact transition, so f_d = (r - 1) x and G is the transition std; the reverse-diffusion
    predictor inverts it as x_{t-dt} = x - f_d + G^2 score + G z. Returns (f_d, G) with G of shape [B].
    """
    s = t - dt
    mean, std = self.transition(x, s, t)
    return mean - x, std

  def reverse_drift(self, x: Array, t: Array, score: Array,
                    probability_flow: bool = False) -> Array:
    """Drift of the reverse-time SDE (paper 000 eq. 3) f - g^2 score, or of the probability-flow
    ODE f - g^2 score / 2 (Song et al. 2021 eq. 13), in forward time (integrate with dt < 0)."""
    f, g = self.drift_and_diffusion(x, t)
    g2 = bcast(g ** 2, x)
    return f - (0.5 if probability_flow else 1.0) * g2 * score

  def likelihood_weight(self, t: Array) -> Array:
    """Likelihood weighting g(t)^2 / s(t)^2 of the eps-parameterised DSM loss ([B]).

    With score = -eps / s, lambda(t) = g^2 turns lambda ||score - true score||^2 into
    g^2 / s^2 ||eps_hat - eps||^2 (Song et al. 2021b, "Maximum likelihood training", Thm. 1).
    """
    return self.diffusion(t) ** 2 / self.marginal_std(t) ** 2

  def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
    """Sample the prior p_T = N(0, prior_std^2 I) that approximates q(x_T)."""
    return self.prior_std * jax.random.normal(key, shape)

  def prior_logp(self, z: Array) -> Array:
    """Log density of the prior N(0, prior_std^2 I) summed over all but the batch axis ([B])."""
    d = math.prod(z.shape[1:])
    return (-0.5 * d * math.log(2 * math.pi * self.prior_std ** 2)
            - 0.5 * _sum_except_batch(z ** 2) / self.prior_std ** 2)


def _check_positive(name: str, value: float) -> None:
  if not (isinstance(value, (int, float)) and value > 0):
    raise ConfigError(name, value, "a positive number")


@dataclasses.dataclass(frozen=True)
class _LinearBetaSDE(_LinearSDE):
  """The linear noise-rate schedule beta(t) = beta_min + t (beta_max - beta_min) / T and the
  drift -beta(t) x / 2 that the VP and sub-VP SDEs share; a(t) = exp(-B(t)/2), B = int_0^t beta."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  T: float = 1.0

  def __post_init__(self):
    _check_positive("sde.beta_min", self.beta_min)
    _check_positive("sde.T", self.T)
    if not self.beta_max > self.beta_min:
      raise ConfigError("sde.beta_max", self.beta_max, f"a number > beta_min={self.beta_min}")

  def beta(self, t: Array) -> Array:
    """Noise rate beta(t), linear in t."""
    return self.beta_min + t / self.T * (self.beta_max - self.beta_min)

  def integral_beta(self, t: Array) -> Array:
    """B(t) = int_0^t beta(u) du."""
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2 / self.T

  def mean_coeff(self, t: Array) -> Array:
    """a(t): the mean of q(x_t | x_0) is a(t) x_0."""
    return jnp.exp(-0.5 * self.integral_beta(t))

  def drift_coeff(self, t: Array) -> Array:
    """f(t) with drift f(t) x."""
    return -0.5 * self.beta(t)


@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSDE):
  """Variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW (Song et al. 2021 eq. 11).

  beta(t) = beta_min + t (beta_max - beta_min) / T; with B(t) = int_0^t beta, a(t) = exp(-B/2) and
  s(t)^2 = 1 - exp(-B). Prior N(0, I).
  """

  name = "vpsde"
  prior_std = 1.0

  def inverse_integral_beta(self, b: Array) -> Array:
    """t such that B(t) = b (the positive root of the quadratic B)."""
    k = (self.beta_max - self.beta_min) / self.T
    return (jnp.sqrt(self.beta_min ** 2 + 2.0 * k * b) - self.beta_min) / k

  def marginal_std(self, t: Array) -> Array:
    """s(t): the std of q(x_t | x_0)."""
    return jnp.sqrt(-jnp.expm1(-self.integral_beta(t)))

  def diffusion(self, t: Array) -> Array:
    """g(t)."""
    return jnp.sqrt(self.beta(t))


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_LinearBetaSDE):
  """Sub-VP SDE dx = -beta x / 2 dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dW (Song et al. 2021 eq. 12).

  Same drift as VP; a(t) = exp(-B/2) and s(t) = 1 - exp(-B), always below the VP std. Prior N(0, I).
  """

  name = "subvpsde"
  prior_std = 1.0

  def marginal_std(self, t: Array) -> Array:
    """s(t): the std of q(x_t | x_0)."""
    return -jnp.expm1(-self.integral_beta(t))

  def diffusion(self, t: Array) -> Array:
    """g(t)."""
    return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.integral_beta(t)))


@dataclasses.dataclass(frozen=True)
class VESDE(_LinearSDE):
  """Variance-exploding SDE dx = sqrt(d sigma^2(t)/dt) dW (Song et al. 2021 eq. 9).

  sigma(t) = sigma_min (sigma_max / sigma_min)^(t/T). Started from x_0 at t = 0 the exact marginal is
  N(x_0, (sigma(t)^2 - sigma_min^2) I), used here (score_sde instead uses sigma(t), treating the
  data as already smoothed by sigma_min). Prior N(0, sigma_max^2 I).
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  T: float = 1.0
  name = "vesde"

  def __post_init__(self):
    _check_positive("sde.sigma_min", self.sigma_min)
    _check_positive("sde.T", self.T)
    if not self.sigma_max > self.sigma_min:
      raise ConfigError("sde.sigma_max", self.sigma_max, f"a number > sigma_min={self.sigma_min}")

  @property
  def prior_std(self) -> float:  # type: ignore[override]
    return self.sigma_max

  def sigma(self, t: Array) -> Array:
    """Geometric noise scale sigma(t)."""
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

  def mean_coeff(self, t: Array) -> Array:
    """a(t): the mean of q(x_t | x_0) is a(t) x_0."""
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  def marginal_std(self, t: Array) -> Array:
    """s(t): the std of q(x_t | x_0)."""
    return jnp.sqrt(jnp.maximum(self.sigma(t) ** 2 - self.sigma_min ** 2, 0.0))

  def drift_coeff(self, t: Array) -> Array:
    """f(t) with drift f(t) x."""
    return jnp.zeros_like(jnp.asarray(t, jnp.float32))

  def diffusion(self, t: Array) -> Array:
    """g(t)."""
    return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min) / self.T)


BETA_SCHEDULES = ("scaled_linear", "linear")


@dataclasses.dataclass(frozen=True)
class DiscreteVPSDE(_LinearSDE):
  """The DDPM-discretised VP process of Stable Diffusion (Ho et al. 2020; Rombach et al. 2022) as a
  continuous-time VP SDE, so every sampler of this library runs on it.

  DDPM has N (1000) steps n = 0..N-1 with betas b_n ("scaled_linear": linspace(sqrt(beta_start),
  sqrt(beta_end), N)^2, SD's; "linear": linspace(beta_start, beta_end, N)) and
  alpha_bar_n = prod_{i<=n} (1 - b_i). Step n sits at time t_n = (n + 1) / N, t = 0 is clean data
  (alpha_bar = 1), and log alpha_bar is interpolated linearly between these N + 1 knots, which
  makes beta(t) = -d log alpha_bar / dt piecewise constant: a VP SDE whose marginals equal DDPM's
  exactly at every step. A network trained on DDPM indices takes `timestep(t) = N t - 1`
  (diffusers' `timesteps`), so t = 1 is index N - 1 = 999.
  """

  beta_start: float = 0.00085
  beta_end: float = 0.012
  num_train_timesteps: int = 1000
  schedule: str = "scaled_linear"
  T: float = 1.0
  name = "discrete_vp"
  prior_std = 1.0

  def __post_init__(self):
    _check_positive("sde.beta_start", self.beta_start)
    if not self.beta_end > self.beta_start:
      raise ConfigError("sde.beta_end", self.beta_end, f"a number > beta_start={self.beta_start}")
    if self.beta_end >= 1.0:
      raise ConfigError("sde.beta_end", self.beta_end, "a number < 1")
    if (not isinstance(self.num_train_timesteps, int) or isinstance(self.num_train_timesteps, bool)
        or self.num_train_timesteps < 2):
      raise ConfigError("sde.num_train_timesteps", self.num_train_timesteps, "an integer >= 2")
    if self.schedule not in BETA_SCHEDULES:
      raise ConfigError("sde.schedule", self.schedule, f"one of {BETA_SCHEDULES}")
    if self.T != 1.0:
      raise ConfigError("sde.T", self.T, "1.0 (the DDPM steps are laid out on [0, 1])")

  def betas(self) -> "np.ndarray":
    """The N DDPM betas, float64 on the host."""
    n = self.num_train_timesteps
    if self.schedule == "scaled_linear":
      return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n) ** 2
    return np.linspace(self.beta_start, self.beta_end, n)

  def alphas_cumprod(self) -> "np.ndarray":
    """alpha_bar_n for n = 0..N-1 (diffusers' `scheduler.alphas_cumprod`), float64."""
    return np.cumprod(1.0 - self.betas())

  def _knots(self) -> tuple[Array, Array]:
    n = self.num_train_timesteps
    times = np.arange(n + 1) / n
    integral = np.concatenate([[0.0], -np.log(self.alphas_cumprod())])
    return jnp.asarray(times, jnp.float32), jnp.asarray(integral, jnp.float32)

  def integral_beta(self, t: Array) -> Array:
    """B(t) = -log alpha_bar(t), piecewise linear through the DDPM steps."""
    times, integral = self._knots()
    return jnp.interp(jnp.asarray(t, jnp.float32), times, integral)

  def beta(self, t: Array) -> Array:
    """beta(t) = dB/dt, constant N b'_n on each step's interval (the right-continuous value)."""
    times, integral = self._knots()
    n = self.num_train_timesteps
    idx = jnp.clip(jnp.floor(jnp.asarray(t, jnp.float32) * n).astype(jnp.int32), 0, n - 1)
    return (integral[idx + 1] - integral[idx]) * n

  def mean_coeff(self, t: Array) -> Array:
    """a(t) = sqrt(alpha_bar(t))."""
    return jnp.exp(-0.5 * self.integral_beta(t))

  def marginal_std(self, t: Array) -> Array:
    """s(t) = sqrt(1 - alpha_bar(t))."""
    return jnp.sqrt(-jnp.expm1(-self.integral_beta(t)))

  def drift_coeff(self, t: Array) -> Array:
    """f(t) = -beta(t) / 2."""
    return -0.5 * self.beta(t)

  def diffusion(self, t: Array) -> Array:
    """g(t) = sqrt(beta(t))."""
    return jnp.sqrt(self.beta(t))

  def timestep(self, t: Array) -> Array:
    """The DDPM index N t - 1 a network trained on integer steps expects (continuous in t)."""
    return jnp.asarray(t, jnp.float32) * self.num_train_timesteps - 1.0

  def time(self, timestep: Array) -> Array:
    """Inverse of `timestep`: t = (n + 1) / N."""
    return (jnp.asarray(timestep, jnp.float32) + 1.0) / self.num_train_timesteps


SDE = Union[VPSDE, SubVPSDE, VESDE, DiscreteVPSDE]

_REGISTRY: dict[str, Any] = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE,
                             "discrete_vp": DiscreteVPSDE}


def get_sde(name: str, **kw: float) -> SDE:
  """Build an SDE by name: 'vpsde', 'subvpsde', 'vesde' or 'discrete_vp'; `kw` are its fields.

  Raises ConfigError for an unknown name or an unknown/invalid parameter.
  """
  if name not in _REGISTRY:
    raise ConfigError("sde.name", name, f"one of {sorted(_REGISTRY)}")
  cls = _REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  for k in kw:
    if k not in fields:
      raise ConfigError(f"sde.{k}", kw[k], f"a parameter of {name}: one of {sorted(fields)}")
  return cls(**kw)
