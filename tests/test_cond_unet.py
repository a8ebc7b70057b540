"""The SD 1.x conditional U-Net (`jaxgen.nets.cond_unet`) and its weight import.

Structure checks at the tiny size (one shared init and one compiled forward), the SD 1.5
parameter count from `jax.eval_shape`, the timestep features against a NumPy transcription of
the formula, and the importer: a diffusers-named state dict written here from our parameters
imports back unchanged, and a CompVis state dict whose names are enumerated here from the LDM
`UNetModel` construction loops (independently of the importer's table) maps one-to-one.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.cond_unet_import import config_from_diffusers, import_cond_unet
from jaxgen.nets.cond_unet import (CondUNet, CondUNetConfig, Transformer2DModel,
                                   attention_projection_paths, init_params, param_shapes,
                                   timestep_embedding)

TINY = CondUNetConfig.tiny()
_LISTS = (r"(down_blocks|up_blocks|resnets|attentions|transformer_blocks|downsamplers|upsamplers|"
          r"to_out|net)")


def _random_params(shapes, seed=0, scale=0.3):
  # NumPy draws: XLA:CPU takes tens of seconds to compile `model.init`'s ~200 random kernels.
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def tiny():
  """(params, jitted forward) of the tiny U-Net."""
  model = CondUNet(TINY)
  fwd = jax.jit(lambda p, x, t, c: model.apply({"params": p}, x, t, c))
  return _random_params(param_shapes(TINY)), fwd


def _inputs(seed, batch=2, text_len=5):
  # NumPy draws: each shape of jax.random.normal is a separate (slow) XLA:CPU compile.
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, 16, 16, 4), np.float32)
  ctx = rng.standard_normal((batch, text_len, TINY.cross_attention_dim), np.float32)
  return x, np.array([10, 900]), ctx


def test_tiny_forward_shape_and_text_dependence(tiny):
  params, fwd = tiny
  x, t, ctx = _inputs(1)
  out = np.asarray(fwd(params, x, t, ctx))
  assert out.shape == (2, 16, 16, 4) and out.dtype == np.float32 and np.isfinite(out).all()
  # Cross-attention sees the text: another text changes the output...
  changed = ctx.copy()
  changed[0, 2] += 1.0
  other = np.asarray(fwd(params, x, t, changed))
  assert np.abs(other[0] - out[0]).max() > 1e-4
  np.testing.assert_allclose(other[1], out[1], rtol=1e-5, atol=1e-5)  # ...of that sample only
  # ...but not the order of its tokens (attention over keys is a set operation).
  perm = np.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(fwd(params, x, t, ctx[:, perm]), out, rtol=1e-4, atol=1e-5)
  # Another timestep gives another output.
  assert np.abs(np.asarray(fwd(params, x, t + 1, ctx)) - out).max() > 1e-5


def test_transformer2d_is_permutation_equivariant_over_positions():
  # GroupNorm statistics, 1x1 projections and attention without positions commute with any
  # permutation of the H*W tokens.
  block = Transformer2DModel(heads=2, groups=4)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 4, 4, 8), np.float32)
  ctx = rng.standard_normal((1, 3, 8), np.float32)
  variables = _random_params(jax.eval_shape(block.init, jax.random.key(2), x, ctx), seed=2)
  perm = rng.permutation(16)
  permute = lambda a: a.reshape(1, 16, 8)[:, perm].reshape(1, 4, 4, 8)
  apply = jax.jit(block.apply)
  np.testing.assert_allclose(apply(variables, permute(x), ctx), permute(apply(variables, x, ctx)),
                             rtol=1e-5, atol=1e-5)


def test_init_params_shapes_and_scales():
  cfg = CondUNetConfig(block_out_channels=(16,), layers_per_block=1, num_attention_heads=2,
                       down_block_types=("CrossAttnDownBlock2D",), norm_num_groups=8,
                       up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=8, sample_size=4)
  params = init_params(cfg, jax.random.key(0, impl="rbg"))  # rbg: faster to compile
  shapes = param_shapes(cfg)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes)
  kernel = np.asarray(params["up_blocks_0"]["resnets_0"]["conv1"]["kernel"])  # 3x3, 32 -> 16
  assert kernel.shape == (3, 3, 32, 16) and abs(kernel.std() * (9 * 32) ** 0.5 - 1) < 0.15
  np.testing.assert_array_equal(params["conv_norm_out"]["scale"], 1.0)
  np.testing.assert_array_equal(params["conv_out"]["bias"], 0.0)


def test_sd15_parameter_count_and_lora_targets():
  params = param_shapes(CondUNetConfig.sd15())
  assert sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)) == 859_520_964
  paths = attention_projection_paths(params)
  # 16 transformer blocks (6 down, 1 mid, 9 up) x 2 attentions x 4 projections.
  assert len(paths) == 128 and len(set(paths)) == 128
  assert ("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn1", "to_q") in paths
  assert ("mid_block", "attentions_0", "transformer_blocks_0", "attn2", "to_out_0") in paths
  flat = traverse_util.flatten_dict(params)
  assert flat[("down_blocks_0", "attentions_0", "transformer_blocks_0", "attn2", "to_k",
               "kernel")].shape == (768, 320)


@pytest.mark.parametrize("dim,flip,shift", [(320, True, 0.0), (7, True, 0.0), (6, False, 1.0)])
def test_timestep_embedding_matches_numpy_formula(dim, flip, shift):
  t = np.array([0, 1, 37.5, 999], np.float64)
  half = dim // 2
  freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - shift))
  sin, cos = np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)
  want = np.concatenate([cos, sin] if flip else [sin, cos], axis=1)
  want = np.pad(want, ((0, 0), (0, dim % 2)))
  got = timestep_embedding(jnp.asarray(t, jnp.float32), dim, flip_sin_to_cos=flip,
                           freq_shift=shift)
  np.testing.assert_allclose(got, want, atol=2e-4)  # float32 sin/cos of arguments up to 999
  ints = timestep_embedding(jnp.array([0, 1, 999]), dim, flip_sin_to_cos=flip, freq_shift=shift)
  np.testing.assert_array_equal(ints, np.asarray(got)[[0, 1, 3]])  # int indices = float ones


@pytest.mark.parametrize("changes,key", [
    (dict(block_out_channels=(32, 60)), "block_out_channels"),  # 60 not divisible by 8 groups
    (dict(num_attention_heads=3), "num_attention_heads"),  # 3 heads do not divide 32
    (dict(num_attention_heads=(4, 4, 4)), "num_attention_heads"),
    (dict(down_block_types=("CrossAttnDownBlock2D",)), "down_block_types"),
    (dict(up_block_types=("UpBlock2D", "AttnUpBlock2D")), "up_block_types"),
    (dict(layers_per_block=0), "layers_per_block"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(norm_num_groups=0), "norm_num_groups"),
])
def test_bad_configs_raise_config_error(changes, key):
  fields = {**TINY.__dict__, **changes}
  with pytest.raises(ConfigError, match=f"config.cond_unet.{key}="):
    CondUNetConfig(**fields)


def test_config_from_diffusers_reads_heads_and_rejects_unsupported():
  sd15 = {"block_out_channels": [320, 640, 1280, 1280], "attention_head_dim": 8,
          "cross_attention_dim": 768, "down_block_types": list(CondUNetConfig.down_block_types),
          "up_block_types": list(CondUNetConfig.up_block_types), "sample_size": 64,
          "num_attention_heads": None, "only_cross_attention": False, "center_input_sample": False}
  assert config_from_diffusers(sd15) == CondUNetConfig.sd15()
  with pytest.raises(ConfigError, match="class_embed_type"):
    config_from_diffusers({**sd15, "class_embed_type": "timestep"})
  with pytest.raises(ConfigError, match="only_cross_attention"):
    config_from_diffusers({**sd15, "only_cross_attention": (False, True, False, False)})


def _diffusers_state_dict(params):
  """Our params written as a diffusers state dict (PyTorch layouts and names)."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    name = re.sub(rf"(^|\.){_LISTS}_(\d+)(?=\.|$)", r"\1\2.\3", ".".join(path[:-1]))
    value = np.asarray(value)
    if path[-1] == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    out[f"{name}.{'bias' if path[-1] == 'bias' else 'weight'}"] = value
  return out


def test_diffusers_round_trip_and_errors(tiny):
  params, _ = tiny
  sd = _diffusers_state_dict(params)
  assert sd["conv_in.weight"].shape == (32, 4, 3, 3)
  assert "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.bias" in sd
  assert "time_embedding.linear_1.weight" in sd and "up_blocks.0.upsamplers.0.conv.weight" in sd
  back = import_cond_unet(sd, TINY)["params"]
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(a, b)
  # Half-precision files import as float32.
  half = import_cond_unet({k: v.astype(np.float16) for k, v in sd.items()}, TINY)["params"]
  assert half["conv_in"]["kernel"].dtype == jnp.float32
  key = "mid_block.attentions.0.proj_in.weight"
  with pytest.raises(DataError, match=rf"missing keys {re.escape(key)} .*\(64, 64, 1, 1\)"):
    import_cond_unet({k: v for k, v in sd.items() if k != key}, TINY, source="unet.bin")
  with pytest.raises(DataError, match=r"unet.bin: unexpected keys class_embedding.weight"):
    import_cond_unet({**sd, "class_embedding.weight": np.zeros(3)}, TINY, source="unet.bin")
  with pytest.raises(DataError, match=rf"{re.escape(key)} has shape \(64, 64\), expected "
                     r"\(64, 64, 1, 1\)"):
    import_cond_unet({**sd, key: sd[key][:, :, 0, 0]}, TINY)


def _compvis_shapes(cfg):
  """{LDM name: PyTorch shape} of the CompVis `UNetModel` for `cfg`, enumerated like its
  constructor: input_blocks (conv, then per level ResBlock[+SpatialTransformer] and a
  Downsample), middle_block, output_blocks (ResBlock on h + skip [+transformer][+Upsample])."""
  temb, ctx = cfg.temb_dim, cfg.cross_attention_dim
  shapes = {}

  def layer(name, *weight):  # weight [out, ...] and bias [out]
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = weight, weight[:1]

  conv = lambda name, cout, cin, k: layer(name, cout, cin, k, k)
  vec = layer  # GroupNorm / LayerNorm: weight and bias [c]

  def res(name, cin, cout):
    vec(f"{name}.in_layers.0", cin)
    conv(f"{name}.in_layers.2", cout, cin, 3)
    layer(f"{name}.emb_layers.1", cout, temb)
    vec(f"{name}.out_layers.0", cout)
    conv(f"{name}.out_layers.3", cout, cout, 3)
    if cin != cout:
      conv(f"{name}.skip_connection", cout, cin, 1)

  def transformer(name, c):
    vec(f"{name}.norm", c)
    conv(f"{name}.proj_in", c, c, 1)
    block = f"{name}.transformer_blocks.0"
    for attn, kv in (("attn1", c), ("attn2", ctx)):
      shapes.update({f"{block}.{attn}.to_q.weight": (c, c), f"{block}.{attn}.to_k.weight": (c, kv),
                     f"{block}.{attn}.to_v.weight": (c, kv)})
      layer(f"{block}.{attn}.to_out.0", c, c)
    layer(f"{block}.ff.net.0.proj", 8 * c, c)  # GEGLU: two halves of width 4c
    layer(f"{block}.ff.net.2", c, 4 * c)
    for norm in ("norm1", "norm2", "norm3"):
      vec(f"{block}.{norm}", c)
    conv(f"{name}.proj_out", c, c, 1)

  layer("time_embed.0", temb, cfg.block_out_channels[0])
  layer("time_embed.2", temb, temb)
  ch = cfg.block_out_channels[0]
  conv("input_blocks.0.0", ch, cfg.in_channels, 3)
  chans, i = [ch], 1
  for level, c in enumerate(cfg.block_out_channels):
    for _ in range(cfg.layers_per_block):
      res(f"input_blocks.{i}.0", ch, c)
      ch = c
      if cfg.down_attention(level):
        transformer(f"input_blocks.{i}.1", c)
      chans.append(ch)
      i += 1
    if level != cfg.num_levels - 1:
      conv(f"input_blocks.{i}.0.op", ch, ch, 3)
      chans.append(ch)
      i += 1
  res("middle_block.0", ch, ch)
  transformer("middle_block.1", ch)
  res("middle_block.2", ch, ch)
  i = 0
  for level in reversed(range(cfg.num_levels)):
    c, attn = cfg.block_out_channels[level], cfg.up_attention(cfg.num_levels - 1 - level)
    for j in range(cfg.layers_per_block + 1):
      res(f"output_blocks.{i}.0", ch + chans.pop(), c)
      ch = c
      if attn:
        transformer(f"output_blocks.{i}.1", c)
      if level and j == cfg.layers_per_block:
        conv(f"output_blocks.{i}.{2 if attn else 1}.conv", c, c, 3)
      i += 1
  vec("out.0", ch)
  conv("out.2", cfg.out_channels, ch, 3)
  return shapes


def test_compvis_translation_is_one_to_one():
  rng = np.random.default_rng(0)
  shapes = _compvis_shapes(TINY)
  sd = {f"model.diffusion_model.{k}": rng.standard_normal(s).astype(np.float32)
        for k, s in shapes.items()}
  # What a full SD checkpoint holds besides the U-Net is ignored.
  junk = {"first_stage_model.encoder.conv_in.weight": np.zeros(3), "alphas_cumprod": np.ones(4),
          "model_ema.diffusion_modelinput_blocks00weight": np.zeros(2)}
  params = import_cond_unet({**sd, **junk}, TINY)["params"]
  flat = traverse_util.flatten_dict(params)
  assert len(flat) == len(sd)
  # Every parameter received a distinct source array: match them by content.
  by_bytes = {np.ascontiguousarray(v).tobytes(): k for k, v in sd.items()}
  sources = {by_bytes[np.ascontiguousarray(d).tobytes()]
             for d in _diffusers_state_dict(params).values()}
  assert sources == set(sd)
  m = "model.diffusion_model."
  checks = {"down_blocks_0/downsamplers_0/conv/kernel": "input_blocks.2.0.op.weight",
            "up_blocks_0/upsamplers_0/conv/bias": "output_blocks.1.1.conv.bias",
            "up_blocks_1/resnets_0/conv_shortcut/bias": "output_blocks.2.0.skip_connection.bias",
            "mid_block/resnets_1/time_emb_proj/bias": "middle_block.2.emb_layers.1.bias",
            "up_blocks_1/attentions_1/proj_out/bias": "output_blocks.3.1.proj_out.bias",
            "time_embedding/linear_2/bias": "time_embed.2.bias"}
  for path, key in checks.items():
    got = flat[tuple(path.split("/"))]
    np.testing.assert_array_equal(got.transpose(3, 2, 0, 1) if got.ndim == 4 else got, sd[m + key])
  # The same names without the checkpoint prefix are recognised as CompVis too.
  plain = import_cond_unet({k[len(m):]: v for k, v in sd.items()}, TINY)["params"]
  np.testing.assert_array_equal(plain["conv_out"]["kernel"], params["conv_out"]["kernel"])
  with pytest.raises(DataError, match=r"sd.ckpt: unexpected keys model.diffusion_model.label_emb"):
    import_cond_unet({**sd, m + "label_emb.0.weight": np.zeros(3)}, TINY, source="sd.ckpt")
  with pytest.raises(DataError, match=r"missing keys model.diffusion_model.out.2.bias \(the first "
                     r"of shape \(4,\)\)"):
    import_cond_unet({k: v for k, v in sd.items() if k != m + "out.2.bias"}, TINY)
