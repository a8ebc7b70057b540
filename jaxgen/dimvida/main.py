"""DIMVIDA end to end (paper 000 sec. III-B, Fig. 2): MVLD -> NMR_ca / NMR_ea -> classifiers ->
Tables II and III.

Stages (each done once per workdir; `python -m jaxgen.main ... --stages=...` runs a subset):
  data               the single-view splits NMR_c (train) and NMR_e (eval), with their view index
  train_mvld         MVLD's own stages in WORKDIR/mvld, or the checked `mvld_workdir`
  generate_train     NMR_ca: G generated views per NMR_c sample (cached shards, resumable)
  generate_eval      NMR_ea: the same for NMR_e
  pretrain           per architecture, a classifier on scikit-learn digits (Table III's start)
                     unless torchvision weight files are given
  train_classifiers  per architecture: Omega_s on NMR_c and Omega_m on NMR_ca, from scratch and
                     fine-tuned; plus, from scratch, a classifier on the V real views of NMR_c
  evaluate           each on NMR_e (the real view), NMR_ea (mean over the real and generated
                     views) and the V true views of each NMR_e object
  report             results.json, report.md, an example grid
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import build_model, validate_classifier_config
from jaxgen.classifier.evaluate import classifier_view_logits
from jaxgen.classifier.inference import load_classifier, load_classifier_variables
from jaxgen.classifier.train import fit_classifier, initial_variables
from jaxgen.classifier.transfer import transfer_variables
from jaxgen.dimvida import evaluate as dv_eval
from jaxgen.dimvida import generation
from jaxgen.dimvida import report as dv_report
from jaxgen.dimvida.data import load_splits
from jaxgen.errors import ConfigError
from jaxgen.io import shard_cache
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.mvld import main as mvld_main
from jaxgen.mvld.evaluate import make_generator
from jaxgen.parallel.mesh import batch_sharding, is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.io import paths

STAGES = ("data", "train_mvld", "generate_train", "generate_eval", "pretrain", "train_classifiers",
          "evaluate", "report")
ARCHS = ("resnet18", "mobilenet_v3")
ARCH_FAMILIES = {"resnet18": ("resnet18",), "mobilenet_v3": ("mobilenet_v3_small", "mobilenet_v3_large")}
TRAIN_SETS = ("single", "augmented")  # NMR_c, NMR_ca
TEST_SETS = ("single", "augmented")  # NMR_e, NMR_ea
INITS = ("scratch", "finetuned")  # Table II, Table III
# Data keys a reused MVLD workdir must share with this config ("same data, views and image size").
_DATA_KEYS = ("name", "num_views", "image_size", "variant", "num_train", "num_test", "data_dir")
PRETRAIN_CLASSES = 10  # scikit-learn digits


def mvld_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete MVLD config this run trains (config.mvld on config.mesh, without `stages`)."""
  m = ml_collections.ConfigDict(config.mvld.to_dict())
  del m["stages"]
  m.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  return m


def num_generated(config: ml_collections.ConfigDict) -> int:
  g = config.generate.num_generated
  return config.mvld.data.num_views - 1 if g == -1 else g


def _check_mvld_workdir(config: ml_collections.ConfigDict) -> None:
  path = config.mvld_workdir
  cfg_path = os.path.join(path, "config.json")
  configlib.require(paths.exists(cfg_path), "mvld_workdir", path,
                    "the workdir of a finished MVLD run (with config.json)")
  for name in ("autoencoder.msgpack", "score_net.msgpack", "latent_stats.npz"):
    configlib.require(paths.exists(os.path.join(path, "models", name)), "mvld_workdir", path,
                      f"an MVLD workdir whose training finished (models/{name} is missing)")
  try:
    theirs = read_json(cfg_path)
  except ValueError:
    raise ConfigError("mvld_workdir", path, "a readable config.json (it is corrupt)") from None
  if theirs.get("method") != "mvld":
    raise ConfigError("mvld_workdir", path, f"an MVLD workdir (its method is {theirs.get('method')!r})")
  ours = config.mvld.data.to_dict()
  for key in _DATA_KEYS:
    if theirs.get("data", {}).get(key) != ours.get(key):
      raise ConfigError(f"mvld.data.{key}", ours.get(key),
                        f"{theirs.get('data', {}).get(key)!r}, as in the reused {cfg_path}")
  if theirs.get("seed") != config.mvld.seed:
    raise ConfigError("mvld.seed", config.mvld.seed,
                      f"{theirs.get('seed')!r} (the render seed of the reused {cfg_path})")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every impossible value fails here, before anything is rendered, trained or generated."""
  dp = configlib.validate_base(config, num_devices)
  with configlib.nested_section("mvld"):
    mvld_main.validate_config(mvld_config(config), num_devices)
  stages = tuple(config.mvld.stages)
  configlib.require(all(s in mvld_main.STAGES for s in stages), "mvld.stages", stages,
                    "stages among " + ", ".join(mvld_main.STAGES))
  if not config.mvld_workdir:
    configlib.require({"train_autoencoder", "train_diffusion"} <= set(stages), "mvld.stages", stages,
                      "to include train_autoencoder and train_diffusion (or set mvld_workdir)")
  else:
    _check_mvld_workdir(config)
  v = config.mvld.data.num_views
  g = config.generate.num_generated
  configlib.require(isinstance(g, int) and (g == -1 or 1 <= g <= v - 1), "generate.num_generated",
                    g, f"-1 (all V - 1 = {v - 1} missing views) or an integer in [1, {v - 1}]")
  configlib.require_positive_int(config, "generate.shard_size")
  configlib.require(config.generate.shard_size % dp == 0, "generate.shard_size",
                    config.generate.shard_size, f"a multiple of the data-parallel size {dp}")
  archs = tuple(config.archs)
  configlib.require(bool(archs) and len(set(archs)) == len(archs) and set(archs) <= set(ARCHS),
                    "archs", archs, f"distinct names among {ARCHS}")
  n_train = config.mvld.data.num_train
  for arch in archs:
    prefix = f"classifiers.{arch}"
    cfg = configlib.get_path(config, prefix)
    configlib.require(cfg.pretrained_path == "", f"{prefix}.pretrained_path", cfg.pretrained_path,
                      f"'' (from-scratch runs; weights for fine-tuning go in finetune.torchvision_paths.{arch})")
    validate_classifier_config(config, prefix, dp)
    configlib.require(cfg.arch in ARCH_FAMILIES[arch], f"{prefix}.arch", cfg.arch,
                      "one of " + ", ".join(ARCH_FAMILIES[arch]))
    configlib.require(cfg.train.batch_size <= n_train, f"{prefix}.train.batch_size",
                      cfg.train.batch_size, f"at most the {n_train} NMR_c samples")
  ft = config.finetune
  configlib.require(isinstance(ft.enabled, bool), "finetune.enabled", ft.enabled, "true or false")
  configlib.require_range(config, "finetune.lr", 1e-12, 1.0)
  configlib.require_positive_int(config, "finetune.pretrain_seed", allow_zero=True)
  configlib.require(set(ft.torchvision_paths.keys()) == set(ARCHS), "finetune.torchvision_paths",
                    sorted(ft.torchvision_paths.keys()), f"the keys {ARCHS}")
  if ft.enabled:
    for arch in archs:
      path = ft.torchvision_paths[arch]
      configlib.require(not path or paths.isfile(path), f"finetune.torchvision_paths.{arch}", path,
                        "an existing torchvision weight file, or '' to pre-train on digits")
      if not path and ft.pretrained_workdir:
        where = os.path.join(ft.pretrained_workdir, "checkpoints", f"pretrain_{arch}")
        configlib.require(paths.isdir(where), "finetune.pretrained_workdir", ft.pretrained_workdir,
                          f"a DIMVIDA workdir whose pretrain stage finished ({where} is missing)")
      if not path and not ft.pretrained_workdir:
        configlib.require_positive_int(config, "finetune.pretrain_steps")
  configlib.require_choice(config, "evaluate.average", dv_eval.AVERAGES)
  configlib.require_positive_int(config, "evaluate.num_grid_objects")


class Run(MethodRun):
  """Shared state of one DIMVIDA run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)
    self.mvld_dir = config.mvld_workdir or os.path.join(workdir, "mvld")
    self.num_generated = num_generated(config)

  @functools.cached_property
  def data(self) -> dict:
    # The render cache of the MVLD run (same file when the data match).
    return load_splits(self.config.mvld.data, self.config.mvld.seed, self.mvld_dir)

  def generated(self, split: str) -> np.ndarray:
    cache = self.path("generated", split)
    return generation.read_split(cache, len(self.data[split]["label"]))["views"]

  def training_set(self, train_set: str) -> tuple[np.ndarray, np.ndarray]:
    c = self.data["classifier_train"]
    if train_set == "single":
      return c["image"], c["label"]
    if train_set == "augmented":
      views = dv_eval.augmented_views(c["image"], self.generated("classifier_train"))
    else:  # 'real_multiview': every true view of every NMR_c object (reference row)
      views = c["images"]
    return views.reshape((-1,) + views.shape[2:]), np.repeat(c["label"], views.shape[1])


def classifier_runs(config: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
  """(arch, init, train_set) of every classifier the run trains, in training order."""
  runs = []
  for arch in config.archs:
    inits = INITS if config.finetune.enabled else INITS[:1]
    for init in inits:
      runs += [(arch, init, t) for t in TRAIN_SETS]
    runs.append((arch, "scratch", "real_multiview"))
  return runs


def run_name(arch: str, init: str, train_set: str) -> str:
  return f"{arch}_{init}_{train_set}"


# --------------------------------------------------------------------------- stages

def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    c = d["classifier_train"]
    print(f"[data] {d['description']}", flush=True)
    run.save_figure(image_grid(c["image"][:32], ncols=8), "samples", "nmr_c.png")


def _stage_train_mvld(run: Run) -> None:
  if run.config.mvld_workdir:
    if is_main_process():  # one line per job, not per host
      print(f"[train_mvld] reusing the MVLD run in {run.mvld_dir}", flush=True)
    return
  mvld_main.main(mvld_config(run.config), run.mvld_dir, stages=list(run.config.mvld.stages))


def _generator(run: Run):
  from jaxgen.mvld.api import MVLD  # pylint: disable=import-outside-toplevel
  model = MVLD.from_workdir(run.mvld_dir)
  sampler = run.config.mvld.sampler
  fn = make_generator(model.spec, model.ae_params, model.score_params, model.stats, sampler)
  sharding = batch_sharding(run.mesh)

  def generate(key, images, observed):
    return fn(key, jax.device_put(images, sharding), jax.device_put(observed, sharding))

  models = os.path.join(run.mvld_dir, "models")
  provenance = {
      "mvld_workdir": paths.absolute(run.mvld_dir),
      "autoencoder_sha256": shard_cache.file_digest(os.path.join(models, "autoencoder.msgpack")),
      "score_net_sha256": shard_cache.file_digest(os.path.join(models, "score_net.msgpack")),
      "sampler": sampler.to_dict(), "seed": run.config.seed,
  }
  return generate, provenance


def _stage_generate(run: Run, split: str, stage: str) -> None:
  require_stage(run.workdir, "train_mvld", stage)
  generate, provenance = _generator(run)
  s = run.data[split]
  generation.generate_split(
      run.path("generated", split), s["image"], s["view"], generate=generate, key=run.key(stage),
      num_views=run.config.mvld.data.num_views, num_generated=run.num_generated,
      shard_size=run.config.generate.shard_size, provenance={**provenance, "split": split},
      write=is_main_process())


def _pretrain_config(cfg: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  pre = ml_collections.ConfigDict(cfg.to_dict())
  pre.train.update(num_steps=steps, checkpoint_every=steps)
  pre.augment.update(flip=False, crop_padding=2)  # digits are not mirror-symmetric
  return pre


def _stage_pretrain(run: Run) -> None:
  ft = run.config.finetune
  if not ft.enabled:
    return
  from jaxgen.data.digits import digits_arrays  # pylint: disable=import-outside-toplevel
  size = run.config.mvld.data.image_size
  digits = digits_arrays(image_size=size, channels=3)
  for arch in run.config.archs:
    if ft.torchvision_paths[arch] or ft.pretrained_workdir:
      continue
    cfg = _pretrain_config(run.config.classifiers[arch], ft.pretrain_steps)
    key = jax.random.fold_in(jax.random.key(ft.pretrain_seed), ARCHS.index(arch))
    fit_classifier(cfg, digits["image"], digits["label"], PRETRAIN_CLASSES, workdir=run.workdir,
                   name=f"pretrain_{arch}", mesh=run.mesh, key=key, writer=run.writer)


def _finetune_config(run: Run, arch: str) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(run.config.classifiers[arch].to_dict())
  cfg.train.optim.lr = run.config.finetune.lr
  path = run.config.finetune.torchvision_paths[arch]
  if path:
    cfg.update(pretrained_path=path, normalization="imagenet")
  return cfg


def classifier_config_of(run: Run, arch: str, init: str) -> ml_collections.ConfigDict:
  return _finetune_config(run, arch) if init == "finetuned" else run.config.classifiers[arch]


def _init_variables(run: Run, arch: str, cfg: ml_collections.ConfigDict, image_shape, key) -> Any:
  """Digits-pretrained backbone with a fresh head (None for torchvision files: fit_classifier
  imports them itself)."""
  if run.config.finetune.torchvision_paths[arch]:
    return None
  source = run.config.finetune.pretrained_workdir or run.workdir
  pretrained = load_classifier_variables(source, f"pretrain_{arch}")
  num_classes = run.data["num_classes"]
  fresh = initial_variables(build_model(cfg, num_classes, image_size=image_shape[0]), cfg,
                            num_classes, image_shape, key)
  variables, kept = transfer_variables(jax.tree.map(np.asarray, fresh), pretrained)
  if is_main_process():
    print(f"[train_classifiers] {arch}: digits backbone from {source}, fresh {kept}", flush=True)
  return variables


def _stage_train_classifiers(run: Run) -> None:
  require_stage(run.workdir, "generate_train", "train_classifiers")
  if run.config.finetune.enabled:
    require_stage(run.config.finetune.pretrained_workdir or run.workdir, "pretrain",
                  "train_classifiers")
  for index, (arch, init, train_set) in enumerate(classifier_runs(run.config)):
    images, labels = run.training_set(train_set)
    cfg = classifier_config_of(run, arch, init)
    key = jax.random.fold_in(run.key("train_classifiers"), index)
    init_vars = (_init_variables(run, arch, cfg, images.shape[1:], jax.random.fold_in(key, 7))
                 if init == "finetuned" else None)
    if is_main_process():
      print(f"[train_classifiers] {run_name(arch, init, train_set)}: {len(labels)} images", flush=True)
    fit_classifier(cfg, images, labels, run.data["num_classes"], workdir=run.workdir,
                   name=run_name(arch, init, train_set), mesh=run.mesh, key=key, writer=run.writer,
                   init_variables=init_vars)


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "train_classifiers", "evaluate")
  require_stage(run.workdir, "generate_eval", "evaluate")
  e = run.data["classifier_eval"]
  ea = dv_eval.augmented_views(e["image"], run.generated("classifier_eval"))
  labels = e["label"]
  out = {}
  for arch, init, train_set in classifier_runs(run.config):
    cfg = classifier_config_of(run, arch, init)
    bs = cfg.eval_batch_size
    clf = load_classifier(cfg, run.data["num_classes"], e["image"].shape[1:], workdir=run.workdir,
                          name=run_name(arch, init, train_set), mesh=run.mesh)
    single = clf.logits(e["image"], bs)
    augmented = classifier_view_logits(clf, ea, bs)
    true_views = classifier_view_logits(clf, e["images"], bs)
    out[run_name(arch, init, train_set)] = {
        "single": dv_eval.accuracy_percent(dv_eval.average_outputs(single[:, None], "probabilities"),
                                           labels),
        "augmented": {a: dv_eval.accuracy_percent(dv_eval.average_outputs(augmented, a), labels)
                      for a in dv_eval.AVERAGES},
        "true_views": {a: dv_eval.accuracy_percent(dv_eval.average_outputs(true_views, a), labels)
                       for a in dv_eval.AVERAGES},
        "generated_only": dv_eval.accuracy_percent(
            dv_eval.average_outputs(augmented[:, 1:], run.config.evaluate.average), labels),
    }
    if is_main_process():
      r = out[run_name(arch, init, train_set)]
      print(f"[evaluate] {run_name(arch, init, train_set)}: NMR_e {r['single']:.2f}%, NMR_ea "
            f"{r['augmented'][run.config.evaluate.average]:.2f}%", flush=True)
  if is_main_process():
    atomic_write_json(run.path("eval", "accuracy.json"), {"accuracy": out, "num_objects": len(labels)})


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  acc = read_json(run.path("eval", "accuracy.json"))
  if is_main_process():
    e = run.data["classifier_eval"]
    n = min(run.config.evaluate.num_grid_objects, len(e["label"]))
    cache = generation.read_split(run.path("generated", "classifier_eval"), len(e["label"]))
    # Row per object: the V view slots (the real view at its own slot, generated views at
    # theirs, blank where nothing was generated), then the object's V true views.
    slots = np.full(e["images"][:n].shape, 255, np.uint8)
    rows = np.arange(n)
    slots[rows, e["view"][:n]] = e["image"][:n]
    for g in range(run.num_generated):
      slots[rows, cache["generated_view"][:n, g]] = cache["views"][:n, g]
    grid = np.concatenate([slots, e["images"][:n]], axis=1)
    run.save_figure(image_grid(grid), "samples", "nmr_ea_examples.png")
    dv_report.write(run.config, run.workdir, run.data["description"], acc,
                    num_generated=run.num_generated)


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_mvld", lambda: _stage_train_mvld(run)),
          ("generate_train", lambda: _stage_generate(run, "classifier_train", "generate_train")),
          ("generate_eval", lambda: _stage_generate(run, "classifier_eval", "generate_eval")),
          ("pretrain", lambda: _stage_pretrain(run)),
          ("train_classifiers", lambda: _stage_train_classifiers(run)),
          ("evaluate", lambda: _stage_evaluate(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "dimvida", stages, force)
