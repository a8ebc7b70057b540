"""Diff-Mix end to end (paper 001, Fig. 3 and sec. 3.4): pre-trained backbone -> fine-tuning ->
synthetic sets -> filtering -> classifiers -> comparison (`configs/diffmix.py`).

Stages (each done once per workdir; `--stages=...` runs a subset):
  backbone           the t2i run's data, autoencoder, denoiser and judges in WORKDIR/t2i, or the
                     checked `t2i_workdir` (reused as is)
  finetune           per seed: TI / DB / TI+DB on the real training set ("a photo of a <v_i> cube")
  synthesize         per seed and strategy: the plan (reference, target, strength per image), the
                     images (one sampler call per shard, per-image target and strength) and their
                     soft labels, in a resumable shard cache with its provenance
  baseline           per seed: a classifier on the real set only (strategy `none`; also the
                     `classifier` filter's scorer)
  filter             per seed and strategy: confidence scores, the kept mask
  train_classifiers  per seed and strategy: real set + kept synthetic images (soft labels),
                     each real example replaced by a synthetic one with probability p
  evaluate, report   accuracies (mean, std over seeds; per class; many / medium / few classes of
                     a long tail), FID and judge fidelity of each synthetic set, soft-label
                     histograms -> results.json, report.md

A study preset (`study`, jaxgen/diffmix/studies.py) runs: backbone, study (every run of the
study as a complete run in WORKDIR/study/<run>/ on the one backbone), report (the study table).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.diffmix import data as dm_data
from jaxgen.diffmix import evaluate as dm_eval
from jaxgen.diffmix import filtering
from jaxgen.diffmix import report as dm_report
from jaxgen.diffmix import studies, synthesis
from jaxgen.data.imbalance import long_tail_indices
from jaxgen.errors import ConfigError
from jaxgen.io import shard_cache
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method, stage_done
from jaxgen.t2i import backbone as bb
from jaxgen.t2i import data as t2i_data
from jaxgen.t2i import finetune as ft
from jaxgen.t2i import main as t2i_main
from jaxgen.t2i.sampler_runs import SamplerRuns
from jaxgen.t2i.train import posterior_moments
from jaxgen.io import paths

STAGES = ("backbone", "finetune", "synthesize", "baseline", "filter", "train_classifiers",
          "evaluate", "report", "study")
# What Diff-Mix needs of a t2i run, and the sections a reused run must share with `config.t2i`.
T2I_STAGES = ("data", "train_autoencoder", "train_denoiser", "train_judges")


def t2i_stages(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The t2i stages this run needs: a real source brings its own test set and judges (the
  real-set classifier, or InceptionV3), so the embedded judges are not trained."""
  return T2I_STAGES[:3] if config.data.target == "source" else T2I_STAGES
_T2I_SECTIONS = ("data", "backbone", "autoencoder", "denoiser", "judge", "seed")
T2I_UNUSED_EVALUATE_KEYS = ("samples_per_class", "target_samples_per_class", "num_grid")


def t2i_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The complete t2i config of the backbone run: config.t2i on this run's mesh, with this run's
  fine-tuning section and seeds (the t2i run itself stops before fine-tuning)."""
  t = ml_collections.ConfigDict(config.t2i.to_dict())
  t.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  t.finetune = ml_collections.ConfigDict({**config.finetune.to_dict(), "seeds": tuple(config.seeds)})
  # counts of the t2i run's own sample / finetune stages, which a Diff-Mix run does not run
  t.evaluate.update({k: 1 for k in T2I_UNUSED_EVALUATE_KEYS})
  return t


def _first_difference(theirs, ours, prefix: str, added: list[str]) -> tuple[str, object, object] | None:
  """The first key whose value differs; keys the reused run's config lacks (added to the library
  since, with defaults that keep the old behaviour) are collected in `added`, not compared."""
  if isinstance(theirs, dict) and isinstance(ours, dict):
    for key in sorted(set(theirs) | set(ours)):
      if key not in theirs:
        added.append(f"{prefix}.{key}")
        continue
      found = _first_difference(theirs.get(key), ours.get(key), f"{prefix}.{key}", added)
      if found:
        return found
    return None
  if isinstance(theirs, list) or isinstance(ours, (list, tuple)):
    theirs, ours = list(theirs or []), list(ours or [])
  return None if theirs == ours else (prefix, ours, theirs)


def _check_t2i_workdir(config: ml_collections.ConfigDict) -> None:
  path = config.t2i_workdir
  cfg_path = os.path.join(path, "config.json")
  configlib.require(paths.exists(cfg_path), "t2i_workdir", path,
                    "the workdir of a t2i run (with config.json)")
  for stage in t2i_stages(config):
    configlib.require(stage_done(path, stage), "t2i_workdir", path,
                      f"a t2i workdir whose {stage} stage finished (stages/{stage}.json is missing)")
  try:
    theirs = read_json(cfg_path)
  except ValueError:
    raise ConfigError("t2i_workdir", path, "a readable config.json (it is corrupt)") from None
  if theirs.get("method") != "t2i":
    raise ConfigError("t2i_workdir", path, f"a t2i workdir (its method is {theirs.get('method')!r})")
  ours = config.t2i.to_dict()
  added: list[str] = []
  for section in _T2I_SECTIONS:
    found = _first_difference(theirs.get(section), ours.get(section), f"t2i.{section}", added)
    if found:
      key, mine, other = found
      raise ConfigError(key, mine, f"{other!r}, as in the reused {cfg_path}")
  if added and is_main_process():
    print(f"[diffmix] {cfg_path} predates the config keys {', '.join(added)}; reusing it with "
          "their current values (new keys default to the old behaviour)", flush=True)


def training_images_per_class(config: ml_collections.ConfigDict) -> int:
  d = config.t2i.data
  return d.target_shots + d.target_judge_per_class


def num_real(config: ml_collections.ConfigDict) -> int:
  """The real training set's size (a real source is opened to count it)."""
  if config.data.target == "source":
    return dm_data.source_training_size(config)
  shots = config.data.shots or training_images_per_class(config)
  return shots * config.t2i.data.target_classes


def _validate_source(config: ml_collections.ConfigDict) -> None:
  """A real data set: its source, splits, size, classes and the prompt's metaclass word."""
  d = config.data
  configlib.require_choice(config, "data.source", dm_data.SOURCES)
  configlib.require(isinstance(d.shots, int) and d.shots >= 0, "data.shots", d.shots,
                    "an integer >= 0 (0 = every training image)")
  configlib.require(d.source != "tfds" or bool(d.tfds_name), "data.tfds_name", d.tfds_name,
                    "a TFDS name such as caltech_birds2011")
  configlib.require(d.source != "folder" or paths.isdir(d.data_dir), "data.data_dir",
                    d.data_dir, "an image folder (<split>/<class_name>/*.png)")
  configlib.require(not d.data_dir or paths.isdir(d.data_dir), "data.data_dir", d.data_dir,
                    "an existing folder, or '' for TFDS's default data directory")
  for key in ("train_split", "test_split", "metaclass"):
    configlib.require(bool(d[key]), f"data.{key}", d[key], "a non-empty string")
  configlib.require_positive_int(config, "data.image_size")
  configlib.require(isinstance(d.num_classes, int) and d.num_classes >= 2, "data.num_classes",
                    d.num_classes, "the data set's number of classes (>= 2)")
  if config.preset.removesuffix("_vit") in dm_data.PAPER_SETS:
    configlib.require(bool(config.classifier.pretrained_path), "classifier.pretrained_path",
                      config.classifier.pretrained_path,
                      "torchvision ImageNet weights for the paper's pre-trained classifier")


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    check_backbone: bool = True) -> None:
  """Every impossible value fails here, before anything is rendered, trained or sampled; a study
  validates each of its runs' configs (the shared backbone's once)."""
  if config.study or tuple(config.study_runs):
    configlib.require(bool(config.study), "study_runs", tuple(config.study_runs),
                      "empty unless `study` names a study")
    validate_config(studies.run_config(config, {}, config.t2i_workdir), num_devices,
                    check_backbone)
    for name, overrides in studies.study_runs(config):
      try:
        validate_config(studies.run_config(config, overrides, config.t2i_workdir), num_devices,
                        check_backbone=False)
      except ConfigError as err:
        raise ConfigError(err.key, err.value,
                          f"{err.expected} (run {name!r} of study {config.study!r})") from None
    return
  dp = configlib.validate_base(config, num_devices)
  seeds = list(config.seeds)
  configlib.require(bool(seeds) and len(set(seeds)) == len(seeds) and all(
      isinstance(x, int) and x >= 0 for x in seeds), "seeds", seeds,
      "distinct non-negative integers")
  # the t2i data keys this config's checks build on (the rest of t2i is checked last)
  k = config.t2i.data.target_classes
  configlib.require(isinstance(k, int) and 2 <= k <= 16, "t2i.data.target_classes", k,
                    "an integer in [2, 16]")
  for key in ("target_shots", "target_judge_per_class", "target_test_per_class"):
    configlib.require_positive_int(config, f"t2i.data.{key}")
  per_class = training_images_per_class(config)
  shots = config.data.shots
  configlib.require_choice(config, "data.target", dm_data.TARGETS)
  if config.data.target == "source":
    _validate_source(config)
  else:
    for key, default in (("source", ""), ("tfds_name", ""), ("data_dir", ""),
                         ("train_split", "train"), ("test_split", "test"), ("image_size", 0),
                         ("num_classes", 0), ("metaclass", "")):
      configlib.require(config.data[key] == default, f"data.{key}", config.data[key],
                        f"{default!r}: it applies only with data.target='source'")
    configlib.require(isinstance(shots, int) and 0 <= shots <= per_class, "data.shots", shots,
                      f"an integer in [0, {per_class}] (0 = all {per_class} target training "
                      "images per class)")
  f_imb = config.data.imbalance_factor
  configlib.require(isinstance(f_imb, (int, float)) and (f_imb == 0 or f_imb >= 1),
                    "data.imbalance_factor", f_imb, "0 (balanced) or a factor >= 1")
  configlib.require_range(config, "data.minority_fraction", 0.0, 0.5)
  configlib.require(config.data.target == "fine_grained" or f_imb == 0, "data.imbalance_factor",
                    f_imb, "0 with data.target='background_shift' (a balanced set)")
  strategies = tuple(config.strategies)
  configlib.require(len(set(strategies)) == len(strategies) and set(strategies) <= set(
      synthesis.STRATEGIES) and "none" in strategies, "strategies", strategies,
      f"distinct names among {synthesis.STRATEGIES}, including 'none' (the baseline)")
  n = num_real(config)
  if config.data.target == "source":
    k = config.data.num_classes
  if f_imb:  # the long tail keeps at least one image per class of the smallest classes
    n = int(long_tail_indices(np.repeat(np.arange(k), n // k), seed=0,
                              imbalance_factor=f_imb).indices.size)
  ft.validate_config(config, "finetune", dp)
  s = config.synthesis
  configlib.require_positive_int(config, "synthesis.multiplier")
  strengths = tuple(s.strengths)
  configlib.require(bool(strengths) and all(isinstance(v, (int, float)) and 0 < v <= 1
                                            for v in strengths), "synthesis.strengths", strengths,
                    "one or more SDEdit strengths in (0, 1]")
  configlib.require(s.gamma >= 0, "synthesis.gamma", s.gamma, "a number >= 0")
  configlib.require_choice(config, "synthesis.target_sampling", synthesis.TARGET_SAMPLING)
  configlib.require(s.guidance_scale >= 0, "synthesis.guidance_scale", s.guidance_scale, ">= 0")
  configlib.require_positive_int(config, "synthesis.shard_size")
  r = s.referable_classes
  configlib.require(isinstance(r, int) and 0 <= r <= k, "synthesis.referable_classes", r,
                    f"0 (all) or an integer in [1, {k}]")
  configlib.require_choice(config, "filter.scorer", filtering.SCORERS)
  configlib.require(0 <= config.filter.drop_fraction < 1, "filter.drop_fraction",
                    config.filter.drop_fraction, "a number in [0, 1)")
  configlib.require_positive_int(config, "filter.num_times")
  validate_classifier_config(config, "classifier", dp)
  configlib.require_range(config, "classifier.synthetic_replace_prob", 0.0, 1.0)
  for key in ("finetune.train.batch_size", "classifier.train.batch_size"):
    value = configlib.get_path(config, key)
    configlib.require(value <= n, key, value, f"at most the {n} real training images")
  for key in ("batch_size", "num_grid"):
    configlib.require_positive_int(config, f"evaluate.{key}")
  if check_backbone:  # last: it builds the networks abstractly
    with configlib.nested_section("t2i", from_parent=("mesh", "finetune")):
      t2i_main.validate_config(t2i_config(config), num_devices, finetune=False)
    if config.t2i_workdir:
      _check_t2i_workdir(config)


class Run(MethodRun):
  """Shared state of one Diff-Mix run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)
    self.t2i_dir = config.t2i_workdir or os.path.join(workdir, "t2i")
    self.t2i = t2i_config(config)

  @functools.cached_property
  def data(self) -> dict:
    def t2i_sets():
      require_stage(self.t2i_dir, "data", "diffmix")
      return t2i_data.load(self.t2i, self.t2i_dir)

    return dm_data.load(self.config, t2i_sets, self.workdir)

  @property
  def num_classes(self) -> int:
    return self.data["num_target_classes"]

  @functools.cached_property
  def base(self) -> tuple[bb.BackboneConfig, dict]:
    """(config, params) of the pre-trained backbone, sampling at the real images' size (the
    autoencoder is convolutional; a real source's size need not be the t2i run's)."""
    if self.t2i.backbone.weights_path:
      cfg, params = t2i_main.load_pretrained(self.t2i)[:2]
    else:
      cfg, params = t2i_main.load_backbone(self.t2i, self.t2i_dir)
    size = int(self.data["real_images"].shape[1])
    if cfg.vae.resolution != size:
      cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, resolution=size))
    return cfg, params

  def tokenizer(self):
    return t2i_main.load_tokenizer(self.t2i, self.t2i_dir)

  def finetune_path(self, seed: int) -> str:
    return self.path("models", f"finetune_seed{seed}.msgpack")

  @functools.lru_cache(maxsize=None)  # noqa: B019 (one Run per command; restored once per seed)
  def finetuned(self, seed: int) -> tuple[SamplerRuns, object, ft.FineTuned]:
    """(sampler, tokenizer with the identifiers, FineTuned) of seed's fine-tuned backbone."""
    require_stage(self.workdir, "finetune", "the fine-tuned backbone")
    cfg, params = self.base
    tok = self.tokenizer()
    tuned = ft.restore(cfg, load_params(self.finetune_path(seed)), tok, self.num_classes,
                       self.config.finetune)
    tuned_params = {"vae": params["vae"], "text": tuned.text, "unet": tuned.unet(params["unet"])}
    return self.sampler(tuned.config, tuned_params), tok, tuned

  def sampler(self, cfg: bb.BackboneConfig, params: dict) -> SamplerRuns:
    return SamplerRuns(cfg, params, t2i_main.sampler_spec(self.t2i), self.config.synthesis.shard_size,
                       mesh=self.mesh)

  def synthetic_dir(self, seed: int, strategy: str) -> str:
    return self.path("synthetic", f"seed{seed}", strategy)

  def num_synthetic(self) -> int:
    return self.config.synthesis.multiplier * len(self.data["real_labels"])

  def synthetic(self, seed: int, strategy: str) -> dict[str, np.ndarray]:
    return shard_cache.read_shards(self.synthetic_dir(seed, strategy), self.num_synthetic())

  def filtered(self, seed: int, strategy: str) -> dict[str, np.ndarray]:
    with paths.load_npz(os.path.join(self.synthetic_dir(seed, strategy), "filter.npz")) as f:
      return {k: f[k] for k in f.files}

  def classifier_name(self, seed: int, strategy: str) -> str:
    return f"classifier_seed{seed}_{strategy}"

  def classifier(self, seed: int, strategy: str):
    return load_classifier(self.config.classifier, self.num_classes,
                           self.data["real_images"].shape[1:], workdir=self.workdir,
                           name=self.classifier_name(seed, strategy), mesh=self.mesh)

  def synthetic_strategies(self) -> list[str]:
    return [s for s in self.config.strategies if s != "none"]


# --------------------------------------------------------------------------- stages

def _stage_backbone(run: Run) -> None:
  if run.config.t2i_workdir:
    print(f"[backbone] reusing the t2i run in {run.t2i_dir}", flush=True)
  else:
    t2i_main.main(run.t2i, run.t2i_dir, stages=list(t2i_stages(run.config)))
  if is_main_process():
    d = run.data
    print(f"[backbone] real training set: {len(d['real_labels'])} images of {run.num_classes} "
          f"classes ({run.config.data.shots or 'all'} per class)", flush=True)


def _settings_current(record: str, settings: dict, key: str, what: str) -> bool:
  """Whether a result recorded at `record` (its settings, JSON) was made with `settings`. A
  result made with others is refused in one line (config key `key`), never silently reused;
  False when there is no record yet."""
  if not paths.exists(record):
    return False
  diff = shard_cache.first_difference(read_json(record), json.loads(json.dumps(settings)))
  if diff:
    raise ConfigError(key, diff, f"the settings of the {what} already in {record} (use another "
                      "workdir, or remove it to redo)")
  return True


def _finetune_current(path: str, settings: dict) -> bool:
  """Whether the fine-tune saved at `path` was made with `settings` (the finetune section and the
  real set); a file without its settings record (made before records existed) is taken as
  current."""
  if not paths.exists(path):
    return False
  _settings_current(path + ".json", settings, "finetune", "fine-tune")
  return True


def _stage_finetune(run: Run) -> None:
  d, (cfg, params) = run.data, run.base
  moments = None  # the real set's latents, encoded once and only if a seed still fine-tunes
  settings = {"finetune": run.config.finetune.to_dict(),
              "real_set": shard_cache.fingerprint(d["real_images"], d["real_labels"])}
  for seed in run.config.seeds:
    if _finetune_current(run.finetune_path(seed), settings):
      continue
    if moments is None:
      moments = posterior_moments(cfg, params["vae"], d["real_images"],
                                  run.config.evaluate.batch_size, run.mesh)
    tuned = ft.finetune(cfg, params, run.tokenizer(), {"mean": moments[0], "logvar": moments[1],
                                                       "labels": d["real_labels"]},
                        run.num_classes, d["metaclass_word"], run.config.finetune,
                        workdir=run.workdir, mesh=run.mesh, key=run.key("finetune", seed),
                        writer=run.writer, seed=seed, name=f"finetune_seed{seed}")
    if is_main_process():
      save_params(run.finetune_path(seed), {"text": tuned.text, "lora": tuned.lora or {}})
      atomic_write_json(run.finetune_path(seed) + ".json", settings)


def _provenance(run: Run, seed: int, strategy: str, plan: dict) -> dict:
  backbone, _ = synthesis.split_strategy(strategy)
  files = t2i_main.backbone_files(run.t2i, run.t2i_dir)
  if backbone == "diff":
    files.append(run.finetune_path(seed))
  s = run.config.synthesis
  return {"strategy": strategy, "seed": seed, "config_seed": run.config.seed,
          "plan": shard_cache.fingerprint(*(plan[k] for k in sorted(plan))),
          "real_set": shard_cache.fingerprint(run.data["real_images"], run.data["real_labels"]),
          "sampler": run.t2i.sampler.to_dict(), "guidance_scale": s.guidance_scale,
          "gamma": s.gamma, "backbone_checkpoints": {os.path.basename(p): shard_cache.file_digest(p)
                                                     for p in files if paths.isfile(p)}}


def synthesize_set(run: Run, seed: int, strategy: str) -> dict[str, np.ndarray]:
  """The synthetic set of (seed, strategy), generated or read from its shard cache."""
  d, s, k = run.data, run.config.synthesis, run.num_classes
  backbone, kind = synthesis.split_strategy(strategy)
  sidx = synthesis.STRATEGIES.index(strategy)
  key = run.key("synthesize", seed, sidx)
  plan_seed = int(jax.random.randint(jax.random.fold_in(key, 0), (), 0, 2**31 - 1))
  plan = synthesis.plan_synthesis(d["real_labels"], k, kind=kind, multiplier=s.multiplier,
                                  strengths=tuple(s.strengths), target_sampling=s.target_sampling,
                                  seed=plan_seed, referable_classes=s.referable_classes)
  word = d["metaclass_word"]
  if backbone == "diff":
    runs, tok, _ = run.finetuned(seed)
    prompts = np.asarray(ft.class_prompts(k, word))[plan["target_class"]]
  else:  # class names for a real source; the embedded classes have none: the metaclass prompt
    runs, tok = run.sampler(*run.base), run.tokenizer()
    prompts = np.asarray(dm_data.vanilla_prompts(d))[plan["target_class"]]
  soft = synthesis.soft_labels(plan["reference_class"], plan["target_class"], plan["strength"],
                               s.gamma, k)

  def make_shard(shard: int, index: np.ndarray) -> dict[str, np.ndarray]:
    shard_key = jax.random.fold_in(jax.random.fold_in(key, 1), shard)
    if kind == "gen":
      images = runs.generate(tok, list(prompts[index]), s.guidance_scale, shard_key)
    else:
      refs = d["real_images"][plan["reference_index"][index]]
      images = runs.translate(tok, refs, list(prompts[index]), plan["strength"][index],
                              s.guidance_scale, shard_key)
    return {"images": images, "soft_label": soft[index], **{n: a[index] for n, a in plan.items()}}

  shape = d["real_images"].shape[1:]
  return shard_cache.build_shards(
      run.synthetic_dir(seed, strategy), len(plan["target_class"]), s.shard_size, make_shard,
      manifest=_provenance(run, seed, strategy, plan), shapes={"images": shape, "soft_label": (k,)},
      write=is_main_process())


def _stage_synthesize(run: Run) -> None:
  for seed in run.config.seeds:
    for strategy in run.synthetic_strategies():
      out = synthesize_set(run, seed, strategy)
      if seed == run.config.seeds[0]:
        order = np.argsort(out["target_class"], kind="stable")
        run.save_figure(image_grid(out["images"][order][:40], ncols=10), "samples",
                        f"{strategy}.png")
  if "diff_mix" in run.config.strategies:
    seed = run.config.seeds[0]
    runs, tok, _ = run.finetuned(seed)
    grid = dm_eval.translation_grid(run.data, runs, tok, run.config, run.key("synthesize", seed, 99))
    run.save_figure(grid, "samples", "diff_mix_translation_grid.png")


def _fit(run: Run, seed: int, strategy: str, synthetic=None):
  """Train (or restore) one classifier; its settings (classifier section, real and synthetic
  sets) are recorded, and a finished classifier made with others is refused, not restored."""
  d = run.data
  name = run.classifier_name(seed, strategy)
  settings = {"classifier": run.config.classifier.to_dict(),
              "real_set": shard_cache.fingerprint(d["real_images"], d["real_labels"]),
              "synthetic": shard_cache.fingerprint(*synthetic) if synthetic is not None else ""}
  record = run.path("models", f"{name}.json")
  _settings_current(record, settings, "classifier", "classifier")
  clf = fit_classifier(run.config.classifier, d["real_images"], d["real_labels"], run.num_classes,
                       workdir=run.workdir, name=name, mesh=run.mesh,
                       key=run.key("train_classifiers", seed), writer=run.writer,
                       synthetic=synthetic)
  if is_main_process():
    atomic_write_json(record, settings)
  return clf


def _stage_baseline(run: Run) -> None:
  for seed in run.config.seeds:
    _fit(run, seed, "none")


def _filter_current(path: str, f: ml_collections.ConfigDict) -> bool:
  """Whether `path` holds the scores and mask of this filter config (else they are redone)."""
  if not paths.exists(path):
    return False
  with paths.load_npz(path) as saved:
    return ("drop_fraction" in saved.files and str(saved["scorer"]) == f.scorer
            and float(saved["drop_fraction"]) == f.drop_fraction
            and (f.scorer != "backbone" or int(saved["num_times"]) == f.num_times))


def _stage_filter(run: Run) -> None:
  require_stage(run.workdir, "synthesize", "filter")
  f = run.config.filter
  for seed in run.config.seeds:
    scorer = None
    for strategy in run.synthetic_strategies():
      path = os.path.join(run.synthetic_dir(seed, strategy), "filter.npz")
      if _filter_current(path, f):
        continue
      syn = run.synthetic(seed, strategy)
      if f.scorer == "none":
        scores = np.ones(len(syn["images"]), np.float32)
      elif f.scorer == "classifier":
        require_stage(run.workdir, "baseline", "filter")
        scorer = scorer or run.classifier(seed, "none")
        scores = filtering.target_confidence(scorer.probabilities(syn["images"]),
                                             syn["target_class"])
      else:  # the fine-tuned backbone's diffusion-classifier score of the target prompt
        scorer = scorer or dm_eval.backbone_scorer(run, seed)
        scores = scorer(syn["images"], syn["target_class"],
                        jax.random.fold_in(run.key("filter", seed), synthesis.STRATEGIES.index(strategy)))
      keep = filtering.keep_mask(scores, f.drop_fraction)
      if is_main_process():
        atomic_save_npz(path, score=np.asarray(scores, np.float32), keep=keep,
                        scorer=np.asarray(f.scorer), drop_fraction=np.asarray(f.drop_fraction),
                        num_times=np.asarray(f.num_times))


def _stage_train_classifiers(run: Run) -> None:
  require_stage(run.workdir, "filter", "train_classifiers")
  for seed in run.config.seeds:
    for strategy in run.synthetic_strategies():
      syn, keep = run.synthetic(seed, strategy), run.filtered(seed, strategy)["keep"]
      _fit(run, seed, strategy, synthetic=(syn["images"][keep], syn["soft_label"][keep]))


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "train_classifiers", "evaluate")
  require_stage(run.workdir, "baseline", "evaluate")
  result = dm_eval.evaluate(run)
  if is_main_process():
    atomic_write_json(run.path("eval", "evaluation.json"), result)


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  if is_main_process():
    dm_report.write(run.config, run.workdir, dm_eval.description(run),
                    read_json(run.path("eval", "evaluation.json")))


def _stage_study(run: Run) -> None:
  for name, overrides in studies.study_runs(run.config):
    print(f"[study] {run.config.study}: run {name} ({overrides})", flush=True)
    main(studies.run_config(run.config, overrides, run.t2i_dir), run.path("study", name))


def _stage_study_report(run: Run) -> None:
  require_stage(run.workdir, "study", "report")
  if is_main_process():
    runs = {name: {"overrides": overrides,
                   **read_json(run.path("study", name, "results.json"))}
            for name, overrides in studies.study_runs(run.config)}
    dm_report.write_study(run.config, run.workdir, runs)


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  if config.study:
    plan = [("backbone", lambda: _stage_backbone(run)), ("study", lambda: _stage_study(run)),
            ("report", lambda: _stage_study_report(run))]
    run_method(run, plan, "diffmix", stages, force)
    return
  plan = [("backbone", lambda: _stage_backbone(run)), ("finetune", lambda: _stage_finetune(run)),
          ("synthesize", lambda: _stage_synthesize(run)), ("baseline", lambda: _stage_baseline(run)),
          ("filter", lambda: _stage_filter(run)),
          ("train_classifiers", lambda: _stage_train_classifiers(run)),
          ("evaluate", lambda: _stage_evaluate(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "diffmix", stages, force)
