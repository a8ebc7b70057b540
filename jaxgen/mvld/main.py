"""MVLD end to end: data -> autoencoder -> latent diffusion -> judge classifier -> sample ->
Table I evaluation -> transmission study -> report (paper 002; model of paper 000 sec. II-III).

Each stage leaves its outputs in the workdir (models/, eval/, samples/) and is skipped when
re-run; the training stages resume from their checkpoints. `run_context` exposes the same
pieces to the Python API (`jaxgen.mvld.api.MVLD`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.data.batches import first_records, ordered_batches
from jaxgen.data.sources import Source
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.io.plots import line_plot
from jaxgen.mvld import evaluate as mvld_eval
from jaxgen.mvld import model as mvld_model
from jaxgen.mvld import report as mvld_report
from jaxgen.mvld import sampler_study
from jaxgen.mvld import transmission
from jaxgen.mvld import transmission_baselines as baselines
from jaxgen.mvld import validation
from jaxgen.mvld.data import load_views
from jaxgen.mvld.judges import build_judges
from jaxgen.mvld.train import feature_distance_fn, train_autoencoder, train_diffusion
from jaxgen.parallel.mesh import is_main_process, place_if_divisible, to_host
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.train.xla_cpu import sampling_compiler_options
from jaxgen.io import paths

# Each stage's random key is folded from its index here: new stages go at the end.
STAGES = ("data", "train_autoencoder", "train_diffusion", "train_classifier", "sample", "evaluate",
          "transmission", "report", "sampler_study")
# The config checks live in validation.py; jaxgen.main (and DIMVIDA) call them as this module's.
validate_config = validation.validate_config


class Run(MethodRun):
  """Shared state of one MVLD run: config, workdir, mesh, model spec, keys, writer, paths."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)  # config.json: read by the Python API too
    self.spec = mvld_model.build_spec(config)

  @functools.cached_property
  def data(self) -> dict:
    return load_views(self.config, self.workdir)

  def autoencoder_params(self) -> Any:
    return load_params(self.path("models", "autoencoder.msgpack"))

  def score_params(self) -> Any:
    return load_params(self.path("models", "score_net.msgpack"))

  def latent_stats(self) -> mvld_model.LatentStats:
    with paths.load_npz(self.path("models", "latent_stats.npz")) as f:
      return mvld_model.LatentStats(mean=f["mean"], std=f["std"])

  def latent_range(self) -> tuple[np.ndarray, np.ndarray]:
    with paths.load_npz(self.path("models", "latent_stats.npz")) as f:
      return f["lo"], f["hi"]

  def classifier(self):
    shape = self.data["image_shape"]
    return load_classifier(self.config.classifier, self.data["num_classes"], shape,
                           workdir=self.workdir, name="classifier", mesh=self.mesh)

  def view_labels(self) -> np.ndarray | None:
    """The class of each single training view (None when streamed: the records carry it)."""
    if self.data["streamed"]:
      return None
    labels = self.data["train_labels"]
    return np.repeat(labels, len(self.data["train_views"]) // len(labels))

  def encode(self, ae_params: Any, images: np.ndarray | Source) -> np.ndarray:
    """Raw latents [N, V, L] of uint8 [N, V, H, W, 3] (or of a source's objects, streamed in
    order), in batches."""
    fn = jax.jit(functools.partial(mvld_model.encode_views, self.spec, ae_params))
    bs = max(1, self.config.evaluate.batch_size)
    # Each batch the data axis divides is split over every host's devices (the last, short one
    # runs whole): the same latents, each host computing its rows.
    return np.concatenate([to_host(fn(place_if_divisible(batch, self.mesh)))
                           for batch in ordered_batches(images, bs)])


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process():
    train = (len(d["train_images"]), len(d["test_images"][0]), *d["image_shape"])
    print(f"[data] {d['description']}: train {train}, test {d['test_images'].shape}", flush=True)
    run.save_figure(image_grid(first_records(d["train_images"], 8)), "samples", "data.png")


def _stage_autoencoder(run: Run) -> None:
  cfg, views = run.config.autoencoder, run.data["train_views"]
  feature_distance = None
  if cfg.perceptual_weight > 0:
    # The feature loss's network: a classifier of the autoencoder's own training views, trained
    # first (checkpoints/perceptual; resumed like any training), never the judge of stage
    # train_classifier, so the judge stays independent of the autoencoder's training.
    network = fit_classifier(cfg.perceptual, views, run.view_labels(), run.data["num_classes"],
                             workdir=run.workdir, name="perceptual", mesh=run.mesh,
                             key=run.key("train_autoencoder", 1), writer=run.writer)
    feature_distance = feature_distance_fn(network, cfg.perceptual_layers)
  params = train_autoencoder(run.spec, cfg, views, workdir=run.workdir, mesh=run.mesh,
                             key=run.key("train_autoencoder"), writer=run.writer,
                             seed=run.config.seed, feature_distance=feature_distance)
  if is_main_process():
    save_params(run.path("models", "autoencoder.msgpack"), params)


def _stage_diffusion(run: Run) -> None:
  require_stage(run.workdir, "train_autoencoder", "train_diffusion")
  ae = run.autoencoder_params()
  latents = run.encode(ae, run.data["train_images"])
  stats = mvld_model.LatentStats.fit(latents)
  z = np.asarray(stats.standardize(latents))
  if is_main_process():  # the receiver's quantiser range is part of the model
    atomic_save_npz(run.path("models", "latent_stats.npz"), mean=np.asarray(stats.mean),
                    std=np.asarray(stats.std), lo=z.reshape(-1, z.shape[-1]).min(0),
                    hi=z.reshape(-1, z.shape[-1]).max(0))
  params = train_diffusion(run.spec, run.config.diffusion, z.reshape((len(z), -1)),
                           workdir=run.workdir, mesh=run.mesh, key=run.key("train_diffusion"),
                           writer=run.writer, seed=run.config.seed)
  if is_main_process():
    save_params(run.path("models", "score_net.msgpack"), params)


def _stage_classifier(run: Run) -> None:
  fit_classifier(run.config.classifier, run.data["train_views"], run.view_labels(),
                 run.data["num_classes"], workdir=run.workdir, name="classifier", mesh=run.mesh,
                 key=run.key("train_classifier"), writer=run.writer)


def _generator(run: Run):
  require_stage(run.workdir, "train_diffusion", "sampling")
  return mvld_eval.make_generator(run.spec, run.autoencoder_params(), run.score_params(),
                                  run.latent_stats(), run.config.sampler)


def _stage_sample(run: Run) -> None:
  generate = _generator(run)
  n = run.config.evaluate.num_grid_objects
  images = run.data["test_images"][:n]
  v = images.shape[1]
  joint = generate(run.key("sample"), images, np.zeros((n, v), np.float32))  # nothing observed
  one = generate(jax.random.fold_in(run.key("sample"), 1), images,
                 np.eye(v, dtype=np.float32)[np.zeros(n, int)])  # view 0 observed
  if is_main_process():
    run.save_figure(image_grid(np.asarray(joint)), "samples", "joint.png")
    run.save_figure(image_grid(np.concatenate([np.asarray(one), images], axis=0)),
                    "samples", "from_view0.png")


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "train_classifier", "evaluate")
  generate = _generator(run)
  cfg = run.config.evaluate
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)
  reconstruct = mvld_eval.reconstruct_fn(run.spec, run.autoencoder_params())
  table, examples = mvld_eval.evaluate_table1(
      generate, reconstruct, images, labels, judges, observed_counts=list(cfg.observed_counts),
      key=run.key("evaluate"), batch_size=cfg.batch_size, seed=run.config.seed, mesh=run.mesh)
  if is_main_process():
    atomic_write_json(run.path("eval", "table1.json"),
                      {"table1": table, "feature_network": judges.feature_network,
                       "lpips_network": judges.lpips_network})
    run.save_figure(mvld_eval.example_grid(images, examples, cfg.num_grid_objects),
                    "samples", "table1_examples.png")


def _stage_transmission(run: Run) -> None:
  cfg = run.config.transmission
  if not cfg.enabled:
    return
  require_stage(run.workdir, "train_classifier", "transmission")
  ae, score, stats = run.autoencoder_params(), run.score_params(), run.latent_stats()
  lo, hi = run.latent_range()
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)
  spec = run.spec

  @functools.partial(jax.jit, compiler_options=sampling_compiler_options())
  def receive(key, z_rx, received):
    z = mvld_model.sample_latents(spec, score, key, z_rx.reshape((z_rx.shape[0], -1)), received,
                                  run.config.sampler)
    z = stats.unstandardize(z.reshape(z_rx.shape))
    return mvld_model.decode_views(spec, ae, z)

  def encode(x):
    return np.asarray(stats.standardize(run.encode(ae, x)))

  def judge(generated, true, labels):
    metrics = mvld_eval.pair_metrics(generated, true, labels, judges, run.config.evaluate.batch_size,
                                     run.mesh)
    # PSNR per object over all its views: finite when the sent views arrive losslessly.
    return {**metrics, "psnr": transmission.object_psnr(generated, true, run.config.data.num_views)}

  rows = transmission.run_study(encode, receive, images, labels, judge, latent_dim=spec.latent_dim,
                                bits_list=list(cfg.bits), bit_error_rate=cfg.bit_error_rate,
                                view_loss_prob=cfg.view_loss_prob, lo=lo, hi=hi,
                                key=run.key("transmission"), seed=run.config.seed)
  record = {"rows": rows, "lpips_network": judges.lpips_network, "classifier": judges.feature_network}
  if cfg.baselines.enabled:
    def generate(key, received_images, received):
      z = encode(received_images) * received[..., None]
      return receive(key, z, received)

    def judge_images(generated, true, labels):
      return mvld_eval.per_image_metrics(generated, true, labels, judges, run.config.evaluate.batch_size)

    record["baselines"] = baselines.run_baselines(
        images, labels, judge_images, generate, schemes=baselines.schemes_from_config(cfg.baselines),
        fills=list(cfg.baselines.fills),
        key=jax.random.fold_in(run.key("transmission"), 1_000_000))  # apart from run_study's keys
    record["equal_psnr"] = baselines.equal_psnr_table(rows, record["baselines"])
  if is_main_process():
    atomic_write_json(run.path("eval", "transmission.json"), record)
    run.save_figure(_rd_plot(rows, record.get("baselines", [])), "eval", "transmission.png")


def _rd_plot(rows: list[dict], baseline_rows: list[dict]) -> np.ndarray:
  """Bytes per object vs PSNR of all views: MVLD at each bit depth (over k), and the RD front of
  every baseline family (codec + fill)."""
  series = {}
  for bits in sorted({r["bits"] for r in rows}, reverse=True):
    sel = [r for r in rows if r["bits"] == bits]
    series[f"MVLD {bits}-bit"] = ([r["bytes"] for r in sel], [r["psnr"] for r in sel])
  for name, pts in sorted(baselines.family_points(baseline_rows).items()):
    front = baselines.rd_front([p for p in pts if np.isfinite(p[1])])
    series[name] = ([b for b, _ in front], [q for _, q in front])
  return line_plot(series, title="Bytes sent per object vs PSNR of all views (RD fronts)",
                   xlabel="bytes per object", ylabel="PSNR (dB)", log_x=True, size=(860, 520))


def _stage_sampler_study(run: Run) -> None:
  cfg = run.config.sampler_study
  if not cfg.enabled:
    return
  require_stage(run.workdir, "train_classifier", "sampler_study")
  ae, score, stats = run.autoencoder_params(), run.score_params(), run.latent_stats()
  images = run.data["test_images"][:cfg.num_objects]
  labels = run.data["test_labels"][:cfg.num_objects]
  judges = build_judges(run.config, run.classifier(), run.mesh)

  def make_generate(sampler):
    return mvld_eval.make_generator(run.spec, ae, score, stats, sampler)

  study = sampler_study.run_study(
      make_generate, images, labels, judges, base_sampler=run.config.sampler,
      samplers=list(cfg.samplers), nfes=list(cfg.nfe), repaint=cfg.repaint,
      observed_counts=list(run.config.evaluate.observed_counts), key=run.key("sampler_study"),
      batch_size=run.config.evaluate.batch_size, seed=run.config.seed, mesh=run.mesh,
      log=lambda line: print(line, flush=True) if is_main_process() else None)
  reference = list(cfg.reference)
  record = {"study": study, "reference": reference, "max_nfe": cfg.reach_max_nfe,
            "num_objects": int(len(images)), "feature_network": judges.feature_network,
            "tolerance": {m: list(t) for m, t in sampler_study.TOLERANCE.items()}}
  if reference[0] in study and reference[1] in study[reference[0]]:
    record["reaches"] = sampler_study.reaches_reference(study, tuple(reference), cfg.reach_max_nfe)
  if is_main_process():
    atomic_write_json(run.path("eval", "sampler_study.json"), record)
    run.save_figure(_nfe_plot(study), "eval", "sampler_study.png")


def _nfe_plot(study: dict) -> np.ndarray:
  """Metric vs NFE (log), one line per sampler, one panel per Table I metric."""
  panels = []
  for metric in mvld_eval.METRICS:
    series = {}
    for name, runs in study.items():
      rows = sorted(runs.values(), key=lambda r: r["nfe"])
      series[name] = ([r["nfe"] for r in rows], [r[metric] for r in rows])
    panels.append(line_plot(series, title=f"{metric} (mean over observed counts) vs NFE",
                            xlabel="network evaluations", ylabel=metric, log_x=True))
  if len(panels) % 2:
    panels.append(np.full_like(panels[0], 255))
  return np.concatenate([np.concatenate(panels[i:i + 2], axis=1) for i in range(0, len(panels), 2)])


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  table = read_json(run.path("eval", "table1.json"))
  optional = {}
  for name in ("transmission", "sampler_study"):
    path = run.path("eval", f"{name}.json")
    optional[name] = read_json(path) if paths.exists(path) else None
  if is_main_process():
    mvld_report.write(run.config, run.workdir, run.data, table, optional["transmission"],
                      optional["sampler_study"])


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)), ("train_autoencoder", lambda: _stage_autoencoder(run)),
          ("train_diffusion", lambda: _stage_diffusion(run)),
          ("train_classifier", lambda: _stage_classifier(run)), ("sample", lambda: _stage_sample(run)),
          ("evaluate", lambda: _stage_evaluate(run)),
          ("transmission", lambda: _stage_transmission(run)),
          ("sampler_study", lambda: _stage_sampler_study(run)), ("report", lambda: _stage_report(run))]
  run_method(run, plan, "mvld", stages, force)
