"""Opt-in PyTorch parity of the SD 1.x conditional U-Net (run with `-m torch` in .venv-torch).

The reference is diffusers' `UNet2DConditionModel` with small random configs (GroupNorm and
LayerNorm affine parameters perturbed so a swapped scale/bias shows); its `state_dict()` is
imported with `import_cond_unet` and its config read with `config_from_diffusers`. Noise
predictions must match to rtol = atol = 1e-4 in float32 for several timesteps, including an
input whose size is not a multiple of the downsampling factor (diffusers then resizes to the skip
sizes). The CompVis key translation is checked against diffusers' own single-file converter
(`convert_ldm_unet_checkpoint`): our CompVis names, converted back by diffusers, must give the
original state dict.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxgen.io.cond_unet_import import (  # noqa: E402
    LDM_PREFIX, compvis_name, config_from_diffusers, import_cond_unet)
from jaxgen.nets.cond_unet import CondUNet  # noqa: E402

pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-4, atol=1e-4)

CONFIGS = {
    # The tiny layout: cross-attention on the first level and in the middle; 8 heads of size 4
    # (diffusers' SD 1.x config calls the head count `attention_head_dim`).
    "small": dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # Three levels, 32 groups, per-level heads, two transformer layers, linear projections (SD 2
    # style), a channel change inside the down path and text width unlike the channels.
    "deeper": dict(sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=2,
                   cross_attention_dim=24, attention_head_dim=(2, 4, 4), norm_num_groups=32,
                   transformer_layers_per_block=2, use_linear_projection=True,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
}
SIZES = {"small": [(16, 16), (11, 10)], "deeper": [(16, 12), (12, 10)]}


def perturb_norms(model):
  """Moves every GroupNorm / LayerNorm affine parameter off its (1, 0) start, so a swapped scale
  and bias cannot go unnoticed; returns the model."""
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        mod.weight.add_(0.3 * torch.randn_like(mod.weight))
        mod.bias.add_(0.3 * torch.randn_like(mod.bias))
  return model


def _model(kwargs, seed):
  torch.manual_seed(seed)
  return perturb_norms(diffusers.UNet2DConditionModel(**kwargs).eval())


def _state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _run(model, cfg, variables, hw, timesteps, text_len=7, **module_kwargs):
  gen = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
  x = torch.randn(len(timesteps), cfg.in_channels, *hw, generator=gen)
  ctx = torch.randn(len(timesteps), text_len, cfg.cross_attention_dim, generator=gen)
  t = torch.tensor(timesteps)
  with torch.no_grad():
    ref = model(x, t, ctx).sample.numpy().transpose(0, 2, 3, 1)
  nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  out = CondUNet(cfg, **module_kwargs).apply(variables, nhwc, jnp.asarray(t.numpy()),
                                             jnp.asarray(ctx.numpy()))
  return np.asarray(out), ref


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_noise_prediction_matches_diffusers(name):
  model = _model(CONFIGS[name], seed=len(name))
  cfg = config_from_diffusers(dict(model.config))
  assert cfg.block_out_channels == CONFIGS[name]["block_out_channels"]
  variables = import_cond_unet(_state_dict(model), cfg, source=name)
  for hw in SIZES[name]:
    for timesteps in ([0, 999], [1, 500], [37.5, 250.0]):  # int (DDPM index) and float
      out, ref = _run(model, cfg, variables, hw, timesteps)
      assert out.shape == ref.shape == (2, *hw, cfg.out_channels)
      print(f"{name} {hw} t={timesteps}: max |d| = {np.abs(out - ref).max():.2e}, "
            f"max |ref| = {np.abs(ref).max():.2f}")
      np.testing.assert_allclose(out, ref, **TOL)


def test_fused_attention_and_bfloat16_compute():
  model = _model(CONFIGS["small"], seed=3)
  cfg = config_from_diffusers(dict(model.config))
  variables = import_cond_unet(_state_dict(model), cfg)
  out, ref = _run(model, cfg, variables, (16, 16), [5, 700],
                  attention_impl="dot_product_attention")
  np.testing.assert_allclose(out, ref, **TOL)
  out, ref = _run(model, cfg, variables, (16, 16), [5, 700], dtype=jnp.bfloat16)
  assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32  # parameters stay float32
  rel = np.abs(out - ref).max() / np.abs(ref).max()
  print(f"bfloat16 compute: max |d| / max |ref| = {rel:.2e}")
  assert rel < 0.05  # bfloat16 keeps 8 bits of mantissa; a wrong path would be O(1) off


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compvis_names_match_diffusers_converter(name):
  from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

  model = _model(CONFIGS[name], seed=11)
  cfg = config_from_diffusers(dict(model.config))
  sd = _state_dict(model)
  ldm = {LDM_PREFIX + compvis_name(k, cfg): v for k, v in sd.items()}
  assert len(ldm) == len(sd)  # one-to-one
  back = convert_ldm_unet_checkpoint({**ldm, "first_stage_model.decoder.conv_in.weight": 0},
                                     dict(model.config))
  assert sorted(back) == sorted(sd)
  for key, value in sd.items():
    assert back[key] is value, key
  # And the CompVis checkpoint imports to the same variables as the diffusers one.
  a = import_cond_unet(ldm, cfg)
  b = import_cond_unet(sd, cfg)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
