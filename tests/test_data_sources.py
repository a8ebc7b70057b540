"""Sources: registry, digits, multiview wrapper, image folders, NMR, TFDS mock data, bad data."""

import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

import jaxgen.data
from jaxgen.data import ArraySource, get_source, known_sources, make_loader, subset
from jaxgen.data import sources as sources_lib
from jaxgen.errors import ConfigError, DataError


def _png(path, size=(6, 5), mode="RGB", seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
  data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
  Image.fromarray(data[..., 0] if channels == 1 else data, mode=mode).save(
      path, format="JPEG" if mode == "CMYK" else "PNG")
  return data


def _one_line(err):
  assert "\n" not in str(err.value)
  return str(err.value)


# --------------------------------------------------------------------------- registry

def test_registry_unknown_name_and_option():
  assert set(known_sources()) == {"multiview", "digits", "faces", "tfds", "folder", "nmr"}
  with pytest.raises(ConfigError, match="digits, faces, folder, multiview, nmr, tfds"):
    get_source("imagenet", "train")
  with pytest.raises(ConfigError, match="config.data.colour=.*an option of source 'digits'"):
    get_source("digits", "train", colour=3)


# --------------------------------------------------------------------------- digits

def test_digits_splits_values_and_channels():
  from sklearn.datasets import load_digits
  ref = load_digits()
  full = get_source("digits", "all", channels=1)
  assert len(full) == 1797 and full.num_classes == 10 and full.image_shape == (8, 8, 1)
  expected = np.rint(ref.images * 255 / 16).astype(np.uint8)
  np.testing.assert_array_equal(full.arrays["image"][..., 0], expected)  # exact at 8x8
  np.testing.assert_array_equal(full.labels(), ref.target)
  train = get_source("digits", "train", seed=1)
  test = get_source("digits", "test", seed=1)
  assert len(train) + len(test) == 1797 and len(test) == 360
  assert train.arrays["image"].shape[-1] == 3 and train[0]["label"].dtype == np.int32
  np.testing.assert_array_equal(np.bincount(test.labels()) > 30, True)  # stratified
  again = get_source("digits", "train", seed=1)
  np.testing.assert_array_equal(again.arrays["image"], train.arrays["image"])
  other = get_source("digits", "train", seed=2)
  assert not np.array_equal(other.arrays["label"], train.arrays["label"])


def test_digits_resize_matches_skimage_bilinear():
  from skimage.transform import resize
  from sklearn.datasets import load_digits
  src = get_source("digits", "all", image_size=32, channels=1)
  assert src.image_shape == (32, 32, 1)
  img = load_digits().images[:20]
  ref = np.stack([resize(x, (32, 32), order=1, mode="edge", anti_aliasing=False) for x in img])
  ref = np.rint(np.clip(ref, 0, 16) * 255 / 16)
  # Both are half-pixel-centred bilinear upsampling; allow 1 level of rounding difference.
  np.testing.assert_allclose(src.arrays["image"][:20, ..., 0], ref, rtol=0, atol=1)


# --------------------------------------------------------------------------- arrays / multiview

def test_array_source_checks_and_subset():
  img = np.zeros((4, 2, 2, 3), np.uint8)
  with pytest.raises(DataError, match="label 5 at index 2 is outside \\[0, 3\\)"):
    ArraySource({"image": img, "label": np.array([0, 1, 5, 2])}, num_classes=3)
  with pytest.raises(DataError, match="dtype float32"):
    ArraySource({"image": img.astype(np.float32), "label": np.zeros(4)})
  with pytest.raises(DataError, match="4 channels"):
    ArraySource({"image": np.zeros((4, 2, 2, 4), np.uint8), "label": np.zeros(4)})
  src = ArraySource({"image": img, "label": np.array([0, 1, 2, 1])})
  sub = subset(src, [3, 1])
  assert len(sub) == 2 and sub.arrays["label"].tolist() == [1, 1] and sub.num_classes == 3
  with pytest.raises(IndexError):
    src[4]  # pylint: disable=pointless-statement


@pytest.fixture
def fake_multiview(monkeypatch):
  calls = []

  def build_multiview_splits(data_dir, *, seed=0, num_train, num_test, num_views=4,
                             image_size=64, variant="standard"):
    calls.append((data_dir, seed, variant))
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", num_train), ("test", num_test)):
      out[split] = {"images": rng.integers(0, 256, (n, num_views, image_size, image_size, 3),
                                           dtype=np.uint8), "labels": np.arange(n) % 3}
    for split, n in (("classifier_train", num_train), ("classifier_eval", num_test)):
      images = rng.integers(0, 256, (n, num_views, image_size, image_size, 3), dtype=np.uint8)
      view = rng.integers(0, num_views, n)
      out[split] = {"image": images[np.arange(n), view], "view": view,
                    "label": np.arange(n) % 3, "images": images}
      if variant == "background_shift":
        out[split]["background"] = np.arange(n) % 2
    return out

  module = types.ModuleType("jaxgen.data.multiview")
  module.build_multiview_splits = build_multiview_splits
  monkeypatch.setitem(sys.modules, "jaxgen.data.multiview", module)
  # `from jaxgen.data import multiview` reads the package attribute first once the real module
  # has been imported by an earlier test, so patch that too.
  monkeypatch.setattr(jaxgen.data, "multiview", module, raising=False)
  sources_lib._multiview_splits.cache_clear()  # pylint: disable=protected-access
  yield calls
  sources_lib._multiview_splits.cache_clear()  # pylint: disable=protected-access


def test_multiview_wrapper(fake_multiview):
  kw = dict(num_train=6, num_test=4, num_views=4, image_size=8)
  train = get_source("multiview", "train", **kw)
  test = get_source("multiview", "test", **kw)
  assert len(fake_multiview) == 1  # one render serves every split
  assert (len(train), len(test), train.num_classes) == (6, 4, 3)
  assert train.image_key == "images" and train.image_shape == (4, 8, 8, 3)
  assert train[0]["images"].shape == (4, 8, 8, 3) and train.arrays["label"].dtype == np.int32
  clf = get_source("multiview", "classifier_train", variant="background_shift", **kw)
  rec = clf[2]
  np.testing.assert_array_equal(rec["image"], rec["images"][rec["view"]])
  assert "background" in rec and clf.image_key == "image"
  batch = next(make_loader(clf, global_batch_size=2, seed=0))
  assert batch["image"].shape == (2, 8, 8, 3) and batch["images"].shape == (2, 4, 8, 8, 3)
  with pytest.raises(ConfigError, match="data.split"):
    get_source("multiview", "validation", **kw)


# --------------------------------------------------------------------------- folder

def test_folder_source_layouts(tmp_path):
  root = str(tmp_path / "flowers")
  for c, name in enumerate(["rose", "daisy", "tulip"]):
    for i in range(5):
      _png(f"{root}/{name}/{i}.png", size=(6 + i, 5), seed=10 * c + i)
  _png(f"{root}/daisy/gray.png", mode="L")
  src = get_source("folder", "all", data_dir=root)
  assert src.class_names == ("daisy", "rose", "tulip") and len(src) == 16
  assert src.image_shape == (None, None, 3)
  assert src[0]["image"].shape == (5, 6, 3) and int(src[0]["label"]) == 0
  gray = [i for i, (p, _) in enumerate(src.files) if p.endswith("gray.png")][0]
  assert src[gray]["image"].shape == (5, 6, 3)  # grayscale repeated to RGB
  train = get_source("folder", "train", data_dir=root, seed=0, image_size=4)
  test = get_source("folder", "test", data_dir=root, seed=0)
  assert len(train) + len(test) == 16 and train[0]["image"].shape == (4, 4, 3)
  assert not {p for p, _ in train.files} & {p for p, _ in test.files}
  batch = next(make_loader(src, global_batch_size=4, seed=0, image_size=4))
  assert batch["image"].shape == (4, 4, 4, 3)
  split_root = str(tmp_path / "split")
  _png(f"{split_root}/train/a/0.png")
  _png(f"{split_root}/test/a/0.png")
  assert len(get_source("folder", "test", data_dir=split_root)) == 1


def test_folder_bad_data(tmp_path):
  root = tmp_path / "data"
  with pytest.raises(DataError, match="does not exist") as err:
    get_source("folder", "all", data_dir=str(root))
  _one_line(err)
  _png(str(root / "cat" / "0.png"))
  os.makedirs(root / "dog")
  with pytest.raises(DataError, match="class 'dog' has no images") as err:
    get_source("folder", "all", data_dir=str(root))
  _one_line(err)
  (root / "dog" / "bad.png").write_bytes(b"this is not a png")
  _png(str(root / "dog" / "ok.png"))
  src = get_source("folder", "all", data_dir=str(root))
  bad = [i for i, (p, _) in enumerate(src.files) if p.endswith("bad.png")][0]
  with pytest.raises(DataError, match="bad.png: unreadable or truncated image") as err:
    src[bad]  # pylint: disable=pointless-statement
  _one_line(err)
  with pytest.raises(DataError, match="bad.png"):
    get_source("folder", "all", data_dir=str(root), check_files=True)


def test_folder_truncated_and_wrong_channels(tmp_path):
  root = tmp_path / "data"
  _png(str(root / "a" / "full.png"), size=(32, 32))
  data = (root / "a" / "full.png").read_bytes()
  (root / "a" / "truncated.png").write_bytes(data[: len(data) // 2])
  _png(str(root / "b" / "rgba.png"), mode="RGBA")
  _png(str(root / "b" / "cmyk.jpg"), mode="CMYK")
  src = get_source("folder", "all", data_dir=str(root))
  by_name = {os.path.basename(p): i for i, (p, _) in enumerate(src.files)}
  with pytest.raises(DataError, match="truncated.png: unreadable or truncated") as err:
    src[by_name["truncated.png"]]  # pylint: disable=pointless-statement
  _one_line(err)
  with pytest.raises(DataError, match="rgba.png: image mode RGBA \\(4 channels") as err:
    src[by_name["rgba.png"]]  # pylint: disable=pointless-statement
  _one_line(err)
  with pytest.raises(DataError, match="cmyk.jpg: image mode CMYK"):
    src[by_name["cmyk.jpg"]]  # pylint: disable=pointless-statement
  white = get_source("folder", "all", data_dir=str(root), alpha="white")
  assert white[by_name["rgba.png"]]["image"].shape == (5, 6, 3)
  gray = get_source("folder", "all", data_dir=str(root), channels=1)
  with pytest.raises(DataError, match="full.png: image mode RGB"):
    gray[by_name["full.png"]]  # pylint: disable=pointless-statement


# --------------------------------------------------------------------------- NMR

def _nmr_tree(root, synsets=("02691156", "02958343"), objects=4, views=24, lists=True):
  for s in synsets:
    for o in range(objects):
      odir = f"{root}/{s}/obj{o}"
      for v in range(views):
        _png(f"{odir}/image/{v:04d}.png", size=(4, 4), seed=v)
      np.savez(f"{odir}/cameras.npz",
               **{f"{k}_{v}": np.eye(4) * (v + 1) for k in ("world_mat", "camera_mat")
                  for v in range(views)})
    if lists:
      with open(f"{root}/{s}/train.lst", "w") as f:
        f.write("obj0\nobj1\nobj2\n")
      with open(f"{root}/{s}/test.lst", "w") as f:
        f.write("obj3\n")


def test_nmr_lists_views_and_cameras(tmp_path):
  root = str(tmp_path / "NMR")
  _nmr_tree(root)
  train = get_source("nmr", "train", data_dir=root, with_cameras=True)
  assert len(train) == 6 and train.class_names == ("airplane", "car")
  rec = train[4]
  assert rec["images"].shape == (4, 4, 4, 3) and int(rec["label"]) == 1
  np.testing.assert_array_equal(rec["images"][2], _png(str(tmp_path / "x.png"), (4, 4), seed=12))
  np.testing.assert_allclose(rec["world_mat"][:, 0, 0], [1, 7, 13, 19])
  test = get_source("nmr", "test", data_dir=root, views=(0, 12), view_mode="random_one", seed=3)
  rec = test[1]
  assert rec["images"].shape == (2, 4, 4, 3) and test.image_key == "image"
  np.testing.assert_array_equal(rec["image"], rec["images"][rec["view"]])
  assert int(test[1]["view"]) == int(rec["view"])  # seeded, repeatable
  batch = next(make_loader(train, global_batch_size=2, seed=0))
  assert batch["images"].shape == (2, 4, 4, 4, 3)


def test_nmr_seeded_split_without_lists_and_bad_data(tmp_path):
  root = str(tmp_path / "NMR")
  _nmr_tree(root, synsets=("04379243",), objects=10, views=19, lists=False)
  parts = [get_source("nmr", s, data_dir=root, seed=1) for s in ("train", "val", "test")]
  ids = [{o for o, _ in p.objects} for p in parts]
  assert [len(i) for i in ids] == [8, 1, 1] and not (ids[0] & ids[1] or ids[0] & ids[2])
  with pytest.raises(ConfigError, match="data.views"):
    get_source("nmr", "train", data_dir=root, views=(0, 24))
  src = get_source("nmr", "train", data_dir=root, views=(0, 20))
  with pytest.raises(DataError, match="0020.png: view 20 of object") as err:
    src[0]  # pylint: disable=pointless-statement
  _one_line(err)
  with open(f"{root}/04379243/train.lst", "w") as f:
    f.write("obj0\nmissing_obj\n")
  with pytest.raises(DataError, match="missing_obj: object listed for split 'train'"):
    get_source("nmr", "train", data_dir=root)
  with pytest.raises(DataError, match="has list files for \\['train'\\] but none for split 'test'"):
    get_source("nmr", "test", data_dir=root)
  with open(f"{root}/04379243/test.lst", "w") as f:
    f.write("obj0\n")
  os.remove(f"{root}/04379243/obj0/cameras.npz")
  with pytest.raises(DataError, match="cameras.npz: cameras file does not exist"):
    get_source("nmr", "test", data_dir=root, with_cameras=True)[0]


# --------------------------------------------------------------------------- TFDS (mock data)

@pytest.mark.parametrize("tfds_name,shape,num_classes", [
    ("cifar10", (32, 32, 3), 10), ("oxford_flowers102", (None, None, 3), 102),
    ("cars196", (None, None, 3), 196)])
def test_tfds_mock_data(tfds_name, shape, num_classes):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=8):
    src = get_source("tfds", "train", tfds_name=tfds_name)
    assert len(src) == 8 and src.num_classes == num_classes and src.image_shape == shape
    rec = src[3]
    assert set(rec) == {"image", "label"} and rec["image"].dtype == np.uint8
    assert rec["label"].dtype == np.int32 and 0 <= int(rec["label"]) < num_classes
    assert src.labels().shape == (8,)
    batch = next(make_loader(src, global_batch_size=4, seed=0, image_size=16, augment="flip"))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["label"].shape == (4,)


def test_tfds_unlabeled_and_errors(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=2):
    src = get_source("tfds", "train", tfds_name="celeb_a")
    assert src.num_classes == 1 and int(src[0]["label"]) == 0
  with pytest.raises(DataError, match="not prepared.*tfds build cifar10") as err:
    get_source("tfds", "train", tfds_name="cifar10", data_dir=str(tmp_path))
  _one_line(err)
  with pytest.raises(DataError, match="TFDS data_dir does not exist"):
    get_source("tfds", "train", tfds_name="cifar10", data_dir=str(tmp_path / "nope"))
  with pytest.raises(ConfigError, match="data.tfds_name"):
    get_source("tfds", "train", tfds_name="no_such_dataset_xyz", data_dir=str(tmp_path))
