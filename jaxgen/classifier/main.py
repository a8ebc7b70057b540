"""The `classifier` method: train an image classifier, evaluate it, report (papers 000, 001, 003).

  python -m jaxgen.main --config=configs/classifier.py[:PRESET] --workdir=DIR

Stages: `train` (fit_classifier on the training split; checkpoints in DIR/checkpoints/classifier),
`evaluate` (top-1, per-class accuracy, confusion matrix, ECE and, for multi-view data, the
multi-view accuracy of paper 000 Fig. 2 right; DIR/eval/metrics.json and confusion.png) and
`report` (DIR/results.json, DIR/report.md).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.evaluate import evaluate_classifier, save_confusion_png
from jaxgen.classifier.inference import load_classifier, load_classifier_variables
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.memory import source_arrays
from jaxgen.data.multiview import VARIANTS
from jaxgen.data.pipeline import AUGMENT_NAMES, augment_option
from jaxgen.data.sources import Source, subset
from jaxgen.errors import ConfigError, DataError
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.io.report import markdown_table, write_report, write_results
from jaxgen.parallel.mesh import is_main_process, make_mesh
from jaxgen.stages import require_stage, run_stages
from jaxgen.train.writers import MetricWriter
from jaxgen.io import paths

STAGES = ("train", "evaluate", "report")
DATA_NAMES = ("multiview", "digits", "tfds", "folder")
STREAMED = ("tfds", "folder")  # read from disk through the grain pipeline, never held in memory
CHECKPOINT_NAME = "classifier"


@dataclasses.dataclass
class ClassifierData:
  """Training data and test arrays (uint8 NHWC), with the test views when the data has them.

  The embedded sets are in memory (`train_images` arrays); TFDS and image folders are a
  `Source` read from disk (`train_images` is then the Source, streamed by the grain pipeline
  during training, and `train_labels` its labels).
  """

  train_images: np.ndarray | Source
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  test_views: np.ndarray | None
  num_classes: int
  class_names: tuple[str, ...]
  description: str
  image_size: int

  @property
  def streamed(self) -> bool:
    return isinstance(self.train_images, Source)

  def first_train_images(self, n: int) -> np.ndarray:
    """The first n training images as arrays (decoded and resized when streamed)."""
    if self.streamed:
      return source_arrays(subset(self.train_images, np.arange(n)), self.image_size)["image"]
    return self.train_images[:n]


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Reject unknown names and impossible values (ConfigError) before anything is compiled."""
  dp = configlib.validate_base(config, num_devices)
  validate_classifier_config(config, "classifier", dp)
  configlib.require_choice(config, "data.name", DATA_NAMES)
  multiview = config.data.name == "multiview"
  for key in ("image_size", "num_train", "num_test", "num_views"):
    # tfds / folder: num_train / num_test cap the images read, 0 = all of them.
    configlib.require_positive_int(config, f"data.{key}",
                                   allow_zero=key in ("num_train", "num_test") and not multiview)
  configlib.require_positive_int(config, "data.seed", allow_zero=True)
  configlib.require_choice(config, "data.train_views", ("single", "all"))
  streamed = config.data.name in STREAMED
  augment_choices = AUGMENT_NAMES if streamed else ("none",)
  configlib.require(config.data.augment in augment_choices, "data.augment", config.data.augment,
                    f"one of {augment_choices}" + ("" if streamed else
                    f" (data.name={config.data.name} is in memory; decode-time augmentation "
                    f"applies to the streamed sources {STREAMED})"))
  configlib.require_positive_int(config, "data.workers", allow_zero=True)
  configlib.require_positive_int(config, "data.shots", allow_zero=True)
  tf = config.data.test_fraction
  configlib.require(isinstance(tf, float) and 0.0 < tf < 1.0, "data.test_fraction", tf,
                    "a fraction in (0, 1)")
  configlib.require_choice(config, "data.variant", VARIANTS)
  configlib.require_positive_int(config, "evaluate.num_train_examples", allow_zero=True)
  f = config.data.imbalance_factor
  configlib.require(isinstance(f, (int, float)) and (f == 0 or f >= 1), "data.imbalance_factor", f,
                    "0 (balanced) or a factor >= 1, e.g. 10 or 100")
  if config.data.name == "folder":
    configlib.require(bool(config.data.data_dir), "data.data_dir", config.data.data_dir,
                      "the root folder of <class_name>/*.png images")
  if config.data.name == "multiview":
    per_object = config.data.num_views if config.data.train_views == "all" else 1
    available = config.data.num_train * per_object
    configlib.require(config.classifier.train.batch_size <= available,
                      "classifier.train.batch_size", config.classifier.train.batch_size,
                      f"at most the {available} training images of data.num_train")
  kw = config.classifier.arch_kw
  if config.classifier.arch.startswith("vit") and kw.get("image_size", 0) == 0:
    configlib.require(config.data.image_size % kw.patch_size == 0, "classifier.arch_kw.patch_size",
                      kw.patch_size, f"a divisor of data.image_size={config.data.image_size}")
  init_dir = config.init_from.workdir
  if init_dir:
    configlib.require(paths.isdir(os.path.join(init_dir, "checkpoints", config.init_from.name)),
                      "init_from.workdir", init_dir,
                      f"a jaxgen workdir holding checkpoints/{config.init_from.name}")
  path = config.classifier.pretrained_path
  if path and not paths.isfile(path):
    raise DataError(f"pretrained weight file {path} does not exist (config.classifier."
                    "pretrained_path); expected a torchvision state-dict file")


# --------------------------------------------------------------------------- data


def _data_dir(config: ml_collections.ConfigDict, workdir: str) -> str | None:
  if config.data.data_dir:
    return config.data.data_dir
  return os.path.join(workdir, "data") if config.data.name == "multiview" else None


def load_data(config: ml_collections.ConfigDict, workdir: str) -> ClassifierData:
  """The train/test arrays of `config.data` (see configs/classifier.py for the keys)."""
  from jaxgen.data import imbalance, sources  # pylint: disable=import-outside-toplevel
  d = config.data
  data_dir = _data_dir(config, workdir)
  views = None
  if d.name == "multiview":
    opts = dict(data_dir=data_dir, seed=d.seed, num_train=d.num_train, num_test=d.num_test,
                num_views=d.num_views, image_size=d.image_size, variant=d.variant)
    train_src = sources.get_source("multiview", "classifier_train", **opts)
    test_src = sources.get_source("multiview", "classifier_eval", **opts)
    train = {k: np.asarray(v) for k, v in train_src.arrays.items()}
    if d.train_views == "all":  # every real view of every training object (an upper bound)
      v = train["images"].shape[1]
      train = {"image": train["images"].reshape((-1,) + train["images"].shape[2:]),
               "label": np.repeat(train["label"], v)}
    test = {k: np.asarray(v) for k, v in test_src.arrays.items()}
    views = test["images"]
    what = (f"multiview renderer ({d.variant}), {d.image_size}x{d.image_size}, data seed {d.seed}: "
            f"{len(train['label'])} training images ({d.train_views} view per object), "
            f"{len(test['label'])} test objects x {views.shape[1]} views")
  elif d.name == "digits":
    opts = dict(image_size=d.image_size, channels=3, seed=d.seed, test_fraction=d.test_fraction)
    train_src = sources.get_source("digits", "train", **opts)
    test_src = sources.get_source("digits", "test", **opts)
    train, test = source_arrays(train_src, d.image_size), source_arrays(test_src, d.image_size)
    what = (f"scikit-learn digits resized to {d.image_size}x{d.image_size}, split seed {d.seed}: "
            f"{len(train['label'])} train / {len(test['label'])} test")
  else:  # tfds / folder: the training split streams from disk (grain), the test split is read
    if d.name == "tfds":
      train_src = sources.get_source("tfds", d.train_split, data_dir=data_dir,
                                     tfds_name=d.tfds_name)
      test_src = sources.get_source("tfds", d.test_split, data_dir=data_dir,
                                    tfds_name=d.tfds_name)
      what = f"TFDS {d.tfds_name} {d.train_split}/{d.test_split}"
    else:
      # No resize in the source: the pipeline resizes (or random-resized-crops) per step.
      opts = dict(seed=d.seed, test_fraction=d.test_fraction)
      train_src = sources.get_source("folder", "train", data_dir=data_dir, **opts)
      test_src = sources.get_source("folder", "test", data_dir=data_dir, **opts)
      what = f"image folder {data_dir}"
    if d.num_train and d.num_train < len(train_src):
      train_src = subset(train_src, np.arange(d.num_train))
    test = source_arrays(test_src, d.image_size, d.num_test)
    what += (f" at {d.image_size}x{d.image_size}: {len(train_src)} train (streamed by grain, "
             f"augment {d.augment}) / {len(test['label'])} test")
  num_classes = int(train_src.num_classes)
  streamed = d.name in STREAMED
  images = train_src if streamed else train["image"]
  labels = np.asarray(train_src.labels() if streamed else train["label"], np.int32)

  def take(indices: np.ndarray):
    return subset(images, indices) if streamed else images[indices]

  if d.imbalance_factor and d.imbalance_factor > 1:
    sub = imbalance.long_tail_indices(labels, seed=d.seed, imbalance_factor=d.imbalance_factor,
                                      num_classes=num_classes)
    images, labels = take(sub.indices), labels[sub.indices]
    what += f"; long-tail training subset IF={d.imbalance_factor} ({len(labels)} images)"
  if d.shots:
    sub = imbalance.few_shot_indices(labels, k=d.shots, seed=d.seed, num_classes=num_classes)
    images, labels = take(sub.indices), labels[sub.indices]
    what += f"; {d.shots}-shot training subset ({len(labels)} images)"
  if config.classifier.train.batch_size > len(labels):
    raise ConfigError("classifier.train.batch_size", config.classifier.train.batch_size,
                      f"at most the {len(labels)} training images of this data")
  names = tuple(train_src.class_names)
  if d.name == "multiview" and names == tuple(str(i) for i in range(num_classes)):
    from jaxgen.data import renderer  # pylint: disable=import-outside-toplevel
    if len(renderer.SHAPE_CLASSES) == num_classes:  # the source gave indices only
      names = tuple(renderer.SHAPE_CLASSES)
  return ClassifierData(images, labels, test["image"], np.asarray(test["label"], np.int32), views,
                        num_classes, names, what, d.image_size)


# --------------------------------------------------------------------------- stages


def _image_shape(data: ClassifierData) -> tuple[int, ...]:
  return tuple(data.test_images.shape[1:])


def train_stage(config: ml_collections.ConfigDict, workdir: str, data: ClassifierData, mesh) -> None:
  """Fit the classifier (resuming from its checkpoints), optionally from another run's weights."""
  init = None
  if config.init_from.workdir:
    init = load_classifier_variables(config.init_from.workdir, config.init_from.name)
  writer = MetricWriter(os.path.join(workdir, "logs"), enabled=is_main_process())
  try:
    stream = {}
    if data.streamed:
      stream = dict(image_size=data.image_size, stream_augment=augment_option(config.data.augment),
                    input_workers=config.data.workers)
    fit_classifier(config.classifier, data.train_images,
                   None if data.streamed else data.train_labels, data.num_classes,
                   workdir=workdir, name=CHECKPOINT_NAME, mesh=mesh,
                   key=jax.random.fold_in(jax.random.key(config.seed), 0), writer=writer,
                   init_variables=init, **stream)
  finally:
    writer.close()


def evaluate_stage(config: ml_collections.ConfigDict, workdir: str, data: ClassifierData,
                   mesh) -> dict:
  """Metrics of the trained classifier on the test split (and its views); writes DIR/eval/."""
  require_stage(workdir, "train", "evaluate")
  clf = load_classifier(config.classifier, data.num_classes, _image_shape(data), workdir=workdir,
                        name=CHECKPOINT_NAME, mesh=mesh)
  bs = config.classifier.eval_batch_size
  metrics = evaluate_classifier(clf, data.test_images, data.test_labels, views=data.test_views,
                                batch_size=bs)
  n_train = min(len(data.train_labels), config.evaluate.num_train_examples)
  if n_train:
    train_pred = clf.predict(data.first_train_images(n_train), bs)
    metrics["train_accuracy"] = float(np.mean(train_pred == data.train_labels[:n_train]))
  metrics["class_names"] = list(data.class_names)
  metrics["data"] = data.description
  if is_main_process():
    atomic_write_json(os.path.join(workdir, "eval", "metrics.json"), metrics)
    if config.log_images:
      save_confusion_png(os.path.join(workdir, "eval", "confusion.png"),
                         np.asarray(metrics["confusion_matrix"]))
    print(f"[evaluate] accuracy {metrics['accuracy']:.4f}"
          + (f", multi-view accuracy {metrics['multiview_accuracy']:.4f}"
             if "multiview_accuracy" in metrics else "") + f", ECE {metrics['ece']:.4f}", flush=True)
  return metrics


def _fmt(value: Any) -> str:
  return "n/a" if value is None else f"{100 * value:.2f}"


def report_stage(config: ml_collections.ConfigDict, workdir: str) -> None:
  """results.json (accuracy, per-class accuracy, ECE, multiview accuracy, ...) and report.md."""
  require_stage(workdir, "evaluate", "report")
  m = read_json(os.path.join(workdir, "eval", "metrics.json"))
  keys = ("accuracy", "mean_per_class_accuracy", "per_class_accuracy", "ece", "nll",
          "confusion_matrix", "num_examples", "train_accuracy", "multiview_accuracy",
          "multiview_ece", "per_view_accuracy", "num_views", "class_names")
  results = {k: m[k] for k in keys if k in m}
  results["single_view_accuracy"] = m["accuracy"]
  train_stage_file = os.path.join(workdir, "stages", "train.json")
  if paths.exists(train_stage_file):
    results["train_seconds"] = read_json(train_stage_file)["seconds"]
  if not is_main_process():
    return
  write_results(workdir, config, results, data=m["data"], feature_network=None)
  c = config.classifier
  rows = [("top-1 accuracy (%)", _fmt(m["accuracy"])),
          ("mean per-class accuracy (%)", _fmt(m["mean_per_class_accuracy"])),
          ("ECE, 15 bins (%)", _fmt(m["ece"])), ("NLL", f"{m['nll']:.4f}")]
  if "train_accuracy" in m:
    rows.append(("training accuracy (%)", _fmt(m["train_accuracy"])))
  if "multiview_accuracy" in m:
    rows.insert(1, (f"multi-view accuracy, mean softmax of {m['num_views']} views (%)",
                    _fmt(m["multiview_accuracy"])))
    rows.insert(2, ("per-view accuracy (%)", ", ".join(_fmt(a) for a in m["per_view_accuracy"])))
  names = m.get("class_names") or [str(i) for i in range(len(m["per_class_accuracy"]))]
  support = np.asarray(m["confusion_matrix"]).sum(axis=1)
  per_class = markdown_table(["class", "test examples", "accuracy (%)"],
                             [(n, int(s), _fmt(a)) for n, s, a in
                              zip(names, support, m["per_class_accuracy"])])
  recipe = markdown_table(["setting", "value"], [
      ("architecture", f"{c.arch} {dict(c.arch_kw)}"),
      ("steps x batch", f"{c.train.num_steps} x {c.train.batch_size}"),
      ("optimiser", f"{c.train.optim.name} lr {c.train.optim.lr} ({c.train.optim.schedule}), "
                    f"weight decay {c.train.optim.weight_decay}"),
      ("EMA decay", c.train.ema_decay),
      ("label smoothing / mixup / cutmix", f"{c.label_smoothing} / {c.mixup_alpha} / {c.cutmix_alpha}"),
      ("entropy weight", c.entropy_weight), ("sampling", c.sampling),
      ("augmentation", f"flip={c.augment.flip}, crop padding={c.augment.crop_padding}"),
      ("initialisation", config.init_from.workdir or c.pretrained_path or "random"),
      ("training time (s)", results.get("train_seconds", "n/a"))])
  sections = [
      ("Test metrics", markdown_table(["metric", "value"], rows)),
      ("Per-class accuracy", per_class),
      ("Confusion matrix", "Rows: true class, columns: predicted class, row-normalised "
                           "(white 0 to dark blue 1; diagonal outlined in red).\n\n"
                           "![confusion matrix](eval/confusion.png)"),
      ("Training recipe", recipe),
  ]
  write_report(workdir, f"Classifier: {c.arch} ({config.get('preset', 'default')})", config=config,
               data=m["data"], feature_network=None, sections=sections)


def main(config: ml_collections.ConfigDict, workdir: str, stages: Sequence[str] | None = None,
         force: bool = False) -> None:
  """Run the requested stages (default: all) in `workdir`."""
  mesh = make_mesh(config.mesh)
  cache: dict[str, ClassifierData] = {}

  def data() -> ClassifierData:
    if "data" not in cache:
      cache["data"] = load_data(config, workdir)
    return cache["data"]

  run_stages(workdir, [
      ("train", lambda: train_stage(config, workdir, data(), mesh)),
      ("evaluate", lambda: evaluate_stage(config, workdir, data(), mesh)),
      ("report", lambda: report_stage(config, workdir)),
  ], requested=stages, force=force)
