"""The text-to-image backbone end to end: data -> autoencoder -> denoiser -> judges -> samples ->
fine-tuning -> evaluation -> report (`configs/t2i.py`).

  data               render (or read the cached) embedded sets, build the word tokenizer
  train_autoencoder  the KL autoencoder on the pre-training images; measure the latent scale
  train_denoiser     U-Net + text encoder on the pre-training latents and prompts
  train_judges       in-domain classifiers: 72-class (pre-training) and K-class (target) judges,
                     whose penultimate features are also the FID features
  sample             prompt-conditioned samples of every pre-training class (guided and not),
                     and SDEdit translations toward other colours at several strengths
  finetune           per seed: TI + DreamBooth-LoRA on the target's few shots, then samples of
                     every target class ("a photo of a <v_i> cube") and vanilla samples
  evaluate, report   FID / judge accuracies / SDEdit curves -> results.json, report.md

With `backbone.weights_path` (e.g. the `sd15` preset) the two training stages load the weights
instead (`jaxgen.io.stable_diffusion`).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import configlib
from jaxgen.classifier.config import validate_classifier_config
from jaxgen.classifier.inference import load_classifier
from jaxgen.classifier.train import fit_classifier
from jaxgen.errors import ConfigError
from jaxgen.io.files import atomic_save_npz, atomic_write_json, read_json
from jaxgen.io.images import image_grid
from jaxgen.io.params import load_params, save_params
from jaxgen.nets import cond_unet
from jaxgen.nets.cond_unet import CondUNetConfig
from jaxgen.nets.kl_autoencoder import KLAutoencoder, KLAutoencoderConfig
from jaxgen.nets.text_encoder import TextEncoderConfig
from jaxgen.parallel.mesh import is_main_process
from jaxgen.stages import MethodRun, require_stage, run_method
from jaxgen.t2i import backbone as bb
from jaxgen.t2i import data as data_lib
from jaxgen.t2i import evaluate as ev
from jaxgen.t2i import finetune as ft
from jaxgen.t2i import report as report_lib
from jaxgen.t2i import train as train_lib
from jaxgen.t2i.sampler_runs import SamplerRuns
from jaxgen.t2i.schedules import SAMPLERS, TIMESTEP_SPACINGS, SamplerSpec
from jaxgen.text.tokenizers import WordTokenizer
from jaxgen.io import paths

STAGES = ("data", "train_autoencoder", "train_denoiser", "train_judges", "sample", "finetune",
          "evaluate", "report")


def backbone_config(config: ml_collections.ConfigDict, vocab_size: int,
                    scaling_factor: float = 1.0) -> bb.BackboneConfig:
  """The embedded backbone's sizes from the config section `backbone`."""
  b, size = config.backbone, config.data.image_size
  levels = len(b.unet_channels)
  return bb.BackboneConfig(
      vae=KLAutoencoderConfig(ch=b.vae_ch, ch_mult=tuple(b.vae_ch_mult),
                              num_res_blocks=b.vae_num_res_blocks,
                              attn_resolutions=tuple(b.vae_attn_resolutions),
                              z_channels=b.vae_latent_channels, embed_dim=b.vae_latent_channels,
                              resolution=size, num_groups=b.vae_num_groups,
                              scaling_factor=scaling_factor),
      unet=CondUNetConfig(
          in_channels=b.vae_latent_channels, out_channels=b.vae_latent_channels,
          block_out_channels=tuple(b.unet_channels), layers_per_block=b.unet_layers_per_block,
          down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
          up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
          num_attention_heads=b.unet_heads, cross_attention_dim=b.text_width,
          norm_num_groups=b.unet_num_groups, sample_size=size // 2 ** (len(b.vae_ch_mult) - 1)),
      text=TextEncoderConfig(vocab_size=vocab_size, max_length=b.text_max_length,
                             width=b.text_width, layers=b.text_layers, heads=b.text_heads),
      prediction_type=b.prediction_type)


# The network dataclasses' field names -> this config's keys (errors name the key a user sets).
_NETWORK_KEYS = {
    "cond_unet.block_out_channels": "backbone.unet_channels",
    "cond_unet.num_attention_heads": "backbone.unet_heads",
    "kl_autoencoder.ch_mult": "backbone.vae_ch_mult",
    "kl_autoencoder.attn_resolutions": "backbone.vae_attn_resolutions",
    "kl_autoencoder.ch": "backbone.vae_ch",
    "kl_autoencoder.resolution": "data.image_size",
    "text_encoder.heads": "backbone.text_heads",
    "text_encoder.layers": "backbone.text_layers",
    "text_encoder.max_length": "backbone.text_max_length",
    "text_encoder.width": "backbone.text_width",
    "cond_unet.cross_attention_dim": "backbone.text_width",
    "cond_unet.layers_per_block": "backbone.unet_layers_per_block",
    "cond_unet.norm_num_groups": "backbone.unet_num_groups",
    "cond_unet.in_channels": "backbone.vae_latent_channels",
    "cond_unet.out_channels": "backbone.vae_latent_channels",
    "cond_unet.sample_size": "data.image_size",
    "kl_autoencoder.z_channels": "backbone.vae_latent_channels",
    "kl_autoencoder.embed_dim": "backbone.vae_latent_channels",
    "kl_autoencoder.num_groups": "backbone.vae_num_groups",
    "kl_autoencoder.num_res_blocks": "backbone.vae_num_res_blocks",
}


def _trace_backbone(cfg: bb.BackboneConfig, b: ml_collections.ConfigDict, image_size: int) -> None:
  """The U-Net's forward and the VAE's init on abstract shapes (nothing is computed)."""
  latent = jax.ShapeDtypeStruct((1,) + cfg.latent_shape, jnp.float32)
  context = jax.ShapeDtypeStruct((1, b.text_max_length, b.text_width), jnp.float32)
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jax.eval_shape(lambda p, x, c: bb.unet_apply({"params": p}, cfg, x, jnp.zeros((1,)), c),
                 cond_unet.param_shapes(cfg.unet), latent, context)
  jax.eval_shape(KLAutoencoder(cfg.vae).init, jax.random.key(0), image)


def sampler_spec(config: ml_collections.ConfigDict) -> SamplerSpec:
  s = config.sampler
  return SamplerSpec(name=s.name, num_steps=s.num_steps, timestep_spacing=s.timestep_spacing or None,
                     eta=float(s.eta))


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    finetune: bool = True) -> None:
  """Every impossible value fails here: the networks, sampler and judges are built abstractly.
  `finetune=False` skips the fine-tuning section (a Diff-Mix run fine-tunes with its own)."""
  dp = configlib.validate_base(config, num_devices)
  d = config.data
  configlib.require_choice(config, "data.name", data_lib.DATA_NAMES)
  for key in ("image_size", "pretrain_per_class", "pretrain_test_per_class", "target_shots",
              "target_judge_per_class", "target_test_per_class"):
    configlib.require_positive_int(config, f"data.{key}")
  configlib.require(isinstance(d.target_classes, int) and 2 <= d.target_classes <= 16,
                    "data.target_classes", d.target_classes, "an integer in [2, 16]")
  configlib.require(d.target_metaclass in data_lib.t2i_sets.SHAPE_CLASSES, "data.target_metaclass",
                    d.target_metaclass, f"one of {data_lib.t2i_sets.SHAPE_CLASSES}")
  configlib.require_choice(config, "backbone.prediction_type", bb.PREDICTION_TYPES)
  b = config.backbone
  configlib.require(not b.tokenizer_path or paths.isdir(b.tokenizer_path), "backbone.tokenizer_path",
                    b.tokenizer_path, "'' or an existing CLIP tokenizer folder (vocab.json, merges.txt)")
  configlib.require(bool(b.weights_path) or config.preset != "sd15", "backbone.weights_path",
                    b.weights_path, "a Stable Diffusion 1.x diffusers folder or single file (sd15)")
  if b.weights_path:
    configlib.require(paths.exists(b.weights_path), "backbone.weights_path", b.weights_path,
                      "an existing diffusers folder or single-file SD checkpoint")
    if paths.isfile(b.weights_path):
      configlib.require(paths.isdir(b.tokenizer_path), "backbone.tokenizer_path", b.tokenizer_path,
                        "the CLIP tokenizer folder (vocab.json, merges.txt) of a single-file "
                        "checkpoint")
  else:
    down = 2 ** (len(b.vae_ch_mult) - 1) * 2 ** (len(b.unet_channels) - 1)
    configlib.require(d.image_size % down == 0, "data.image_size", d.image_size,
                      f"a multiple of {down} (autoencoder and U-Net downsampling)")
    try:
      cfg = backbone_config(config, 64)  # sizes are checked by the dataclasses
    except ConfigError as err:
      raise ConfigError(_NETWORK_KEYS.get(err.key, err.key), err.value, err.expected) from None
    configlib.trace_once(config, ("backbone", "data.image_size"),
                         functools.partial(_trace_backbone, cfg, b, d.image_size))
    configlib.validate_train(config, "autoencoder.train", dp)
    configlib.validate_train(config, "denoiser.train", dp)
    configlib.require(b.text_max_length >= 8, "backbone.text_max_length", b.text_max_length,
                      "at least 8 tokens (the longest prompt plus start/end)")
  configlib.require_range(config, "denoiser.p_uncond", 0.0, 1.0)
  configlib.require(config.autoencoder.kl_weight >= 0, "autoencoder.kl_weight",
                    config.autoencoder.kl_weight, "a number >= 0")
  s = config.sampler
  configlib.require_choice(config, "sampler.name", SAMPLERS)
  configlib.require(s.timestep_spacing in ("",) + TIMESTEP_SPACINGS, "sampler.timestep_spacing",
                    s.timestep_spacing, f"'' or one of {TIMESTEP_SPACINGS}")
  configlib.require(isinstance(s.num_steps, int) and 1 <= s.num_steps <= 1000, "sampler.num_steps",
                    s.num_steps, "an integer in [1, 1000]")
  configlib.require(s.guidance_scale >= 0, "sampler.guidance_scale", s.guidance_scale, ">= 0")
  sampler_spec(config)  # eta / spacing combinations
  if finetune:
    f = config.finetune
    ft.validate_config(config, "finetune", dp)
    seeds = list(f.seeds)
    configlib.require(bool(seeds) and len(set(seeds)) == len(seeds) and all(
        isinstance(x, int) and x >= 0 for x in seeds), "finetune.seeds", seeds,
        "distinct non-negative integers")
  validate_classifier_config(config, "judge", dp)
  # every batch fits in the set it is drawn from (else the first batch fails after training)
  pre = 72 * d.pretrain_per_class
  for key, available, what in (
      ("autoencoder.train.batch_size", pre, "pre-training images"),
      ("denoiser.train.batch_size", pre, "pre-training images"),
      *([("finetune.train.batch_size", d.target_shots * d.target_classes, "target shots")]
        if finetune else []),
      ("judge.train.batch_size", min(pre, d.target_judge_per_class * d.target_classes),
       "images of the smaller judge set")):
    if key.startswith(("autoencoder", "denoiser")) and b.weights_path:
      continue
    value = configlib.get_path(config, key)
    configlib.require(value <= available, key, value, f"at most the {available} {what}")
  e = config.evaluate
  for key in ("samples_per_class", "target_samples_per_class", "batch_size", "num_grid"):
    configlib.require_positive_int(config, f"evaluate.{key}")
  if e.inception_path and not paths.isfile(e.inception_path):
    raise ConfigError("evaluate.inception_path", e.inception_path,
                      "an existing FID Inception weight file, or '' for the in-domain judges")


def load_pretrained(config: ml_collections.ConfigDict) -> tuple[bb.BackboneConfig, dict, object]:
  """(config, params, tokenizer) of `backbone.weights_path` (Stable Diffusion 1.x), sampling at
  the run's image size (the VAE is convolutional; `resolution` sets the latents)."""
  from jaxgen.io.stable_diffusion import load_stable_diffusion
  b = config.backbone
  cfg, params, tok = load_stable_diffusion(b.weights_path, tokenizer_path=b.tokenizer_path or None)
  cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, resolution=config.data.image_size))
  return cfg, params, tok


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str):
  """A fresh tokenizer of the run (fine-tuning adds identifier tokens to its own copy)."""
  b = config.backbone
  if b.weights_path:
    from jaxgen.io.stable_diffusion import load_clip_tokenizer
    return load_clip_tokenizer(b.tokenizer_path or b.weights_path)
  return WordTokenizer.load(os.path.join(workdir, "models", "tokenizer.json"))


def load_backbone(config: ml_collections.ConfigDict, workdir: str) -> tuple[bb.BackboneConfig, dict]:
  """(config, {'vae', 'unet', 'text'}) of the backbone a run in `workdir` trained."""
  require_stage(workdir, "train_denoiser", "sampling")
  scale = read_json(os.path.join(workdir, "models", "latent_scale.json"))["scaling_factor"]
  cfg = backbone_config(config, load_tokenizer(config, workdir).vocab_size, scale)
  params = {"vae": load_params(os.path.join(workdir, "models", "autoencoder.msgpack")),
            **load_params(os.path.join(workdir, "models", "denoiser.msgpack"))}
  return cfg, params


def backbone_files(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """The files the backbone's weights come from (for provenance digests)."""
  if config.backbone.weights_path:
    return [config.backbone.weights_path]
  return [os.path.join(workdir, "models", n) for n in ("autoencoder.msgpack", "denoiser.msgpack")]


class Run(MethodRun):
  """Shared state of one t2i run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir, STAGES)

  @functools.cached_property
  def data(self) -> dict:
    return data_lib.load(self.config, self.workdir)

  @functools.cached_property
  def pretrained(self) -> tuple[bb.BackboneConfig, dict, object]:
    return load_pretrained(self.config)

  def tokenizer(self):
    """A fresh copy (fine-tuning adds identifier tokens to its own)."""
    return load_tokenizer(self.config, self.workdir)

  def backbone(self) -> tuple[bb.BackboneConfig, dict]:
    """(config, {'vae', 'unet', 'text'}) of the trained (or loaded) backbone."""
    if self.config.backbone.weights_path:
      return self.pretrained[:2]
    return load_backbone(self.config, self.workdir)

  @functools.cached_property
  def sampler(self) -> SamplerRuns:
    cfg, params = self.backbone()
    return SamplerRuns(cfg, params, sampler_spec(self.config), self.config.evaluate.batch_size)

  def judge(self, name: str):
    return load_judge(self.config, self.workdir, self.data, name, self.mesh)


def load_judge(config: ml_collections.ConfigDict, workdir: str, data: dict, name: str, mesh):
  """The in-domain judge `name` ('judge_pretrain' or 'judge_target') a run in `workdir` trained."""
  num = len(data["class_names"]) if name == "judge_pretrain" else data["num_target_classes"]
  return load_classifier(config.judge, num, data["pretrain_images"].shape[1:], workdir=workdir,
                         name=name, mesh=mesh)


def _stage_data(run: Run) -> None:
  d = run.data
  if is_main_process() and not run.config.backbone.weights_path:
    data_lib.build_tokenizer(d).save(run.path("models", "tokenizer.json"))
    print(f"[data] {data_lib.description(run.config, d)}", flush=True)
    order = np.argsort(d["target_test_labels"], kind="stable")
    run.save_figure(image_grid(d["pretrain_images"][:48], ncols=12), "samples", "pretrain_real.png")
    run.save_figure(image_grid(d["target_test_images"][order][:40], ncols=10), "samples",
                    "target_real.png")


def _stage_autoencoder(run: Run) -> None:
  if run.config.backbone.weights_path:  # pretrained: nothing to train; check the weights load
    print(f"[train_autoencoder] skipped: weights from {run.config.backbone.weights_path}")
    run.pretrained  # noqa: B018
    return
  tok = run.tokenizer()
  cfg = backbone_config(run.config, tok.vocab_size)
  vae = train_lib.train_autoencoder(cfg, run.data["pretrain_images"], run.config.autoencoder.train,
                                    kl_weight=run.config.autoencoder.kl_weight, workdir=run.workdir,
                                    mesh=run.mesh, key=run.key("train_autoencoder"),
                                    writer=run.writer, seed=run.config.seed)
  means, _ = train_lib.posterior_moments(cfg, vae, run.data["pretrain_images"],
                                         run.config.evaluate.batch_size, run.mesh)
  if is_main_process():
    save_params(run.path("models", "autoencoder.msgpack"), vae)
    atomic_write_json(run.path("models", "latent_scale.json"),
                      {"scaling_factor": train_lib.latent_scale(means),
                       "latent_std": float(np.std(means))})


def _stage_denoiser(run: Run) -> None:
  if run.config.backbone.weights_path:
    print(f"[train_denoiser] skipped: weights from {run.config.backbone.weights_path}")
    return
  require_stage(run.workdir, "train_autoencoder", "train_denoiser")
  tok = run.tokenizer()
  scale = read_json(run.path("models", "latent_scale.json"))["scaling_factor"]
  cfg = backbone_config(run.config, tok.vocab_size, scale)
  vae = load_params(run.path("models", "autoencoder.msgpack"))
  d = run.data
  means, logvars = train_lib.posterior_moments(cfg, vae, d["pretrain_images"],
                                               run.config.evaluate.batch_size, run.mesh)
  prompts = [data_lib.prompt(d["class_names"][c]) for c in d["pretrain_labels"]]
  ids = tok.encode(prompts, cfg.text.max_length)
  init = bb.init_backbone(cfg, jax.random.fold_in(run.key("train_denoiser"), 0))
  trained = train_lib.train_denoiser(
      cfg, init, {"mean": means, "logvar": logvars, "ids": ids}, tok.encode("", cfg.text.max_length)[0],
      run.config.denoiser.train, p_uncond=run.config.denoiser.p_uncond, workdir=run.workdir,
      mesh=run.mesh, key=jax.random.fold_in(run.key("train_denoiser"), 1), writer=run.writer,
      seed=run.config.seed)
  if is_main_process():
    save_params(run.path("models", "denoiser.msgpack"), trained)


def _stage_judges(run: Run) -> None:
  d = run.data
  fit_classifier(run.config.judge, d["pretrain_images"], d["pretrain_labels"],
                 len(d["class_names"]), workdir=run.workdir, name="judge_pretrain", mesh=run.mesh,
                 key=run.key("train_judges", 0), writer=run.writer)
  fit_classifier(run.config.judge, d["judge_images"], d["judge_labels"], d["num_target_classes"],
                 workdir=run.workdir, name="judge_target", mesh=run.mesh,
                 key=run.key("train_judges", 1), writer=run.writer)


def _stage_sample(run: Run) -> None:
  d, e = run.data, run.config.evaluate
  tok = run.tokenizer()
  s = run.sampler
  labels = np.repeat(np.arange(len(d["class_names"])), e.samples_per_class)
  prompts = [data_lib.prompt(d["class_names"][c]) for c in labels]
  out = {"labels": labels}
  for name, scale in (("guided", run.config.sampler.guidance_scale), ("unguided", 1.0)):
    out[name] = s.generate(tok, prompts, scale, run.key("sample", 0))
  refs, targets, strengths = ev.sdedit_plan(d)
  out["sdedit"] = s.translate(tok, d["pretrain_test_images"][refs], targets["prompts"], strengths,
                              run.config.sampler.guidance_scale, run.key("sample", 1))
  if is_main_process():
    atomic_save_npz(run.path("samples", "vanilla.npz"), sdedit_refs=refs,
                    sdedit_targets=targets["labels"], sdedit_strengths=strengths, **out)
    g = e.num_grid
    per_class = out["guided"].reshape((len(d["class_names"]), -1) + out["guided"].shape[1:])
    run.save_figure(image_grid(per_class[:12 * 6:6, :g].swapaxes(0, 1)), "samples",
                    "vanilla_guided.png")
    run.save_figure(ev.sdedit_figure(d, out["sdedit"], refs), "samples", "sdedit.png")


def _stage_finetune(run: Run) -> None:
  d, cfg_ft = run.data, run.config.finetune
  cfg, params = run.backbone()
  means, logvars = train_lib.posterior_moments(cfg, params["vae"], d["shot_images"],
                                               run.config.evaluate.batch_size, run.mesh)
  k, word = d["num_target_classes"], d["metaclass_word"]
  n = run.config.evaluate.target_samples_per_class
  labels = np.repeat(np.arange(k), n)
  for seed in cfg_ft.seeds:
    path = run.path("samples", f"target_seed{seed}.npz")
    if paths.exists(path):
      continue
    tok = run.tokenizer()
    tuned = ft.finetune(cfg, params, tok, {"mean": means, "logvar": logvars,
                                           "labels": d["shot_labels"]}, k, word, cfg_ft,
                        workdir=run.workdir, mesh=run.mesh, key=run.key("finetune", seed),
                        writer=run.writer, seed=seed, name=f"finetune_seed{seed}")
    tuned_params = {"vae": params["vae"], "text": tuned.text, "unet": tuned.unet(params["unet"])}
    runs = SamplerRuns(tuned.config, tuned_params, sampler_spec(run.config),
                       run.config.evaluate.batch_size)
    key = jax.random.fold_in(run.key("sample", 2), seed)
    scale = run.config.sampler.guidance_scale
    diff_gen = runs.generate(tok, [ft.class_prompts(k, word)[c] for c in labels], scale, key)
    # vanilla: the class cannot be named, so every class gets the metaclass prompt
    real_gen = run.sampler.generate(run.tokenizer(), [data_lib.prompt(word)] * len(labels), scale,
                                    key)
    if is_main_process():
      save_params(run.path("models", f"finetune_seed{seed}.msgpack"),
                  {"text": tuned.text, "lora": tuned.lora or {}})
      atomic_save_npz(path, labels=labels, diff_gen=diff_gen, real_gen=real_gen)
      order = np.argsort(labels, kind="stable").reshape(k, n)[:, :run.config.evaluate.num_grid]
      run.save_figure(image_grid(diff_gen[order].swapaxes(0, 1)), "samples",
                      f"target_diff_gen_seed{seed}.png")


def _stage_evaluate(run: Run) -> None:
  require_stage(run.workdir, "finetune", "evaluate")
  require_stage(run.workdir, "train_judges", "evaluate")
  cfg, params = run.backbone()
  result = ev.evaluate(run.config, run.data, cfg, params, run.judge("judge_pretrain"),
                       run.judge("judge_target"), run.path("samples"))
  if is_main_process():
    atomic_write_json(run.path("eval", "evaluation.json"), result)


def _stage_report(run: Run) -> None:
  require_stage(run.workdir, "evaluate", "report")
  if is_main_process():
    report_lib.write(run.config, run.workdir, data_lib.description(run.config, run.data),
                     read_json(run.path("eval", "evaluation.json")))


def main(config: ml_collections.ConfigDict, workdir: str, stages=None, force: bool = False) -> None:
  run = Run(config, workdir)
  plan = [("data", lambda: _stage_data(run)),
          ("train_autoencoder", lambda: _stage_autoencoder(run)),
          ("train_denoiser", lambda: _stage_denoiser(run)),
          ("train_judges", lambda: _stage_judges(run)), ("sample", lambda: _stage_sample(run)),
          ("finetune", lambda: _stage_finetune(run)), ("evaluate", lambda: _stage_evaluate(run)),
          ("report", lambda: _stage_report(run))]
  run_method(run, plan, "t2i", stages, force)
