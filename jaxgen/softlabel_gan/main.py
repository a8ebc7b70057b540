"""Softlabel-GAN end to end (paper 003): data -> classifier C -> soft labels -> judge -> GANs ->
samples -> evaluation -> report.

  train_classifier  C (SpinalNet head, entropy term 0.3) on the imbalanced training set
  soft_labels       y_hat = C(x) for every training image, cached with provenance; Table 1's
                    per-class counts before / after label augmentation
  train_judge       the in-domain feature network (balanced, disjoint images) unless InceptionV3
                    weights are given
  train_gans        one BigGAN + DiffAugment per GAN variant (DiffAug-GAN, Smooth-GAN,
                    Softlabel-GAN, ...)
  train_diffusion   one class-conditional diffusion model per diffusion variant (Table 7: CFG with
                    one-hot or soft labels)
  generate          `samples_per_class` images per class from each EMA generator (eval mode) or
                    guided diffusion model
  evaluate          Table 2's overall and intra-class metrics, Figs. 6 and 8
  report            report.md, results.json (`table2[variant][metric]`, `table1`)
"""

from __future__ import annotations

import functools
import hashlib

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.batches import first_records, is_streamed, ordered_batches
from jaxgen.data.imbalance import softlabel_gan_counts
from jaxgen.data.sources import subset
from jaxgen.errors import ConfigError, DataError
from jaxgen.gan.diffaugment import parse_policy
from jaxgen.gan.losses import LOSSES
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.mvld.judges import build_judges, check_judge_architecture
from jaxgen.parallel.mesh import is_main_process
from jaxgen.softlabel_gan import data as data_lib
from jaxgen.softlabel_gan import diffusion as diffusion_lib
from jaxgen.softlabel_gan import evaluate as ev
from jaxgen.softlabel_gan import figures
from jaxgen.softlabel_gan import labels as labels_lib
from jaxgen.softlabel_gan import report as report_lib
from jaxgen.softlabel_gan import train as gan_train
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.io import paths

STAGES = ("data", "train_classifier", "soft_labels", "train_judge", "train_gans",
          "train_diffusion", "generate", "evaluate", "report")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every impossible value fails here, before anything trains: G and D are built abstractly."""
  dp = configlib.validate_base(config, num_devices)
  d = config.data
  configlib.require_choice(config, "data.name", data_lib.DATA_NAMES)
  configlib.require_choice(config, "data.imbalance", data_lib.IMBALANCE)
  for key in ("data.image_size", "data.imbalance_samples", "data.num_test"):
    configlib.require_positive_int(config, key)
  for key in ("data.min_class_size", "data.num_pool", "data.num_judge"):
    configlib.require_positive_int(config, key, allow_zero=True)
  configlib.require(d.image_size in (32, 64, 128), "data.image_size", d.image_size,
                    "32, 64 or 128 (the BigGAN sizes)")
  if d.name == "multiview":
    configlib.require_choice(config, "data.variant", ("plain", "standard"))
    # The pool holds num_pool / 12 objects per class; the largest class of the recipe must fit.
    if d.imbalance != "none":
      largest = int(softlabel_gan_counts(12, num_samples=d.imbalance_samples, distribution=d.imbalance,
                                         min_class_size=d.min_class_size).max())
      configlib.require(d.num_pool // 12 >= largest, "data.num_pool", d.num_pool,
                        f"at least {12 * largest} (12 classes x the recipe's largest class, {largest})")
  elif not d.data_dir:
    raise ConfigError("data.data_dir", d.data_dir, f"the {d.name} location for data.name={d.name!r}")
  variants = list(config.variants)
  configlib.require(bool(variants) and all(v in labels_lib.VARIANTS for v in variants), "variants",
                    variants, "a non-empty list of " + ", ".join(labels_lib.VARIANTS))
  configlib.require(len(set(variants)) == len(variants), "variants", variants, "distinct names")
  if labels_lib.needs_classifier(variants):
    validate_classifier_config(config, "classifier", dp)
  g = config.gan
  configlib.require_choice(config, "gan.loss", LOSSES)
  for key in ("gan.g_ch", "gan.d_ch", "gan.dim_z", "gan.shared_dim", "gan.d_steps"):
    configlib.require_positive_int(config, key)
  for key in ("gan.g_attention", "gan.d_attention", "gan.ema_start"):
    configlib.require_positive_int(config, key, allow_zero=True)
  try:
    parse_policy(g.diffaugment)
  except ValueError as err:
    raise ConfigError("gan.diffaugment", g.diffaugment, str(err)) from None
  configlib.validate_train(config, "gan.train", dp)
  configlib.validate_optim(config, "gan.d_optim")  # gan.train.optim: in validate_train
  configlib.require_range(config, "labels.smooth_alpha", 0.0, 1.0)
  configlib.require(config.labels.mixup_alpha > 0, "labels.mixup_alpha", config.labels.mixup_alpha,
                    "a positive Beta parameter")
  configlib.require_range(config, "labels.count_threshold", 0.0, 1.0)
  e = config.evaluate
  for key in ("evaluate.samples_per_class", "evaluate.lpips_per_class", "evaluate.lpips_pairs",
              "evaluate.prdc_k", "evaluate.kid_subset_size", "evaluate.batch_size",
              "evaluate.grid_per_class"):
    configlib.require_positive_int(config, key)
  configlib.require(e.samples_per_class > e.prdc_k, "evaluate.prdc_k", e.prdc_k,
                    f"fewer than evaluate.samples_per_class = {e.samples_per_class}")
  configlib.require(e.lpips_per_class >= 2 and e.lpips_per_class <= e.samples_per_class,
                    "evaluate.lpips_per_class", e.lpips_per_class,
                    f"in [2, evaluate.samples_per_class = {e.samples_per_class}]")
  if e.inception_path and not paths.isfile(e.inception_path):
    raise ConfigError("evaluate.inception_path", e.inception_path, "an existing FID Inception weight file")
  if needs_judge(config):
    key = "evaluate.lpips_backbone_path" if e.inception_path else "evaluate.inception_path"
    configlib.require(d.name == "multiview" and d.num_judge > 0, key, configlib.get_path(config, key),
                      "a weight file for data on disk (InceptionV3 and both LPIPS files; the "
                      "in-domain judge needs the embedded renders' balanced judge set)")
    validate_classifier_config(config, "judge", dp)
    configlib.trace_once(config, ("judge", "evaluate", "data.image_size"),
                         functools.partial(check_judge_architecture, config, "judge"))
  for key in ("evaluate.lpips_backbone_path", "evaluate.lpips_linear_path"):
    path = configlib.get_path(config, key)
    configlib.require(not path or paths.isfile(path), key, path, "an existing LPIPS weight file or ''")
  # The networks at the configured sizes, shapes only: a bad architecture fails here, not after
  # the classifier has trained.
  k = 12 if d.name == "multiview" else 2
  # Table 7's diffusion section: its values always, the U-Net traced only when a variant uses it.
  diffusion_lib.validate(config, k, d.image_size,
                         trace=bool(labels_lib.of_model(variants, "diffusion")))
  configlib.validate_train(config, "diffusion.train", dp)
  try:
    gen, disc = gan_train.build_networks(g, k, d.image_size)
    jax.eval_shape(lambda key: gan_train.init_state(gen, disc, g, key), jax.random.key(0))
  except (ValueError, TypeError) as err:
    raise ConfigError("gan", f"g_ch={g.g_ch}, dim_z={g.dim_z}, hierarchical={g.hierarchical}, "
                      f"attention={g.g_attention}/{g.d_attention}",
                      f"a buildable BigGAN at {d.image_size}x{d.image_size} ({err})") from None


class Run(MethodRun):
  """Shared state of one Softlabel-GAN run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)

  @functools.cached_property
  def data(self) -> dict:
    return data_lib.load_sets(self.config, self.workdir)

  @property
  def num_classes(self) -> int:
    return self.data["num_classes"]

  @functools.cached_property
  def networks(self):
    return gan_train.build_networks(self.config.gan, self.num_classes, self.config.data.image_size)

  @functools.cached_property
  def diffusion_network(self):
    return diffusion_lib.network_config(self.config.diffusion, self.num_classes)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.config.data.image_size, self.config.data.image_size, 3)

  @property
  def streamed(self) -> bool:
    """Whether the training set is a Source on disk (TFDS / folder), read through grain."""
    return is_streamed(self.data["train"][0])

  def training_images_in_order(self, batch_size: int):
    """The training images in record order, `batch_size` at a time (decoded and resized when
    streamed)."""
    return ordered_batches(self.data["train"][0], batch_size, key="image",
                           image_size=self.config.data.image_size)

  def label_vectors(self, variant: labels_lib.Variant, probs: np.ndarray | None) -> np.ndarray:
    """T_y of every training image for the variant's label source (`probs`: C's softmax)."""
    return labels_lib.real_label_vectors(variant.label_source, self.data["train"][1],
                                         self.num_classes, probs=probs,
                                         smooth_alpha=self.config.labels.smooth_alpha)

  def classifier(self):
    require_stage(self.workdir, "train_classifier", "soft_labels")
    return load_classifier(self.config.classifier, self.num_classes, self.image_shape,
                           workdir=self.workdir, name="classifier", mesh=self.mesh)

  def fingerprint(self) -> str:
    """The training images and labels, hashed: what the cached soft labels were computed on (for
    a streamed set: the source, the chosen records and their labels)."""
    images, labels = self.data["train"]
    if self.streamed:
      h = hashlib.sha256(repr(images.parent).encode())
      h.update(np.ascontiguousarray(images.indices).tobytes())
    else:
      h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()

  def soft_labels(self) -> np.ndarray | None:
    if not labels_lib.needs_classifier(self.config.variants):
      return None
    require_stage(self.workdir, "soft_labels", "train_gans")
    with paths.load_npz(self.path("labels", "soft_labels.npz")) as f:
      if str(f["fingerprint"]) != self.fingerprint():
        raise DataError(f"{self.path('labels', 'soft_labels.npz')} was computed on other training "
                        "images than this config's; expected a matching cache (rerun with "
                        "--stages=soft_labels --force)")
      return np.asarray(f["probabilities"])

  @property
  def needs_judge(self) -> bool:
    return needs_judge(self.config)

  @functools.cached_property
  def evaluator(self) -> ev.Evaluator:
    """InceptionV3 / calibrated LPIPS where their files are given, else the in-domain judge."""
    cfg = self.config
    judge = None
    if self.needs_judge:
      require_stage(self.workdir, "train_judge", "evaluate")
      judge = load_classifier(cfg.judge, self.num_classes, self.data["judge"][0].shape[1:],
                              workdir=self.workdir, name="judge", mesh=self.mesh)
    judges = build_judges(cfg, judge, self.mesh, section="judge")
    feature_network = judges.feature_network.replace("on this data", "on a balanced, disjoint "
                                                     "set of the renders")
    if cfg.evaluate.inception_path:
      from jaxgen.metrics.inception import inception_feature_fn, load_fid_inception
      fn = inception_feature_fn(load_fid_inception(cfg.evaluate.inception_path), mesh=self.mesh)
      features, logits = (lambda x: fn(x)[0]), (lambda x: fn(x)[1])
      logits_network = "InceptionV3 logits (Inception Score convention)"
    else:
      features, logits = judges.features, judges.logits
      logits_network = f"in-domain {cfg.judge.arch} judge's logits (in-domain IS)"
    if judge is not None:
      classify, classify_network = judges.logits, f"the in-domain {cfg.judge.arch} judge"
    elif labels_lib.needs_classifier(cfg.variants):
      c = self.classifier()
      classify = lambda x: c.logits(x, cfg.classifier.eval_batch_size)  # noqa: E731
      classify_network = "the label classifier C (trained on the imbalanced set)"
    else:
      classify, classify_network = None, "none"
    return ev.Evaluator(features=features, logits=logits, lpips=judges.lpips, classify=classify,
                        feature_network=feature_network, lpips_network=judges.lpips_network,
                        logits_network=logits_network, classify_network=classify_network)


def needs_judge(config: ml_collections.ConfigDict) -> bool:
  """The in-domain judge is trained unless both InceptionV3 and calibrated LPIPS files are given."""
  e = config.evaluate
  return not (e.inception_path and e.lpips_backbone_path and e.lpips_linear_path)


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    print(f"[data] {d['description']}", flush=True)
    images, labels = d["train"]
    if run.streamed:  # the first 8 records of each class, read from disk
      rows = [first_records(subset(images, np.flatnonzero(labels == c)[:8]), 8, key="image",
                            image_size=run.config.data.image_size) if np.any(labels == c)
              else np.zeros((0,) + run.image_shape, np.uint8) for c in range(run.num_classes)]
    else:
      rows = [images[labels == c][:8] for c in range(run.num_classes)]
    atomic_write_json(run.path("eval", "data.json"), {
        "description": d["description"], "train_counts": d["counts"].tolist(),
        "test_counts": np.bincount(d["test"][1], minlength=run.num_classes).tolist(),
        "class_names": list(d["class_names"])})
    run.save_figure(image_grid(_pad_rows(rows)), "samples", "training_set.png")


def _pad_rows(rows: list[np.ndarray]) -> np.ndarray:
  """Per-class rows of images (a class with fewer images is padded with white) -> [R, C, H, W, 3]."""
  width = max(len(r) for r in rows)
  shape = next(r for r in rows if len(r)).shape[1:]
  return np.stack([np.concatenate([r, np.full((width - len(r),) + shape, 255, np.uint8)]) for r in rows])


def _stage_classifier(run: Run) -> None:
  if not labels_lib.needs_classifier(run.config.variants):
    return
  images, labels = run.data["train"]
  streamed = run.streamed  # a Source brings its own labels and is decoded at data.image_size
  clf = fit_classifier(run.config.classifier, images, None if streamed else labels, run.num_classes,
                       workdir=run.workdir, name="classifier", mesh=run.mesh,
                       key=run.key("train_classifier"), writer=run.writer,
                       image_size=run.config.data.image_size if streamed else None)
  x, y = run.data["test"]  # every process predicts (a sharded computation); process 0 writes
  acc = float(np.mean(clf.predict(x, run.config.classifier.eval_batch_size) == y))
  if is_main_process():
    atomic_write_json(run.path("eval", "classifier.json"), {
        "reference_accuracy": acc, "entropy_weight": run.config.classifier.entropy_weight,
        "arch": run.config.classifier.arch, "head": run.config.classifier.arch_kw.get("head")})
    print(f"[train_classifier] C's accuracy on the balanced reference set: {acc:.3f}", flush=True)


def _stage_soft_labels(run: Run) -> None:
  images, labels = run.data["train"]
  k, cfg = run.num_classes, run.config.labels
  probs = None
  if labels_lib.needs_classifier(run.config.variants):
    clf, batch = run.classifier(), run.config.classifier.eval_batch_size
    if run.streamed:
      probs = np.concatenate([clf.probabilities(b, batch) for b in run.training_images_in_order(batch)])
    else:
      probs = clf.probabilities(images, batch)
    if is_main_process():
      atomic_save_npz(run.path("labels", "soft_labels.npz"), probabilities=probs.astype(np.float32),
                      fingerprint=np.asarray(run.fingerprint()))
  table1 = {"count_threshold": cfg.count_threshold, "original": np.bincount(labels, minlength=k).tolist()}
  for source in ("smooth", "soft", "class_mean"):
    if source != "smooth" and probs is None:
      continue
    vectors = labels_lib.real_label_vectors(source, labels, k, probs=probs, smooth_alpha=cfg.smooth_alpha)
    table1[source] = labels_lib.augmented_counts(vectors, cfg.count_threshold).tolist()
  if probs is not None:
    table1["train_accuracy"] = float(np.mean(np.argmax(probs, 1) == labels))
    table1["mean_entropy"] = float(np.mean(-np.sum(probs * np.log(np.maximum(probs, 1e-12)), 1)))
    table1["mean_true_class_probability"] = float(np.mean(probs[np.arange(len(labels)), labels]))
  if is_main_process():
    atomic_write_json(run.path("eval", "table1.json"), table1)


def _stage_judge(run: Run) -> None:
  if not run.needs_judge:
    return
  images, labels = run.data["judge"]
  judge = fit_classifier(run.config.judge, images, labels, run.num_classes, workdir=run.workdir,
                         name="judge", mesh=run.mesh, key=run.key("train_judge"), writer=run.writer)
  x, y = run.data["test"]  # every process predicts (a sharded computation); process 0 writes
  acc = float(np.mean(judge.predict(x, run.config.judge.eval_batch_size) == y))
  if is_main_process():
    atomic_write_json(run.path("eval", "judge.json"), {"reference_accuracy": acc})
    print(f"[train_judge] judge accuracy on the reference set: {acc:.3f}", flush=True)


def _stage_gans(run: Run) -> None:
  images, labels = run.data["train"]
  probs = run.soft_labels()
  g, d = run.networks
  for i, name in enumerate(run.config.variants):
    path = run.path("models", f"gan_{name}.msgpack")
    if labels_lib.VARIANTS[name].model != "gan" or paths.exists(path):
      continue
    variant = labels_lib.VARIANTS[name]
    vectors = run.label_vectors(variant, probs)
    if is_main_process():
      print(f"[train_gans] {name} ({variant.title}): labels {variant.label_source}, DiffAugment "
            f"{'on' if variant.augment else 'off'}, sampling {variant.sampling}", flush=True)
    state = gan_train.train_gan(f"gan_{name}", g, d, run.config.gan, variant, images, vectors, labels,
                                mixup_alpha=run.config.labels.mixup_alpha, workdir=run.workdir,
                                mesh=run.mesh, key=run.key("train_gans", i), writer=run.writer,
                                image_size=run.config.data.image_size if run.streamed else None)
    if is_main_process():
      save_params(path, {"params": jax.device_get(state.ema_params),
                         "stats": jax.device_get(state.ema_stats)})


def _stage_diffusion(run: Run) -> None:
  images, labels = run.data["train"]
  names = labels_lib.of_model(run.config.variants, "diffusion")
  probs = run.soft_labels() if names else None
  cfg = run.config.diffusion
  for name in names:
    path = run.path("models", f"diffusion_{name}.msgpack")
    if paths.exists(path):
      continue
    variant = labels_lib.VARIANTS[name]
    vectors = run.label_vectors(variant, probs)
    if is_main_process():
      print(f"[train_diffusion] {name} ({variant.title}): labels {variant.label_source}, "
            f"p_uncond {cfg.p_uncond}", flush=True)
    state = diffusion_lib.train_diffusion(
        f"diffusion_{name}", run.diffusion_network, cfg, variant, images, vectors, labels,
        workdir=run.workdir, mesh=run.mesh,
        key=run.key("train_diffusion", run.config.variants.index(name)), writer=run.writer, image_size=run.config.data.image_size if run.streamed else None)
    if is_main_process():
      save_params(path, {"params": jax.device_get(state.eval_params)})


def _eval_classes(run: Run) -> np.ndarray:
  return np.repeat(np.arange(run.num_classes), run.config.evaluate.samples_per_class).astype(np.int32)


def _stage_generate(run: Run) -> None:
  require_stage(run.workdir, "train_gans", "generate")
  require_stage(run.workdir, "train_diffusion", "generate")
  g, _ = run.networks
  classes = _eval_classes(run)
  e = run.config.evaluate
  for i, name in enumerate(run.config.variants):
    if labels_lib.VARIANTS[name].model == "diffusion":
      params = load_params(run.path("models", f"diffusion_{name}.msgpack"))["params"]
      images = diffusion_lib.sample(run.diffusion_network, run.config.diffusion, params,
                                    run.key("generate", i), classes, run.config.data.image_size,
                                    e.batch_size, mesh=run.mesh)
    else:
      gen = load_params(run.path("models", f"gan_{name}.msgpack"))
      images = gan_train.sample(g, gen["params"], gen["stats"], run.key("generate", i), classes,
                                e.batch_size, mesh=run.mesh)
    if is_main_process():
      atomic_save_npz(run.path("samples", f"{name}.npz"), images=images, labels=classes)
      rows = [images[classes == c][:e.grid_per_class] for c in range(run.num_classes)]
      run.save_figure(image_grid(np.stack(rows)), "samples", f"{name}_per_class.png")


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "generate", "evaluate")
  e, evaluator = run.config.evaluate, run.evaluator
  real, real_labels = run.data["test"]
  real_feats = evaluator.features(real)
  results = {}
  for name in run.config.variants:
    with paths.load_npz(run.path("samples", f"{name}.npz")) as f:
      images, classes = f["images"], f["labels"]
    results[name] = ev.evaluate_samples(
        evaluator, images, classes, real_feats, real_labels, k=e.prdc_k,
        kid_subset_size=e.kid_subset_size, lpips_per_class=e.lpips_per_class,
        lpips_pairs=e.lpips_pairs, seed=run.config.seed)
    if is_main_process():
      print(f"[evaluate] {name}: FID {results[name]['fid']:.2f}, intra-FID "
            f"{results[name]['intra_fid_mean']:.2f} +- {results[name]['intra_fid_std']:.2f}", flush=True)
  reference = ev.real_reference_row(evaluator, real, real_labels, lpips_pairs=e.lpips_pairs,
                                    seed=run.config.seed)
  if is_main_process():
    atomic_write_json(run.path("eval", "evaluation.json"), {
        "table2": results, "real_reference": reference,
        "networks": {"features": evaluator.feature_network, "lpips": evaluator.lpips_network,
                     "logits": evaluator.logits_network, "classify": evaluator.classify_network}})
    counts = np.asarray(read_json(run.path("eval", "data.json"))["train_counts"])
    for fig_name, image in figures.figures(results, counts).items():
      run.save_figure(image, "eval", fig_name)


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  if is_main_process():
    table1_path = run.path("eval", "table1.json")
    extra = {name: read_json(run.path("eval", f"{name}.json"))
             for name in ("classifier", "judge") if paths.exists(run.path("eval", f"{name}.json"))}
    report_lib.write(run.config, run.workdir, read_json(run.path("eval", "data.json")),
                     read_json(table1_path) if paths.exists(table1_path) else None,
                     read_json(run.path("eval", "evaluation.json")), extra,
                     {s: read_json(run.path("stages", f"{s}.json"))["seconds"] for s in STAGES
                      if paths.exists(run.path("stages", f"{s}.json"))})


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_classifier", lambda: _stage_classifier(run)),
          ("soft_labels", lambda: _stage_soft_labels(run)), ("train_judge", lambda: _stage_judge(run)),
          ("train_gans", lambda: _stage_gans(run)),
          ("train_diffusion", lambda: _stage_diffusion(run)),
          ("generate", lambda: _stage_generate(run)),
          ("evaluate", lambda: _stage_evaluate(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "softlabel_gan", stages, force)
