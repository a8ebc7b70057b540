"""Classifier trainer: augmentation, losses, samplers, evaluation metrics, fitting and fine-tuning.

References: NumPy transcriptions of the published formulas (Mixup eq. 1, CutMix sec. 3.1, label
smoothing, Shannon entropy and its gradient, Guo et al. 2017 ECE) and scikit-learn
(`confusion_matrix`, `compute_class_weight('balanced')`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.utils.class_weight import compute_class_weight

from jaxgen import configlib
from jaxgen.classifier import augment, evaluate
from jaxgen.classifier.sampling import (PairedBatches, SyntheticReplacement,
                                        effective_number_weights,
                                        balanced_class_weights)
from jaxgen.classifier.config import classifier_config, validate_classifier_config
from jaxgen.classifier.inference import load_classifier_variables
from jaxgen.classifier.losses import (classification_loss, smooth_targets, soft_cross_entropy,
                                      softmax_entropy)
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.memory import ArrayBatches, ClassBalancedBatches
from jaxgen.errors import ConfigError, DataError
from jaxgen.parallel.mesh import make_mesh


def _index_images(n, h=8, w=8):
  """Image i is constant i, target i is one-hot(i): a mixed pixel/label reveals its sources."""
  x = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, h, w, 3))
  return x, jnp.eye(n)


def test_mixup_mixes_images_and_labels_with_one_lambda():
  x, t = _index_images(6)
  for seed in range(3):
    mixed, targets, lam = augment.mixup(jax.random.key(seed), x, t, alpha=0.4)
    lam, mixed, targets = float(lam), np.asarray(mixed), np.asarray(targets)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
    for i in range(6):
      partner = int(np.argmax(targets[i] - lam * np.eye(6)[i]))  # the (1 - lam) entry
      if partner == i:  # paired with itself: unchanged
        np.testing.assert_allclose(mixed[i], i, atol=1e-5)
        continue
      np.testing.assert_allclose(targets[i, i], lam, atol=1e-6)
      np.testing.assert_allclose(targets[i, partner], 1 - lam, atol=1e-6)
      # eq. 1: x = lam x_i + (1 - lam) x_j with the same j as the label
      np.testing.assert_allclose(mixed[i], lam * i + (1 - lam) * partner, atol=1e-5)


def test_cutmix_label_weight_equals_kept_area():
  x, t = _index_images(5, 16, 12)
  for seed in range(6):
    mixed, targets, kept = augment.cutmix(jax.random.key(seed), x, t, alpha=1.0)
    mixed, targets, kept = np.asarray(mixed), np.asarray(targets), float(kept)
    for i in range(5):
      own = np.mean(mixed[i, :, :, 0] == i)
      if targets[i, i] < 1.0 - 1e-6:  # a real partner: label weight = kept pixel fraction
        np.testing.assert_allclose(targets[i, i], own, atol=1e-6)
        np.testing.assert_allclose(kept, own, atol=1e-6)


def test_cmo_pastes_from_the_given_sources_and_pairs_streams():
  """CMO: CutMix's patch comes from the class-balanced stream, the label weight is its area; the
  paired sampler resumes both streams."""
  images = jnp.zeros((4, 8, 8, 3))
  sources = jnp.ones((4, 8, 8, 3))
  targets = jax.nn.one_hot(jnp.array([0, 0, 0, 0]), 3)
  source_targets = jax.nn.one_hot(jnp.array([2, 2, 2, 2]), 3)
  mixed, y, kept = augment.cutmix(jax.random.key(3), images, targets, 1.0, (sources, source_targets))
  pasted = float(jnp.mean(mixed[..., 0]))
  np.testing.assert_allclose(pasted, 1.0 - float(kept), atol=1e-6)
  np.testing.assert_allclose(np.asarray(y[:, 2]), 1.0 - float(kept), atol=1e-6)
  labels = np.array([0] * 30 + [1] * 3 + [2] * 1)
  arrays = {"image": np.arange(34), "label": labels}
  def make():
    base = ArrayBatches(arrays, global_batch_size=8, seed=0)
    return PairedBatches(base, ClassBalancedBatches(arrays, labels, global_batch_size=8, seed=1))
  a = make()
  first = [next(a) for _ in range(3)]
  state = a.get_state()
  after = next(a)
  b = make()
  b.set_state(state)
  np.testing.assert_array_equal(next(b)["paste_image"], after["paste_image"])
  pasted_labels = np.concatenate([f["paste_label"] for f in first])
  assert np.sum(pasted_labels != 0) > np.sum(first[0]["label"] != 0)  # minority oversampled
  with pytest.raises(ConfigError, match="cmo"):
    validate_classifier_config(classifier_config("resnet18", cmo=True), "", 1)


def test_cutmix_box_follows_the_area_formula():
  h, w = 32, 24
  for seed in range(20):
    lam = 0.1 + 0.04 * seed
    y0, y1, x0, x1 = np.asarray(augment.cutmix_box(jax.random.key(seed), jnp.float32(lam), h, w))
    cut_h, cut_w = int(np.floor(h * np.sqrt(1 - lam))), int(np.floor(w * np.sqrt(1 - lam)))
    assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    if y0 > 0 and y1 < h:  # not clipped: side = 2 * floor(cut / 2) (centre +- half the side)
      assert y1 - y0 == 2 * (cut_h // 2), (seed, y0, y1, cy)
    if x0 > 0 and x1 < w:
      assert x1 - x0 == 2 * (cut_w // 2), (seed, x0, x1, cx)


def test_mix_batch_off_is_identity_and_on_keeps_distributions():
  x, t = _index_images(4)
  same = augment.mix_batch(jax.random.key(0), x, t, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0)
  assert same[0] is x and same[1] is t
  _, targets = augment.mix_batch(jax.random.key(1), x, t, mixup_alpha=0.2, cutmix_alpha=1.0,
                                 mix_prob=1.0)
  np.testing.assert_allclose(np.asarray(targets).sum(1), 1.0, atol=1e-6)


def test_crop_and_flip_move_pixels_as_defined():
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  flipped = np.asarray(augment.random_flip(jax.random.key(0), x))
  for i in range(2):
    assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
  cropped = np.asarray(augment.random_crop(jax.random.key(3), x, 2))
  padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(2):  # each crop is some 4x4 window of the zero-padded image
    windows = [padded[i, a:a + 4, b:b + 4] for a in range(5) for b in range(5)]
    assert any(np.array_equal(cropped[i], wnd) for wnd in windows)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def test_label_smoothing_and_soft_cross_entropy_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 7)
  eps = 0.1
  t = np.asarray(smooth_targets(jnp.asarray(labels), 5, eps))
  np.testing.assert_allclose(t, (1 - eps) * np.eye(5)[labels] + eps / 5, atol=1e-7)
  logp = _np_log_softmax(logits)
  ce = np.asarray(soft_cross_entropy(jnp.asarray(logits), jnp.asarray(t)))
  # torch's CrossEntropyLoss(label_smoothing=eps): (1-eps) * NLL + eps * mean_k(-log p_k)
  ref = (1 - eps) * -logp[np.arange(7), labels] + eps * -logp.mean(1)
  np.testing.assert_allclose(ce, ref, rtol=1e-5, atol=1e-6)
  soft = rng.dirichlet(np.ones(5), 7).astype(np.float32)  # soft labels [N, K] pass through
  np.testing.assert_allclose(np.asarray(smooth_targets(jnp.asarray(soft), 5, 0.0)), soft)


def test_entropy_term_value_and_gradient_match_numpy():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(4, 6)).astype(np.float64)
  w = 0.3
  logp = _np_log_softmax(z)
  p = np.exp(logp)
  h = -(p * logp).sum(1)
  np.testing.assert_allclose(np.asarray(softmax_entropy(jnp.asarray(z, jnp.float32))), h, rtol=1e-5)
  targets = jnp.asarray(np.eye(6)[[0, 1, 2, 3]], jnp.float32)

  def term(logits):  # the entropy part of the loss only (CE weight 0)
    return classification_loss(logits, targets, jnp.zeros(4), w)[0]

  grad = np.asarray(jax.grad(term)(jnp.asarray(z, jnp.float32)))
  # d(-w mean_i H_i)/dz_ij = (w / B) p_ij (log p_ij + H_i)
  ref = w / 4 * p * (logp + h[:, None])
  np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)
  # a gradient-descent step raises the entropy (the term rewards uncertain outputs)
  h_after = np.asarray(softmax_entropy(jnp.asarray(z - 0.1 * grad, jnp.float32)))
  assert np.all(h_after > h - 1e-7) and np.any(h_after > h + 1e-5)


def test_class_balanced_sampler_frequencies_and_resume():
  labels = np.repeat([0, 1, 2], [500, 50, 5])
  arrays = {"x": np.arange(555), "label": labels}
  sampler = ClassBalancedBatches(arrays, labels, global_batch_size=64, seed=0)
  drawn = np.concatenate([next(sampler)["label"] for _ in range(200)])
  freq = np.bincount(drawn, minlength=3) / drawn.size
  # binomial std per class ~0.004 at 12,800 draws; 0.02 is five standard deviations.
  np.testing.assert_allclose(freq, 1 / 3, atol=0.02)
  state = sampler.get_state()
  a = next(sampler)["x"]
  sampler.set_state(state)
  np.testing.assert_array_equal(next(sampler)["x"], a)
  np.testing.assert_allclose(balanced_class_weights(labels, 3),
                             compute_class_weight("balanced", classes=np.arange(3), y=labels),
                             rtol=1e-6)


def test_synthetic_replacement_rate_and_resume():
  real = {"image": np.zeros((400, 1)), "label": np.zeros(400, np.int32)}
  syn = {"image": np.ones((50, 1)), "label": np.ones(50, np.int32)}
  it = SyntheticReplacement(ArrayBatches(real, global_batch_size=100, seed=0), syn, 0.3, seed=1)
  rate = np.mean([next(it)["image"].mean() for _ in range(100)])
  assert abs(rate - 0.3) < 0.03  # 10,000 Bernoulli(0.3) draws: std 0.0046
  state = it.get_state()
  batch = next(it)
  assert np.array_equal(batch["image"][:, 0] == 1, batch["label"] == 1)  # labels follow images
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["image"], batch["image"])


def _np_ece(probs, labels, m=15):
  """Guo et al. 2017's reference loop: bins (lo, hi], |acc - conf| weighted by bin mass."""
  conf, pred = probs.max(1), probs.argmax(1)
  edges = np.linspace(0, 1, m + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
  return ece


def test_ece_confusion_and_per_class_accuracy_match_references():
  rng = np.random.default_rng(2)
  probs = rng.dirichlet(np.ones(4) * 0.5, 300)
  probs[:4] = [[0.4, 0.2, 0.2, 0.2], [1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.6, 0.4, 0, 0]]
  labels = rng.integers(0, 4, 300)
  np.testing.assert_allclose(evaluate.expected_calibration_error(probs, labels), _np_ece(probs, labels),
                             atol=1e-12)
  preds = probs.argmax(1)
  cm = evaluate.confusion_matrix(labels, preds, 4)
  np.testing.assert_array_equal(cm, sk_confusion_matrix(labels, preds, labels=np.arange(4)))
  per_class = evaluate.per_class_accuracy(labels, preds, 5)  # class 4 has no examples
  for c in range(4):
    assert per_class[c] == pytest.approx(np.mean(preds[labels == c] == c))
  assert np.isnan(per_class[4])
  image = evaluate.confusion_image(cm, cell=5)
  assert image.dtype == np.uint8 and image.shape == (4 * 6 + 1, 4 * 6 + 1, 3)


def test_multiview_accuracy_averages_softmax_over_views():
  rng = np.random.default_rng(3)
  view_logits = rng.normal(size=(20, 4, 3)) * 2
  ref = np.stack([np.mean([np.exp(v) / np.exp(v).sum() for v in obj], axis=0) for obj in view_logits])
  np.testing.assert_allclose(evaluate.multiview_probabilities(view_logits), ref, atol=1e-12)
  # one confident wrong view is outvoted by three moderately right ones
  vl = np.array([[[0.0, 5.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]])
  out = evaluate.evaluate_logits(vl[:, 1], np.array([0]), 2, view_logits=vl)
  assert out["multiview_accuracy"] == 1.0 and out["per_view_accuracy"] == [0.0, 1.0, 1.0, 1.0]


def _toy(n=96, size=8, seed=0):
  """Three classes told apart by colour: trivially separable."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])
  noise = rng.integers(0, 50, (n, size, size, 3))
  return (colours[labels][:, None, None, :] + noise).astype(np.uint8), labels


def _cfg(arch, steps, **kw):
  cfg = classifier_config(arch, num_steps=steps, batch_size=16, lr=3e-3, **kw)
  cfg.train.update(steps_per_call=steps or 1, async_checkpoints=False, checkpoint_every=max(steps, 1))
  return cfg


def test_effective_number_weights_match_the_formula():
  labels = np.array([0] * 50 + [1] * 5 + [2] * 1)
  w = effective_number_weights(labels, 4, 0.99)
  raw = np.array([(1 - 0.99) / (1 - 0.99 ** n) for n in (50, 5, 1)])
  np.testing.assert_allclose(w[:3], raw * 3 / raw.sum(), rtol=1e-6)
  assert w[3] == 0 and w[2] > w[1] > w[0]


def test_tiny_cmo_fit_runs(tmp_path):
  """CMO with deferred re-weighting (the long-tail study's CMO + DRW) trains end to end."""
  cfg = _cfg("vit_tiny", 2, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
             cutmix_alpha=1.0, cmo=True, drw_start=0.5)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (16, 8, 8, 3)).astype(np.uint8)
  labels = np.array([0] * 13 + [1] * 3)
  clf = fit_classifier(cfg, images, labels, 2, workdir=str(tmp_path), name="cmo",
                       mesh=make_mesh(configlib.mesh_config()), key=jax.random.key(0),
                       verbose=False)
  assert clf.predict(images).shape == (16,)


def test_tiny_fit_separates_a_toy_set(tmp_path):
  images, labels = _toy()
  cfg = _cfg("vit_tiny", 30, patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
             label_smoothing=0.1, mixup_alpha=0.2, mix_prob=0.5, entropy_weight=0.05)
  mesh = make_mesh(configlib.mesh_config(), devices=jax.devices()[:1])
  clf = fit_classifier(cfg, images, labels, 3, workdir=str(tmp_path), name="toy", mesh=mesh,
                       key=jax.random.key(0), verbose=False)
  test_images, test_labels = _toy(seed=1)
  assert np.mean(clf.predict(test_images) == test_labels) >= 0.9
  assert clf.features(test_images[:5]).shape == (5, 16)
  assert clf.logits(test_images[:3], batch_size=2).shape == (3, 3)  # padded last batch


@pytest.mark.slow  # ~20 s: the default suite's 15-min CI budget
def test_finetuning_from_a_checkpoint_starts_from_its_predictions(tmp_path):
  images, labels = _toy(64)
  cfg = _cfg("resnet18", 6, width=4, small_input=False)
  cfg.train.ema_decay = 0.5
  mesh = make_mesh(configlib.mesh_config(), devices=jax.devices()[:1])
  first = fit_classifier(cfg, images, labels, 3, workdir=str(tmp_path / "a"), name="clf", mesh=mesh,
                         key=jax.random.key(0), verbose=False)
  variables = load_classifier_variables(str(tmp_path / "a"), "clf")
  assert set(variables) == {"params", "batch_stats"}  # EMA params and the BN statistics
  again = fit_classifier(_cfg("resnet18", 0, width=4, small_input=False), images, labels, 3,
                         workdir=str(tmp_path / "b"), name="clf", mesh=mesh,
                         key=jax.random.key(1), init_variables=variables, verbose=False)
  np.testing.assert_allclose(again.logits(images), first.logits(images), rtol=1e-5, atol=1e-5)
  with pytest.raises(DataError, match="do not match"):
    fit_classifier(_cfg("resnet18", 0, width=8), images, labels, 3, workdir=str(tmp_path / "c"),
                   name="clf", mesh=mesh, key=jax.random.key(1), init_variables=variables)
  with pytest.raises(DataError, match="no classifier checkpoint"):
    load_classifier_variables(str(tmp_path / "missing"), "clf")


def test_config_errors_name_the_key(tmp_path):
  cfg = classifier_config("resnet18")
  cfg.arch = "resnet19"
  with pytest.raises(ConfigError, match="arch"):
    validate_classifier_config(cfg, "", 1)
  cfg = classifier_config("resnet18", sampling="balanced")
  with pytest.raises(ConfigError, match="sampling"):
    validate_classifier_config(cfg, "", 1)
  cfg = classifier_config("resnet18", pretrained_path=str(tmp_path / "nope.pth"))
  images, labels = _toy(32)
  with pytest.raises(DataError, match="nope.pth"):
    fit_classifier(cfg, images, labels, 3, workdir=str(tmp_path), name="x",
                   mesh=make_mesh(configlib.mesh_config(), devices=jax.devices()[:1]),
                   key=jax.random.key(0))
