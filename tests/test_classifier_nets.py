"""Classifier networks (ResNet, MobileNetV3, ViT, SpinalNet head) and the torchvision key mapping.

References: parameter counts are torchvision's published counts (torchvision.models docs /
`sum(p.numel())`: resnet18 11,689,512; resnet50 25,557,032; mobilenet_v3_large 5,483,032;
mobilenet_v3_small 2,542,856; vit_b_16 86,567,656), torchvision state-dict key counts (without
num_batches_tracked) were read from torchvision 0.29. BatchNorm statistics are checked against a
NumPy computation of the batch mean/variance (tolerance 1e-5). Logit parity with torchvision
lives in tests/test_parity_classifiers.py (opt-in, -m torch).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.errors import ConfigError, DataError
from jaxgen.io.torchvision_import import (export_torchvision, import_torchvision,
                                          import_torchvision_with_report)
from jaxgen.nets import resnet
from jaxgen.nets.classifiers import build_classifier, classifier_names
from jaxgen.nets.vit import interpolate_pos_embedding

# rbg keys: XLA compiles their initialisers much faster on CPU than threefry's.
KEY = jax.random.key(0, impl="rbg")
TINY_VIT = dict(patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, mlp_dim=64)
# Small-stem variants used for running on 32x32 / 64x64 (widths reduced to keep CPU time low).
SMALL = {
    "resnet18": dict(small_input=True, width=8),
    "resnet50": dict(small_input=True, width=8),
    "mobilenet_v3_large": dict(small_input=True, width_mult=0.5),
    "mobilenet_v3_small": dict(small_input=True),
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract(model, size):
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))


def _random_like(shapes, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def test_registry_names():
  assert set(classifier_names()) == {"resnet18", "resnet50", "mobilenet_v3_large",
                                     "mobilenet_v3_small", "vit_b16", "vit_tiny"}


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet50", 25_557_032),
                                        ("mobilenet_v3_large", 5_483_032),
                                        ("mobilenet_v3_small", 2_542_856),
                                        ("vit_b16", 86_567_656)])
def test_parameter_counts_equal_torchvision(name, count):
  assert _count(_abstract(build_classifier(name, 1000), 224)["params"]) == count


@pytest.mark.parametrize("name", list(SMALL) + ["vit_tiny"])
def test_runs_on_small_images(name):
  """Runs at 32x32 (compiled, numbers checked) and traces init + apply at 64x64 (shapes).

  Values come from NumPy with the structure of `model.init` (compiling the initialisers of a
  deep net takes ~20 s of CPU; executing `init` is covered by the BatchNorm test)."""
  for size, head in ((32, "linear"), (64, "spinal")):
    kw = dict(TINY_VIT, image_size=size) if name == "vit_tiny" else SMALL[name]
    model = build_classifier(name, 10, head=head, spinal_width=16, **kw)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
    shapes = jax.eval_shape(model.init, KEY, x)
    assert set(shapes) <= {"params", "batch_stats"}
    assert ("spinal" in shapes["params"]) == (head == "spinal")
    apply = lambda v, x, model=model: model.apply(v, x, return_features=True)  # noqa: E731
    if size == 32:
      variables = _random_like(shapes, scale=0.1)
      variables["batch_stats"] = jax.tree_util.tree_map(np.abs, variables.get("batch_stats", {}))
      logits, feats = jax.jit(apply)(variables, x)
      assert np.all(np.isfinite(np.asarray(logits))) and np.all(np.isfinite(np.asarray(feats)))
    else:
      logits, feats = jax.eval_shape(apply, shapes, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert feats.ndim == 2 and feats.shape[0] == 2 and feats.dtype == jnp.float32


def test_feature_dims_and_stage_names():
  r50 = build_classifier("resnet50", 3, small_input=True, width=8)
  shapes = _abstract(r50, 32)
  stages = [k for k in shapes["params"] if k.startswith("stage")]
  assert stages == [f"stage{i}" for i in range(1, 5)]
  v = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def run(v, x):
    (_, feats), mods = r50.apply(v, x, return_features=True, mutable=["intermediates"],
                                 capture_intermediates=lambda m, _: m.name == "stage3")
    return feats, mods["intermediates"]["stage3"]["__call__"][0]

  feats, stage3 = jax.eval_shape(run, v, jnp.zeros((1, 32, 32, 3)))
  assert feats.shape == (1, 8 * 8 * 4)  # 8x width, bottleneck expansion 4
  assert stage3.shape == (1, 8, 8, 8 * 4 * 4)


def _tiny_resnet(**kw):
  # Two stages are enough for BatchNorm / dtype semantics and compile fast on CPU.
  return resnet.ResNet(stage_sizes=(1, 1), bottleneck=False, num_classes=5, small_input=True,
                       width=8, **kw)


def test_batchnorm_train_vs_eval():
  """Train mode normalises with batch statistics and updates running stats with momentum 0.9
  (torch momentum 0.1); eval mode uses running statistics, so samples do not interact."""
  model = _tiny_resnet()
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3)) * 2.0 + 0.5

  @jax.jit
  def run(key, x):
    variables = model.init(key, x)
    _, inter = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "conv1",
                           mutable=["intermediates"])
    train, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    first_train, _ = model.apply(variables, x[:1], train=True, mutable=["batch_stats"])
    return (inter["intermediates"]["conv1"]["__call__"][0], train, upd, first_train,
            model.apply(variables, x), model.apply(variables, x[:1]))

  conv_out, logits_train, upd, first_alone, logits_eval, first_eval = run(KEY, x)
  conv_out = np.asarray(conv_out, np.float64)
  mean, var = conv_out.mean((0, 1, 2)), conv_out.var((0, 1, 2))
  np.testing.assert_allclose(upd["batch_stats"]["bn1"]["mean"], 0.1 * mean, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * var, atol=1e-5,
                             rtol=1e-5)
  assert not np.allclose(logits_train, logits_eval, atol=1e-3)
  # Eval: a sample's logits do not depend on the rest of the batch; train: they do.
  np.testing.assert_allclose(first_eval, logits_eval[:1], atol=1e-5, rtol=1e-5)
  assert not np.allclose(first_alone, logits_train[:1], atol=1e-3)


@pytest.mark.slow  # ~19 s (MobileNet runs in test_runs_on_small_images): the default suite's 15-min CI budget
def test_mobilenet_bn_momentum():
  """MobileNetV3 keeps `bn_momentum` of its running mean per train step (torchvision: 0.99 in
  flax terms, the default); the stem BatchNorm's new mean is (1 - m) * the NumPy batch mean of the
  stem conv, checked at a non-default m (one compile: the default is checked by value)."""
  bn_momentum = 0.5
  assert build_classifier("mobilenet_v3_small", 3).bn_momentum == 0.99
  model = build_classifier("mobilenet_v3_small", 3, width_mult=0.25, bn_momentum=bn_momentum)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3)) + 0.5
  # Jitted: op-by-op dispatch of MobileNet's many small layers took ~30 s of the suite.
  variables = jax.jit(model.init)(KEY, x)
  _, inter = jax.jit(lambda v: model.apply(
      v, x, capture_intermediates=lambda m, _: m.name == "stem_conv",
      mutable=["intermediates"]))(variables)
  _, upd = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
                                         rngs={"dropout": jax.random.PRNGKey(0)}))(variables)
  stem = np.asarray(inter["intermediates"]["stem_conv"]["__call__"][0], np.float64)
  np.testing.assert_allclose(upd["batch_stats"]["stem_bn"]["mean"],
                             (1 - bn_momentum) * stem.mean((0, 1, 2)), atol=1e-5, rtol=1e-5)


def test_dropout_needs_rng_only_in_train():
  from jaxgen.nets.spinal import SpinalHead
  head = SpinalHead(num_classes=4, layer_width=8, num_layers=2)
  x = jnp.ones((3, 6))
  v = head.init(KEY, x)
  a, b = (head.apply(v, x, train=True, mutable=["batch_stats"],
                     rngs={"dropout": jax.random.PRNGKey(i)})[0] for i in (1, 2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(head.apply(v, x), head.apply(v, x))


def test_bfloat16_compute_float32_params():
  f32, bf16 = _tiny_resnet(), _tiny_resnet(dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
  v = jax.jit(f32.init)(KEY, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(
      jax.eval_shape(bf16.init, KEY, x)))
  out, ref = jax.jit(lambda v, x: (bf16.apply(v, x), f32.apply(v, x)))(v, x)
  assert out.dtype == jnp.float32
  # bf16 keeps ~3 significant digits; tolerance relative to the logit scale.
  assert np.max(np.abs(out - ref)) < 0.05 * (1 + np.max(np.abs(ref)))
  assert build_classifier("resnet18", 3, dtype="bfloat16").dtype == jnp.bfloat16


def test_spinal_head_matches_numpy_reference():
  """SpinalNet head (Kabir et al. 2020): layer k sees half (k mod 2) of x and layer k-1's output;
  logits = fc_out(concat of all layer outputs). Eval mode, BN with running stats."""
  from jaxgen.nets.spinal import SpinalHead
  head = SpinalHead(num_classes=3, layer_width=4, num_layers=3)
  x = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
  v = jax.eval_shape(head.init, KEY, jnp.asarray(x))
  v = _random_like(v, seed=1)
  v["batch_stats"] = jax.tree_util.tree_map(np.abs, v["batch_stats"])
  p, s = v["params"], v["batch_stats"]
  outs, prev = [], None
  for k in range(3):
    part = x[:, :5] if k % 2 == 0 else x[:, 5:]
    inp = part if prev is None else np.concatenate([part, prev], 1)
    y = inp @ p[f"layer{k + 1}"]["kernel"] + p[f"layer{k + 1}"]["bias"]
    bn, st = p[f"bn{k + 1}"], s[f"bn{k + 1}"]
    y = (y - st["mean"]) / np.sqrt(st["var"] + 1e-5) * bn["scale"] + bn["bias"]
    prev = np.maximum(y, 0)
    outs.append(prev)
  want = np.concatenate(outs, 1) @ p["fc_out"]["kernel"] + p["fc_out"]["bias"]
  np.testing.assert_allclose(head.apply(v, jnp.asarray(x)), want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- importer ---

# (import name, build kwargs, spatial size for eval_shape)
ROUND_TRIP = [("resnet18", dict(width=8), 32), ("resnet50", dict(width=8), 32),
              ("mobilenet_v3_large", dict(width_mult=0.5), 32), ("mobilenet_v3_small", {}, 32),
              ("vit_b_16", dict(TINY_VIT, image_size=32), 32)]


@pytest.mark.parametrize("name,kw,size", ROUND_TRIP)
def test_import_round_trip(name, kw, size):
  """flax variables -> torchvision names -> import_torchvision == the same tree, bit for bit."""
  model = build_classifier(name, 6, **kw)
  shapes = _abstract(model, size)
  variables = _random_like(shapes)
  sd = export_torchvision(name, variables, **kw)
  sd.update({k.replace("running_mean", "num_batches_tracked"): np.array(3)
             for k in list(sd) if k.endswith("running_mean")})
  back = import_torchvision(name, sd, **kw)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(shapes)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                         back, variables)


@pytest.mark.parametrize("name,n_keys,spot", [
    ("resnet18", 102, {"layer2.0.downsample.0.weight": (128, 64, 1, 1), "fc.weight": (1000, 512),
                       "layer4.1.bn2.running_var": (512,)}),
    ("resnet50", 267, {"layer1.0.conv3.weight": (256, 64, 1, 1),
                       "layer3.5.bn3.running_mean": (1024,)}),
    ("mobilenet_v3_large", 266, {"features.4.block.2.fc1.weight": (24, 72, 1, 1),
                                 "features.16.0.weight": (960, 160, 1, 1),
                                 "classifier.0.weight": (1280, 960)}),
    ("mobilenet_v3_small", 210, {"features.1.block.1.fc1.weight": (8, 16, 1, 1),
                                 "features.2.block.1.0.weight": (72, 1, 3, 3),
                                 "classifier.3.weight": (1000, 1024)}),
    ("vit_b_16", 152, {"encoder.layers.encoder_layer_11.self_attention.in_proj_weight": (2304, 768),
                       "encoder.pos_embedding": (1, 197, 768), "class_token": (1, 1, 768),
                       "encoder.layers.encoder_layer_0.mlp.3.weight": (768, 3072),
                       "heads.head.weight": (1000, 768)})])
def test_torchvision_key_names(name, n_keys, spot):
  """Full-size models export exactly torchvision's key count, spot-checked names and shapes."""
  shapes = _abstract(build_classifier(name, 1000), 224)
  zeros = jax.tree_util.tree_map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
  sd = export_torchvision(name, zeros)
  assert len(sd) == n_keys
  assert {k: sd[k].shape for k in spot} == spot


def _tiny_resnet_sd():
  shapes = _abstract(build_classifier("resnet18", 4, width=8), 32)
  return export_torchvision("resnet18", _random_like(shapes), width=8)


def test_import_errors_name_the_key():
  sd = _tiny_resnet_sd()
  bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((8, 8, 5, 5), np.float32)})
  with pytest.raises(DataError, match=r"mis-shaped \[layer1\.0\.conv1\.weight \(8, 8, 5, 5\) "
                                      r"\(expected \(8, 8, 3, 3\)\)"):
    import_torchvision("resnet18", bad, width=8)
  missing = {k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(DataError, match=r"missing \[layer3\.1\.bn2\.running_var\]"):
    import_torchvision("resnet18", missing, width=8)
  with pytest.raises(DataError, match=r"unexpected \[layer5\.0\.conv1\.weight\]"):
    import_torchvision("resnet18", dict(sd, **{"layer5.0.conv1.weight": np.zeros(3)}), width=8)
  with pytest.raises(DataError, match=r"conv1\.weight \(8, 3, 7, 7\) \(expected \(8, 3, 3, 3\)\)"
                                      r".*set small_input=False"):
    import_torchvision("resnet18", sd, width=8, small_input=True)  # 7x7 stem into the small stem
  with pytest.raises(DataError, match="fc.weight"):
    import_torchvision("resnet18", {"conv1.weight": np.zeros((8, 3, 7, 7))}, width=8)


def test_import_new_head_is_reinitialised_and_reported():
  sd = _tiny_resnet_sd()
  variables, report = import_torchvision_with_report("resnet18", sd, num_classes=9, width=8,
                                                     rng=KEY)
  assert variables["params"]["fc"]["kernel"].shape == (64, 9)
  assert set(report.reinitialised) == {"params/fc/kernel", "params/fc/bias"}
  assert set(report.ignored_keys) == {"fc.weight", "fc.bias"} and report.checkpoint_num_classes == 4
  np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                sd["conv1.weight"].transpose(2, 3, 1, 0))
  spinal, report = import_torchvision_with_report("resnet18", sd, width=8, head="spinal",
                                                  spinal_width=8, rng=KEY)
  assert "fc" not in spinal["params"] and all(p.startswith("params/spinal") or
                                               p.startswith("batch_stats/spinal")
                                               for p in report.reinitialised)
  model = build_classifier("resnet18", 4, width=8, head="spinal", spinal_width=8)
  assert jax.eval_shape(model.apply, spinal, jnp.zeros((1, 32, 32, 3))).shape == (1, 4)


def test_pos_embedding_interpolation_properties():
  """Bicubic with align_corners=True keeps corner rows, constants and the identity; exact
  agreement with torchvision's interpolate_embeddings is in the torch parity tests."""
  rng = np.random.default_rng(0)
  pos = rng.standard_normal((1, 1 + 5 * 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(interpolate_pos_embedding(pos, 5), pos)
  up = interpolate_pos_embedding(pos, 9)
  assert up.shape == (1, 1 + 81, 3)
  np.testing.assert_array_equal(up[0, 0], pos[0, 0])
  g_in, g_out = pos[0, 1:].reshape(5, 5, 3), up[0, 1:].reshape(9, 9, 3)
  for (i, j), (a, b) in zip([(0, 0), (0, 4), (4, 0), (4, 4)], [(0, 0), (0, 8), (8, 0), (8, 8)]):
    np.testing.assert_allclose(g_out[a, b], g_in[i, j], atol=1e-6)
  const = np.full((1, 26, 2), 0.7, np.float32)
  np.testing.assert_allclose(interpolate_pos_embedding(const, 3), 0.7, atol=1e-6)
  with pytest.raises(DataError):
    interpolate_pos_embedding(pos[:, :20], 4)


def test_config_errors():
  with pytest.raises(ConfigError, match="classifier.name"):
    build_classifier("resnet34", 10)
  with pytest.raises(ConfigError, match="classifier.small_input"):
    build_classifier("vit_tiny", 10, small_input=True)
  with pytest.raises(ConfigError, match="classifier.head"):
    build_classifier("resnet18", 10, head="mlp")
  with pytest.raises(ConfigError, match="num_classes"):
    build_classifier("resnet18", 0)
  with pytest.raises(ConfigError, match="patch_size"):
    build_classifier("vit_tiny", 10, image_size=30, patch_size=4)
  with pytest.raises(ConfigError, match="num_heads"):
    build_classifier("vit_tiny", 10, hidden_dim=30, num_heads=4)
  model = build_classifier("vit_tiny", 10, **TINY_VIT)
  with pytest.raises(DataError, match="32x32"):
    jax.eval_shape(model.init, KEY, jnp.zeros((1, 64, 64, 3)))


def test_mobilenet_small_input_accepts_torchvision_layout():
  """MobileNet's small stem only changes a stride, so torchvision-shaped weights import into it."""
  shapes = _abstract(build_classifier("mobilenet_v3_small", 3), 32)
  sd = export_torchvision("mobilenet_v3_small", _random_like(shapes))
  variables = import_torchvision("mobilenet_v3_small", sd, small_input=True)
  np.testing.assert_array_equal(variables["params"]["stem_conv"]["kernel"],
                                sd["features.0.0.weight"].transpose(2, 3, 1, 0))
