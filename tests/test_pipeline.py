"""grain pipeline: determinism, checkpoint/restore, per-host sharding, resize and augment."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxgen.data import ArraySource, augment_record, make_loader, resize_center_crop
from jaxgen.errors import ConfigError, DataError


def _source(n=50, size=8, views=None):
  """Records whose label is their index, so batches can be traced back to records."""
  rng = np.random.default_rng(0)
  shape = (n, size, size, 3) if views is None else (n, views, size, size, 3)
  key = "image" if views is None else "images"
  return ArraySource({key: rng.integers(0, 256, shape, dtype=np.uint8),
                      "label": np.arange(n)}, num_classes=n)


def _take(loader, k):
  return [next(loader) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_same_seed_same_batches_and_other_seed_differs():
  src = _source()
  kw = dict(global_batch_size=8, augment="flip_crop")
  a = _take(make_loader(src, seed=3, **kw), 9)
  b = _take(make_loader(src, seed=3, **kw), 9)
  _assert_batches_equal(a, b)
  c = _take(make_loader(src, seed=4, **kw), 9)
  assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, c))


def test_each_epoch_is_a_permutation_and_epochs_differ():
  src = _source(n=40)
  loader = make_loader(src, global_batch_size=8, seed=0, num_epochs=2)
  labels = np.concatenate([b["label"] for b in loader])
  assert labels.shape == (80,) and loader.num_batches == 10
  np.testing.assert_array_equal(np.sort(labels[:40]), np.arange(40))
  np.testing.assert_array_equal(np.sort(labels[40:]), np.arange(40))
  assert not np.array_equal(labels[:40], labels[40:])
  assert not np.array_equal(labels[:40], np.arange(40))


def test_no_shuffle_keeps_order_and_keeps_remainder():
  src = _source(n=10)
  batches = list(make_loader(src, global_batch_size=4, seed=0, shuffle=False, num_epochs=1,
                             drop_remainder=False))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), np.arange(10))
  assert [len(b["label"]) for b in batches] == [4, 4, 2]


def test_restore_from_state_resumes_exactly():
  src = _source()
  kw = dict(global_batch_size=6, seed=11, augment="flip", image_size=6)
  full = _take(make_loader(src, **kw), 12)
  first = make_loader(src, **kw)
  _take(first, 5)
  state = first.get_state()
  state = json.loads(json.dumps(state))  # the state is JSON-serialisable
  resumed = make_loader(src, **kw)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 7), full[5:])
  again = make_loader(src, **kw)
  again.set_state(json.dumps(state).encode())  # bytes/str of the JSON also accepted
  _assert_batches_equal(_take(again, 2), full[5:7])


def test_state_from_other_settings_is_rejected():
  src = _source()
  state = make_loader(src, global_batch_size=6, seed=1).get_state()
  other = make_loader(src, global_batch_size=6, seed=2)
  with pytest.raises(DataError, match="loader state was saved with settings"):
    other.set_state(state)


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_shards_are_disjoint_and_cover_the_global_batch(process_count):
  src = _source(n=64)
  kw = dict(global_batch_size=8, seed=5, augment="crop")
  single = _take(make_loader(src, **kw), 10)
  shards = [_take(make_loader(src, process_index=p, process_count=process_count, **kw), 10)
            for p in range(process_count)]
  for step in range(10):
    parts = [shards[p][step] for p in range(process_count)]
    assert all(len(part["label"]) == 8 // process_count for part in parts)
    labels = np.concatenate([part["label"] for part in parts])
    assert len(set(labels.tolist())) == 8  # disjoint
    # Together they are exactly the single-process global batch, augmentation included.
    np.testing.assert_array_equal(labels, single[step]["label"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]),
                                  single[step]["image"])


def test_resize_center_crop_against_pil_reference():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
  out = resize_center_crop(img, 6)
  # Reference: PIL resize to (10, 6) then crop columns 2..8 (shorter side 12 -> 6).
  ref = np.asarray(Image.fromarray(img).resize((10, 6), Image.BILINEAR))[:, 2:8]
  np.testing.assert_array_equal(out, ref)
  gray = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
  assert resize_center_crop(gray, 4).shape == (4, 4, 1)
  square = img[:6, :6]
  assert resize_center_crop(square, 6) is square  # already the right size: untouched


def test_augment_applies_one_flip_and_crop_to_all_views():
  rng = np.random.default_rng(0)
  views = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  record = {"images": views, "image": views[1], "label": np.int32(0)}
  for seed in range(6):
    out = augment_record(record, np.random.default_rng(seed), "flip_crop")
    assert out["images"].shape == views.shape and out["image"].shape == (8, 8, 3)
    np.testing.assert_array_equal(out["images"][1], out["image"])
  flipped = [augment_record(record, np.random.default_rng(s), "flip") for s in range(8)]
  outcomes = {np.array_equal(o["images"], views[:, :, ::-1]) for o in flipped}
  assert outcomes == {True, False}  # both branches occur, each an exact mirror or identity
  for o in flipped:
    assert np.array_equal(o["images"], views) or np.array_equal(o["images"], views[:, :, ::-1])


def test_multiview_records_batch():
  src = _source(n=12, views=4)
  batch = next(make_loader(src, global_batch_size=4, seed=0, image_size=4, augment="flip"))
  assert batch["images"].shape == (4, 4, 4, 4, 3) and batch["images"].dtype == np.uint8


def test_bad_settings():
  src = _source(n=10)
  with pytest.raises(ConfigError, match="multiple of the process count"):
    make_loader(src, global_batch_size=5, seed=0, process_count=2)
  with pytest.raises(ConfigError, match="augment"):
    make_loader(src, global_batch_size=2, seed=0, augment="mixup")
  with pytest.raises(DataError, match="fewer than one global batch"):
    make_loader(src, global_batch_size=32, seed=0, num_epochs=1)


def test_worker_processes_give_the_same_batches():
  src = _source(n=32)
  kw = dict(global_batch_size=8, seed=2, augment="flip")
  ref = _take(make_loader(src, **kw), 3)
  loader = make_loader(src, worker_count=1, **kw)
  try:
    _assert_batches_equal(_take(loader, 1), ref[:1])
    state = json.loads(json.dumps(loader.get_state()))
    _assert_batches_equal(_take(loader, 2), ref[1:])
  finally:
    loader.close()
  resumed = make_loader(src, worker_count=1, **kw)
  try:
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 2), ref[1:])
  finally:
    resumed.close()
