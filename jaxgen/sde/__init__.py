"""jaxgen.sde: forward SDEs, denoising score matching and reverse-time samplers (pure functions).

Masks follow paper 000 eqs. 4-6: mask == 1 marks a diffused (missing) coordinate, mask == 0 one
frozen at its time-0 value. See docs/sde.md.
"""

from typing import Callable

from jaxgen.errors import ConfigError
from jaxgen.sde.fast_samplers import (batched_guided_score_fn, guided_score_fn, sample_ddim,
                                      sample_dpmpp_2m, sample_dpmpp_2s)
from jaxgen.sde.losses import dsm_loss, sample_importance_t
from jaxgen.sde.repaint import repaint_schedule, sample_repaint
from jaxgen.sde.samplers import (clamp, eps_to_score_fn, euler_maruyama_step, langevin_step,
                                 ode_euler_step, ode_heun_step, reverse_diffusion_step,
                                 sample_euler_maruyama, sample_ode, sample_pc, time_grid,
                                 tweedie_denoise, v_to_score_fn)
from jaxgen.sde.sdes import SDE, VESDE, VPSDE, SubVPSDE, bcast, get_sde

_SAMPLERS: dict[str, Callable] = {
    "euler_maruyama": sample_euler_maruyama,
    "pc": sample_pc,
    "ode": sample_ode,
    "repaint": sample_repaint,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2s": sample_dpmpp_2s,
}


def get_sampler(name: str) -> Callable:
  """Sampler by config name: 'euler_maruyama', 'pc', 'ode', 'repaint', or the few-step
  'ddim', 'dpmpp_2m' and 'dpmpp_2s' (VP-type SDEs only; `fast_samplers.py`); ConfigError
  otherwise.

  All share the signature (key, score_fn, sde, shape, num_steps, *, observed, mask, t_eps,
  denoise, **sampler-specific keywords). Classifier-free guidance is a score_fn combinator
  (`guided_score_fn`, `batched_guided_score_fn`) that works with every sampler.
  """
  if name not in _SAMPLERS:
    raise ConfigError("sampler.name", name, f"one of {sorted(_SAMPLERS)}")
  return _SAMPLERS[name]


__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "bcast", "get_sde", "dsm_loss", "sample_importance_t",
    "sample_euler_maruyama", "sample_pc", "sample_ode", "sample_repaint", "repaint_schedule",
    "eps_to_score_fn", "v_to_score_fn", "clamp", "tweedie_denoise", "time_grid",
    "euler_maruyama_step",
    "reverse_diffusion_step", "langevin_step", "ode_euler_step", "ode_heun_step", "get_sampler",
    "sample_ddim", "sample_dpmpp_2m", "sample_dpmpp_2s", "guided_score_fn",
    "batched_guided_score_fn",
]
