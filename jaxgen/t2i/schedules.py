"""Diffusers' inference timesteps as time grids of `DiscreteVPSDE`, and SDEdit's strength.

Stable Diffusion samplers run on a subset of the 1000 training steps chosen by a
"timestep spacing" (diffusers' `set_timesteps`); jaxgen's samplers take a continuous time grid.
Step n of the DDPM chain sits at t = (n + 1) / N on `DiscreteVPSDE`, where a(t)^2 = alpha_bar_n
exactly, so a scheduler's timesteps map onto a grid on which our DDIM / DPM-Solver++ updates are
diffusers' to float32 rounding (`tests/test_parity_t2i.py`):

* DDIM (`DDIMScheduler`, default spacing "leading"): timesteps n_0 > ... > n_{K-1}; the last
  step goes to alpha_bar_0 (SD's `set_alpha_to_one=False`), i.e. one more grid time t = 1/N;
  with `set_alpha_to_one=True` it goes to alpha = 1, which is the data prediction at n_{K-1}
  (`denoise=True` of our samplers).
* DPM-Solver++(2M) (`DPMSolverMultistepScheduler`, default spacing "linspace"): the final step
  goes to sigma = 0, again the data prediction at n_{K-1}; diffusers also makes the step before
  it first order when K < 15 (`lower_order_final`).

SDEdit / img2img with strength s in (0, 1] and K steps (diffusers' img2img pipelines): the
reference is noised to grid index k = K - int(K s) and denoised by the remaining int(K s) steps.
`start_index` computes k per example, so one compiled call serves a batch of mixed strengths.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.sde.sdes import DiscreteVPSDE

Array = jax.Array

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
SAMPLERS = ("ddim", "dpmpp_2m")
# diffusers' default spacing of each scheduler class
DEFAULT_SPACING = {"ddim": "leading", "dpmpp_2m": "linspace"}


def scheduler_timesteps(num_steps: int, *, spacing: str, steps_offset: int = 0,
                        num_train_timesteps: int = 1000, scheduler: str = "ddim") -> np.ndarray:
  """The decreasing int64 DDPM indices a diffusers scheduler visits with K = `num_steps` steps.

  Following diffusers' `set_timesteps`, which differ between the two schedulers:
  "trailing" (both): round(arange(N, 0, -N/K)) - 1. DDIM: "leading" (0, r, .., (K-1) r) +
  steps_offset with r = N // K; "linspace" round(linspace(0, N - 1, K)). DPM-Solver++: the same
  rules on K + 1 points with the smallest dropped ("leading" with r = N // (K + 1),
  "linspace" over [0, N - 1]). `steps_offset` (1 in SD 1.x's config) applies to "leading" only.
  """
  n = num_train_timesteps
  if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= n:
    raise ConfigError("sampler.num_steps", num_steps, f"an integer in [1, {n}]")
  if scheduler not in SAMPLERS:
    raise ConfigError("sampler.name", scheduler, f"one of {SAMPLERS}")
  extra = int(scheduler == "dpmpp_2m")  # DPM-Solver++ lays out K + 1 points and drops the last
  if spacing == "leading":
    ratio = n // (num_steps + extra)
    steps = (np.arange(num_steps + extra) * ratio).round()[::-1][:num_steps] + steps_offset
  elif spacing == "trailing":
    steps = np.round(np.arange(n, 0, -n / num_steps)) - 1
  elif spacing == "linspace":
    steps = np.linspace(0, n - 1, num_steps + extra).round()[::-1][:num_steps]
  else:
    raise ConfigError("sampler.timestep_spacing", spacing, f"one of {TIMESTEP_SPACINGS}")
  return steps.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """What a text-to-image sampling call does (static under jit).

  name: 'ddim' or 'dpmpp_2m'; num_steps: K (25 as in diffusers' SD pipelines); timestep_spacing:
  None = the scheduler's diffusers default (`DEFAULT_SPACING`); steps_offset: 1 as in SD 1.x;
  eta: DDIM's noise (0 = deterministic); set_alpha_to_one: DDIM's last step to alpha = 1 (False
  in SD 1.x: to alpha_bar_0).
  """

  name: str = "dpmpp_2m"
  num_steps: int = 25
  timestep_spacing: str | None = None
  steps_offset: int = 1
  eta: float = 0.0
  set_alpha_to_one: bool = False

  def __post_init__(self):
    if self.name not in SAMPLERS:
      raise ConfigError("sampler.name", self.name, f"one of {SAMPLERS}")
    if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
      raise ConfigError("sampler.timestep_spacing", self.timestep_spacing,
                        f"one of {TIMESTEP_SPACINGS} or None")
    if not isinstance(self.steps_offset, int) or self.steps_offset < 0:
      raise ConfigError("sampler.steps_offset", self.steps_offset, "an integer >= 0")
    if not isinstance(self.eta, (int, float)) or isinstance(self.eta, bool) or not self.eta >= 0:
      raise ConfigError("sampler.eta", self.eta, "a number >= 0")
    if self.eta and self.name != "ddim":
      raise ConfigError("sampler.eta", self.eta, "0 for dpmpp_2m (eta is DDIM's)")

  @property
  def spacing(self) -> str:
    return self.timestep_spacing or DEFAULT_SPACING[self.name]


@dataclasses.dataclass(frozen=True)
class SamplerGrid:
  """Host-side result of `sampler_grid`: the continuous grid and how to finish on it."""

  timesteps: np.ndarray  # [K] DDPM indices, decreasing
  times: np.ndarray      # [K] or [K + 1] float32 grid of DiscreteVPSDE
  denoise: bool          # finish with the data prediction at times[-1]
  lower_order_final: bool


def sampler_grid(spec: SamplerSpec, sde: DiscreteVPSDE) -> SamplerGrid:
  """The time grid on which our DDIM / DPM-Solver++ reproduce diffusers' scheduler steps."""
  n = sde.num_train_timesteps
  steps = scheduler_timesteps(spec.num_steps, spacing=spec.spacing, steps_offset=spec.steps_offset,
                              num_train_timesteps=n, scheduler=spec.name)
  if steps.max() >= n or steps.min() < 0:
    raise ConfigError("sampler.steps_offset", spec.steps_offset,
                      f"an offset keeping the timesteps {steps.tolist()} inside [0, {n})")
  times = (steps.astype(np.float64) + 1.0) / n
  if spec.name == "ddim":
    if spec.set_alpha_to_one:
      return SamplerGrid(steps, times.astype(np.float32), True, True)
    if steps[-1] > 0:  # one more step, to alpha_bar_0 at t = 1/N
      times = np.append(times, 1.0 / n)
    return SamplerGrid(steps, times.astype(np.float32), False, True)
  return SamplerGrid(steps, times.astype(np.float32), True, spec.num_steps < 15)


def start_index(strength: Array, num_steps: int) -> Array:
  """Per-example first grid index k = K - int(K s) of SDEdit (diffusers' img2img), clipped to
  [0, K - 1] so every example takes at least one step (diffusers refuses int(K s) = 0)."""
  s = jnp.asarray(strength, jnp.float32)
  denoise_steps = jnp.floor(num_steps * s).astype(jnp.int32)
  return jnp.clip(num_steps - denoise_steps, 0, num_steps - 1)
