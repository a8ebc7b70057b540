"""Stable Diffusion's KL autoencoder in Flax and its two-layout importer (default group, no torch).

References: the parameter list of ldm's AutoencoderKL and of diffusers' AutoencoderKL enumerated
here side by side from the structure of their constructors (names, PyTorch shapes), for the
parameter counts and the import round trips (bit-exact); the KL term against the general closed
form for two multivariate Gaussians, KL = 0.5 (tr(S1^-1 S0) + (m1-m0)^T S1^-1 (m1-m0) - k
+ ln det S1 - ln det S0), evaluated in NumPy with full covariance matrices; the posterior sample
and the latent scaling against their definitions. PyTorch parity with diffusers is in
tests/test_parity_kl_autoencoder.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.kl_autoencoder_import import detect_layout, import_kl_autoencoder
from jaxgen.io.vqgan_import import torch_module_name
from jaxgen.nets.kl_autoencoder import (KLAutoencoder, KLAutoencoderConfig, decode_latents,
                                        encode_latents, kl_divergence)

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def ldm_parameters(cfg: KLAutoencoderConfig) -> list[tuple[str, tuple, str, tuple]]:
  """[(CompVis name, CompVis shape, diffusers name, diffusers shape)], walking ldm's and
  diffusers' Encoder/Decoder constructors in step (diffusers builds decoder blocks in run order,
  coarsest first; its attention projections are Linear)."""
  rows = []

  def conv(cv, df, cin, cout, k):
    rows.append((f"{cv}.weight", (cout, cin, k, k), f"{df}.weight", (cout, cin, k, k)))
    rows.append((f"{cv}.bias", (cout,), f"{df}.bias", (cout,)))

  def norm(cv, df, c):
    rows.append((f"{cv}.weight", (c,), f"{df}.weight", (c,)))
    rows.append((f"{cv}.bias", (c,), f"{df}.bias", (c,)))

  def res(cv, df, cin, cout):
    norm(f"{cv}.norm1", f"{df}.norm1", cin)
    conv(f"{cv}.conv1", f"{df}.conv1", cin, cout, 3)
    norm(f"{cv}.norm2", f"{df}.norm2", cout)
    conv(f"{cv}.conv2", f"{df}.conv2", cout, cout, 3)
    if cin != cout:
      conv(f"{cv}.nin_shortcut", f"{df}.conv_shortcut", cin, cout, 1)

  def attn(cv, df, c):
    norm(f"{cv}.norm", f"{df}.group_norm", c)
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
      rows.append((f"{cv}.{a}.weight", (c, c, 1, 1), f"{df}.{b}.weight", (c, c)))
      rows.append((f"{cv}.{a}.bias", (c,), f"{df}.{b}.bias", (c,)))

  def mid(part, c):
    res(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", c, c)
    attn(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", c)
    res(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", c, c)

  levels = len(cfg.ch_mult)
  conv("encoder.conv_in", "encoder.conv_in", cfg.in_channels, cfg.ch, 3)
  c, size = cfg.ch, cfg.resolution
  for lv in range(levels):
    for j in range(cfg.num_res_blocks):
      res(f"encoder.down.{lv}.block.{j}", f"encoder.down_blocks.{lv}.resnets.{j}", c,
          cfg.ch * cfg.ch_mult[lv])
      c = cfg.ch * cfg.ch_mult[lv]
      if size in cfg.attn_resolutions:
        attn(f"encoder.down.{lv}.attn.{j}", f"encoder.down_blocks.{lv}.attentions.{j}", c)
    if lv != levels - 1:
      conv(f"encoder.down.{lv}.downsample.conv", f"encoder.down_blocks.{lv}.downsamplers.0.conv",
           c, c, 3)
      size //= 2
  mid("encoder", c)
  norm("encoder.norm_out", "encoder.conv_norm_out", c)
  conv("encoder.conv_out", "encoder.conv_out", c, 2 * cfg.z_channels, 3)
  conv("quant_conv", "quant_conv", 2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
  conv("post_quant_conv", "post_quant_conv", cfg.embed_dim, cfg.z_channels, 1)
  c = cfg.ch * cfg.ch_mult[-1]
  conv("decoder.conv_in", "decoder.conv_in", cfg.z_channels, c, 3)
  mid("decoder", c)
  for k, lv in enumerate(reversed(range(levels))):
    for j in range(cfg.num_res_blocks + 1):
      res(f"decoder.up.{lv}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}", c,
          cfg.ch * cfg.ch_mult[lv])
      c = cfg.ch * cfg.ch_mult[lv]
      if size in cfg.attn_resolutions:
        attn(f"decoder.up.{lv}.attn.{j}", f"decoder.up_blocks.{k}.attentions.{j}", c)
    if lv != 0:
      conv(f"decoder.up.{lv}.upsample.conv", f"decoder.up_blocks.{k}.upsamplers.0.conv", c, c, 3)
      size *= 2
  norm("decoder.norm_out", "decoder.conv_norm_out", c)
  conv("decoder.conv_out", "decoder.conv_out", c, cfg.out_channels, 3)
  return rows


def export_state_dicts(params: dict, cfg: KLAutoencoderConfig) -> tuple[dict, dict]:
  """Our params as (CompVis-named, diffusers-named) PyTorch-layout state dicts."""
  table = {cv: (cv_shape, df, df_shape) for cv, cv_shape, df, df_shape in ldm_parameters(cfg)}
  compvis, diffusers = {}, {}
  for path, leaf in traverse_util.flatten_dict(params).items():
    name = f"{torch_module_name(path[:-1])}.{_LEAF[path[-1]]}"
    arr = np.asarray(leaf)
    arr = arr.transpose(3, 2, 0, 1) if arr.ndim == 4 else arr
    cv_shape, df, df_shape = table[name]
    assert arr.shape == cv_shape, name
    compvis[name], diffusers[df] = arr, arr.reshape(df_shape)
  assert sorted(compvis) == sorted(table)
  return compvis, diffusers


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


TINY = KLAutoencoderConfig.tiny()
# Numerics run at this smaller size (two levels, attention in level 1): XLA:CPU compiles of the
# four-level tiny model take several seconds each.
CFG = KLAutoencoderConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                          z_channels=4, embed_dim=4, resolution=8, num_groups=4)
N, SIDE = 2, 8


@functools.lru_cache(maxsize=None)
def param_shapes(cfg: KLAutoencoderConfig) -> dict:
  """{flat path: shape} of the variables (traced once per config)."""
  shapes = jax.eval_shape(KLAutoencoder(cfg).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, cfg.resolution, cfg.resolution, 3), jnp.float32))
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}


def random_variables(cfg: KLAutoencoderConfig, seed: int) -> dict:
  """Random params of the model's shapes without a (slow to compile) init: fan-in scaled kernels,
  GroupNorm scales around 1 and non-zero biases."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, shape in param_shapes(cfg).items():
    noise = rng.normal(size=shape)
    if path[-1] == "kernel":
      noise /= np.sqrt(np.prod(shape[:-1]))
    elif path[-1] == "scale":
      noise = 1.0 + 0.2 * noise
    else:
      noise *= 0.2
    out[path] = noise.astype(np.float32)
  return traverse_util.unflatten_dict(out)


@pytest.fixture(scope="module")
def numerics():
  """Variables, images, and one jitted pass computing what the numeric tests look at (a single
  compile keeps the file fast)."""
  model = KLAutoencoder(CFG)
  variables = random_variables(CFG, seed=0)
  x = np.random.default_rng(1).uniform(-1.0, 1.0, size=(N, SIDE, SIDE, 3)).astype(np.float32)

  @jax.jit
  def run(variables, x, key):
    mean, logvar = model.apply(variables, x, method="encode")
    latents = encode_latents(variables, x, CFG)
    return dict(mean=mean, logvar=logvar, latents=latents,
                sampled=encode_latents(variables, x, CFG, key),
                decoded=decode_latents(variables, latents, CFG),
                direct=model.apply(variables, mean, method="decode"))

  return variables, x, run


def _init_shapes(cfg, x):
  """eval_shape of init_with_output with a posterior sample: ((recon, mean, logvar), variables)
  in one trace."""
  model = KLAutoencoder(cfg)
  rngs = {"params": jax.random.key(0), "sample": jax.random.key(1)}
  return jax.eval_shape(lambda a: model.init_with_output(rngs, a, True), x)


def test_tiny_shapes_and_parameter_count():
  cfg = TINY
  x = jax.ShapeDtypeStruct((N, 32, 32, 3), jnp.float32)
  (recon, mean, logvar), variables = _init_shapes(cfg, x)
  assert _count(variables) == sum(int(np.prod(r[1])) for r in ldm_parameters(cfg))
  f = cfg.downsample_factor
  assert f == 8 and cfg.latent_shape == (4, 4, 4)
  assert mean.shape == logvar.shape == (N, 4, 4, cfg.embed_dim) and recon.shape == x.shape
  # Inputs need not be square or of the nominal size.
  odd = jax.ShapeDtypeStruct((1, 24, 16, 3), jnp.float32)
  rngs = {"sample": jax.random.key(0)}
  recon, mean, _ = jax.eval_shape(
      lambda v, a: KLAutoencoder(cfg).apply(v, a, True, rngs=rngs), variables, odd)
  assert mean.shape == (1, 3, 2, 4) and recon.shape == odd.shape


def test_sd15_parameter_count_and_shapes():
  cfg = KLAutoencoderConfig.sd15()
  x = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32)
  (recon, mean, logvar), variables = _init_shapes(cfg, x)
  rows = ldm_parameters(cfg)
  assert _count(variables) == sum(int(np.prod(r[1])) for r in rows) == 83_653_863
  assert sum(int(np.prod(r[3])) for r in rows) == 83_653_863  # diffusers' count is the same
  assert mean.shape == logvar.shape == (1, 64, 64, 4) and cfg.latent_shape == (64, 64, 4)
  assert recon.shape == (1, 512, 512, 3)
  assert cfg.scaling_factor == 0.18215 and cfg.downsample_factor == 8


def test_scaling_factor_and_posterior_sample(numerics):
  variables, x, run = numerics
  key = jax.random.key(3)
  out = {k: np.asarray(v) for k, v in run(variables, x, key).items()}
  assert out["mean"].shape == (N, SIDE // 2, SIDE // 2, CFG.embed_dim)
  assert out["decoded"].shape == x.shape
  assert all(np.all(np.isfinite(v)) for v in out.values())
  s = CFG.scaling_factor
  np.testing.assert_allclose(out["latents"], s * out["mean"], rtol=1e-6, atol=1e-7)
  # decode_latents divides the scale back out: it decodes exactly the unscaled mean.
  np.testing.assert_allclose(out["decoded"], out["direct"], rtol=1e-5, atol=1e-5)
  # z = mean + exp(logvar / 2) * eps with eps the standard normal drawn from the key.
  eps = np.asarray(jax.random.normal(key, out["mean"].shape))
  ref = s * (out["mean"] + np.exp(0.5 * out["logvar"]) * eps)
  np.testing.assert_allclose(out["sampled"], ref, rtol=1e-5, atol=1e-6)
  assert not np.allclose(out["sampled"], out["latents"], atol=1e-3)


def test_kl_matches_gaussian_closed_form():
  rng = np.random.default_rng(4)
  mean = rng.normal(size=(3, 2, 2, 3)).astype(np.float32)
  logvar = rng.uniform(-2.0, 1.5, size=mean.shape).astype(np.float32)
  kl = np.asarray(jax.jit(kl_divergence)(mean, logvar))
  assert kl.shape == (3,)
  for i in range(3):
    m0 = mean[i].ravel().astype(np.float64)
    s0 = np.diag(np.exp(logvar[i].ravel().astype(np.float64)))
    k = m0.size
    s1_inv = np.eye(k)  # target N(0, I)
    ref = 0.5 * (np.trace(s1_inv @ s0) + m0 @ s1_inv @ m0 - k + 0.0 - np.linalg.slogdet(s0)[1])
    np.testing.assert_allclose(kl[i], ref, rtol=1e-5)
  zero = jax.jit(kl_divergence)(np.zeros((2, 2, 2, 1)), np.zeros((2, 2, 2, 1)))
  np.testing.assert_array_equal(zero, np.zeros(2))


def test_logvar_is_clipped(numerics):
  variables, x, run = numerics
  e = CFG.embed_dim
  bias = np.array([0.5, -1.0, 2.0, 3.0, 25.0, -40.0, 5.0, -29.0], np.float32)
  qc = {"kernel": np.zeros((1, 1, 2 * CFG.z_channels, 2 * e), np.float32), "bias": bias}
  patched = {"params": {**variables["params"], "quant_conv": qc}}
  out = run(patched, x, jax.random.key(5))
  mean, logvar = np.asarray(out["mean"]), np.asarray(out["logvar"])
  np.testing.assert_array_equal(mean, np.broadcast_to(bias[:e], mean.shape))
  np.testing.assert_array_equal(logvar, np.broadcast_to([20.0, -30.0, 5.0, -29.0], logvar.shape))


def _assert_same_params(imported, variables):
  a = traverse_util.flatten_dict(imported["params"])
  b = traverse_util.flatten_dict(variables["params"])
  assert sorted(a) == sorted(b)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def _layouts(compvis, diffusers):
  """The state dicts the importer must accept for the same weights."""
  # A training checkpoint's loss weights are ignored.
  compvis_ckpt = {**compvis, "loss.logvar": np.zeros((), np.float32)}
  legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  legacy = {}
  for k, v in diffusers.items():
    for new, old in legacy_names.items():
      k = k.replace(f".{new}.", f".{old}.")
    legacy[k] = v
  # The autoencoder inside a single-file SD checkpoint, next to the UNet.
  single_file = {f"first_stage_model.{k}": v for k, v in compvis.items()}
  single_file["model.diffusion_model.conv_in.weight"] = np.zeros((320, 4, 3, 3), np.float32)
  return {"compvis": compvis_ckpt, "diffusers": diffusers, "diffusers_legacy": legacy,
          "single_file": single_file}


def test_import_round_trip_tiny_both_layouts():
  variables = random_variables(TINY, seed=1)
  compvis, diffusers = export_state_dicts(variables["params"], TINY)
  assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in diffusers  # coarsest level first
  assert "decoder.up_blocks.0.attentions.1.to_q.weight" in diffusers  # attention at 4x4
  assert diffusers["encoder.mid_block.attentions.0.to_q.weight"].shape == (32, 32)
  assert detect_layout(compvis) == "compvis" and detect_layout(diffusers) == "diffusers"
  for name, sd in _layouts(compvis, diffusers).items():
    _assert_same_params(import_kl_autoencoder(sd, TINY), variables)


def test_import_round_trip_gives_identical_outputs(numerics):
  variables, x, run = numerics
  key = jax.random.key(6)
  ref = run(variables, x, key)
  for name, sd in _layouts(*export_state_dicts(variables["params"], CFG)).items():
    out = run(import_kl_autoencoder(sd, CFG), x, key)
    for part in ("mean", "logvar", "sampled", "decoded"):
      np.testing.assert_array_equal(out[part], ref[part], err_msg=f"{name}: {part}")


def test_import_errors_name_key_and_expected_shape():
  variables = random_variables(TINY, seed=2)
  compvis, diffusers = export_state_dicts(variables["params"], TINY)
  missing = {k: v for k, v in diffusers.items() if k != "decoder.up_blocks.1.resnets.0.conv2.bias"}
  with pytest.raises(DataError, match=r"vae.bin: missing keys decoder.up_blocks.1.resnets.0.conv2"
                     r".bias \(expected shape \(16,\)\) for a diffusers-layout"):
    import_kl_autoencoder(missing, TINY, source="vae.bin")
  extra = {**compvis, "encoder.down.0.block.0.temb_proj.weight": np.zeros((8, 16), np.float32)}
  with pytest.raises(DataError, match="unexpected keys encoder.down.0.block.0.temb_proj.weight"):
    import_kl_autoencoder(extra, TINY)
  bad = {**diffusers, "encoder.mid_block.attentions.0.to_k.weight": np.zeros((32, 32, 1, 1))}
  with pytest.raises(DataError, match=r"encoder.mid_block.attentions.0.to_k.weight has shape "
                     r"\(32, 32, 1, 1\), expected \(32, 32\)"):
    import_kl_autoencoder(bad, TINY)
  bad = {**compvis, "quant_conv.weight": np.zeros((4, 8, 1, 1), np.float32)}
  with pytest.raises(DataError, match=r"quant_conv.weight has shape \(4, 8, 1, 1\), expected "
                     r"\(8, 8, 1, 1\)"):
    import_kl_autoencoder(bad, TINY)
  wrong = KLAutoencoderConfig(**{**TINY.__dict__, "num_res_blocks": 2})
  with pytest.raises(DataError, match=r"missing keys encoder.down.0.block.1.conv1.bias "
                     r"\(expected shape \(8,\)\)"):
    import_kl_autoencoder(compvis, wrong)
  with pytest.raises(DataError, match="KL autoencoder state dict mixes diffusers names"):
    import_kl_autoencoder({**compvis, **diffusers}, TINY)
  with pytest.raises(DataError, match="missing keys cond_stage_model.encoder.conv_in.bias"):
    import_kl_autoencoder({f"first_stage_model.{k}": v for k, v in compvis.items()}, TINY,
                          prefix="cond_stage_model.")


@pytest.mark.parametrize("field, value", [
    ("ch_mult", ()), ("ch_mult", (1, 0)), ("num_res_blocks", 0), ("z_channels", 0),
    ("ch", 30), ("scaling_factor", 0.0), ("scaling_factor", float("nan")), ("resolution", 36),
    ("attn_resolutions", (4, -1)), ("embed_dim", 2.0)])
def test_config_validation(field, value):
  with pytest.raises(ConfigError, match=f"config.kl_autoencoder.{field}="):
    KLAutoencoderConfig(**{**TINY.__dict__, field: value})


def test_config_lists_become_tuples():
  cfg = KLAutoencoderConfig(ch_mult=[1, 2], attn_resolutions=[8])
  assert cfg.ch_mult == (1, 2) and cfg.attn_resolutions == (8,) and hash(cfg)
