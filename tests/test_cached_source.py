"""A synthetic set kept on disk (`jaxgen.data.cached.CachedSource` over a shard cache) reads the
same items as the in-memory path (`shard_cache.read_shards`), and a classifier trained with it
as its replacement pool sees the same batches and ends with the same weights."""

import functools
import os
import pickle

import jax
import numpy as np
import pytest

from jaxgen import configlib
from jaxgen.classifier.config import classifier_config
from jaxgen.classifier.sampling import SyntheticReplacement, balanced_class_weights
from jaxgen.classifier.train import fit_classifier, streamed_record
from jaxgen.data.cached import CachedSource
from jaxgen.data.memory import ArrayBatches
from jaxgen.data.sources import subset
from jaxgen.errors import DataError
from jaxgen.io import shard_cache
from jaxgen.parallel.mesh import make_mesh

K = 3


def _items(n: int, size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  soft = rng.dirichlet(np.ones(K), n).astype(np.float32)
  return {"images": rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8),
          "soft_label": soft, "target_class": np.argmax(soft, 1).astype(np.int32)}


def _cache(path, items: dict, shard_size: int) -> str:
  make = lambda s, index: {k: v[index] for k, v in items.items()}  # noqa: E731
  out = shard_cache.build_shards(str(path), len(items["images"]), shard_size, make,
                                 manifest={"what": "test"}, log=lambda m: None, collect=False)
  assert out == {}  # collect=False holds nothing
  return str(path)


def test_cached_source_reads_every_item_like_read_shards(tmp_path):
  items = _items(23)
  cache = _cache(tmp_path / "c", items, shard_size=5)
  src = CachedSource(cache, 23, num_classes=K)
  ref = shard_cache.read_shards(cache, 23)
  assert len(src) == 23 and src.image_shape == (8, 8, 3)
  assert isinstance(src._shard_images(0), np.memmap)  # local uncompressed shards are mapped
  for i in (0, 4, 5, 22, -1):
    record = src[i]
    np.testing.assert_array_equal(record["image"], ref["images"][i])
    np.testing.assert_array_equal(record["soft_label"], ref["soft_label"][i])
    assert record["label"] == np.argmax(ref["soft_label"][i])
  np.testing.assert_array_equal(src.images(3, 17), ref["images"][3:17])  # across three shards
  np.testing.assert_array_equal(np.concatenate(list(src.image_chunks(4))), ref["images"])
  np.testing.assert_array_equal(src.column("target_class"), ref["target_class"])
  np.testing.assert_array_equal(src.labels(), np.argmax(ref["soft_label"], 1))
  part = subset(src, [7, 2])
  np.testing.assert_array_equal(part[0]["image"], ref["images"][7])
  again = pickle.loads(pickle.dumps(src))  # what a grain worker process receives
  np.testing.assert_array_equal(again[12]["image"], ref["images"][12])
  with pytest.raises(IndexError):
    src[23]
  with pytest.raises(DataError, match="no array 'strength'"):
    src.column("strength")


def test_open_shard_maps_stay_bounded(tmp_path, monkeypatch):
  """Each map holds a file descriptor: a paper-scale set (thousands of shards) keeps only the
  most recently used ones open, and reads stay right."""
  from jaxgen.data import cached
  monkeypatch.setattr(cached, "MAX_OPEN_SHARDS", 2)
  items = _items(23)
  src = CachedSource(_cache(tmp_path / "c", items, shard_size=3), 23, num_classes=K)
  for i in (0, 22, 5, 12, 0, 19):
    np.testing.assert_array_equal(src[i]["image"], items["images"][i])
  np.testing.assert_array_equal(src.images(0, 23), items["images"])
  assert len(src._images) <= 2


def test_compressed_shards_are_read_whole_and_gaps_are_refused(tmp_path):
  items = _items(10)
  cache = _cache(tmp_path / "c", items, shard_size=4)
  path = shard_cache.shard_path(cache, 1)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  np.savez_compressed(path.removesuffix(".npz"), **arrays)  # a shard another tool compressed
  src = CachedSource(cache, 10, num_classes=K)
  assert not isinstance(src._shard_images(1), np.memmap)
  np.testing.assert_array_equal(src.images(0, 10), items["images"])
  os.remove(path)
  with pytest.raises(DataError, match="cover 6 distinct of 10"):
    CachedSource(cache, 10, num_classes=K)
  with pytest.raises(DataError, match="soft labels have 3 classes; expected 4"):
    CachedSource(_cache(tmp_path / "d", items, 4), 10, num_classes=4)


def test_replacement_from_the_cache_gives_the_in_memory_batches(tmp_path):
  items = _items(30, size=4, seed=1)
  src = CachedSource(_cache(tmp_path / "c", items, shard_size=7), 30, num_classes=K)
  weights = balanced_class_weights(src.labels(), K)
  real = {"image": np.zeros((40, 4, 4, 3), np.uint8), "label": np.eye(K, dtype=np.float32)[
      np.arange(40) % K], "weight": np.ones(40, np.float32)}
  pool = {"image": items["images"], "label": items["soft_label"],
          "weight": weights[src.labels()]}
  record_fn = functools.partial(streamed_record, num_classes=K, soft=True, weights=weights,
                                drw=None)
  a = SyntheticReplacement(ArrayBatches(real, global_batch_size=16, seed=0), pool, 0.4, seed=3)
  b = SyntheticReplacement(ArrayBatches(real, global_batch_size=16, seed=0), src, 0.4, seed=3,
                           record_fn=record_fn)
  swapped = 0
  for _ in range(6):
    x, y = next(a), next(b)
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
      assert x[k].dtype == y[k].dtype
    swapped += int(np.sum(x["image"].reshape(16, -1).any(1)))
  assert swapped > 10  # the pool was drawn from
  with pytest.raises(DataError, match="record_fn"):
    SyntheticReplacement(ArrayBatches(real, global_batch_size=16, seed=0), src, 0.4, seed=3)


def test_a_classifier_trained_on_the_cached_pool_equals_the_in_memory_one(tmp_path):
  items = _items(24, size=8, seed=2)
  src = CachedSource(_cache(tmp_path / "c", items, shard_size=5), 24, num_classes=K)
  keep = np.array([i % 4 != 0 for i in range(24)])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 8, 8, 3)).astype(np.uint8)
  labels = np.arange(12) % K
  cfg = classifier_config("vit_tiny", num_steps=3, batch_size=8, patch_size=4, hidden_dim=16,
                          num_layers=1, num_heads=2, mlp_dim=32, synthetic_replace_prob=0.5)
  cfg.train.update(steps_per_call=1, async_checkpoints=False, checkpoint_every=3)
  mesh = make_mesh(configlib.mesh_config(), devices=jax.devices()[:1])
  fit = functools.partial(fit_classifier, cfg, images, labels, K, mesh=mesh, name="clf",
                          key=jax.random.key(0), verbose=False)
  in_memory = fit(workdir=str(tmp_path / "a"),
                  synthetic=(items["images"][keep], items["soft_label"][keep]))
  on_disk = fit(workdir=str(tmp_path / "b"), synthetic=subset(src, np.flatnonzero(keep)))
  for x, y in zip(jax.tree.leaves(in_memory.variables), jax.tree.leaves(on_disk.variables)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  real_only = fit(workdir=str(tmp_path / "r"))  # the pool mattered: without it, other weights
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(real_only.variables),
                                                       jax.tree.leaves(on_disk.variables)))
  with pytest.raises(DataError, match=r"synthetic images have shape \(8, 8, 3\); the real ones "
                     r"\(16, 16, 3\)"):
    fit_classifier(cfg, np.zeros((12, 16, 16, 3), np.uint8), labels, K, mesh=mesh, name="c",
                   key=jax.random.key(0), workdir=str(tmp_path / "c"), synthetic=src)
