"""Tests of the registered procedural faces (jaxgen.data.faces) and their 'faces' source.

Most tests share one render of 800 faces at 32x32 (one compiled signature); one case renders at
16x16 and 64x64.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from jaxgen.data import faces, sources
from jaxgen.errors import ConfigError

S = 32
C = len(faces.FACE_CLASSES)


@pytest.fixture(scope="module")
def batch():
  return faces.render_faces(0, np.arange(800), image_size=S)


def _structure(images: np.ndarray) -> float:
  """Mean absolute gradient of the mean luminance image over the central half (face features)."""
  m = images.astype(np.float64).mean(axis=(0, 3))
  q = m.shape[0] // 4
  centre = m[q:3 * q + 1, q:3 * q + 1]
  return float(np.abs(np.diff(centre, axis=0)).mean() + np.abs(np.diff(centre, axis=1)).mean())


def _brow_contrast(images: np.ndarray) -> float:
  """Mean luminance between the brows minus that on the brows (layout: y = 0.17, x = +-0.2125)."""
  lum = images.astype(np.float64).mean(axis=(0, 3))
  to_pixel = lambda v: int(round((1.0 + v) * S / 2 - 0.5))  # noqa: E731  (pixel centres)
  row = to_pixel(-0.17)
  brows = [lum[row, c - 1:c + 2].mean() for c in (to_pixel(-0.2125), to_pixel(0.2125))]
  return float(lum[row, S // 2 - 1:S // 2 + 1].mean() - max(brows))


def test_shapes_dtypes_labels_and_attributes(batch):
  images, labels, attrs = batch["images"], batch["labels"], batch["attributes"]
  assert images.shape == (800, S, S, 3) and images.dtype == np.uint8
  assert labels.shape == (800,) and labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels, minlength=C), np.full(C, 800 // C))
  assert len(faces.FACE_CLASSES) == 8 and len(set(faces.FACE_CLASSES)) == 8
  np.testing.assert_array_equal(attrs["hair_group"], labels // 2)
  np.testing.assert_array_equal(attrs["glasses"], labels % 2)
  # Hair colour: dark -> black or brown, then blond, red, grey.
  np.testing.assert_array_equal(np.minimum(np.maximum(attrs["hair_colour"] - 1, 0), 3),
                                attrs["hair_group"])
  for key, names in (("hair_colour", faces.HAIR_COLOURS), ("hair_style", faces.HAIR_STYLES),
                     ("eye_colour", faces.EYE_COLOURS), ("facial_hair", faces.FACIAL_HAIR)):
    assert attrs[key].shape == (800,) and attrs[key].dtype == np.int32
    assert set(np.unique(attrs[key])) == set(range(len(names))), key
  assert attrs["smile"].dtype == np.float32
  assert -0.3 <= attrs["smile"].min() and attrs["smile"].max() <= 1.0
  assert 0.0 <= attrs["skin_tone"].min() and attrs["skin_tone"].max() <= 1.0
  assert set(np.unique(attrs["mouth_open"])) == {0, 1}
  assert images.std() > 30.0  # not blank: backgrounds, skin and hair vary


def test_deterministic_across_chunking_and_subsets(batch):
  a = faces.render_faces(0, np.arange(40), image_size=S)
  b1 = faces.render_faces(0, np.arange(17), image_size=S)
  b2 = faces.render_faces(0, np.arange(17, 40), image_size=S)
  np.testing.assert_array_equal(a["images"], np.concatenate([b1["images"], b2["images"]]))
  np.testing.assert_array_equal(a["images"], batch["images"][:40])  # 1 chunk vs 4 chunks
  ids = np.array([5, 3, 300, 7, 799, 3])
  sub = faces.render_faces(0, ids, image_size=S)
  np.testing.assert_array_equal(sub["images"], batch["images"][ids])
  np.testing.assert_array_equal(sub["labels"], batch["labels"][ids])
  for key, value in sub["attributes"].items():
    np.testing.assert_array_equal(value, batch["attributes"][key][ids], err_msg=key)
  other = faces.render_faces(1, np.arange(8), image_size=S)["images"]
  assert not np.array_equal(other, batch["images"][:8])  # the seed matters


def test_faces_are_registered(batch):
  """The mean of registered faces keeps sharp eye / mouth structure; random shifts blur it."""
  images = batch["images"][:500]
  rng = np.random.default_rng(0)
  shifted = np.stack([np.roll(img, tuple(rng.integers(-S // 5, S // 5 + 1, 2)), axis=(0, 1))
                      for img in images])
  registered, unregistered = _structure(images), _structure(shifted)
  assert registered > 2.0 * unregistered, (registered, unregistered)
  # The brows sit at fixed pixels: in the mean they are much darker than the skin between them.
  assert _brow_contrast(images) > 25.0 > 10.0 > _brow_contrast(shifted)


def test_labels_are_learnable(batch):
  """Logistic regression on 16x16 pixels of 600 faces beats chance (1/8) by far on 200 others.

  (0.83 with this seed; hair alone 0.93, glasses alone 0.90.)
  """
  x = batch["images"].astype(np.float64).reshape(800, 16, S // 16, 16, S // 16, 3).mean((2, 4))
  x = x.reshape(800, -1) / 255.0
  x = (x - x[:600].mean(0)) / (x[:600].std(0) + 1e-6)
  y = batch["labels"]
  model = LogisticRegression(C=0.1, max_iter=500).fit(x[:600], y[:600])
  accuracy = model.score(x[600:], y[600:])
  assert accuracy > 0.6, accuracy


def test_other_sizes_and_resolution_consistency(batch):
  small = faces.render_faces(0, np.arange(3), image_size=16)["images"]
  large = faces.render_faces(0, np.arange(3), image_size=64)["images"]
  assert small.shape == (3, 16, 16, 3) and large.shape == (3, 64, 64, 3)
  # The same face at any size: a 2x2 box-downsampled 64x64 render is close to the 32x32 one.
  down = large.astype(np.float64).reshape(3, 32, 2, 32, 2, 3).mean((2, 4))
  assert np.abs(down - batch["images"][:3]).mean() < 6.0


@pytest.mark.parametrize("size", [15, 257, 0, 32.0])
def test_bad_image_size_raises(size):
  with pytest.raises(ConfigError, match="image_size"):
    faces.render_faces(0, np.arange(2), image_size=size)
  with pytest.raises(ConfigError, match="image_size"):
    sources.get_source("faces", "train", num_train=4, image_size=size)


def test_registered_source(batch):
  assert "faces" in sources.known_sources()
  train = sources.get_source("faces", "train", num_train=40, num_test=16, image_size=S)
  test = sources.get_source("faces", "test", num_train=40, num_test=16, image_size=S)
  aux = sources.get_source("faces", "aux", num_train=40, num_test=16, num_aux=8, image_size=S)
  assert (len(train), len(test), len(aux)) == (40, 16, 8)
  assert train.num_classes == C and train.class_names == faces.FACE_CLASSES
  assert train.image_shape == (S, S, 3) and train.image_key == "image"
  record = train[3]
  assert set(record) == {"image", "label"}
  assert record["image"].dtype == np.uint8 and record["image"].shape == (S, S, 3)
  assert record["label"].dtype == np.int32 and record["label"].shape == ()
  np.testing.assert_array_equal(train.arrays["image"], batch["images"][:40])
  np.testing.assert_array_equal(test.arrays["image"], batch["images"][40:56])
  np.testing.assert_array_equal(aux.object_ids, np.arange(56, 64))
  np.testing.assert_array_equal(test.labels(), batch["labels"][40:56])
  np.testing.assert_array_equal(test.attributes["smile"], batch["attributes"]["smile"][40:56])
  assert not train.arrays["image"].flags.writeable
  with pytest.raises(ConfigError, match="split"):
    sources.get_source("faces", "validation", num_train=4)
  with pytest.raises(ConfigError, match="num_views"):
    sources.get_source("faces", "train", num_views=4)
