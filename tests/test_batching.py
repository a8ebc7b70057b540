"""jaxgen.parallel.batching.batched_apply: padded fixed-size batches, sharded, unpadded."""

import jax
import ml_collections
import numpy as np
import pytest

from jaxgen.parallel.batching import batch_size_for, batched_apply
from jaxgen.parallel.mesh import make_mesh


def test_matches_one_call_with_pytree_outputs_and_every_padding():
  """Outputs equal the function applied to all rows at once, for sizes that leave a partial last
  batch, on one device and sharded over 8 (batch rounded up to a multiple of 8); padding rows
  never reach the result; empty input gives None."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(29, 3)).astype(np.float32), rng.normal(size=(29,)).astype(np.float32)
  seen = []

  @jax.jit
  def fn(a, b):
    return {"sum": a.sum(1) + b, "scaled": 2.0 * a}

  def counting(a, b):
    seen.append(a.shape[0])
    return fn(a, b)

  want = jax.device_get(fn(x, y))
  mesh = make_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
  for mesh_, pad in ((None, "zeros"), (None, "edge"), (mesh, "zeros")):
    seen.clear()
    got = batched_apply(counting, (x, y), 10, mesh=mesh_, pad=pad)
    np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-6)
    np.testing.assert_allclose(got["scaled"], want["scaled"], rtol=1e-6)
    assert len(set(seen)) == 1 and seen[0] == (10 if mesh_ is None else 16)
  assert batch_size_for(3, 10) == 3 and batch_size_for(3, 10, mesh) == 8
  assert batch_size_for(3, 10, full_batches=True) == 10 and batch_size_for(3, 10, mesh, full_batches=True) == 16
  for n in (3, 29):  # full_batches: short and long inputs share the one compiled shape
    seen.clear()
    got = batched_apply(counting, (x[:n], y[:n]), 10, full_batches=True)
    np.testing.assert_allclose(got["sum"], want["sum"][:n], rtol=1e-6)
    assert set(seen) == {10}
  assert batched_apply(counting, np.zeros((0, 3), np.float32), 4) is None
  with pytest.raises(ValueError, match="lengths"):
    batched_apply(counting, (x, y[:5]), 4)
