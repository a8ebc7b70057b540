"""Imbalance / long-tail / k-shot builders against SciPy CDFs and NumPy transcriptions."""

import numpy as np
import pytest
from scipy import stats

from jaxgen.data import imbalance as im
from jaxgen.errors import ConfigError, DataError


def _scipy_cdf(num_classes):
  if num_classes <= 10:
    return stats.lognorm.cdf(np.linspace(0, 3, num_classes + 1), s=3)
  if num_classes <= 100:
    return stats.chi2.cdf(np.linspace(0, 3, num_classes + 1), df=3)
  return stats.pareto.cdf(np.linspace(1, 4, num_classes + 1), b=2)


@pytest.mark.parametrize("num_classes", [2, 7, 10, 11, 50, 100, 101, 200, 1000])
def test_cdf_matches_scipy(num_classes):
  _, cdf = im.softlabel_gan_cdf(num_classes)
  # Closed forms (erf/erfc) vs scipy's special functions: agree to 1e-12 absolute.
  np.testing.assert_allclose(cdf, _scipy_cdf(num_classes), rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_classes", [5, 10, 37, 100, 200, 1000])
@pytest.mark.parametrize("num_samples", [5000, 50000])
def test_counts_equal_floor_of_scipy_histogram(num_classes, num_samples):
  expected = np.floor(num_samples * np.diff(_scipy_cdf(num_classes))).astype(int)
  np.testing.assert_array_equal(im.softlabel_gan_counts(num_classes, num_samples=num_samples),
                                expected)


def test_counts_reproduce_paper_003_tables():
  c10 = im.softlabel_gan_counts(10)
  assert (c10.sum(), c10.min(), c10.max()) == (3208, 65, 1720)  # Imbalanced CIFAR-10
  c100 = im.softlabel_gan_counts(100)
  assert (c100.sum(), c100.min(), c100.max()) == (2993, 6, 36)  # Imbalanced CIFAR-100


def test_class_shuffle_is_a_seeded_permutation():
  base = im.softlabel_gan_counts(10)
  a = im.softlabel_gan_counts(10, seed=3)
  np.testing.assert_array_equal(np.sort(a), np.sort(base))
  np.testing.assert_array_equal(a, im.softlabel_gan_counts(10, seed=3))
  assert not np.array_equal(a, im.softlabel_gan_counts(10, seed=4))


def _balanced_labels(num_classes, per_class, seed=0):
  labels = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(seed).permutation(labels)


def _check_subset(result, labels):
  idx = result.indices
  assert np.all(np.diff(idx) > 0)  # sorted, no duplicates
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=len(result.histogram)),
                                result.histogram)
  available = np.bincount(labels, minlength=len(result.target))
  np.testing.assert_array_equal(result.histogram, np.minimum(result.target, available))


def test_softlabel_indices_follow_targets_and_are_deterministic():
  labels = _balanced_labels(10, 2000)
  r = im.softlabel_gan_indices(labels, seed=1)
  _check_subset(r, labels)
  np.testing.assert_array_equal(r.target, im.softlabel_gan_counts(10, seed=1))
  np.testing.assert_array_equal(r.indices, im.softlabel_gan_indices(labels, seed=1).indices)
  # Every target (at most 1720) fits in 2000 records per class, so nothing is capped.
  assert r.histogram.sum() == 3208


def test_softlabel_caps_at_available():
  labels = _balanced_labels(10, 100)
  r = im.softlabel_gan_indices(labels, seed=0)
  _check_subset(r, labels)
  assert r.histogram.max() == 100 and r.target.max() == 1720


@pytest.mark.parametrize("imbalance_factor", [100, 50, 10])
def test_long_tail_profile(imbalance_factor):
  num_classes, n_max = 20, 500
  c = np.arange(num_classes)
  expected = np.maximum(1, np.floor(n_max * imbalance_factor ** (-c / (num_classes - 1))
                                    + 1e-9)).astype(int)
  counts = im.long_tail_counts(num_classes, n_max, imbalance_factor)
  np.testing.assert_array_equal(counts, expected)
  assert counts[0] == n_max and counts[-1] == n_max // imbalance_factor
  assert np.all(np.diff(counts) <= 0)


def test_long_tail_indices_rank_by_available_count():
  labels = np.concatenate([np.full(40, c) for c in range(5)] + [np.full(45, 2)])
  r = im.long_tail_indices(labels, seed=0, imbalance_factor=10, n_max=40)
  _check_subset(r, labels)
  assert r.target[2] == 40  # the largest class takes rank 0
  np.testing.assert_array_equal(np.sort(r.target)[::-1], im.long_tail_counts(5, 40, 10))
  shuffled = im.long_tail_indices(labels, seed=5, imbalance_factor=10, n_max=40,
                                  shuffle_classes=True)
  np.testing.assert_array_equal(np.sort(shuffled.target), np.sort(r.target))


@pytest.mark.parametrize("k", [1, 5, 10, None])
def test_few_shot(k):
  labels = _balanced_labels(7, 12)
  r = im.few_shot_indices(labels, k=k, seed=2)
  _check_subset(r, labels)
  np.testing.assert_array_equal(r.histogram, np.full(7, 12 if k is None else k))
  if k is not None:  # another seed draws other records
    assert not np.array_equal(r.indices, im.few_shot_indices(labels, k=k, seed=3).indices)


def test_few_shot_keeps_small_classes_whole():
  labels = np.array([0] * 3 + [1] * 20)
  r = im.few_shot_indices(labels, k=5, seed=0)
  np.testing.assert_array_equal(r.histogram, [3, 5])


def test_bad_labels_and_settings():
  with pytest.raises(DataError, match="label -1 at index 1"):
    im.few_shot_indices(np.array([0, -1, 2]), k=1, seed=0)
  with pytest.raises(DataError, match="label 3 at index 2 is outside \\[0, 3\\)"):
    im.softlabel_gan_indices(np.array([0, 1, 3]), seed=0, num_classes=3)
  with pytest.raises(ConfigError):
    im.long_tail_counts(10, 100, 0.5)
  with pytest.raises(ConfigError):
    im.few_shot_indices(np.array([0, 1]), k=0, seed=0)


def test_explicit_distribution_and_min_class_size():
  # 'auto' picks by class count; naming the distribution overrides it (lognormal for 12 classes).
  auto = im.softlabel_gan_counts(12, num_samples=5000)
  chi2 = im.softlabel_gan_counts(12, num_samples=5000, distribution="chi2")
  np.testing.assert_array_equal(auto, chi2)
  logn = im.softlabel_gan_counts(12, num_samples=5000, distribution="lognormal")
  edges = np.linspace(0, 3, 13)
  want = np.floor(5000 * np.diff(stats.lognorm.cdf(edges, 3.0)) + 1e-9)
  np.testing.assert_array_equal(logn, want)
  # Fig. 5: the same profile rescaled so its smallest bin holds exactly min_class_size.
  for m in (120, 90, 65):
    c = im.softlabel_gan_counts(10, distribution="lognormal", min_class_size=m)
    assert c.min() == m
    frac = np.diff(stats.lognorm.cdf(np.linspace(0, 3, 11), 3.0))
    np.testing.assert_array_equal(c, np.floor(m / frac.min() * frac + 1e-9))
  with pytest.raises(ConfigError, match="data.imbalance"):
    im.softlabel_gan_counts(10, distribution="uniform")
