"""Image classifier training on the shared loop: `fit_classifier` (fresh, resumed, fine-tuned).

Used by the `classifier` method and by other methods that need a classifier (MVLD's coherence
classifier and in-domain FID/LPIPS feature network, LR-GMM-NN's features, DIMVIDA's Omega_s /
Omega_m, Softlabel-GAN's soft-label classifier). The loss is `jaxgen.classifier.losses`; the
config section `jaxgen.classifier.config`; the trained result `jaxgen.classifier.inference`.
Recipes: paper 000 sec. IV (Adam, lr 1e-5, batch 128), paper 001 sec. 4 (SGD momentum 0.9,
weight decay 5e-4, cosine schedule, label smoothing 0.1, CutMix, synthetic replacement
probability p).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxgen.classifier import augment
from jaxgen.classifier.config import build_model
from jaxgen.classifier.inference import Classifier, check_variables, eval_variables
from jaxgen.classifier.losses import classification_loss, normalize, smooth_targets
from jaxgen.classifier.sampling import (PairedBatches, SyntheticReplacement,
                                        balanced_class_weights, effective_number_weights)
from jaxgen.data.batches import is_streamed, training_batches
from jaxgen.data.sources import Source
from jaxgen.errors import ConfigError, DataError
from jaxgen.train import loop
from jaxgen.train.init import compiled_init
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState

def make_step_fn(model: nn.Module, cfg: ml_collections.ConfigDict, num_classes: int
                 ) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
  """The per-step training function for `loop.train`: augment, mix, loss, update (BN stats too)."""
  def step_fn(state: TrainState, batch: dict, key: jax.Array) -> tuple[TrainState, dict]:
    k_crop, k_flip, k_mix, k_drop = jax.random.split(key, 4)
    x = batch["image"].astype(jnp.float32)
    if cfg.augment.crop_padding > 0:
      x = augment.random_crop(k_crop, x, cfg.augment.crop_padding)
    if cfg.augment.flip:
      x = augment.random_flip(k_flip, x)
    x = normalize(x, cfg.normalization)
    targets = smooth_targets(batch["label"], num_classes, cfg.label_smoothing)
    sources = None
    if "paste_image" in batch:  # CMO: the patches come from the class-balanced stream
      k_pcrop, k_pflip = jax.random.split(jax.random.fold_in(k_crop, 1))
      px = batch["paste_image"].astype(jnp.float32)
      if cfg.augment.crop_padding > 0:
        px = augment.random_crop(k_pcrop, px, cfg.augment.crop_padding)
      if cfg.augment.flip:
        px = augment.random_flip(k_pflip, px)
      sources = (normalize(px, cfg.normalization),
                 smooth_targets(batch["paste_label"], num_classes, cfg.label_smoothing))
    x, targets = augment.mix_batch(k_mix, x, targets, mixup_alpha=cfg.mixup_alpha,
                                   cutmix_alpha=cfg.cutmix_alpha, mix_prob=cfg.mix_prob,
                                   cutmix_sources=sources)
    bn = state.batch_stats is not None  # ViTs have no BatchNorm

    def loss_fn(params):
      variables = {"params": params}
      if bn:
        variables["batch_stats"] = state.batch_stats
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": k_drop})
      else:
        logits, updates = model.apply(variables, x, train=True, rngs={"dropout": k_drop}), {}
      weight = batch["weight"]
      if cfg.drw_start > 0:  # deferred re-weighting: class-balanced weights late in training
        switch = jnp.floor(cfg.drw_start * cfg.train.num_steps).astype(jnp.int32)
        weight = jnp.where(state.step >= switch, batch["drw_weight"], weight)
      loss, aux = classification_loss(logits, targets, weight, cfg.entropy_weight)
      return loss, (logits, updates, aux)

    (loss, (logits, updates, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    changes = {"batch_stats": updates["batch_stats"]} if bn else {}
    state = state.apply_gradients(grads, **changes)
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    return state, {"loss": loss, "accuracy": acc, **aux}

  return step_fn


def _check_inputs(images: np.ndarray, labels: np.ndarray, num_classes: int, what: str) -> None:
  if images.ndim != 4 or images.dtype != np.uint8:
    raise DataError(f"{what} images have shape {images.shape} and dtype {images.dtype}; "
                    "expected uint8 [N, H, W, C]")
  if len(labels) != len(images):
    raise DataError(f"{what}: {len(labels)} labels for {len(images)} images")
  if labels.ndim == 1:
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= num_classes:
      raise DataError(f"{what} labels must be integers in [0, {num_classes}); got dtype "
                      f"{labels.dtype}, range [{labels.min()}, {labels.max()}]")
  elif labels.ndim != 2 or labels.shape[1] != num_classes:
    raise DataError(f"{what} labels have shape {labels.shape}; expected [N] class ids or "
                    f"[N, {num_classes}] class probabilities")


def _as_training_labels(labels: np.ndarray, soft: bool, num_classes: int) -> np.ndarray:
  if soft:
    return (np.eye(num_classes, dtype=np.float32)[labels] if labels.ndim == 1
            else labels.astype(np.float32))
  return labels.astype(np.int32)


def _class_ids(labels: np.ndarray) -> np.ndarray:
  return labels if labels.ndim == 1 else np.argmax(labels, axis=1)


def streamed_record(record: dict[str, np.ndarray], *, num_classes: int, soft: bool,
                    weights: np.ndarray, drw: np.ndarray | None) -> dict[str, np.ndarray]:
  """A decoded source record -> the keys the step reads (grain's record_fn; RGB, loss weights)."""
  image = np.asarray(record["image"])
  if image.shape[-1] == 1:  # every classifier takes RGB
    image = np.repeat(image, 3, axis=-1)
  label = int(record["label"])
  if soft:  # a record's own soft label (a synthetic cache's), else its class as one-hot
    target = (np.asarray(record["soft_label"], np.float32) if "soft_label" in record
              else np.eye(num_classes, dtype=np.float32)[label])
  else:
    target = np.asarray(label, np.int32)
  out = {"image": image, "label": target, "weight": weights[label]}
  if drw is not None:
    out["drw_weight"] = drw[label]
  return out


def _streamed_image_shape(source: Source, image_size: int | None) -> tuple[int, int, int]:
  if image_size is None:
    shape = tuple(source.image_shape)
    if len(shape) != 3 or None in shape or shape[0] != shape[1]:
      raise ConfigError("data.image_size", image_size,
                        f"a training image size ({source.name} images have shape {shape})")
    image_size = shape[0]
  return (int(image_size), int(image_size), 3)


def initial_variables(model: nn.Module, cfg: ml_collections.ConfigDict, num_classes: int,
                      image_shape: tuple[int, ...], key: jax.Array,
                      init_variables: dict | None = None) -> dict:
  """Fresh `model.init`, or given variables, or torchvision weights from `cfg.pretrained_path`."""
  if init_variables is not None:
    return check_variables(model, init_variables, image_shape)
  if cfg.pretrained_path:
    from jaxgen.io.torch_state_dict import load_state_dict  # pylint: disable=import-outside-toplevel
    from jaxgen.io.torchvision_import import import_torchvision  # pylint: disable=import-outside-toplevel
    state_dict = load_state_dict(cfg.pretrained_path,
                                 hint=f"set config pretrained_path to a torchvision {cfg.arch} file")
    kw = dict(cfg.arch_kw)
    if kw.get("image_size", None) == 0:
      kw["image_size"] = image_shape[0]
    variables = import_torchvision(cfg.arch, state_dict, num_classes, rng=key, dtype=cfg.dtype, **kw)
    return check_variables(model, variables, image_shape)
  x = jnp.zeros((1,) + image_shape, jnp.float32)
  # Init runs once and is cheap, but XLA:CPU's optimising passes over its hundreds of PRNG ops
  # take ~20 s for a ResNet-18; unoptimised it compiles ~8x faster.
  return compiled_init(lambda k: model.init({"params": k, "dropout": k}, x, train=False), key,
                       fast_compile=True)


def fit_classifier(cfg: ml_collections.ConfigDict, images: np.ndarray | Source,
                   labels: np.ndarray | None, num_classes: int, *, workdir: str, name: str,
                   mesh: Mesh, key: jax.Array, writer: Any = None,
                   synthetic: tuple[np.ndarray, np.ndarray] | Source | None = None,
                   init_variables: dict | None = None, verbose: bool = True,
                   image_size: int | None = None, stream_augment: str | None = None,
                   input_workers: int = 0) -> Classifier:
  """Train (or resume, or just restore when finished) a classifier on uint8 NHWC images.

  Args:
    cfg: a `classifier_config` section.
    images, labels: uint8 [N, H, W, C]; int class ids [N] or float class probabilities [N, K].
      Or `images` a `Source` read from disk (TFDS, image folder) and `labels` None: the
      batches are then streamed through the grain pipeline (`jaxgen.data.batches`), decoded and
      resized to `image_size` per step, each process reading only its share; `stream_augment`
      ('rrc', 'flip', ...) applies while decoding, `input_workers` grain worker processes.
    num_classes: K.
    workdir, name: checkpoints go to `workdir/checkpoints/<name>` (resumable).
    mesh, key, writer: as for `jaxgen.train.loop.train`.
    synthetic: optional (images, labels) pool; with `cfg.synthetic_replace_prob = p` each real
      example of a batch is replaced by a random synthetic one with probability p (paper 001).
      Or a `Source` of the pool (records 'image', 'label' and optionally 'soft_label', e.g. a
      `jaxgen.data.cached.CachedSource`): the picked records are read from it per step, never
      all at once; the batches equal those of the same pool given as arrays.
    init_variables: start from these ({'params', 'batch_stats'?}, e.g. from
      `load_classifier_variables`) instead of a fresh init / `cfg.pretrained_path`.
  Returns:
    The `Classifier` with the final (EMA when kept) parameters and BatchNorm statistics.
  """
  streamed = is_streamed(images)
  if streamed:
    if labels is not None:
      raise DataError("labels come from the source when images is a Source; pass labels=None")
    source, labels = images, np.asarray(images.labels(), np.int32)
    image_shape = _streamed_image_shape(source, image_size)
  else:
    if stream_augment is not None:
      raise ConfigError("data.augment", stream_augment,
                        "none for in-memory images (it applies while decoding a streamed source)")
    images, labels = np.asarray(images), np.asarray(labels)
    _check_inputs(images, labels, num_classes, "training")
    image_shape = tuple(images.shape[1:])
  soft = labels.ndim == 2
  syn_source = synthetic if is_streamed(synthetic) else None
  if syn_source is not None:
    if len(syn_source) == 0 or syn_source.num_classes != num_classes:
      raise DataError(f"synthetic source {syn_source.name}: {len(syn_source)} records of "
                      f"{syn_source.num_classes} classes; expected at least one of {num_classes}")
    syn_shape = tuple(syn_source.image_shape)
    syn_shape = syn_shape[:-1] + (3,) if syn_shape[-1:] == (1,) else syn_shape  # made RGB per read
    if syn_shape != image_shape:
      raise DataError(f"synthetic images have shape {syn_shape}; the real ones {image_shape}")
    syn_ids = np.asarray(syn_source.labels(), np.int32)
    soft = soft or "soft_label" in syn_source[0]
  elif synthetic is not None:
    syn_images, syn_labels = np.asarray(synthetic[0]), np.asarray(synthetic[1])
    _check_inputs(syn_images, syn_labels, num_classes, "synthetic")
    if syn_images.shape[1:] != image_shape:
      raise DataError(f"synthetic images have shape {syn_images.shape[1:]}; the real ones "
                      f"{image_shape}")
    soft = soft or syn_labels.ndim == 2
    syn_ids = _class_ids(syn_labels)
  model = build_model(cfg, num_classes, image_size=image_shape[0])
  k_init, k_train = jax.random.split(key)
  variables = initial_variables(model, cfg, num_classes, image_shape, k_init, init_variables)
  params = variables["params"]
  batch_stats = variables.get("batch_stats") or None
  tx = make_optimizer(cfg.train.optim, cfg.train.num_steps)
  state = TrainState.create(params, tx, ema_decay=cfg.train.ema_decay, batch_stats=batch_stats)

  class_ids = _class_ids(labels)
  weights = (balanced_class_weights(class_ids, num_classes) if cfg.sampling == "reweighted"
             else np.ones(num_classes, np.float32))
  drw = effective_number_weights(class_ids, num_classes, cfg.drw_beta) if cfg.drw_start > 0 \
      else None
  seed = int(jax.random.randint(jax.random.fold_in(k_train, 1), (), 0, 2**31 - 1))
  sampling = "class_balanced" if cfg.sampling == "class_balanced" else "uniform"
  if streamed:
    data = source
    stream = dict(image_size=image_shape[0], augment=stream_augment, worker_count=input_workers,
                  record_fn=functools.partial(streamed_record, num_classes=num_classes, soft=soft,
                                              weights=weights, drw=drw))
  else:
    stream = {}
    data = {"image": images, "label": _as_training_labels(labels, soft, num_classes),
            "weight": weights[class_ids]}
    if drw is not None:
      data["drw_weight"] = drw[class_ids]
  batches = training_batches(data, global_batch_size=cfg.train.batch_size, seed=seed,
                             sampling=sampling, class_ids=class_ids, **stream)
  if synthetic is not None and cfg.synthetic_replace_prob > 0:
    syn_record_fn = None
    if syn_source is not None:
      pool = syn_source
      syn_record_fn = functools.partial(streamed_record, num_classes=num_classes, soft=soft,
                                        weights=weights, drw=drw)
    else:
      pool = {"image": syn_images, "label": _as_training_labels(syn_labels, soft, num_classes),
              "weight": weights[syn_ids]}
      if drw is not None:
        pool["drw_weight"] = drw[syn_ids]
    batches = SyntheticReplacement(batches, pool, cfg.synthetic_replace_prob, seed=seed,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(), record_fn=syn_record_fn)
  if cfg.cmo:  # real images oversampled class-balanced, to paste onto the batch
    partner_data = source if streamed else {"image": images, "label": data["label"]}
    partner = training_batches(partner_data, global_batch_size=cfg.train.batch_size,
                               seed=seed + 1, sampling="class_balanced", class_ids=class_ids,
                               **stream)
    batches = PairedBatches(batches, partner)
  step_fn = make_step_fn(model, cfg, num_classes)
  state = loop.train(name=name, state=state, step_fn=step_fn, batches=batches, cfg=cfg.train,
                     workdir=workdir, mesh=mesh, key=jax.random.fold_in(k_train, 2), writer=writer,
                     verbose=verbose)
  return Classifier(model, eval_variables(state.eval_params, state.batch_stats), num_classes,
                    normalization=cfg.normalization, mesh=mesh)
