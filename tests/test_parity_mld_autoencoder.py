"""Opt-in PyTorch parity of MLDCubAutoencoder at 64x64 (run with -m torch).

Random flax params (biases included) are carried into `benchmarks.torch_mld_cub`, a transcription
of the MLD authors' CUB image AE that keeps their layout and [0, 1] pixel range (conv HWIO -> OIHW,
Dense transposed with the NHWC -> NCHW flattening permutation); the flax encode/decode must equal
theirs after the affine [-1, 1] <-> [0, 1] change of pixel range.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nets.mld_autoencoder import MLDCubAutoencoder

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from benchmarks import torch_mld_cub as tm  # noqa: E402  (needs torch)

B = 2
TOL = 1e-5  # max abs error, float32


def _random_params(model, seed):
  """Kernels ~ N(0, 1 / fan_in) so activations stay O(1); biases ~ N(0, 0.1^2), not zero, so the
  bias permutation of the decoder's Dense is exercised."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if leaf.ndim == 1:
      return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.normal(0.0, 1.0, leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
  return jax.tree_util.tree_map(fill, shapes)


@pytest.fixture(scope="module")
def models():
  model = MLDCubAutoencoder()
  params = _random_params(model, 0)
  reference = tm.MLDCubAE()
  tm.load_flax_params(reference, params)
  return model, params, reference.eval()


def _nchw(x):
  return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def _max_err(actual, expected):
  return float(np.abs(np.asarray(actual) - np.asarray(expected)).max())


def test_encode_matches_torch(models):
  model, params, reference = models
  x = jax.random.uniform(jax.random.key(1), (B, 64, 64, 3), minval=-1.0, maxval=1.0)
  with torch.no_grad():
    expected = reference.encoder((_nchw(x) + 1.0) / 2.0).numpy()
  z = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, x)
  assert np.abs(expected).max() > 0.1  # a non-trivial latent
  assert _max_err(z, expected) < TOL


def test_decode_and_reconstruction_match_torch(models):
  model, params, reference = models
  z = jax.random.normal(jax.random.key(2), (B, 64))
  x = jax.random.uniform(jax.random.key(3), (B, 64, 64, 3), minval=-1.0, maxval=1.0)
  with torch.no_grad():
    dec = reference.decoder(torch.from_numpy(np.array(z))).permute(0, 2, 3, 1).numpy()
    rec = reference((_nchw(x) + 1.0) / 2.0).permute(0, 2, 3, 1).numpy()

  @jax.jit
  def run(p, z, x):
    return model.apply({"params": p}, z, method="decode"), model.apply({"params": p}, x)

  out, out_rec = run(params, z, x)
  assert np.abs(dec).max() > 0.1
  assert _max_err(out, 2.0 * dec - 1.0) < TOL
  assert _max_err(out_rec, 2.0 * rec - 1.0) < TOL
