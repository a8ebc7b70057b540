"""Diff-Mix's evaluation: classifier accuracy per strategy (mean, std over seeds; per class), and
for each synthetic set its FID against the real target test images, the judge's agreement with
the planned target (and reference) class, the filter's kept fraction and the soft-label weights.

FID features are the t2i run's in-domain target judge (penultimate layer), trained on the
target's judge split, not InceptionV3: the numbers are comparable within this page only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.classifier.evaluate import evaluate_classifier
from jaxgen.diffmix import filtering, synthesis
from jaxgen.diffmix.data import GROUP_NAMES
from jaxgen.io.images import image_grid
from jaxgen.metrics.frechet import fid
from jaxgen.nets.common import to_model_range
from jaxgen.t2i import backbone as bb
from jaxgen.t2i import finetune as ft
from jaxgen.t2i import main as t2i_main
from jaxgen.t2i.evaluate import fid_features

GRID_STRENGTHS = (0.5, 0.7, 0.9)
HISTOGRAM_BINS = np.linspace(0.0, 1.0, 11)


def description(run) -> str:
  d, t = run.data, run.t2i.data
  if run.config.data.target == "source":
    c = run.config.data
    return (f"{d['source_name']} and its {c.test_split!r} split, {c.image_size}x{c.image_size} "
            f"(centre crop): {run.num_classes} '{d['metaclass_word']}' classes; real training "
            f"set {c.shots or 'all'} per class ({len(d['real_labels'])} images), test "
            f"{len(d['target_test_labels'])} images")
  shots = run.config.data.shots or "all"
  imbalance = run.config.data.imbalance_factor
  tail = f", long-tailed with imbalance factor {imbalance:g}" if imbalance else ""
  return (f"embedded fine-grained renders (jaxgen.data.t2i_sets, data seed {t.seed}, "
          f"{t.image_size}x{t.image_size}): {run.num_classes} '{d['metaclass_word']}' classes "
          f"differing by two-tone hue markings; real training set {shots} per class "
          f"({len(d['real_labels'])} images{tail}), test {t.target_test_per_class} per class "
          f"({len(d['target_test_labels'])} images)")


def translation_grid(data: dict, runs, tokenizer, config, key: jax.Array) -> np.ndarray:
  """Rows: a reference, its translations toward another class at s = 0.5, 0.7, 0.9 (one
  compiled call), a real image of the target class."""
  k = data["num_target_classes"]
  labels = data["real_labels"]
  n = min(config.evaluate.num_grid, k)
  refs = np.array([np.flatnonzero(labels == c)[0] for c in range(n)])
  targets = (labels[refs] + k // 2) % k
  m = len(GRID_STRENGTHS)
  prompts = [ft.class_prompts(k, data["metaclass_word"])[t] for t in np.repeat(targets, m)]
  edited = runs.translate(tokenizer, data["real_images"][np.repeat(refs, m)], prompts,
                          np.tile(np.asarray(GRID_STRENGTHS, np.float32), n),
                          config.synthesis.guidance_scale, key)
  rows = []
  for i in range(n):
    example = data["real_images"][np.flatnonzero(labels == targets[i])[0]]
    rows += [data["real_images"][refs[i]], *edited[i * m:(i + 1) * m], example]
  return image_grid(np.stack(rows), ncols=m + 2)


def backbone_scorer(run, seed: int) -> Callable[..., np.ndarray]:
  """The fine-tuned backbone's diffusion-classifier confidence in each image's target class:
  score(images, target_class, key, first_batch=0) (see `filtering.backbone_scores`)."""
  runs, tok, tuned = run.finetuned(seed)
  cfg, params = tuned.config, runs.params
  ids = tok.encode(ft.class_prompts(run.num_classes, run.data["metaclass_word"]),
                   cfg.text.max_length)
  contexts = bb.encode_prompts(params["text"], cfg, jnp.asarray(ids))
  batch = run.config.evaluate.batch_size

  def score(images: np.ndarray, target_class: np.ndarray, key: jax.Array,
            first_batch: int = 0) -> np.ndarray:
    latents = np.concatenate([np.asarray(bb.encode_images(params["vae"], cfg,
                                                          to_model_range(images[i:i + batch])))
                              for i in range(0, len(images), batch)])
    return filtering.backbone_scores(params["unet"], cfg, latents, contexts, target_class,
                                     num_times=run.config.filter.num_times, key=key,
                                     batch_size=batch, first_batch=first_batch)

  return score


def _mean_std(values: list[float]) -> dict[str, Any]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def soft_label_histogram(soft: np.ndarray, target_class: np.ndarray) -> dict[str, list]:
  """Counts of the target-class weight s^gamma in ten bins of [0, 1]."""
  w = soft[np.arange(len(target_class)), target_class]
  counts, _ = np.histogram(w, bins=HISTOGRAM_BINS)
  return {"bin_edges": [float(x) for x in HISTOGRAM_BINS], "counts": [int(c) for c in counts]}


def class_groups(train_counts: np.ndarray) -> dict[str, np.ndarray]:
  """Many / medium / few: the classes in the top, middle and bottom third by training count
  (ties by class id), the CUB-LT split's shape at this data set's size."""
  order = np.lexsort((np.arange(len(train_counts)), -np.asarray(train_counts)))
  thirds = np.array_split(order, 3)
  return {"many": np.sort(thirds[0]), "medium": np.sort(thirds[1]), "few": np.sort(thirds[2])}


def test_groups(d: dict, train_counts: np.ndarray, long_tail: bool) -> dict[str, np.ndarray]:
  """Boolean masks over the test images: many / medium / few classes of a long tail, or the
  four class-group x background groups of the background-shift set; {} otherwise."""
  labels = d["target_test_labels"]
  if "target_test_groups" in d:
    return {name: d["target_test_groups"] == i for i, name in enumerate(GROUP_NAMES)}
  if long_tail:
    return {g: np.isin(labels, c) for g, c in class_groups(train_counts).items()}
  return {}


def evaluate(run) -> dict[str, Any]:
  d, k, cfg = run.data, run.num_classes, run.config
  test, test_labels = d["target_test_images"], d["target_test_labels"]
  if cfg.data.target == "source":  # no embedded judge knows these classes: the real-set classifier
    judge = run.classifier(cfg.seeds[0], "none")
    in_domain = (f"the real-set {cfg.classifier.arch} classifier (strategy none, seed "
                 f"{cfg.seeds[0]}; penultimate features); not InceptionV3, not comparable with "
                 "published FIDs")
  else:
    judge = t2i_main.load_judge(run.t2i, run.t2i_dir, d, "judge_target", run.mesh)
    in_domain = (f"in-domain {run.t2i.judge.arch} target judge of the t2i run (penultimate "
                 f"features, trained on {run.t2i.data.target_judge_per_class} images per class); "
                 "not InceptionV3, not comparable with published FIDs")
  features, network = fid_features(run.t2i.evaluate.inception_path, judge, in_domain,
                                   "t2i.evaluate.inception_path")
  real_feats = features(test)
  out: dict[str, Any] = {
      "judge_real_test_accuracy": float(np.mean(judge.predict(test) == test_labels)),
      "real_training_set_fid": float(fid(real_feats, features(d["real_images"]))),
      "num_real": int(len(d["real_labels"])), "num_test": int(len(test_labels)),
      "num_classes": int(k), "classes": list(range(k)), "chance": 1.0 / k,
      "seeds": list(cfg.seeds),
  }
  counts = np.bincount(d["real_labels"], minlength=k)
  out["train_class_counts"] = counts.tolist()
  masks = test_groups(d, counts, bool(cfg.data.imbalance_factor))
  if masks:
    out["test_group_sizes"] = {g: int(m.sum()) for g, m in masks.items()}
  comparison = {}
  for strategy in cfg.strategies:
    accs, per_class, by_group = [], [], {g: [] for g in masks}
    for seed in cfg.seeds:
      clf = run.classifier(seed, strategy)
      pred = clf.predict(test)
      m = evaluate_classifier(clf, test, test_labels)
      accs.append(m["accuracy"])
      per_class.append([np.nan if a is None else a for a in m["per_class_accuracy"]])
      for g, mask in masks.items():
        by_group[g].append(float(np.mean(pred[mask] == test_labels[mask])))
    comparison[strategy] = {"accuracy_mean": float(np.mean(accs)),
                            "accuracy_std": float(np.std(accs)), "accuracy_values": accs,
                            "seeds": list(cfg.seeds),
                            "per_class_accuracy_mean": np.nanmean(per_class, axis=0).tolist()}
    if masks:
      groups = {g: _mean_std(v) for g, v in by_group.items()}
      if "target_test_groups" in d:  # worst group per seed, then mean / std over seeds
        groups["worst_group"] = _mean_std([float(min(v)) for v in zip(*by_group.values())])
      comparison[strategy]["group_accuracy"] = groups
  for entry in comparison.values():
    entry["accuracy_gain_vs_none"] = entry["accuracy_mean"] - comparison["none"]["accuracy_mean"]
  out["comparison"] = comparison
  synthetic = {}
  for strategy in run.synthetic_strategies():
    _, kind = synthesis.split_strategy(strategy)
    per_seed: dict[str, list[float]] = {"fid": [], "fid_kept": [], "judge_target_rate": [],
                                        "judge_reference_rate": [], "kept_fraction": []}
    for seed in cfg.seeds:
      syn, filt = run.synthetic(seed, strategy), run.filtered(seed, strategy)
      feats, pred = [], []
      for images in syn.image_chunks(run.synthetic_chunk()):
        feats.append(features(images))
        pred.append(judge.predict(images))
      feats, pred = np.concatenate(feats), np.concatenate(pred)
      per_seed["fid"].append(float(fid(real_feats, feats)))
      per_seed["fid_kept"].append(float(fid(real_feats, feats[filt["keep"]])))
      per_seed["judge_target_rate"].append(float(np.mean(pred == syn.column("target_class"))))
      per_seed["judge_reference_rate"].append(
          float(np.mean(pred == syn.column("reference_class"))))
      per_seed["kept_fraction"].append(float(np.mean(filt["keep"])))
      if seed == cfg.seeds[0]:
        hist = soft_label_histogram(syn.column("soft_label"), syn.column("target_class"))
        num = len(syn)
    synthetic[strategy] = {**{name: _mean_std(v) for name, v in per_seed.items()},
                           "kind": kind, "num_images": num, "soft_label_histogram": hist}
  out["synthetic"] = synthetic
  out["feature_network"] = network
  return out
