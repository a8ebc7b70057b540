"""FID Inception-V3 without torch: resize against scikit-image, the no-padding-count average pool
against NumPy, shapes, the importer's key mapping on a fake NumPy state dict, missing-file
errors, and the feature-function plumbing. Numerical parity with PyTorch (pytorch-fid's blocks,
F.interpolate) is in tests/test_parity_features.py (-m torch)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from skimage.transform import resize as sk_resize

from jaxgen.errors import DataError

jinc = importlib.import_module("jaxgen.metrics.inception")


@pytest.mark.parametrize("in_hw", [(32, 40), (80, 64), (299, 299), (330, 512)])
def test_resize_matches_skimage_linear(in_hw):
  # skimage order=1, mode='edge', no antialias: half-pixel centres, edge clamping, in float64.
  # Our source coordinates are rounded to float32 as PyTorch does (error <~ 3e-5 of a pixel
  # step), so the tolerance on data in [-1, 1] is 1e-4 absolute.
  x = np.random.default_rng(0).uniform(-1, 1, size=(1, *in_hw, 2)).astype(np.float32)
  ref = sk_resize(x[0].astype(np.float64), (299, 299, 2), order=1, mode="edge",
                  anti_aliasing=False)
  got = np.asarray(jinc.resize_bilinear(jnp.asarray(x), 299, 299))[0]
  np.testing.assert_allclose(got, ref, atol=1e-4)


def test_bilinear_matrix_rows_are_interpolation_weights():
  m = jinc.bilinear_matrix(7, 299)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert (m >= 0).all() and ((m > 0).sum(1) <= 2).all()
  np.testing.assert_array_equal(jinc.bilinear_matrix(5, 5), np.eye(5, dtype=np.float32))


def test_avg_pool_excludes_padding():
  x = np.random.default_rng(1).normal(size=(1, 5, 4, 3)).astype(np.float32)
  got = np.asarray(jinc._avg3(jnp.asarray(x)))
  ref = np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      ref[0, i, j] = x[0, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean((0, 1))
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def fake_state_dict():
  """Random weights with pytorch-fid's key names and PyTorch layouts (OIHW, (out, in))."""
  shapes = jax.eval_shape(jinc.FIDInceptionV3(resize=None).init, jax.random.key(0),
                          jnp.zeros((1, 75, 75, 3)))
  rng = np.random.default_rng(0)
  sd = {}
  torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    name = ".".join(path[1:-1]) + "." + torch_leaf[path[-1]]
    shape = leaf.shape
    if path[-1] == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
      fan_in = np.prod(leaf.shape[:-1])
      sd[name] = (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif path[-1] in ("var", "scale"):
      sd[name] = rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    else:
      sd[name] = rng.normal(scale=0.1, size=shape).astype(np.float32)
    if path[-1] == "mean":
      sd[name.replace("running_mean", "num_batches_tracked")] = np.array(0)
  return sd


def test_shapes_and_key_mapping(fake_state_dict):
  sd = fake_state_dict
  assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in sd and sd["fc.weight"].shape == (1008, 2048)
  pool, logits = jax.eval_shape(jinc.FIDInceptionV3().apply, jinc.import_fid_inception(sd),
                                jnp.zeros((2, 64, 48, 3)))
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
  v = jinc.import_fid_inception(sd)
  np.testing.assert_array_equal(v["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, 4],
                                sd["Mixed_6b.branch7x7_2.conv.weight"][:, :, 0, 4].T)
  np.testing.assert_array_equal(v["batch_stats"]["Conv2d_1a_3x3"]["bn"]["mean"],
                                sd["Conv2d_1a_3x3.bn.running_mean"])
  np.testing.assert_array_equal(v["params"]["Mixed_5b"]["branch_pool"]["bn"]["scale"],
                                sd["Mixed_5b.branch_pool.bn.weight"])
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].T)


def test_importer_errors(fake_state_dict, tmp_path):
  sd = dict(fake_state_dict)
  with pytest.raises(DataError, match="fc.weight has shape"):
    jinc.import_fid_inception({**sd, "fc.weight": np.zeros((1000, 2048), np.float32)})
  del sd["Mixed_7b.branch1x1.conv.weight"]
  with pytest.raises(DataError, match="missing keys Mixed_7b.branch1x1.conv.weight"):
    jinc.import_fid_inception(sd)
  with pytest.raises(DataError, match="pt_inception-2015-12-05-6726825d.pth.*set "
                     r"--config.evaluate.inception_path to it; jaxgen never downloads"):
    jinc.load_fid_inception(str(tmp_path / "missing.pth"))
  with pytest.raises(DataError, match=r"set --config.eval_x.fid to it"):
    jinc.load_fid_inception(str(tmp_path / "missing.pth"), config_key="eval_x.fid")


def test_weight_file_hints_name_keys_the_command_line_accepts(tmp_path):
  """Every --config.<key> that a missing-weights hint names is accepted by the command line of
  the methods that read it, and lands in that key (followed literally, the hint is a valid flag)."""
  import importlib
  import re
  from jaxgen import configlib
  from jaxgen import main as jaxgen_main
  jl = importlib.import_module("jaxgen.metrics.lpips")
  hints = []
  for call in (lambda: jinc.load_fid_inception(str(tmp_path / "a.pth")),
               lambda: jl.load_lpips(str(tmp_path / "a.pth"), str(tmp_path / "b.pth")),
               lambda: jl.load_lpips(jl.__file__, str(tmp_path / "b.pth"))):
    with pytest.raises(DataError) as err:
      call()
    hints += re.findall(r"--config\.([\w.]+)", str(err.value))
  assert hints == ["evaluate.inception_path", "evaluate.lpips_backbone_path",
                   "evaluate.lpips_linear_path"]
  for config in ("configs/mvld.py", "configs/lrgmm.py"):
    for key in hints:
      if key.startswith("evaluate.lpips") and config.endswith("lrgmm.py"):
        continue  # LR-GMM-NN reads no LPIPS weights
      fv = jaxgen_main.parse_flags(["jaxgen", f"--config={config}", f"--config.{key}=/w/x.pth"])
      assert configlib.get_path(fv.config, key) == "/w/x.pth"


def test_feature_function_plumbing(fake_state_dict):
  v = jinc.import_fid_inception(fake_state_dict)
  rng = np.random.default_rng(2)
  gray = rng.integers(0, 256, (3, 75, 75, 1), dtype=np.uint8)
  # resize=None keeps the input at 75x75 (the smallest the network takes) to stay fast on CPU.
  fn = jinc.inception_feature_fn(v, batch_size=2, resize=None)
  pool, logits = fn(gray)
  assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
  assert np.isfinite(pool).all() and (pool >= 0).all()  # mean of ReLU outputs
  # Padding of the last batch does not change results; gray equals the RGB repetition.
  pool2, _ = fn(np.repeat(gray[2:], 3, axis=-1))
  np.testing.assert_allclose(pool2[0], pool[2], rtol=1e-5, atol=1e-5)
  _, biased = jinc.inception_feature_fn(v, batch_size=2, resize=None, logits_bias=True)(gray)
  np.testing.assert_allclose(biased - logits, np.broadcast_to(v["params"]["fc"]["bias"],
                                                              logits.shape), atol=1e-4)
  ext = jinc.InceptionFeatures(v, "pool3", resize=None)
  assert ext.feature_dim == 2048 and "pool3" in ext.name
  np.testing.assert_allclose(np.asarray(ext(gray[:2])), pool[:2], rtol=1e-6, atol=1e-6)
  with pytest.raises(DataError):
    jinc.InceptionFeatures(v, "pool4")


def test_preprocess_needs_the_range_of_float_images():
  x = np.random.default_rng(4).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
  want = x.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(np.asarray(jinc.preprocess(x)), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jinc.preprocess(x / 255.0, (0, 1))), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(jinc.preprocess(want, (-1, 1))), want, atol=1e-6)
  with pytest.raises(DataError, match="value_range"):
    jinc.preprocess(x / 255.0)
