"""The taming-transformers VQ-GAN in Flax and its checkpoint importer (default group, no torch).

References: a NumPy transcription of each block (GroupNorm eps 1e-6, swish, zero-padded convs,
single-head attention scaled by C^-1/2, asymmetric (0, 1) padding before the stride-2 conv,
nearest x2) to atol 1e-5; the taming parameter list enumerated here from the structure of
taming's Encoder/Decoder/VQModel (names, OIHW shapes) for the parameter count and the import
round trip (bit-exact after OIHW -> HWIO). PyTorch parity is in tests/test_parity_vqgan.py.
"""

import collections
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import DataError
from jaxgen.io.vqgan_import import import_vqgan, load_vqgan
from jaxgen.nets import vqgan
from jaxgen.nets.vqgan import VQGANAutoencoder, VQGANConfig
# The torch.save zip writer of the state-dict reader tests (stand-in torch modules, no torch).
from test_torch_state_dict import _Storage, _Tensor, _write_zip, fake_torch  # noqa: F401

ATOL = 1e-5


def taming_shapes(cfg: VQGANConfig) -> dict[str, tuple[int, ...]]:
  """{name: shape} of taming's VQModel encoder/decoder/quant convs, walking its constructor."""
  out: dict[str, tuple[int, ...]] = {}

  def conv(name, cin, cout, k):
    out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, k, k), (cout,)

  def norm(name, c):
    out[f"{name}.weight"], out[f"{name}.bias"] = (c,), (c,)

  def res(name, cin, cout):
    norm(f"{name}.norm1", cin)
    conv(f"{name}.conv1", cin, cout, 3)
    norm(f"{name}.norm2", cout)
    conv(f"{name}.conv2", cout, cout, 3)
    if cin != cout:
      conv(f"{name}.nin_shortcut", cin, cout, 1)

  def attn(name, c):
    norm(f"{name}.norm", c)
    for part in ("q", "k", "v", "proj_out"):
      conv(f"{name}.{part}", c, c, 1)

  def mid(prefix, c):
    res(f"{prefix}.mid.block_1", c, c)
    attn(f"{prefix}.mid.attn_1", c)
    res(f"{prefix}.mid.block_2", c, c)

  levels = len(cfg.ch_mult)
  conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3)
  block_in, size = cfg.ch, cfg.resolution
  for lv in range(levels):
    for j in range(cfg.num_res_blocks):
      res(f"encoder.down.{lv}.block.{j}", block_in, cfg.ch * cfg.ch_mult[lv])
      block_in = cfg.ch * cfg.ch_mult[lv]
      if size in cfg.attn_resolutions:
        attn(f"encoder.down.{lv}.attn.{j}", block_in)
    if lv != levels - 1:
      conv(f"encoder.down.{lv}.downsample.conv", block_in, block_in, 3)
      size //= 2
  mid("encoder", block_in)
  norm("encoder.norm_out", block_in)
  conv("encoder.conv_out", block_in, cfg.z_channels, 3)
  conv("quant_conv", cfg.z_channels, cfg.embed_dim, 1)
  conv("post_quant_conv", cfg.embed_dim, cfg.z_channels, 1)
  block_in = cfg.ch * cfg.ch_mult[-1]
  conv("decoder.conv_in", cfg.z_channels, block_in, 3)
  mid("decoder", block_in)
  for lv in reversed(range(levels)):
    for j in range(cfg.num_res_blocks + 1):
      res(f"decoder.up.{lv}.block.{j}", block_in, cfg.ch * cfg.ch_mult[lv])
      block_in = cfg.ch * cfg.ch_mult[lv]
      if size in cfg.attn_resolutions:
        attn(f"decoder.up.{lv}.attn.{j}", block_in)
    if lv != 0:
      conv(f"decoder.up.{lv}.upsample.conv", block_in, block_in, 3)
      size *= 2
  norm("decoder.norm_out", block_in)
  conv("decoder.conv_out", block_in, cfg.out_ch, 3)
  return out


def fake_checkpoint_state_dict(cfg: VQGANConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Random taming-named weights plus the keys the importer must ignore."""
  rng = np.random.default_rng(seed)
  sd = {k: rng.normal(size=s).astype(np.float32) for k, s in taming_shapes(cfg).items()}
  sd["quantize.embedding.weight"] = rng.normal(size=(cfg.n_embed, cfg.embed_dim)).astype(np.float32)
  sd["loss.discriminator.main.0.weight"] = rng.normal(size=(64, 3, 4, 4)).astype(np.float32)
  sd["loss.perceptual_loss.lin0.model.1.weight"] = rng.normal(size=(1, 64, 1, 1)).astype(np.float32)
  return sd


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.slow  # ~15 s (parameter counts by eval_shape stay in the default suite): the 15-min CI budget
def test_tiny_shapes_and_parameter_count():
  cfg = VQGANConfig.tiny()
  model = VQGANAutoencoder(cfg)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  z = jax.jit(lambda v, a: vqgan.vqgan_encode(v, a, cfg))(variables, x)  # jitted: eager took ~15 s
  assert z.shape == (2,) + cfg.latent_shape == (2, 8, 8, 8)
  y = jax.jit(lambda v, a: vqgan.vqgan_decode(v, a, cfg))(variables, z)
  assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
  assert _count(variables) == sum(int(np.prod(s)) for s in taming_shapes(cfg).values())
  # Inputs need not be square or of the nominal size.
  odd = jax.ShapeDtypeStruct((2, 12, 8, 3), jnp.float32)
  assert jax.eval_shape(lambda v, a: vqgan.vqgan_encode(v, a, cfg), variables, odd).shape == (
      2, 6, 4, 8)


def test_ffhq_f16_shapes_and_parameter_count():
  cfg = VQGANConfig.ffhq_f16()
  model = VQGANAutoencoder(cfg)
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  z = jax.eval_shape(lambda v, a: model.apply(v, a, method="encode"), variables, x)
  assert z.shape == (1, 16, 16, 256) and cfg.latent_shape == (16, 16, 256)
  y = jax.eval_shape(lambda v, a: model.apply(v, a, method="decode"), variables, z)
  assert y.shape == (1, 256, 256, 3)
  expected = sum(int(np.prod(s)) for s in taming_shapes(cfg).values())
  assert _count(variables) == expected == 71_879_555  # encoder 29_298_176, decoder 42_449_795


# --- blocks against NumPy --------------------------------------------------------------------


def _np_groupnorm(x, scale, bias, groups=32, eps=1e-6):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_conv(x, kernel, bias, stride=1, pad=((0, 0), (0, 0))):
  """Cross-correlation of NHWC x with an HWIO kernel, explicit zero padding."""
  x = np.pad(x.astype(np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
  kh, kw = kernel.shape[:2]
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
      out += patch @ kernel[i, j]
  return out + bias


def _swish(x):
  return x / (1.0 + np.exp(-x))


def _params(module, x):
  p = module.init(jax.random.key(3), x)["params"]
  # Non-trivial GroupNorm affine parameters.
  flat = traverse_util.flatten_dict(p)
  rng = np.random.default_rng(4)
  flat = {k: (np.asarray(v) + 0.3 * rng.normal(size=v.shape)).astype(np.float32)
          for k, v in flat.items()}
  return traverse_util.unflatten_dict(flat)


def test_resnet_block_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 6, 5, 32)).astype(np.float32)
  block = vqgan.ResnetBlock(64)
  p = _params(block, x)
  out = np.asarray(block.apply({"params": p}, x))
  same = ((1, 1), (1, 1))
  h = _swish(_np_groupnorm(x, p["norm1"]["scale"], p["norm1"]["bias"]))
  h = _np_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"], pad=same)
  h = _swish(_np_groupnorm(h, p["norm2"]["scale"], p["norm2"]["bias"]))
  h = _np_conv(h, p["conv2"]["kernel"], p["conv2"]["bias"], pad=same)
  ref = _np_conv(x, p["nin_shortcut"]["kernel"], p["nin_shortcut"]["bias"]) + h
  np.testing.assert_allclose(out, ref, atol=ATOL, rtol=1e-5)


def test_attention_block_matches_numpy():
  x = np.random.default_rng(1).normal(size=(2, 4, 3, 32)).astype(np.float32)
  block = vqgan.AttnBlock()
  p = _params(block, x)
  out = np.asarray(block.apply({"params": p}, x))
  h = _np_groupnorm(x, p["norm"]["scale"], p["norm"]["bias"])
  q, k, v = (_np_conv(h, p[n]["kernel"], p[n]["bias"]).reshape(2, 12, 32) for n in "qkv")
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(32)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  att = (w @ v).reshape(x.shape)
  ref = x + _np_conv(att, p["proj_out"]["kernel"], p["proj_out"]["bias"])
  np.testing.assert_allclose(out, ref, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("size", [(8, 6), (7, 5)])
def test_downsample_and_upsample_match_numpy(size):
  x = np.random.default_rng(2).normal(size=(1,) + size + (4,)).astype(np.float32)
  down = vqgan.Downsample()
  p = _params(down, x)
  out = np.asarray(down.apply({"params": p}, x))
  ref = _np_conv(x, p["conv"]["kernel"], p["conv"]["bias"], stride=2, pad=((0, 1), (0, 1)))
  assert out.shape == (1, size[0] // 2, size[1] // 2, 4)
  np.testing.assert_allclose(out, ref, atol=ATOL, rtol=1e-5)
  up = vqgan.Upsample()
  p = _params(up, x)
  out = np.asarray(up.apply({"params": p}, x))
  nearest = x[:, np.arange(2 * size[0]) // 2][:, :, np.arange(2 * size[1]) // 2]
  ref = _np_conv(nearest, p["conv"]["kernel"], p["conv"]["bias"], pad=((1, 1), (1, 1)))
  np.testing.assert_allclose(out, ref, atol=ATOL, rtol=1e-5)


def test_quantize_matches_brute_force():
  rng = np.random.default_rng(5)
  z = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  codebook = rng.normal(size=(10, 6)).astype(np.float32)
  idx, zq = vqgan.quantize(jnp.asarray(z), jnp.asarray(codebook))
  ref = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(idx, ref)
  np.testing.assert_array_equal(zq, codebook[ref])


# --- importer ----------------------------------------------------------------------------------


def _write_checkpoint(path, sd, torch_mod):
  """A Lightning-style checkpoint: weights nested under 'state_dict', plus counters."""
  storages, tensors = [], collections.OrderedDict()
  for i, (name, arr) in enumerate(sd.items()):
    st = _Storage(str(i), np.ascontiguousarray(arr).ravel())
    storages.append(st)
    stride = [int(np.prod(arr.shape[d + 1:])) for d in range(arr.ndim)]
    tensors[name] = _Tensor(st, 0, arr.shape, stride)
  _write_zip(path, {"state_dict": tensors, "epoch": 7, "global_step": 1234}, storages, torch_mod)


def _hwio(a):
  return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a


def test_load_vqgan_round_trip(tmp_path, fake_torch):
  cfg = VQGANConfig.tiny()
  sd = fake_checkpoint_state_dict(cfg)
  path = tmp_path / "last.ckpt"
  _write_checkpoint(path, sd, fake_torch)
  variables, codebook = load_vqgan(str(path), cfg, return_codebook=True)
  np.testing.assert_array_equal(codebook, sd["quantize.embedding.weight"])
  # Every Flax parameter is exactly one (transposed) source array, each model key used once.
  by_value = {_hwio(v).tobytes(): k for k, v in sd.items()}
  used = []
  for path_, leaf in traverse_util.flatten_dict(variables["params"]).items():
    key = by_value.get(np.asarray(leaf).tobytes())
    assert key is not None, path_
    assert np.asarray(leaf).shape == _hwio(sd[key]).shape, path_
    used.append(key)
  assert sorted(used) == sorted(taming_shapes(cfg))
  p = variables["params"]
  for flax_path, name in [
      (("encoder", "down_1_attn_0", "q", "kernel"), "encoder.down.1.attn.0.q.weight"),
      (("encoder", "down_1_attn_0", "k", "kernel"), "encoder.down.1.attn.0.k.weight"),
      (("encoder", "down_0_downsample", "conv", "kernel"), "encoder.down.0.downsample.conv.weight"),
      (("encoder", "mid_attn_1", "proj_out", "bias"), "encoder.mid.attn_1.proj_out.bias"),
      (("decoder", "up_1_upsample", "conv", "kernel"), "decoder.up.1.upsample.conv.weight"),
      (("decoder", "up_0_block_0", "nin_shortcut", "kernel"),
       "decoder.up.0.block.0.nin_shortcut.weight"),
      (("decoder", "up_0_block_1", "norm2", "scale"), "decoder.up.0.block.1.norm2.weight"),
      (("quant_conv", "kernel"), "quant_conv.weight"),
      (("post_quant_conv", "bias"), "post_quant_conv.bias")]:
    leaf = p
    for part in flax_path:
      leaf = leaf[part]
    np.testing.assert_array_equal(leaf, _hwio(sd[name]), err_msg=name)
  z = vqgan.vqgan_encode(variables, jnp.zeros((1, 16, 16, 3)), cfg)
  assert z.shape == (1, 8, 8, 8)


def test_import_errors_name_keys_and_source(tmp_path, fake_torch):
  cfg = VQGANConfig.tiny()
  sd = fake_checkpoint_state_dict(cfg)
  missing = {k: v for k, v in sd.items() if k != "decoder.up.0.block.1.conv2.bias"}
  with pytest.raises(DataError, match="my.ckpt: missing keys decoder.up.0.block.1.conv2.bias"):
    import_vqgan(missing, cfg, source="my.ckpt")
  extra = {**sd, "encoder.down.0.block.0.temb_proj.weight": np.zeros((32, 512), np.float32)}
  with pytest.raises(DataError, match="unexpected keys encoder.down.0.block.0.temb_proj.weight"):
    import_vqgan(extra, cfg)
  bad = {**sd, "encoder.conv_in.weight": np.zeros((32, 3, 5, 5), np.float32)}
  with pytest.raises(DataError, match="encoder.conv_in.weight has shape"):
    import_vqgan(bad, cfg)
  wrong_config = VQGANConfig(**{**cfg.__dict__, "num_res_blocks": 2})
  with pytest.raises(DataError, match="missing keys encoder.down.0.block.1"):
    import_vqgan(sd, wrong_config)
  bad_codebook = {**sd, "quantize.embedding.weight": np.zeros((16, 5), np.float32)}
  with pytest.raises(DataError, match="quantize.embedding.weight has shape"):
    import_vqgan(bad_codebook, cfg, return_codebook=True)
  # Through a file: the message names it.
  path = tmp_path / "broken.ckpt"
  _write_checkpoint(path, missing, fake_torch)
  with pytest.raises(DataError, match="broken.ckpt: missing keys"):
    load_vqgan(str(path), cfg)
  with pytest.raises(DataError, match="nope.ckpt does not exist.*taming-transformers"):
    load_vqgan(str(tmp_path / "nope.ckpt"), cfg)


def test_checkpoint_with_lightning_objects_is_refused_with_advice(tmp_path):
  # Newer Lightning checkpoints pickle callback classes; the reader never unpickles them.
  payload = b"\x80\x02cpytorch_lightning.callbacks.model_checkpoint\nModelCheckpoint\nq\x00."
  with zipfile.ZipFile(tmp_path / "pl.ckpt", "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  with pytest.raises(DataError, match="pl.ckpt.*ModelCheckpoint.*weights_only=False"):
    load_vqgan(str(tmp_path / "pl.ckpt"), VQGANConfig.tiny())


def test_transformer_checkpoint_prefix():
  cfg = VQGANConfig.tiny()
  sd = fake_checkpoint_state_dict(cfg)
  nested = {f"first_stage_model.{k}": v for k, v in sd.items()}
  nested["transformer.tok_emb.weight"] = np.zeros((16, 4), np.float32)
  nested["cond_stage_model.encoder.conv_in.weight"] = np.zeros((1,), np.float32)
  variables, codebook = import_vqgan(nested, cfg, return_codebook=True)
  np.testing.assert_array_equal(variables["params"]["post_quant_conv"]["bias"],
                                sd["post_quant_conv.bias"])
  np.testing.assert_array_equal(codebook, sd["quantize.embedding.weight"])
  with pytest.raises(DataError, match="missing keys cond_stage_model.encoder.conv_in.bias"):
    import_vqgan(nested, cfg, prefix="cond_stage_model.")
