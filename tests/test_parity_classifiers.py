"""PyTorch parity of the Flax classifiers and the torchvision importer (opt-in: -m torch).

torchvision models are built with weights=None (nothing is downloaded), their BatchNorm affine
parameters and running statistics, LayerNorms, class token and zero-initialised heads are set to
random values so every imported tensor matters, then logits of `model(x)` (torch, eval mode,
float32) and the imported Flax model are compared with atol = rtol = 1e-4.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxgen.io.torchvision_import import (  # noqa: E402
    export_torchvision, import_torchvision, import_torchvision_with_report)
from jaxgen.nets.classifiers import build_classifier  # noqa: E402
from jaxgen.nets.vit import interpolate_pos_embedding  # noqa: E402

pytestmark = pytest.mark.torch
ATOL = RTOL = 1e-4


@pytest.fixture(autouse=True)
def _highest_precision():
  # Full float32 matmuls/convs (matters on GPU/TPU where the default is TF32/bf16 passes).
  with jax.default_matmul_precision("highest"):
    yield


def _randomise(model, seed=0):
  """Random BN/LN affine + running stats, class token and heads; returns numpy state dict."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, mod in model.named_modules():
      if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        mod.weight.copy_(0.5 + torch.rand(mod.weight.shape, generator=g))
        mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
        mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
    for pname, p in model.named_parameters():
      if pname == "class_token" or pname.startswith("heads."):
        p.copy_(0.05 * torch.randn(p.shape, generator=g))
    # Keep ResNet residual-branch outputs small (as in trained nets) so logits stay O(1-10)
    # instead of growing through 16 random bottlenecks; the tolerance is absolute.
    for mod in model.modules():
      last_bn = {"BasicBlock": "bn2", "Bottleneck": "bn3"}.get(type(mod).__name__)
      if last_bn:
        getattr(mod, last_bn).weight.mul_(0.25)
  # copy: .numpy() shares memory with tensors that a train-mode forward updates in place.
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _compare(tv_ctor, name, size, batch, **kw):
  torch.manual_seed(0)
  tmodel = tv_ctor(weights=None, **kw).eval()
  sd = _randomise(tmodel)
  x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    want = tmodel(x).numpy()
  variables = import_torchvision(name, sd)
  model = build_classifier(name, want.shape[1])
  got = model.apply(variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), train=False)
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=RTOL)
  return tmodel, sd, variables, model, x


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet50", 64),
                                       ("mobilenet_v3_large", 64), ("mobilenet_v3_small", 64),
                                       ("resnet18", 224)])
def test_cnn_logits_match_torchvision(name, size):
  _compare(getattr(torchvision.models, name), name, size, batch=2)


def test_vit_b16_logits_match_torchvision():
  _compare(torchvision.models.vit_b_16, "vit_b_16", 224, batch=1)


def test_resnet18_features_match_torchvision_penultimate():
  tmodel, sd, variables, model, x = _compare(torchvision.models.resnet18, "resnet18", 64, batch=2)
  tmodel.fc = torch.nn.Identity()
  with torch.no_grad():
    want = tmodel(x).numpy()
  _, feats = model.apply(variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()),
                         return_features=True)
  np.testing.assert_allclose(np.asarray(feats), want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_train_mode_batchnorm_matches_torch(name):
  """Train-mode BN: logits (ResNet) and updated running means; running vars up to torch's
  unbiased n/(n-1) correction of the batch variance, which flax's BatchNorm does not apply."""
  tmodel = getattr(torchvision.models, name)(weights=None)
  sd = _randomise(tmodel)
  x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
  tmodel.train()
  with torch.no_grad():
    want = tmodel(x).numpy()
  new_sd = {k: v.numpy().copy() for k, v in tmodel.state_dict().items()}
  variables = import_torchvision(name, sd)
  model = build_classifier(name, 1000)
  xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
  got, upd = model.apply(variables, xj, train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.PRNGKey(0)})
  if name == "resnet18":  # MobileNet's classifier dropout makes its train-mode logits random
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-3, rtol=1e-3)
  exported = export_torchvision(name, {"params": variables["params"], **upd})
  bn = "bn1" if name == "resnet18" else "features.0.1"
  mom = 0.1 if name == "resnet18" else 0.01
  np.testing.assert_allclose(exported[f"{bn}.running_mean"], new_sd[f"{bn}.running_mean"],
                             atol=1e-5, rtol=1e-4)
  n = x.shape[0] * 16 * 16  # elements per channel after the stride-2 stem at 32x32
  old, new = sd[f"{bn}.running_var"], new_sd[f"{bn}.running_var"]
  batch_var_unbiased = (new - (1 - mom) * old) / mom
  expected_flax = (1 - mom) * old + mom * batch_var_unbiased * (n - 1) / n
  np.testing.assert_allclose(exported[f"{bn}.running_var"], expected_flax, atol=1e-5, rtol=1e-4)


def test_pos_embedding_interpolation_matches_torchvision():
  from torchvision.models.vision_transformer import interpolate_embeddings
  pos = torch.randn(1, 1 + 7 * 7, 16, generator=torch.Generator().manual_seed(3))
  for new_size in (48, 80, 32):  # grid 7 -> 12, 20, 8 with patch 4
    want = interpolate_embeddings(new_size, 4, {"encoder.pos_embedding": pos})
    got = interpolate_pos_embedding(pos.numpy(), new_size // 4)
    np.testing.assert_allclose(got, want["encoder.pos_embedding"].numpy(), atol=1e-5, rtol=1e-5)


def test_small_vit_import_at_new_resolution_matches_torchvision():
  """Checkpoint at 28x28 (grid 7), model at 48x48 (grid 12): torchvision interpolate_embeddings +
  VisionTransformer(48) vs import_torchvision(image_size=48)."""
  from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings
  cfg = dict(patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5)
  torch.manual_seed(0)
  src = VisionTransformer(image_size=28, **cfg)
  sd = _randomise(src)
  dst = VisionTransformer(image_size=48, **cfg).eval()
  dst.load_state_dict(interpolate_embeddings(48, 4, {k: torch.from_numpy(v) for k, v in
                                                     sd.items()}))
  x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
  with torch.no_grad():
    want = dst(x).numpy()
  kw = dict(image_size=48, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64)
  variables, report = import_torchvision_with_report("vit_tiny", sd, **kw)
  assert report.resized and "(1, 50, 32) -> (1, 145, 32)" in report.resized[0]
  got = build_classifier("vit_tiny", 5, **kw).apply(variables, jnp.asarray(x.permute(0, 2, 3, 1)
                                                                           .numpy()))
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=RTOL)


def test_finetune_head_is_reinitialised_backbone_kept():
  tmodel = torchvision.models.mobilenet_v3_small(weights=None)
  sd = _randomise(tmodel)
  variables, report = import_torchvision_with_report("mobilenet_v3_small", sd, num_classes=7)
  assert variables["params"]["classifier_3"]["kernel"].shape == (1024, 7)
  assert report.checkpoint_num_classes == 1000 and report.num_classes == 7
  assert set(report.ignored_keys) == {"classifier.3.weight", "classifier.3.bias"}
  tmodel.classifier[3] = torch.nn.Identity()
  x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
  with torch.no_grad():
    want = tmodel.eval()(x).numpy()
  _, feats = build_classifier("mobilenet_v3_small", 7).apply(
      variables, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), return_features=True)
  np.testing.assert_allclose(np.asarray(feats), want, atol=ATOL, rtol=RTOL)


def test_export_keys_equal_torchvision_state_dict_keys():
  for name in ("resnet50", "mobilenet_v3_large"):
    sd = getattr(torchvision.models, name)(weights=None).state_dict()
    want = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = build_classifier(name, 1000)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    fake = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
    got = {k: v.shape for k, v in export_torchvision(name, fake).items()}
    assert got == want
