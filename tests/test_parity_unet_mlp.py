"""Opt-in PyTorch parity of UnetMLP (run with -m torch).

Random non-zero flax params (the zero-initialised output layer included) are carried into the
compact PyTorch transcription `benchmarks.torch_unet_mlp` (Dense kernels transposed, GroupNorm
scale/bias -> weight/bias); float32 outputs agree to 1e-5 max abs.
"""

import math

import jax
import numpy as np
import pytest

from jaxgen.nets.unet_mlp import UnetMLP

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from benchmarks import torch_unet_mlp as tu  # noqa: E402  (needs torch)

CASES = {
    "small": dict(views=4, latent=8, init_dim=64, dim_mults=(1, 1), time_dim=32, groups=32),
    "small_widening_film": dict(views=4, latent=8, init_dim=64, dim_mults=(1, 2), time_dim=32,
                                groups=16, shift_scale=True),
    "medium": dict(views=4, latent=64, init_dim=256, dim_mults=(1, 1), time_dim=128, groups=32),
}


def _random_params(module, seed, x, tau):
  """Non-zero weights with PyTorch-like scale (1/sqrt(fan_in)) so activations stay O(1)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x, tau)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0.0, 1.0 / math.sqrt(leaf.shape[0]), leaf.shape).astype(np.float32)
    if name == "scale":
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("case", list(CASES))
def test_unet_mlp_matches_torch(case):
  cfg = dict(CASES[case])
  views, latent = cfg.pop("views"), cfg.pop("latent")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, views * latent)).astype(np.float32)
  tau = rng.uniform(size=(3, views)).astype(np.float32)
  tau[0, :2] = 0.0  # observed views enter at time 0

  flax_model = UnetMLP(**cfg)
  params = _random_params(flax_model, 0, x, tau)
  assert np.abs(np.asarray(params["params"]["out"]["kernel"])).max() > 0
  expected = np.asarray(flax_model.apply(params, x, tau))

  torch_model = tu.UnetMLP(dim=views * latent, num_views=views, **cfg).eval()
  n_torch = sum(p.numel() for p in torch_model.parameters())
  assert n_torch == sum(v.size for v in jax.tree_util.tree_leaves(params))
  tu.load_flax_params(torch_model, params)
  with torch.no_grad():
    actual = torch_model(torch.from_numpy(x), torch.from_numpy(tau)).numpy()

  assert actual.shape == expected.shape == x.shape
  assert np.abs(expected).max() > 0.1  # a non-trivial output
  err = float(np.abs(actual - expected).max())
  print(f"{case}: max |torch - flax| = {err:.2e} (max |out| = {np.abs(expected).max():.2f})")
  assert err <= 1e-5


def test_torch_paper_size_parameter_count():
  with torch.device("meta"):  # shapes only, no allocation
    model = tu.UnetMLP()
  assert sum(p.numel() for p in model.parameters()) == 70_357_760
