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

from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.cached import CachedSource
from jaxgen.data.pipeline import augment_option
from jaxgen.data.sources import subset
from jaxgen.diffmix import data as dm_data
from jaxgen.diffmix import evaluate as dm_eval
from jaxgen.diffmix import filtering
from jaxgen.diffmix import report as dm_report
from jaxgen.diffmix import studies, synthesis, validation
from jaxgen.diffmix.validation import t2i_config, t2i_stages
from jaxgen.errors import ConfigError
from jaxgen.io import shard_cache
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.t2i import backbone as bb
from jaxgen.t2i import data as t2i_data
from jaxgen.t2i import finetune as ft
from jaxgen.t2i import main as t2i_main
from jaxgen.t2i.sampler_runs import SamplerRuns
from jaxgen.t2i.train import posterior_moments
from jaxgen.io import paths

STAGES = ("backbone", "finetune", "synthesize", "baseline", "filter", "train_classifiers",
          "evaluate", "report", "study")
# The config checks live in validation.py; jaxgen.main calls them as this module's.
validate_config = validation.validate_config


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

  def synthetic(self, seed: int, strategy: str) -> CachedSource:
    """The finished synthetic set of (seed, strategy), its images left in the shard cache."""
    return CachedSource(self.synthetic_dir(seed, strategy), self.num_synthetic(),
                        num_classes=self.num_classes)

  def synthetic_chunk(self) -> int:
    """Synthetic images scored or featurised per call: the whole set in memory, or with
    `synthesis.stream` one evaluation batch at a time (same numbers: whole batches either way)."""
    return self.config.evaluate.batch_size if self.config.synthesis.stream else self.num_synthetic()

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


def synthesize_set(run: Run, seed: int, strategy: str) -> None:
  """Generates the synthetic set of (seed, strategy) into its shard cache (one shard in memory at
  a time; shards already there are checked and kept). Read it with `run.synthetic`: on the main
  process at once (it wrote the shards), on the others after the stage (when it has)."""
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
  shard_cache.build_shards(
      run.synthetic_dir(seed, strategy), len(plan["target_class"]), s.shard_size, make_shard,
      manifest=_provenance(run, seed, strategy, plan), shapes={"images": shape, "soft_label": (k,)},
      write=is_main_process(), collect=False)


def _stage_synthesize(run: Run) -> None:
  for seed in run.config.seeds:
    for strategy in run.synthetic_strategies():
      synthesize_set(run, seed, strategy)
      if seed == run.config.seeds[0] and is_main_process():
        out = run.synthetic(seed, strategy)
        order = np.argsort(out.column("target_class"), kind="stable")[:40]
        run.save_figure(image_grid(np.stack([out[int(i)]["image"] for i in order]), ncols=10),
                        "samples", f"{strategy}.png")
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
              "synthetic": _synthetic_fingerprint(synthetic)}
  real, stream = (d["real_images"], d["real_labels"]), {}
  if run.config.data.target == "source":  # streamed from the data set by the grain pipeline
    dc = run.config.data
    settings["real_augment"] = dc.augment
    real = (dm_data.streamed_real_set(run.config, d), None)
    stream = dict(image_size=dc.image_size, input_workers=dc.workers,
                  stream_augment=augment_option(dc.augment))
  record = run.path("models", f"{name}.json")
  _settings_current(record, settings, "classifier", "classifier")
  clf = fit_classifier(run.config.classifier, *real, run.num_classes,
                       workdir=run.workdir, name=name, mesh=run.mesh,
                       key=run.key("train_classifiers", seed), writer=run.writer,
                       synthetic=synthetic, **stream)
  if is_main_process():
    atomic_write_json(record, settings)
  return clf


def _synthetic_fingerprint(synthetic) -> str:
  """What a classifier's synthetic pool was: the arrays' digest, or for a pool kept on disk the
  digest of its cache manifest (the provenance of every image) and of the kept items."""
  if synthetic is None:
    return ""
  if isinstance(synthetic, tuple):
    return shard_cache.fingerprint(*synthetic)
  manifest = paths.read_bytes(os.path.join(synthetic.parent.cache_dir, "manifest.json"))
  return "cache:" + shard_cache.fingerprint(np.frombuffer(manifest, np.uint8), synthetic.indices)


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
      target, chunk = syn.column("target_class"), run.synthetic_chunk()
      key = jax.random.fold_in(run.key("filter", seed), synthesis.STRATEGIES.index(strategy))
      if f.scorer == "none":
        scores = np.ones(len(syn), np.float32)
      elif f.scorer == "classifier":
        require_stage(run.workdir, "baseline", "filter")
        scorer = scorer or run.classifier(seed, "none")
        probs = np.concatenate([scorer.probabilities(x) for x in syn.image_chunks(chunk)])
        scores = filtering.target_confidence(probs, target)
      else:  # the fine-tuned backbone's diffusion-classifier score of the target prompt
        scorer = scorer or dm_eval.backbone_scorer(run, seed)
        batch = run.config.evaluate.batch_size  # chunks are whole scorer batches (same noise)
        scores = np.concatenate([
            scorer(x, target[i * chunk:(i + 1) * chunk], key, first_batch=i * chunk // batch)
            for i, x in enumerate(syn.image_chunks(chunk))])
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
      if run.config.synthesis.stream:  # picked images read from the cache per training step
        pool = subset(syn, np.flatnonzero(keep))
      else:
        pool = (syn.images(0, len(syn))[keep], syn.column("soft_label")[keep])
      _fit(run, seed, strategy, synthetic=pool)


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
