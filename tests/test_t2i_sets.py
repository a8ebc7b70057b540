"""Tests of the embedded text-to-image sets (jaxgen.data.t2i_sets) and the renderer overrides.

Everything renders one view at 16x16, so the renderer's compiled signatures are shared. Colours
are measured with a NumPy RGB -> HSV conversion (checked against scikit-image) on foreground
pixels: shading scales RGB, so a pixel's hue is its surface's hue up to uint8 rounding.
"""

import numpy as np
import pytest
import skimage.color

from jaxgen.data import imbalance, renderer, t2i_sets
from jaxgen.errors import ConfigError

S = 16
K = 10


def _rgb_to_hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Textbook RGB -> HSV of uint8 pixels; hue in turns [0, 1)."""
  x = img.astype(np.float64) / 255.0
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  mx, mn = x.max(-1), x.min(-1)
  d = mx - mn
  dd = np.where(d > 0, d, 1.0)
  h = np.where(mx == r, ((g - b) / dd) % 6.0,
               np.where(mx == g, (b - r) / dd + 2.0, (r - g) / dd + 4.0)) / 6.0
  h = np.where(d > 0, h % 1.0, 0.0)
  s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
  return h, s, mx


def _hue_dist(a, b):
  """Distance on the hue circle (turns)."""
  return np.abs((np.asarray(a) - np.asarray(b) + 0.5) % 1.0 - 0.5)


def _circ_mean(h: np.ndarray) -> float:
  a = 2.0 * np.pi * np.asarray(h)
  return float(np.arctan2(np.sin(a).sum(), np.cos(a).sum()) / (2.0 * np.pi) % 1.0)


def _tone_hues(images: np.ndarray, masks: np.ndarray, centre: float) -> np.ndarray:
  """[N, 2]: circular mean hue of the foreground pixels within 0.2 turns of `centre` (the front
  tone of the fine-grained family) and of the other foreground pixels (the back tone); pixels
  with saturation < 0.1 (nearly grey) are ignored."""
  out = np.full((len(images), 2), np.nan)
  for i, (img, m) in enumerate(zip(images, masks)):
    h, s, _ = _rgb_to_hsv(img)
    ok = m & (s > 0.1)
    near = _hue_dist(h, centre) < 0.2
    for j, sel in enumerate((ok & near, ok & ~near)):
      if sel.any():
        out[i, j] = _circ_mean(h[sel])
  return out


@pytest.fixture(scope="module")
def pre():
  return t2i_sets.pretraining_set(0, 1, image_size=S)


@pytest.fixture(scope="module")
def fine():
  return (t2i_sets.fine_grained_set(0, 20, num_classes=K, image_size=S),
          t2i_sets.fine_grained_set(0, 20, num_classes=K, image_size=S, split="test"))


def test_numpy_hsv_matches_skimage(pre):
  img = pre["images"][:8]
  h, s, v = _rgb_to_hsv(img)
  ref = skimage.color.rgb2hsv(img)
  np.testing.assert_allclose(np.stack([s, v], -1), ref[..., 1:], atol=1e-12)
  np.testing.assert_allclose(_hue_dist(h, ref[..., 0]), 0.0, atol=1e-12)


# --------------------------------------------------------------------------- renderer overrides

def test_renderer_without_overrides_is_unchanged():
  ids = np.array([6, 18, 0, 12, 30, 3])  # cubes, spheres, cylinders: three compiled signatures
  kw = dict(num_views=1, image_size=S)
  base = renderer.render_objects(5, ids, 0, **kw)
  # A fresh id set sharing some objects gives them identical pixels.
  other = renderer.render_objects(5, np.array([12, 7, 6]), 0, **kw)
  assert other["images"][[0, 2]].tobytes() == base["images"][[3, 0]].tobytes()
  # Overriding every column with the value it had, and the classes with id mod 12, is a no-op.
  u = renderer.object_uniforms(5, ids)
  same = {name: u[:, col] for name, col in renderer.UNIFORM_COLUMNS.items()}
  again = renderer.render_objects(5, ids, 0, uniforms_override=same, shape_classes=ids % 12, **kw)
  assert again["images"].tobytes() == base["images"].tobytes()
  assert again["masks"].tobytes() == base["masks"].tobytes()
  np.testing.assert_array_equal(again["labels"], base["labels"])
  # A different value or class really changes the object.
  moved = renderer.render_objects(5, ids, 0, uniforms_override={"shape_0": (u[:, 0] + 0.5) % 1.0},
                                  **kw)
  assert (moved["masks"] != base["masks"]).any(axis=(1, 2, 3)).all()
  swapped = renderer.render_objects(5, ids, 0, shape_classes=np.full(6, 7), **kw)
  np.testing.assert_array_equal(swapped["labels"], np.full(6, 7))
  assert swapped["masks"].tobytes() != base["masks"].tobytes()


def test_front_hue_override_sets_the_front_colour():
  # Spheres with yaw 0 show the camera (azimuth 0) mostly their front half; the median hue of
  # the saturated foreground must be the requested one within uint8 rounding (0.01 turns).
  want = (np.arange(10) + 0.25) / 10.0
  out = renderer.render_objects(
      2, np.arange(10) + 1000, 1, num_views=1, image_size=S, shape_classes=0,
      uniforms_override={"front_h": want, "yaw": 0.0, "front_s": 0.9, "front_v": 0.9})
  for k in range(10):
    h, s, _ = _rgb_to_hsv(out["images"][k, 0])
    fg = out["masks"][k, 0] & (s > 0.1)
    d = _hue_dist(h[fg], want[k])
    assert fg.sum() >= 20 and np.median(d) < 0.01 and np.mean(d < 0.01) > 0.8, (k, np.median(d))


def test_renderer_override_errors():
  ids = np.arange(3)
  for bad in ({"colour": 0.5}, {"front_h": 1.0}, {"front_h": np.array([0.1, np.nan, 0.2])},
              {"yaw": np.zeros(2)}):
    with pytest.raises(ConfigError, match="uniforms_override"):
      renderer.render_objects(0, ids, 0, num_views=1, image_size=S, uniforms_override=bad)
  for bad in (np.array([0, 12, 1]), np.array([0.5, 1.0, 2.0]), np.zeros(2, int)):
    with pytest.raises(ConfigError, match="shape_classes"):
      renderer.render_objects(0, ids, 0, num_views=1, image_size=S, shape_classes=bad)


# --------------------------------------------------------------------------- pre-training set

def test_pretraining_layout_and_prompts(pre):
  c = len(t2i_sets.COLOUR_WORDS) * len(renderer.SHAPE_CLASSES)
  assert pre["images"].shape == (c, S, S, 3) and pre["images"].dtype == np.uint8
  assert pre["labels"].dtype == np.int32 and len(pre["prompts"]) == c == len(pre["class_names"])
  np.testing.assert_array_equal(np.bincount(pre["labels"], minlength=c), np.ones(c))
  assert t2i_sets.SHAPE_WORDS[5] == "hexagonal prism" and t2i_sets.SHAPE_WORDS[6] == "cube"
  for i, label in enumerate(pre["labels"]):
    colour = t2i_sets.COLOUR_WORDS[pre["colours"][i]]
    shape = t2i_sets.SHAPE_WORDS[pre["metaclass"][i]]
    assert pre["class_names"][label] == f"{colour} {shape}"
    article = "an" if colour == "orange" else "a"
    assert pre["prompts"][i] == f"a photo of {article} {colour} {shape}"
  # The forced solid and the documented yaw (uniform in +-45 degrees) are what is rendered: the
  # silhouettes equal the renderer's for those classes and yaw = (2 u_yaw - 1) * 0.125 turns.
  ids = pre["object_ids"][::7]
  u_yaw = renderer.object_uniforms(0, ids)[:, renderer.UNIFORM_COLUMNS["yaw"]]
  direct = renderer.render_objects(0, ids, 0, num_views=1, image_size=S,
                                   shape_classes=pre["metaclass"][::7],
                                   uniforms_override={"yaw": ((2 * u_yaw - 1) * 0.125) % 1.0})
  assert direct["masks"][:, 0].tobytes() == pre["masks"][::7].tobytes()
  assert pre["masks"].any(axis=(1, 2)).all()


def test_pretraining_front_colour_lies_in_the_word_band(pre):
  # Per object: the fraction of saturated foreground pixels whose hue is inside each colour
  # word's band (+0.01 turns for rounding). Measured: own band >= 0.77 of the pixels (the back
  # half is mostly hidden), and the own band is the most frequent one for every object.
  bands = np.array([t2i_sets.COLOUR_BANDS[w] for w in t2i_sets.COLOUR_WORDS])
  hits = []
  for img, m, colour in zip(pre["images"], pre["masks"], pre["colours"]):
    h, s, _ = _rgb_to_hsv(img)
    ok = m & (s > 0.1)
    frac = (_hue_dist(h[ok][:, None], bands[None, :, 0]) <= bands[None, :, 1] + 0.01).mean(0)
    assert frac[colour] >= 0.5, (t2i_sets.COLOUR_WORDS[colour], frac)
    hits.append(frac.argmax() == colour)
  assert np.mean(hits) >= 0.95


# --------------------------------------------------------------------------- fine-grained set

def test_fine_grained_layout(fine):
  train, test = fine
  assert train["images"].shape == (K * 20, S, S, 3) and train["labels"].dtype == np.int32
  assert train["class_names"] == [f"class_{c:02d}" for c in range(K)]
  assert train["metaclass_name"] == "cube" and set(train["prompts"]) == {"a photo of a cube"}
  np.testing.assert_array_equal(np.bincount(train["labels"]), np.full(K, 20))
  assert not np.intersect1d(train["object_ids"], test["object_ids"]).size
  # The class identity is in no pre-training prompt word.
  vocab = {w for name in t2i_sets.COLOUR_WORDS + t2i_sets.SHAPE_WORDS for w in name.split()}
  assert not any(name in vocab for name in train["class_names"])


def test_fine_grained_classes_are_separable_but_close(fine, pre):
  train, test = fine
  centre = t2i_sets.FINE_HUE_CENTRE
  f_tr = _tone_hues(train["images"], train["masks"], centre)
  f_te = _tone_hues(test["images"], test["masks"], centre)
  assert not np.isnan(f_tr).any() and not np.isnan(f_te).any()  # both tones always in view
  means = np.array([[_circ_mean(f_tr[train["labels"] == c, j]) for j in (0, 1)]
                    for c in range(K)])
  # The measured class means match the documented class hues (jitter is symmetric).
  np.testing.assert_allclose(_hue_dist(means, train["class_hues"]), 0.0, atol=0.01)
  # Nearest class mean on (front tone hue, back tone hue), circular squared distance, on held-out
  # objects. Measured: 0.997.
  d = (_hue_dist(f_te[:, None], means[None]) ** 2).sum(-1)
  acc = np.mean(d.argmin(1) == test["labels"])
  assert acc > 0.8, acc
  # Closeness. Measure: circular distance between class-mean front hues (the main colour). For
  # the pre-training colour words, the class-mean hue of each object's modal colour. The front
  # hues of all classes together span less than the median distance between two colour words
  # (0.14 vs ~0.28), each class's nearest other-front-hue class is closer than any two colour
  # words are (0.035 vs ~0.08), and all front hues fall outside every colour-word band (no word
  # names them).
  word_hue = []
  for w in range(len(t2i_sets.COLOUR_WORDS)):
    rows = np.flatnonzero(pre["colours"] == w)
    hs = []
    for r in rows:
      h, s, _ = _rgb_to_hsv(pre["images"][r])
      ok = pre["masks"][r] & (s > 0.1)
      mode = (np.argmax(np.bincount((h[ok] * 50).astype(int) % 50, minlength=50)) + 0.5) / 50
      hs.append(_circ_mean(h[ok][_hue_dist(h[ok], mode) < 0.05]))
    word_hue.append(_circ_mean(np.array(hs)))
  word_hue = np.array(word_hue)
  iu = np.triu_indices(len(word_hue), 1)
  word_dist = _hue_dist(word_hue[:, None], word_hue[None])[iu]
  fine_dist = _hue_dist(means[:, None, 0], means[None, :, 0])
  assert fine_dist.max() < 0.6 * np.median(word_dist), (fine_dist.max(), np.median(word_dist))
  nearest = np.sort(fine_dist, 1)[:, 2]  # [:, 0] is the class itself, [:, 1] its sibling
  assert nearest.max() < 0.6 * word_dist.min(), (nearest.max(), word_dist.min())
  bands = np.array([t2i_sets.COLOUR_BANDS[w] for w in t2i_sets.COLOUR_WORDS])
  assert (_hue_dist(means[:, None, 0], bands[None, :, 0]) > bands[None, :, 1] + 0.01).all()


def test_determinism_and_disjoint_objects(fine, pre):
  a = t2i_sets.fine_grained_set(0, 2, num_classes=K, image_size=S)
  assert a["images"].tobytes() == fine[0]["images"][:2 * K].tobytes()
  b = t2i_sets.fine_grained_set(1, 2, num_classes=K, image_size=S)
  assert b["images"].tobytes() != a["images"].tobytes()
  again = t2i_sets.pretraining_set(0, 1, image_size=S)
  assert again["images"].tobytes() == pre["images"].tobytes()
  assert again["prompts"] == pre["prompts"]
  shift = [t2i_sets.background_shift_set(0, 2, split=sp, num_classes=K, image_size=S)
           for sp in ("train", "test")]
  ids = [pre["object_ids"], fine[0]["object_ids"], fine[1]["object_ids"],
         shift[0]["object_ids"], shift[1]["object_ids"]]
  assert len(np.unique(np.concatenate(ids))) == sum(i.size for i in ids)


# --------------------------------------------------------------------------- long tail

def test_long_tail_counts_and_subset(fine):
  out = t2i_sets.fine_grained_long_tail_set(0, 20, 10, num_classes=K, image_size=S)
  want = imbalance.long_tail_counts(K, 20, 10)
  np.testing.assert_array_equal(np.bincount(out["labels"], minlength=K), want)
  full = fine[0]
  assert out["images"].tobytes() == full["images"][out["indices"]].tobytes()
  np.testing.assert_array_equal(out["labels"], full["labels"][out["indices"]])
  assert set(full) | {"indices"} == set(out)


# --------------------------------------------------------------------------- background shift

def test_background_shift_correlation_and_balanced_test():
  mf, n = 0.1, 40
  train = t2i_sets.background_shift_set(3, n, split="train", minority_fraction=mf,
                                        num_classes=K, image_size=S)
  test = t2i_sets.background_shift_set(3, n, split="test", minority_fraction=mf,
                                       num_classes=K, image_size=S)
  land, water = t2i_sets.BACKGROUND_LAND, t2i_sets.BACKGROUND_WATER
  for d in (train, test):
    cg = (d["labels"] >= K // 2).astype(int)  # first half of the classes are land classes
    np.testing.assert_array_equal(d["class_groups"], cg)
    np.testing.assert_array_equal(d["groups"], 2 * cg + (d["backgrounds"] == water))
    assert set(np.unique(d["backgrounds"])) <= {land, water}
  for g, home in ((0, land), (1, water)):
    bg = train["backgrounds"][train["class_groups"] == g]
    # 200 objects per group: binomial sd sqrt(0.1 * 0.9 / 200) = 0.021; 4 sd tolerance.
    assert abs(np.mean(bg == home) - (1 - mf)) <= 4 * np.sqrt(mf * (1 - mf) / bg.size)
  for c in range(K):
    assert np.sum(test["backgrounds"][test["labels"] == c] == water) == n // 2
  np.testing.assert_array_equal(np.bincount(test["groups"], minlength=4), np.full(4, K * n // 4))
  # The floor really differs: water backgrounds are bluer than land ones (bottom rows).
  floor = train["images"][:, -3:].astype(float).mean(axis=(1, 2))
  blue = floor[:, 2] - floor[:, 0]
  assert blue[train["backgrounds"] == water].mean() > blue[train["backgrounds"] == land].mean() + 30


# --------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("call, key", [
    (lambda: t2i_sets.pretraining_set(0, 0), "num_per_class"),
    (lambda: t2i_sets.pretraining_set(-1, 1), "seed"),
    (lambda: t2i_sets.pretraining_set(0, 1, image_size=4), "image_size"),
    (lambda: t2i_sets.fine_grained_set(0, 1, num_classes=1), "num_classes"),
    (lambda: t2i_sets.fine_grained_set(0, 1, num_classes=17), "num_classes"),
    (lambda: t2i_sets.fine_grained_set(0, 1, metaclass="bird"), "metaclass"),
    (lambda: t2i_sets.fine_grained_set(0, 1, split="val"), "split"),
    (lambda: t2i_sets.fine_grained_set(0, 2.5), "num_per_class"),
    (lambda: t2i_sets.fine_grained_long_tail_set(0, 10, 0.5), "imbalance_factor"),
    (lambda: t2i_sets.fine_grained_long_tail_set(0, 0, 10), "n_max"),
    (lambda: t2i_sets.background_shift_set(0, 1, minority_fraction=0.7), "minority_fraction"),
    (lambda: t2i_sets.background_shift_set(0, 1, split="eval"), "split"),
])
def test_bad_arguments(call, key):
  with pytest.raises(ConfigError) as err:
    call()
  assert err.value.key == f"t2i_data.{key}"
