"""The DDPM-discretised VP SDE (Stable Diffusion's schedule) against the DDPM formulas.

References: Ho et al. 2020 (alpha_bar_n = prod (1 - beta_i)) and SD 1.x's scaled-linear betas
(linspace of square roots, squared), written out here in NumPy float64; tolerance 1e-5 relative
(float32 evaluation). The diffusers scheduler itself is compared in the torch group.
"""

import numpy as np
import pytest
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.sde import get_sde
from jaxgen.sde.sdes import DiscreteVPSDE


def _ddpm_alpha_bar(beta_start=0.00085, beta_end=0.012, n=1000):
  betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), n) ** 2
  return np.cumprod(1.0 - betas)


def test_marginals_equal_ddpm_at_every_step():
  sde = get_sde("discrete_vp")
  ab = _ddpm_alpha_bar()
  steps = np.array([0, 1, 10, 250, 500, 998, 999])
  t = sde.time(jnp.asarray(steps, jnp.float32))
  np.testing.assert_allclose(np.asarray(sde.mean_coeff(t)) ** 2, ab[steps], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(sde.marginal_std(t)) ** 2, 1 - ab[steps], rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(np.asarray(sde.timestep(t)), steps, atol=1e-3)
  assert float(sde.mean_coeff(jnp.zeros(()))) == 1.0


def test_beta_is_the_derivative_of_the_integral():
  sde = DiscreteVPSDE()
  t = jnp.linspace(0.01, 0.99, 57) + 0.25e-3  # away from the knots
  h = 1e-4
  numeric = (sde.integral_beta(t + h) - sde.integral_beta(t - h)) / (2 * h)
  np.testing.assert_allclose(np.asarray(sde.beta(t)), np.asarray(numeric), rtol=2e-2)
  # Exact transition between steps n-1 and n is DDPM's q(x_n | x_{n-1}) = N(sqrt(1-b_n) x, b_n).
  ab = _ddpm_alpha_bar()
  n = 400
  mean, std = sde.transition(jnp.ones((1,)), sde.time(jnp.asarray([n - 1.0])),
                             sde.time(jnp.asarray([n * 1.0])))
  beta_n = 1 - ab[n] / ab[n - 1]
  np.testing.assert_allclose(float(mean[0]), np.sqrt(1 - beta_n), rtol=1e-5)
  np.testing.assert_allclose(float(std[0]) ** 2, beta_n, rtol=2e-3)


def test_linear_schedule_and_bad_values():
  sde = DiscreteVPSDE(beta_start=1e-4, beta_end=0.02, schedule="linear")
  ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  np.testing.assert_allclose(np.asarray(sde.mean_coeff(sde.time(jnp.asarray([999.0])))) ** 2,
                             ab[-1:], rtol=1e-4)
  for kw in ({"schedule": "cosine"}, {"beta_end": 1e-4}, {"num_train_timesteps": 1},
             {"beta_end": 1.5}, {"T": 2.0}):
    with pytest.raises(ConfigError):
      DiscreteVPSDE(**kw)


@pytest.mark.torch
def test_alphas_cumprod_equal_diffusers():
  diffusers = pytest.importorskip("diffusers")
  sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", num_train_timesteps=1000)
  np.testing.assert_allclose(DiscreteVPSDE().alphas_cumprod(), sched.alphas_cumprod.numpy(),
                             rtol=1e-6)
