"""RePaint-style resampling for conditional generation (Lugmayr et al. 2022, "RePaint", Alg. 1 and
the jump schedule of Sec. 4.2), on the time grid of the continuous-time SDE samplers.

The schedule walks the noise-level index k in {0, ..., N} (time t_eps + k (T - t_eps) / N) from
N down to 0; at the jump points k = j + 1, j in range(0, N - L, L) (L = `jump_length`), it goes
back up L levels and down again, `num_repeats - 1` times. This is RePaint's `get_schedule_jump`
shifted by one level, exactly as the MLD authors use it (`repaint_times_schedule` in their
src/components/sde.py): with N = 250, L = 10 and 10 repeats it has 24 jump points and 2,410
downward steps, i.e. 2,410 network evaluations. Going down is a reverse-SDE step;
going up re-noises the *missing* coordinates with the exact forward transition q(x_t | x_s) of the
SDE, so they are harmonised with the clamped observed coordinates repeatedly.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError
from jaxgen.sde.samplers import (PREDICTORS, ScoreFn, clamp, euler_maruyama_step, prepare,
                                 reverse_diffusion_step, tweedie_denoise)
from jaxgen.sde.sdes import SDE, bcast


def repaint_schedule(num_steps: int, jump_length: int = 10, num_repeats: int = 10) -> np.ndarray:
  """Noise-level indices visited by RePaint, from `num_steps` down to 0 (Lugmayr et al. 2022).

  Consecutive entries differ by +-1. The jump points are the levels j + 1 for j in
  range(0, num_steps - jump_length, jump_length) (RePaint's indices, which count from -1, plus
  one); with J of them the array has num_steps + 2 jump_length (num_repeats - 1) J + 1 entries,
  of which num_steps + jump_length (num_repeats - 1) J go down (one network evaluation each).
  `num_repeats = 1` gives the plain descending sequence.
  """
  for name, value in (("sampler.num_steps", num_steps), ("sampler.jump_length", jump_length),
                      ("sampler.num_repeats", num_repeats)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(name, value, "an integer >= 1")
  if jump_length > num_steps:
    raise ConfigError("sampler.jump_length", jump_length, f"an integer <= num_steps={num_steps}")
  remaining = {j + 1: num_repeats - 1 for j in range(0, num_steps - jump_length, jump_length)}
  k = num_steps
  seq = [k]
  while k > 0:
    k -= 1
    seq.append(k)
    if remaining.get(k, 0) > 0:
      remaining[k] -= 1
      seq.extend(range(k + 1, k + jump_length + 1))
      k += jump_length
  return np.asarray(seq, dtype=np.int32)


def sample_repaint(key: jax.Array, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...],
                   num_steps: int, *, observed: Optional[jax.Array] = None,
                   mask: Optional[jax.Array] = None, jump_length: int = 10, num_repeats: int = 10,
                   predictor: str = "reverse_diffusion", t_eps: float = 1e-3,
                   denoise: bool = True) -> jax.Array:
  """Conditional sampling along `repaint_schedule` in one `lax.scan`.

  For each consecutive pair (k, k') of the schedule: if k' < k, one reverse step (`predictor`:
  'reverse_diffusion' or 'euler_maruyama') from t_k to t_k'; if k' > k, the forward re-noising
  x_{t_k'} = r x_{t_k} + sqrt(v) z of the exact SDE transition (`sde.transition`). Coordinates with
  mask == 0 stay clamped at `observed` (paper 000 eq. 5) throughout, so only missing ones are
  re-noised; `score_fn` is the conditional score that sees the clean observed values.
  """
  if predictor not in PREDICTORS:
    raise ConfigError("sampler.predictor", predictor, f"one of {PREDICTORS}")
  sched = repaint_schedule(num_steps, jump_length, num_repeats)
  x, observed, mask, key_steps = prepare(key, sde, shape, num_steps, t_eps, observed, mask)
  levels = jnp.asarray(sched)
  times = t_eps + levels.astype(x.dtype) * ((sde.T - t_eps) / num_steps)
  pred = reverse_diffusion_step if predictor == "reverse_diffusion" else euler_maruyama_step

  def body(x, inp):
    i, k_from, k_to, t_from, t_to = inp
    key_i = jax.random.fold_in(key_steps, i)

    def down(x):
      return pred(key_i, score_fn, sde, x, t_from, t_to)

    def up(x):
      b = x.shape[0]
      mean, std = sde.transition(x, jnp.full((b,), t_from, x.dtype), jnp.full((b,), t_to, x.dtype))
      return mean + bcast(std, x) * jax.random.normal(key_i, x.shape, x.dtype)

    x = jax.lax.cond(k_to < k_from, down, up, x)
    return clamp(x, observed, mask), None

  n = len(sched) - 1
  x, _ = jax.lax.scan(body, x, (jnp.arange(n), levels[:-1], levels[1:], times[:-1], times[1:]))
  if denoise:
    x = clamp(tweedie_denoise(score_fn, sde, x, times[-1]), observed, mask)
  return x
