"""LR-GMM-NN's NN patch projection (paper 004 eqs. 5-6) against a brute-force NumPy reference.

The reference loops over samples, positions and candidates, extracts each zero-padded patch
explicitly and compares ||Phi z - Phi y||^2 directly (not the |z|^2 + |y|^2 - 2 z.y box-sum form
of the implementation). Inputs are float64 (`jax.enable_x64`), where a random near-tie that could
flip an argmin is ~1e-12 likely, so indices must match exactly.
"""

import jax
import numpy as np
import pytest

from jaxgen.errors import ConfigError
from jaxgen.gmm.nn_projection import nn_project


def _patch(x, r, c, rho):
  """Phi of eq. 6 by hand: positions outside the map are zero."""
  h, w, q = x.shape
  out = np.zeros((2 * rho + 1, 2 * rho + 1, q))
  for dy in range(-rho, rho + 1):
    for dx in range(-rho, rho + 1):
      if 0 <= r + dy < h and 0 <= c + dx < w:
        out[dy + rho, dx + rho] = x[r + dy, c + dx]
  return out.ravel()


def _reference(z, y, zc, yc, omega, num_iters, same_position):
  b_, h, w, _ = z.shape
  n, rho = len(y), omega // 2
  grid = [(r, c) for r in range(h) for c in range(w)]
  py = {(i, r, c): _patch(y[i], r, c, rho) for i in range(n) for r, c in grid}
  cur = z.copy()
  for _ in range(num_iters):
    new, idx, pos = np.zeros_like(cur), np.zeros((b_, h, w), int), np.zeros((b_, h, w, 2), int)
    for b in range(b_):
      allowed = [i for i in range(n) if zc is None or yc[i] == zc[b]] or list(range(n))
      for r, c in grid:
        pz, best = _patch(cur[b], r, c, rho), None
        for i in allowed:  # ascending i, then row-major source: first strict minimum wins ties
          for rr, cc in ([(r, c)] if same_position else grid):
            d = np.sum((pz - py[(i, rr, cc)]) ** 2)
            if best is None or d < best[0]:
              best = (d, i, rr, cc)
        _, i, rr, cc = best
        new[b, r, c], idx[b, r, c], pos[b, r, c] = y[i, rr, cc], i, (rr, cc)
    cur = new
  return cur, idx, pos


CASES = [  # (same_position, omega, with_clusters, num_iters)
    (True, 3, False, 1), (True, 5, True, 1), (True, 5, False, 2), (True, 3, True, 2),
    (False, 3, False, 1), (False, 5, True, 1), (False, 3, True, 2),
]


@pytest.mark.parametrize("same_position,omega,with_clusters,num_iters", CASES)
def test_matches_bruteforce_reference(same_position, omega, with_clusters, num_iters):
  rng = np.random.default_rng(omega + 10 * num_iters + 100 * same_position)
  z, y = rng.normal(size=(5, 6, 6, 3)), rng.normal(size=(7, 6, 6, 3))
  # Cluster 2 has no training image: those samples fall back to all images.
  zc, yc = None, None
  if with_clusters:
    zc, yc = np.array([0, 1, 2, 0, 1]), np.array([0, 0, 1, 1, 1, 0, 1])
  ref_lat, ref_idx, ref_pos = _reference(z, y, zc, yc, omega, num_iters, same_position)
  with jax.enable_x64(True):
    # chunk 2 and block 3 do not divide B=5 and N=7: padding on both axes is exercised.
    out = nn_project(z, y, z_clusters=zc, y_clusters=yc, patch_size=omega, num_iters=num_iters,
                     same_position=same_position, chunk_size=2, block_size=3)
    lat, idx, pos = (np.asarray(a) for a in out)
  assert lat.dtype == np.float64 and idx.dtype == np.int32 and pos.dtype == np.int32
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(pos, ref_pos)
  np.testing.assert_array_equal(lat, ref_lat)  # copies of training features: exact
  np.testing.assert_array_equal(lat, y[idx, pos[..., 0], pos[..., 1]])
  if with_clusters:  # every choice lies in the sample's cluster (or anywhere for cluster 2)
    assert np.all((yc[idx] == zc[:, None, None]) | (zc[:, None, None] == 2))


@pytest.mark.parametrize("same_position", [True, False])
def test_training_image_projects_to_itself(same_position):
  rng = np.random.default_rng(1)
  y = rng.normal(size=(6, 5, 4, 3)).astype(np.float32)
  perm = np.array([3, 0, 5, 5, 1, 2, 4])
  yc = np.array([0, 1, 0, 1, 0, 1])
  out = nn_project(y[perm], y, z_clusters=yc[perm], y_clusters=yc, same_position=same_position,
                   num_iters=2, chunk_size=3)
  np.testing.assert_array_equal(np.asarray(out.indices), np.broadcast_to(perm[:, None, None],
                                                                          (7, 5, 4)))
  np.testing.assert_array_equal(np.asarray(out.latents), y[perm])
  grid = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="ij"), -1)
  np.testing.assert_array_equal(np.asarray(out.positions), np.broadcast_to(grid, (7, 5, 4, 2)))


@pytest.mark.parametrize("same_position", [True, False])
def test_ties_pick_lowest_index(same_position):
  # Images 1 and 4 are identical (exactly equal distances): the lower index wins, also across
  # blocks (block_size=2 puts them in different blocks) and for the all-positions search.
  rng = np.random.default_rng(3)
  y = rng.normal(size=(5, 4, 4, 2)).astype(np.float32)
  y[4] = y[1]
  out = nn_project(y[[4]], y, same_position=same_position, block_size=2)
  np.testing.assert_array_equal(np.asarray(out.indices), np.ones((1, 4, 4), np.int32))


def test_all_positions_chunked_sanity():
  # B=70 > chunk 64 and N=20 > block 16: padded chunks and blocks; every choice is a true NN.
  rng = np.random.default_rng(2)
  z = rng.normal(size=(70, 8, 8, 4)).astype(np.float32)
  y = rng.normal(size=(20, 8, 8, 4)).astype(np.float32)
  out = nn_project(z, y, same_position=False)
  lat, idx, pos = (np.asarray(a) for a in out)
  assert lat.shape == (70, 8, 8, 4) and idx.shape == (70, 8, 8) and pos.shape == (70, 8, 8, 2)
  assert idx.min() >= 0 and idx.max() < 20 and pos.min() >= 0 and pos.max() < 8
  np.testing.assert_array_equal(lat, y[idx, pos[..., 0], pos[..., 1]])
  # Float64 distances of all 20*64 candidate patches (built by padding + slicing, independent of
  # the implementation's matmul): the chosen one is within float32 rounding of the minimum.
  def patches(x):
    xp = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
    return np.stack([xp[:, r:r + 5, c:c + 5].reshape(len(x), -1) for r in range(8)
                     for c in range(8)], axis=1)
  pz, py = patches(z), patches(y).reshape(20 * 64, -1)
  d = ((pz ** 2).sum(-1)[..., None] + (py ** 2).sum(-1) - 2 * pz @ py.T).reshape(70, 64, -1)
  chosen = np.take_along_axis(d, (idx * 64 + pos[..., 0] * 8 + pos[..., 1]).reshape(70, 64, 1), -1)
  # Tolerance: float32 distances of ~200 carry ~1e-4 absolute rounding.
  assert np.all(chosen[..., 0] - d.min(-1) <= 1e-3)


def test_bad_inputs_raise_config_error():
  z, y = np.zeros((2, 4, 4, 3), np.float32), np.zeros((3, 4, 4, 3), np.float32)
  zc, yc = np.zeros(2, int), np.zeros(3, int)
  bad = [
      dict(z=z[0]), dict(y=y[..., :2]), dict(y=y[:0]), dict(patch_size=4), dict(patch_size=0),
      dict(patch_size=3.0), dict(num_iters=0), dict(chunk_size=0), dict(block_size=-1),
      dict(z_clusters=zc), dict(y_clusters=yc), dict(z_clusters=zc, y_clusters=yc[:2]),
      dict(z_clusters=zc.astype(float), y_clusters=yc), dict(same_position="yes"),
  ]
  for kw in bad:
    args = dict(z=z, y=y) | kw
    with pytest.raises(ConfigError) as err:
      nn_project(args.pop("z"), args.pop("y"), **args)
    assert "\n" not in str(err.value) and str(err.value).startswith("config.nn.")
  # same_cluster=False ignores labels, so a lone label array is fine there.
  out = nn_project(z, y, z_clusters=zc, same_cluster=False)
  assert out.indices.shape == (2, 4, 4)
