"""MVLD's quality-per-NFE study: NFE formulas against counted network calls, step choice, verdicts."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jaxgen import sde as sde_lib
from jaxgen.mvld import sampler_study as ss


def _base():
  return ml_collections.ConfigDict({
      "name": "euler_maruyama", "num_steps": 200, "t_eps": 1e-3, "denoise": True,
      "predictor": "reverse_diffusion", "snr": 0.16, "n_corrector_steps": 1, "ode_method": "heun",
      "jump_length": 10, "num_repeats": 3, "eta": 0.0, "time_spacing": "logsnr"})


def _counted_calls(cfg):
  """Run the sampler eagerly (lax.scan unrolled by disable_jit) and count score evaluations."""
  calls = []

  def score(x, t):
    calls.append(1)
    return -x

  sde = sde_lib.get_sde("vpsde")
  kwargs = {"t_eps": cfg.t_eps, "denoise": cfg.denoise}
  if cfg.name == "pc":
    kwargs.update(snr=cfg.snr, n_corrector_steps=cfg.n_corrector_steps)
  elif cfg.name == "ode":
    kwargs.update(method=cfg.ode_method)
  elif cfg.name == "repaint":
    kwargs.update(jump_length=cfg.jump_length, num_repeats=cfg.num_repeats, predictor=cfg.predictor)
  with jax.disable_jit():
    sde_lib.get_sampler(cfg.name)(jax.random.key(0), score, sde, (2, 3), cfg.num_steps,
                                  observed=jnp.zeros((2, 3)), mask=jnp.ones((2, 3)), **kwargs)
  return len(calls)


@pytest.mark.parametrize("name, nfe", [("euler_maruyama", 6), ("ddim", 5), ("dpmpp_2m", 7),
                                       ("dpmpp_2s", 9), ("ode", 9), ("pc", 7)])
def test_nfe_formula_counts_the_network_calls(name, nfe):
  cfg = ss.sampler_at_nfe(_base(), name, nfe)
  assert ss.network_evaluations(cfg) == _counted_calls(cfg) == nfe
  if name == "ddim":  # 'ddpm' is DDIM with eta 1; 'ddim' is eta 0 whatever the base says
    ddpm = ss.sampler_at_nfe(_base(), "ddpm", nfe)
    assert (ddpm.name, ddpm.eta, ss.network_evaluations(ddpm)) == ("ddim", 1.0, nfe)
    assert ss.sampler_at_nfe(ddpm, "ddim", nfe).eta == 0.0


def test_repaint_nfe_and_the_authors_schedule():
  cfg = _base()
  cfg.update(name="repaint", num_steps=12, jump_length=3, num_repeats=2)
  assert ss.network_evaluations(cfg) == _counted_calls(cfg) == 12 + 3 * 3 + 1  # 3 jump points
  assert ss.network_evaluations(ss.authors_repaint(_base())) == 2411  # 2,410 + the denoising step


def test_reach_verdict_uses_the_stated_tolerances():
  ref = {"nfe": 201, "psnr": 20.0, "ssim": 0.5, "lpips": 1.0, "fid": 40.0, "coherence": 0.4}
  close = {"nfe": 10, "psnr": 19.95, "ssim": 0.497, "lpips": 1.019, "fid": 41.9, "coherence": 0.392}
  off = {**close, "nfe": 20, "fid": 42.1}  # 5.25% worse FID
  study = {"euler_maruyama": {"200": ref}, "dpmpp_2m": {"10": close}, "ddim": {"20": off}}
  reaches = ss.reaches_reference(study, ("euler_maruyama", "200"), max_nfe=20)
  assert reaches == {"euler_maruyama": None, "dpmpp_2m": 10, "ddim": None}
  assert ss.no_worse(19.91, 20.0, "psnr") and not ss.no_worse(19.89, 20.0, "psnr")
  assert ss.no_worse(1.02, 1.0, "lpips") and not ss.no_worse(1.021, 1.0, "lpips")
