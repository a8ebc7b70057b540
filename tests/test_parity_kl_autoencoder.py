"""Opt-in PyTorch parity of the KL autoencoder with diffusers' `AutoencoderKL` (run with `-m torch`
in a venv with torch and diffusers).

diffusers models with small random configs (GroupNorm affine parameters perturbed) are the
reference. Their `state_dict()` goes through `import_kl_autoencoder` (diffusers layout, and the
older query/key/value/proj_attn attention names); the posterior mean and log-variance of
`encode`, `decode` and the scaled `encode_latents` / `decode_latents` must match to rtol = atol =
1e-4 in float32. The CompVis layout is checked against diffusers' own single-file converter
(`convert_ldm_vae_checkpoint`): our weights exported under CompVis names inside a
`first_stage_model.` checkpoint, converted by diffusers and loaded strictly into a fresh
`AutoencoderKL`, must reproduce the reference model, and our import of that checkpoint its outputs.
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402

from jaxgen.io.kl_autoencoder_import import import_kl_autoencoder  # noqa: E402
from jaxgen.io.vqgan_import import torch_module_name  # noqa: E402
from jaxgen.nets.kl_autoencoder import (KLAutoencoder, KLAutoencoderConfig,  # noqa: E402
                                        decode_latents, encode_latents)

pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-4, atol=1e-4)

# name -> (diffusers AutoencoderKL kwargs, our config, input N, H, W)
CONFIGS = {
    "two_levels": (
        dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
             latent_channels=4),
        KLAutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4,
                            resolution=32, num_groups=8),
        (2, 16, 16)),
    # SD's GroupNorm(32), two blocks per level like SD, three levels (f = 4), non-square input.
    "three_levels": (
        dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=32,
             latent_channels=4),
        KLAutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=4,
                            embed_dim=4, resolution=32, num_groups=32),
        (2, 24, 16)),
}


def _diffusers_kwargs(kwargs):
  levels = len(kwargs["block_out_channels"])
  return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
              up_block_types=("UpDecoderBlock2D",) * levels, scaling_factor=0.18215, **kwargs)


def _reference(kwargs, seed):
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**_diffusers_kwargs(kwargs)).eval()
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.GroupNorm):
        mod.weight.add_(0.2 * torch.randn_like(mod.weight))
        mod.bias.add_(0.2 * torch.randn_like(mod.bias))
  return model


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def _numpy_state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@functools.partial(jax.jit, static_argnums=2)
def _encode(variables, x, cfg):
  return KLAutoencoder(cfg).apply(variables, x, method="encode")


@functools.partial(jax.jit, static_argnums=2)
def _decode(variables, z, cfg):
  return KLAutoencoder(cfg).apply(variables, z, method="decode")


def _torch_outputs(model, x):
  with torch.no_grad():
    posterior = model.encode(x).latent_dist
    mean, logvar = posterior.mean, posterior.logvar
    recon = model.decode(mean).sample
  return _nhwc(mean), _nhwc(logvar), _nhwc(recon)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_diffusers_state_dict_matches_diffusers(name):
  kwargs, cfg, (n, h, w) = CONFIGS[name]
  model = _reference(kwargs, seed=len(name))
  x = torch.rand(n, 3, h, w) * 2 - 1
  mean_ref, logvar_ref, recon_ref = _torch_outputs(model, x)
  sd = _numpy_state_dict(model)
  variables = import_kl_autoencoder(sd, cfg)
  xj = jnp.asarray(_nhwc(x))
  mean, logvar = (np.asarray(a) for a in _encode(variables, xj, cfg))
  f = cfg.downsample_factor
  assert mean.shape == logvar.shape == (n, h // f, w // f, 4)
  np.testing.assert_allclose(mean, mean_ref, **TOL)
  np.testing.assert_allclose(logvar, logvar_ref, **TOL)
  recon = np.asarray(_decode(variables, jnp.asarray(mean_ref), cfg))
  np.testing.assert_allclose(recon, recon_ref, **TOL)
  # The scaled latents of the diffusion model: diffusers' convention is mean * scaling_factor.
  s = model.config.scaling_factor
  assert s == cfg.scaling_factor
  np.testing.assert_allclose(encode_latents(variables, xj, cfg), s * mean_ref, **TOL)
  np.testing.assert_allclose(decode_latents(variables, jnp.asarray(s * mean_ref), cfg), recon_ref,
                             **TOL)
  errs = [np.abs(a - b).max() for a, b in ((mean, mean_ref), (logvar, logvar_ref),
                                           (recon, recon_ref))]
  print(f"{name}: max |dmean| = {errs[0]:.2e}, max |dlogvar| = {errs[1]:.2e}, "
        f"max |dx| = {errs[2]:.2e}")
  # Older diffusers checkpoints name the attention projections query/key/value/proj_attn.
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  legacy = {}
  for k, v in sd.items():
    for new_name, old_name in old.items():
      k = k.replace(f".{new_name}.", f".{old_name}.")
    legacy[k] = v
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
  jax.tree_util.tree_map(np.testing.assert_array_equal, import_kl_autoencoder(legacy, cfg),
                         variables)


def _compvis_state_dict(variables):
  """Our params under CompVis names (OIHW convs, attention as 1x1 convs)."""
  out = {}
  for path, leaf in traverse_util.flatten_dict(variables["params"]).items():
    leaf_name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
    arr = np.asarray(leaf)
    out[f"{torch_module_name(path[:-1])}.{leaf_name}"] = (
        arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr)
  return out


def test_compvis_checkpoint_matches_diffusers_converter():
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

  kwargs, cfg, (n, h, w) = CONFIGS["three_levels"]
  reference = _reference(kwargs, seed=11)
  variables = import_kl_autoencoder(_numpy_state_dict(reference), cfg)
  # A single-file SD checkpoint: the autoencoder under first_stage_model., next to the UNet.
  ckpt = {f"first_stage_model.{k}": v for k, v in _compvis_state_dict(variables).items()}
  ckpt["model.diffusion_model.conv_in.weight"] = np.zeros((320, 4, 3, 3), np.float32)
  assert "first_stage_model.encoder.mid.attn_1.q.weight" in ckpt
  assert ckpt["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
  converted = convert_ldm_vae_checkpoint(ckpt, _diffusers_kwargs(kwargs))
  fresh = diffusers.AutoencoderKL(**_diffusers_kwargs(kwargs)).eval()
  fresh.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in converted.items()}, strict=True)
  ref_sd = reference.state_dict()
  for k, v in fresh.state_dict().items():
    torch.testing.assert_close(v, ref_sd[k], rtol=0, atol=0, msg=k)
  imported = import_kl_autoencoder(ckpt, cfg)
  x = torch.rand(n, 3, h, w) * 2 - 1
  mean_ref, logvar_ref, recon_ref = _torch_outputs(fresh, x)
  mean, logvar = (np.asarray(a) for a in _encode(imported, jnp.asarray(_nhwc(x)), cfg))
  np.testing.assert_allclose(mean, mean_ref, **TOL)
  np.testing.assert_allclose(logvar, logvar_ref, **TOL)
  np.testing.assert_allclose(_decode(imported, jnp.asarray(mean_ref), cfg), recon_ref, **TOL)
