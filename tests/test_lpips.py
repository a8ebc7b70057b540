"""LPIPS without torch: importer key mapping on fake NumPy state dicts, eq. 1 against a NumPy
transcription (rtol 1e-5), metric properties, pair sampling, and the in-domain variant on a tiny
Flax CNN. Parity with the lpips package is in tests/test_parity_features.py (-m torch)."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import DataError
from jaxgen.nets.lpips_backbones import BACKBONES, CHANNELS, MIN_SIZE, max_pool

# The module, not the `lpips` function that jaxgen.metrics re-exports under the same name.
L = importlib.import_module("jaxgen.metrics.lpips")


def _fake_torch_state_dicts(net, seed=0):
  """torchvision-named trunk weights (OIHW) and lpips-named lin weights, random."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(BACKBONES[net]().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  trunk = {}
  for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
    name = ".".join(p.replace("features_", "features.") for p in path[:-1])
    if path[-1] == "kernel":
      h, w, i, o = leaf.shape
      trunk[name + ".weight"] = (rng.normal(size=(o, i, h, w)) / np.sqrt(h * w * i)).astype(
          np.float32)
    else:
      trunk[name + ".bias"] = rng.normal(scale=0.1, size=leaf.shape).astype(np.float32)
  trunk["classifier.1.weight"] = np.zeros((10, 4), np.float32)  # ignored
  lin = {f"lin{i}.model.1.weight": rng.uniform(size=(1, c, 1, 1)).astype(np.float32)
         for i, c in enumerate(CHANNELS[net])}
  return trunk, lin


@pytest.fixture(scope="module")
def squeeze_vars():
  trunk, lin = _fake_torch_state_dicts("squeeze")
  return L.import_lpips(trunk, lin, "squeeze"), trunk, lin


def test_import_maps_torchvision_keys(squeeze_vars):
  variables, trunk, lin = squeeze_vars
  p = variables["params"]
  np.testing.assert_array_equal(p["net"]["features_3"]["expand3x3"]["kernel"][2, 0, 5, 7],
                                trunk["features.3.expand3x3.weight"][7, 5, 2, 0])
  np.testing.assert_array_equal(p["net"]["features_0"]["bias"], trunk["features.0.bias"])
  np.testing.assert_array_equal(p["lin6"], lin["lin6.model.1.weight"].ravel())
  for net in ("alex", "vgg"):
    t, l = _fake_torch_state_dicts(net)
    v = L.import_lpips(t, l, net)
    assert set(v["params"]) == {"net"} | {f"lin{i}" for i in range(5)}


def test_import_errors(squeeze_vars):
  _, trunk, lin = squeeze_vars
  with pytest.raises(DataError, match="features.12.squeeze.weight"):
    L.import_lpips({k: v for k, v in trunk.items() if k != "features.12.squeeze.weight"}, lin)
  with pytest.raises(DataError, match="negative"):
    L.import_lpips(trunk, {**lin, "lin2.model.1.weight": -lin["lin2.model.1.weight"]})
  with pytest.raises(DataError, match="lin0"):
    L.import_lpips(trunk, {}, "squeeze")
  with pytest.raises(ValueError, match="resnet"):
    L.import_lpips(trunk, lin, "resnet")


def test_load_lpips_missing_files_say_where_weights_come_from(tmp_path):
  with pytest.raises(DataError, match="squeezenet1_1-b8a52dc0.pth.*set "
                     "--config.evaluate.lpips_backbone_path; jaxgen never downloads"):
    L.load_lpips(str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "squeeze")
  with pytest.raises(DataError, match="set --config.judge.lin; jaxgen never downloads"):
    L.load_lpips(L.__file__, str(tmp_path / "b.pth"), "squeeze", lin_key="judge.lin")


def _numpy_lpips(fx, fy, weights):
  """LPIPS eq. 1 transcribed with explicit loops over layers and positions."""
  out = np.zeros(fx[0].shape[0])
  for l, (a, b) in enumerate(zip(fx, fy)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
    nb = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
    w = np.ones(a.shape[-1]) if weights is None else np.asarray(weights[l], np.float64)
    out += (((na - nb)**2) * w).sum(-1).mean(axis=(1, 2))
  return out


def test_lpips_equals_numpy_eq1_on_trunk_features(squeeze_vars):
  variables, _, _ = squeeze_vars
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (2, 36, 33, 3), dtype=np.uint8)
  y = rng.integers(0, 256, (2, 36, 33, 3), dtype=np.uint8)
  got = np.asarray(L.lpips(x, y, variables, "squeeze"))
  scale = lambda a: (a.astype(np.float32) / 127.5 - 1.0 - L._SHIFT) / L._SCALE
  trunk = jax.jit(BACKBONES["squeeze"]().apply)
  fx = trunk({"params": variables["params"]["net"]}, scale(x))
  fy = trunk({"params": variables["params"]["net"]}, scale(y))
  assert [f.shape[-1] for f in fx] == list(CHANNELS["squeeze"])
  weights = [variables["params"][f"lin{i}"] for i in range(7)]
  np.testing.assert_allclose(got, _numpy_lpips(fx, fy, weights), rtol=1e-5)


def test_lpips_metric_properties(squeeze_vars):
  variables, _, _ = squeeze_vars
  rng = np.random.default_rng(2)
  x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  dxy = np.asarray(L.lpips(x, y, variables))
  np.testing.assert_allclose(dxy, np.asarray(L.lpips(y, x, variables)), rtol=1e-5)  # symmetric
  assert (dxy > 0).all()
  np.testing.assert_allclose(np.asarray(L.lpips(x, x, variables)), 0.0, atol=1e-6)
  # uint8 input and the same images as floats in any stated range give the same distance.
  xf, yf = x / 127.5 - 1.0, y / 127.5 - 1.0
  np.testing.assert_allclose(np.asarray(L.lpips(xf, yf, variables, value_range=(-1, 1))), dxy, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(L.lpips(x / 255.0, y / 255.0, variables, value_range=(0, 1))),
                             dxy, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(L.lpips(x.astype(np.float32), y.astype(np.float32), variables,
                                                value_range=(0, 255))), dxy, rtol=1e-5)
  # A float image's scale is never guessed.
  with pytest.raises(DataError, match="value_range"):
    L.lpips(x / 255.0, y / 255.0, variables)
  with pytest.raises(DataError, match="value_range"):
    L.lpips(xf, yf, variables, value_range=(0, 2))
  with pytest.raises(DataError, match="shapes"):
    L.lpips(x, y[:2], variables)


def test_max_pool_ceil_mode_matches_numpy():
  x = np.random.default_rng(3).normal(size=(1, 8, 7, 2)).astype(np.float32)
  got = np.asarray(max_pool(jnp.asarray(x), 3, 2, ceil_mode=True))
  assert got.shape == (1, 4, 3, 2)  # ceil((8-3)/2)+1, ceil((7-3)/2)+1
  for i in range(4):
    for j in range(3):
      window = x[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
      np.testing.assert_array_equal(got[0, i, j], window.max((0, 1)))


def test_sample_pairs():
  pairs = L.sample_pairs(5, None, None)
  assert len(pairs) == 10 and (pairs[:, 0] < pairs[:, 1]).all()
  sampled = L.sample_pairs(50, 200, jax.random.key(0))
  assert sampled.shape == (200, 2) and (sampled[:, 0] < sampled[:, 1]).all()
  assert sampled.max() < 50
  with pytest.raises(ValueError, match="PRNG key"):
    L.sample_pairs(50, 10, None)
  with pytest.raises(DataError):
    L.sample_pairs(1, None, None)


def test_lpips_diversity_is_mean_over_pairs():
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  dist = lambda a, b: jnp.abs(jnp.asarray(a, jnp.float32) - b).mean(axis=(1, 2, 3))
  got = L.lpips_diversity(images, distance_fn=dist, batch_size=4)
  ref = np.mean([np.abs(images[i].astype(float) - images[j]).mean()
                 for i in range(6) for j in range(i + 1, 6)])
  np.testing.assert_allclose(got, ref, rtol=1e-6)


class _TinyCNN(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Conv(4, (3, 3), strides=2, name="stage1")(x))
    h = nn.relu(nn.Conv(6, (3, 3), strides=2, name="stage2")(h))
    return nn.Dense(3, name="head")(h.mean((1, 2)))


def test_domain_lpips_on_tiny_cnn():
  model = _TinyCNN()
  rng = np.random.default_rng(5)
  x = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  y = rng.integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  # Random parameters filled in on the host: compiling `init` would dominate this test's time.
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
  variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.3, shapes)
  names = ["stage1", "stage2"]
  got = np.asarray(L.domain_lpips(x, y, model.apply, variables, names, {"train": False}))
  # Reference: the captured outputs (the convs, before ReLU) recomputed by hand.
  @jax.jit
  def stages(a):
    a = jnp.asarray(a, jnp.float32) / 127.5 - 1.0
    p = variables["params"]
    c1 = nn.Conv(4, (3, 3), strides=2).apply({"params": p["stage1"]}, a)
    return [c1, nn.Conv(6, (3, 3), strides=2).apply({"params": p["stage2"]}, nn.relu(c1))]
  np.testing.assert_allclose(got, _numpy_lpips(stages(x), stages(y), None), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(L.domain_lpips(x, x, model.apply, variables, names)), 0.0,
                             atol=1e-6)
  with pytest.raises(ValueError, match="stage9"):
    L.domain_lpips(x, y, model.apply, variables, ["stage9"])
  assert "uncalibrated" in L.domain_lpips_label("resnet18", names)
  assert L.lpips_label("squeeze") == "LPIPS-v0.1(squeeze)"


@pytest.mark.parametrize("net", ["squeeze", "alex", "vgg"])
def test_min_size_table(net):
  def sizes(s):
    init = BACKBONES[net]().init_with_output
    out = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, s, s, 3)))[0]
    return [o.shape[1] for o in out]
  assert min(sizes(MIN_SIZE[net])) >= 1
  try:
    assert min(sizes(MIN_SIZE[net] - 1)) < 1
  except (ValueError, TypeError):  # a negative size fails inside shape inference
    pass


def test_lpips_rejects_too_small_images(squeeze_vars):
  x = np.zeros((1, 16, 16, 3), np.uint8)
  with pytest.raises(DataError, match="at least 17x17"):
    L.lpips(x, x, squeeze_vars[0], "squeeze")
