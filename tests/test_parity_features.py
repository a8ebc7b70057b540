"""Opt-in PyTorch parity of the feature networks (run with `-m torch` in a venv with torch,
torchvision and lpips). Weights are random (nothing is downloaded), saved with `torch.save`,
read back through `load_state_dict` and the importers; outputs must match PyTorch to
rtol = atol = 1e-4 (LPIPS, Inception pool3), rtol 1e-4 / atol 1e-4 x the largest |logit|
(Inception logits) and 1e-5 (resize).
"""

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tv_inception = pytest.importorskip("torchvision.models.inception")
F = torch.nn.functional

from jaxgen.io.torch_state_dict import load_state_dict  # noqa: E402
from jaxgen.metrics.lpips import import_lpips, load_lpips, lpips  # noqa: E402

jinc = importlib.import_module("jaxgen.metrics.inception")

pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")]
TOL = dict(rtol=1e-4, atol=1e-4)


# A transcription of pytorch-fid's FID blocks (pool branches differ from torchvision's).
class _FidA(tv_inception.InceptionA):

  def forward(self, x):
    b1 = self.branch1x1(x)
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat([b1, b5, b3, bp], 1)


class _FidC(tv_inception.InceptionC):

  def forward(self, x):
    b1 = self.branch1x1(x)
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
    return torch.cat([b1, b7, bd, bp], 1)


class _FidE(tv_inception.InceptionE):

  def __init__(self, in_channels, use_max):
    super().__init__(in_channels)
    self.use_max = use_max

  def forward(self, x):
    b1 = self.branch1x1(x)
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    if self.use_max:
      pooled = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
      pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


def _fid_preprocess(images_uint8):
  """pytorch-fid's preprocessing: [0, 1], bilinear resize to 299, then 2x - 1."""
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  return 2 * x - 1


def _fid_inception_torch():
  torch.manual_seed(0)
  net = tv_inception.inception_v3(weights=None, aux_logits=False, init_weights=True,
                                  num_classes=1008)
  net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = _FidA(192, 32), _FidA(256, 64), _FidA(288, 64)
  net.Mixed_6b, net.Mixed_6c = _FidC(768, 128), _FidC(768, 160)
  net.Mixed_6d, net.Mixed_6e = _FidC(768, 160), _FidC(768, 192)
  net.Mixed_7b, net.Mixed_7c = _FidE(1280, False), _FidE(2048, True)
  # Running statistics from one batch, then perturbed: BN is exercised, activations stay O(1).
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = 1.0
  net.train()
  calib = np.random.default_rng(3).integers(0, 256, (4, 80, 64, 3), dtype=np.uint8)
  with torch.no_grad():
    net(_fid_preprocess(calib))
  gen = torch.Generator().manual_seed(1)
  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      c = m.num_features
      m.running_mean += 0.2 * m.running_var.sqrt() * torch.randn(c, generator=gen)
      m.running_var *= 0.8 + 0.45 * torch.rand(c, generator=gen)
      m.weight.data = 0.8 + 0.4 * torch.rand(c, generator=gen)
      m.bias.data = 0.1 * torch.randn(c, generator=gen)
  return net.eval()


def _torch_fid_features(net, images_uint8):
  x = _fid_preprocess(images_uint8)
  store = {}
  hook = net.avgpool.register_forward_hook(lambda m, i, o: store.setdefault("pool", o))
  with torch.no_grad():
    logits = net(x)
  hook.remove()
  return store["pool"].flatten(1).numpy(), logits.numpy()


def test_fid_inception_matches_torch(tmp_path):
  net = _fid_inception_torch()
  path = str(tmp_path / "fid_inception.pth")
  torch.save(net.state_dict(), path)
  variables = jinc.load_fid_inception(path)
  images = np.random.default_rng(0).integers(0, 256, (2, 80, 64, 3), dtype=np.uint8)
  ref_pool, ref_logits = _torch_fid_features(net, images)
  pool, logits = jinc.inception_feature_fn(variables, logits_bias=True, batch_size=2)(images)
  np.testing.assert_allclose(pool, ref_pool, **TOL)
  # Logits sum 2048 products of magnitude ~100s: float32 accumulation error scales with the
  # largest logit, so the absolute tolerance is 1e-4 of that scale.
  scale = np.abs(ref_logits).max()
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * scale)
  _, unbiased = jinc.inception_feature_fn(variables, batch_size=2)(images)
  ref_unbiased = ref_pool @ net.fc.weight.detach().numpy().T
  np.testing.assert_allclose(unbiased, ref_unbiased, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("size", [(32, 32), (47, 300), (299, 299), (512, 320)])
def test_resize_matches_torch_interpolate(size):
  x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
  ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(jinc.resize_bilinear(x, 299, 299)), ref, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("net", ["squeeze", "alex", "vgg"])
def test_lpips_matches_lpips_package(net, tmp_path):
  lpips_pkg = pytest.importorskip("lpips")
  torch.manual_seed(0)
  # Random trunk (pnet_rand: nothing downloaded), the package's shipped calibration weights.
  model = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False).eval()
  trunk_sd = {k.replace("net.", "", 1): v for k, v in model.state_dict().items()
              if k.startswith("net.")}
  # Rebuild torchvision-style keys (features.<i>...) as a torchvision weight file has them.
  trunk_sd = {"features." + k.split(".", 1)[1]: v for k, v in trunk_sd.items()}
  lin_sd = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
  torch.save(trunk_sd, tmp_path / "trunk.pth")
  torch.save(lin_sd, tmp_path / "lin.pth", _use_new_zipfile_serialization=False)  # legacy format
  variables = load_lpips(str(tmp_path / "trunk.pth"), str(tmp_path / "lin.pth"), net)
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
  y = rng.integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)
  to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1.0
  with torch.no_grad():
    ref = model(to_t(x), to_t(y)).flatten().numpy()
  np.testing.assert_allclose(np.asarray(lpips(x, y, variables, net)), ref, **TOL)
  # A full lpips.LPIPS state dict works as both arguments of import_lpips.
  torch.save(model.state_dict(), tmp_path / "full.pth")
  full = load_state_dict(str(tmp_path / "full.pth"))
  np.testing.assert_allclose(np.asarray(lpips(x, y, import_lpips(full, full, net), net)), ref,
                             **TOL)


def test_state_dict_reader_matches_torch_load(tmp_path):
  gen = torch.Generator().manual_seed(0)
  sd = {
      "f32": torch.randn(3, 4, generator=gen),
      "f16": torch.randn(5, generator=gen).half(),
      "bf16": torch.randn(2, 3, generator=gen).bfloat16(),
      "f64": torch.randn(2, generator=gen).double(),
      "i64": torch.arange(6).reshape(2, 3),
      "i32": torch.arange(4, dtype=torch.int32),
      "u8": torch.arange(7, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "transposed": torch.randn(3, 5, generator=gen).t(),
      "offset_view": torch.randn(4, 6, generator=gen)[1:, 2:5],
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
  }
  for legacy in (False, True):
    path = tmp_path / f"sd_{legacy}.pth"
    torch.save({"state_dict": sd, "epoch": 7}, path, _use_new_zipfile_serialization=not legacy)
    got = load_state_dict(str(path))
    assert set(got) == set(sd)
    for k, v in sd.items():
      assert got[k].shape == tuple(v.shape), k
      np.testing.assert_array_equal(got[k].astype(np.float64), v.double().numpy(), err_msg=k)
    assert got["bf16"].dtype.name == "bfloat16" and got["i32"].dtype == np.int32


def test_shipped_lpips_weights_read_like_torch_load():
  lpips_pkg = pytest.importorskip("lpips")
  import os
  path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", "squeeze.pth")
  ours, ref = load_state_dict(path), torch.load(path, map_location="cpu")
  assert set(ours) == set(ref)
  for k in ref:
    np.testing.assert_array_equal(ours[k], ref[k].numpy())
