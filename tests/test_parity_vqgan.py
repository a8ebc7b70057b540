"""Opt-in PyTorch parity of the VQ-GAN (run with `-m torch` in a venv with torch).

The reference is a compact PyTorch transcription of taming-transformers' Encoder, Decoder and
VQModel.encode-before-quantisation / decode, written for this test from the structure described
in the taming paper and repository (module names as in its state dict). Weights are random
(GroupNorm affine parameters perturbed), exported with `state_dict()`, imported with
`import_vqgan` (and once through `torch.save` + `load_vqgan` of a Lightning-style checkpoint);
encode and decode outputs must match to rtol = atol = 1e-4 in float32.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import jax.numpy as jnp  # noqa: E402

from jaxgen.io.vqgan_import import import_vqgan, load_vqgan  # noqa: E402
from jaxgen.nets.vqgan import VQGANConfig, vqgan_decode, vqgan_encode  # noqa: E402

pytestmark = pytest.mark.torch
TOL = dict(rtol=1e-4, atol=1e-4)


def _gn(c):
  return nn.GroupNorm(32, c, eps=1e-6)


class TResBlock(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
    self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
    self.dropout = nn.Dropout(0.0)
    if cin != cout:
      self.nin_shortcut = nn.Conv2d(cin, cout, 1)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
    return skip + h


class TAttn(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.norm = _gn(c)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x):
    b, c, h, w = x.shape
    y = self.norm(x)
    q = self.q(y).flatten(2).transpose(1, 2)  # b, hw, c
    k = self.k(y).flatten(2)  # b, c, hw
    v = self.v(y).flatten(2)  # b, c, hw
    att = torch.softmax(torch.bmm(q, k) / c ** 0.5, dim=-1)  # b, hw(query), hw(key)
    out = torch.bmm(v, att.transpose(1, 2)).reshape(b, c, h, w)
    return x + self.proj_out(out)


class TDown(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, stride=2)

  def forward(self, x):
    return self.conv(F.pad(x, (0, 1, 0, 1)))  # right column, bottom row


class TUp(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c):
  mid = nn.Module()
  mid.block_1, mid.attn_1, mid.block_2 = TResBlock(c, c), TAttn(c), TResBlock(c, c)
  return mid


class TEncoder(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.cfg = cfg
    self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
    self.down = nn.ModuleList()
    cin, res = cfg.ch, cfg.resolution
    for lv, mult in enumerate(cfg.ch_mult):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      for _ in range(cfg.num_res_blocks):
        level.block.append(TResBlock(cin, cfg.ch * mult))
        cin = cfg.ch * mult
        if res in cfg.attn_resolutions:
          level.attn.append(TAttn(cin))
      if lv < len(cfg.ch_mult) - 1:
        level.downsample = TDown(cin)
        res //= 2
      self.down.append(level)
    self.mid = _mid(cin)
    self.norm_out, self.conv_out = _gn(cin), nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.down:
      for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
          h = level.attn[i](h)
      if hasattr(level, "downsample"):
        h = level.downsample(h)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    return self.conv_out(F.silu(self.norm_out(h)))


class TDecoder(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    levels = len(cfg.ch_mult)
    cin, res = cfg.ch * cfg.ch_mult[-1], cfg.resolution // 2 ** (levels - 1)
    self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
    self.mid = _mid(cin)
    ups = {}
    for lv in reversed(range(levels)):
      level = nn.Module()
      level.block, level.attn = nn.ModuleList(), nn.ModuleList()
      for _ in range(cfg.num_res_blocks + 1):
        level.block.append(TResBlock(cin, cfg.ch * cfg.ch_mult[lv]))
        cin = cfg.ch * cfg.ch_mult[lv]
        if res in cfg.attn_resolutions:
          level.attn.append(TAttn(cin))
      if lv != 0:
        level.upsample = TUp(cin)
        res *= 2
      ups[lv] = level
    self.up = nn.ModuleList([ups[lv] for lv in range(levels)])  # indexed by level
    self.norm_out, self.conv_out = _gn(cin), nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

  def forward(self, z):
    h = self.conv_in(z)
    h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
    for lv in reversed(range(len(self.up))):
      level = self.up[lv]
      for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
          h = level.attn[i](h)
      if hasattr(level, "upsample"):
        h = level.upsample(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class TVQModel(nn.Module):

  def __init__(self, cfg):
    super().__init__()
    self.encoder, self.decoder = TEncoder(cfg), TDecoder(cfg)
    self.quantize = nn.Module()
    self.quantize.embedding = nn.Embedding(cfg.n_embed, cfg.embed_dim)
    self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

  def encode_prequant(self, x):
    return self.quant_conv(self.encoder(x))

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))


CONFIGS = {
    "tiny": (VQGANConfig.tiny(), (2, 16, 16)),
    # Three levels, attention on the coarsest level (8) and in the middle; non-square inputs.
    "small": (VQGANConfig(ch=32, ch_mult=(1, 1, 2), num_res_blocks=2, attn_resolutions=(8,),
                          z_channels=16, embed_dim=12, n_embed=32, resolution=32), (2, 32, 24)),
}


def _model(cfg, seed):
  torch.manual_seed(seed)
  model = TVQModel(cfg).eval()
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, nn.GroupNorm):
        mod.weight.add_(0.2 * torch.randn_like(mod.weight))
        mod.bias.add_(0.2 * torch.randn_like(mod.bias))
  return model


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encode_decode_match_pytorch(name):
  cfg, (n, h, w) = CONFIGS[name]
  model = _model(cfg, seed=len(name))
  x = torch.rand(n, cfg.in_channels, h, w) * 2 - 1
  with torch.no_grad():
    z_ref = model.encode_prequant(x)
    y_ref = model.decode(z_ref)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  variables, codebook = import_vqgan(sd, cfg, return_codebook=True)
  np.testing.assert_array_equal(codebook, sd["quantize.embedding.weight"])
  z = np.asarray(vqgan_encode(variables, jnp.asarray(_nhwc(x)), cfg))
  f = cfg.downsample_factor
  assert z.shape == (n, h // f, w // f, cfg.embed_dim)
  err_z = np.abs(z - _nhwc(z_ref)).max()
  np.testing.assert_allclose(z, _nhwc(z_ref), **TOL)
  y = np.asarray(vqgan_decode(variables, jnp.asarray(_nhwc(z_ref)), cfg))
  err_y = np.abs(y - _nhwc(y_ref)).max()
  np.testing.assert_allclose(y, _nhwc(y_ref), **TOL)
  print(f"{name}: max |dz| = {err_z:.2e}, max |dx| = {err_y:.2e}")


def test_lightning_checkpoint_through_torch_save(tmp_path):
  cfg, (n, h, w) = CONFIGS["tiny"]
  model = _model(cfg, seed=7)
  path = tmp_path / "last.ckpt"
  torch.save({"state_dict": model.state_dict(), "epoch": 3, "global_step": 99,
              "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6}]}]}, path)
  variables = load_vqgan(str(path), cfg)
  x = torch.rand(n, cfg.in_channels, h, w) * 2 - 1
  with torch.no_grad():
    z_ref = model.encode_prequant(x)
  np.testing.assert_allclose(vqgan_encode(variables, jnp.asarray(_nhwc(x)), cfg), _nhwc(z_ref),
                             **TOL)
