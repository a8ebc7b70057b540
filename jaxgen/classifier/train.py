"""Image classifier training on the shared loop (`fit_classifier`) and the trained `Classifier`.

Used by the `classifier` method and by other methods that need a classifier (MVLD's coherence
classifier and in-domain FID/LPIPS feature network, Softlabel-GAN's soft-label classifier).

Loss per batch (targets t are class probabilities):
  L = sum_i w_i CE(t_i, softmax(z_i)) / B  -  entropy_weight * mean_i H(softmax(z_i))
with t = (1 - eps) onehot(y) + eps / K (label smoothing, Szegedy et al. 2016; torch's convention),
then Mixup/CutMix mixing, w_i = 1 or the 'balanced' class weight (sampling='reweighted'), and the
entropy term of paper 003 sec. 4.3 (w = 0.3 for Softlabel-GAN's SpinalNet classifier). Recipes:
paper 000 sec. IV (Adam, lr 1e-5, batch 128), paper 001 sec. 4 (SGD momentum 0.9, weight decay
5e-4, cosine schedule, label smoothing 0.1, CutMix, synthetic replacement probability p).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxgen import configlib
from jaxgen.classifier import augment
from jaxgen.classifier.sampling import (ClassBalancedBatches, SyntheticReplacement,
                                        balanced_class_weights)
from jaxgen.data.memory import ArrayBatches
from jaxgen.errors import DataError
from jaxgen.nets.classifiers import build_classifier, classifier_names
from jaxgen.parallel.mesh import batch_sharding, data_parallel_size, replicated
from jaxgen.train import loop
from jaxgen.train.optim import make_optimizer
from jaxgen.train.state import TrainState

SAMPLING = ("uniform", "class_balanced", "reweighted")
NORMALIZATIONS = ("minus_one_one", "imagenet")
DTYPES = ("float32", "bfloat16")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Architecture options a config may set (see jaxgen.nets.classifiers); each arch has a subset.
_ARCH_KEYS = ("small_input", "head", "width", "width_mult", "dropout", "spinal_width",
              "spinal_layers", "spinal_dropout", "image_size", "patch_size", "hidden_dim",
              "num_layers", "num_heads", "mlp_dim", "attention_dropout", "bn_momentum")


def default_arch_kw(arch: str) -> dict[str, Any]:
  """The options of `arch` with their defaults; CNNs get small_input=True (32-64 px images) and
  ViTs image_size=0, meaning the training images' size."""
  model = build_classifier(arch, 1)
  kw = {k: getattr(model, k) for k in _ARCH_KEYS if hasattr(model, k)}
  if "small_input" in kw:
    kw["small_input"] = True
  if "image_size" in kw:
    kw["image_size"] = 0
  return kw


def classifier_config(arch: str = "resnet18", *, num_steps: int = 1000, batch_size: int = 128,
                      lr: float = 1e-3, optimizer: str = "adam", **overrides: Any
                      ) -> ml_collections.ConfigDict:
  """A classifier section: architecture, `train` (configlib.train_config) and the loss recipe.

  `overrides` may set any top-level key (e.g. label_smoothing=0.1), an architecture option
  directly (e.g. width=8, head='spinal', stored under `arch_kw`), or update a nested section key
  by key (e.g. augment={'crop_padding': 4}).
  """
  arch_kw = default_arch_kw(arch)
  cfg = ml_collections.ConfigDict({
      "arch": arch,
      "arch_kw": arch_kw,
      "dtype": "float32",  # compute dtype; 'bfloat16' on GPU/TPU, parameters stay float32
      "normalization": "minus_one_one",  # 'imagenet' when fine-tuning torchvision weights
      "pretrained_path": "",  # torchvision state-dict file to start from
      "train": configlib.train_config(num_steps, batch_size, lr=lr, optimizer=optimizer,
                                      log_every=20, checkpoint_every=max(num_steps, 1)),
      "label_smoothing": 0.0,
      "mixup_alpha": 0.0,
      "cutmix_alpha": 0.0,
      "mix_prob": 1.0,
      "entropy_weight": 0.0,
      "synthetic_replace_prob": 0.0,
      "sampling": "uniform",
      "augment": {"flip": True, "crop_padding": 0},
      "eval_batch_size": 256,
  })
  for key, value in overrides.items():
    if key in _ARCH_KEYS:
      cfg.arch_kw[key] = value
    elif isinstance(value, dict) and key in cfg:
      cfg[key].update(value)
    else:
      cfg[key] = value
  return cfg


def validate_classifier_config(config: ml_collections.ConfigDict, prefix: str,
                               data_parallel: int) -> None:
  """Check a `classifier_config` section found at `prefix` ('' for the top level)."""
  cfg = configlib.get_path(config, prefix) if prefix else config
  p = f"{prefix}." if prefix else ""
  configlib.require(cfg.arch in classifier_names(), f"{p}arch", cfg.arch,
                    "one of " + ", ".join(classifier_names()))
  configlib.validate_train(config, f"{p}train", data_parallel)
  configlib.require_choice(config, f"{p}sampling", SAMPLING)
  configlib.require_choice(config, f"{p}normalization", NORMALIZATIONS)
  configlib.require_choice(config, f"{p}dtype", DTYPES)
  configlib.require_range(config, f"{p}label_smoothing", 0.0, 0.999)
  for key in ("mixup_alpha", "cutmix_alpha"):
    configlib.require_range(config, f"{p}{key}", 0.0, 1e6)
  configlib.require_range(config, f"{p}mix_prob", 0.0, 1.0)
  configlib.require_range(config, f"{p}entropy_weight", 0.0, 1e6)
  configlib.require_range(config, f"{p}synthetic_replace_prob", 0.0, 1.0)
  configlib.require_positive_int(config, f"{p}augment.crop_padding", allow_zero=True)
  configlib.require_positive_int(config, f"{p}eval_batch_size")
  # Building the module (shapes only) rejects options the architecture does not accept.
  build_model(cfg, 2, image_size=224 if cfg.arch.startswith("vit") else 32)


def build_model(cfg: ml_collections.ConfigDict, num_classes: int, *, image_size: int) -> nn.Module:
  """The `build_classifier` network of `cfg` (ViTs get `image_size` unless set explicitly)."""
  kw = dict(cfg.arch_kw)
  if kw.get("image_size", None) == 0:
    kw["image_size"] = int(image_size)
  kw["dtype"] = cfg.dtype
  return build_classifier(cfg.arch, num_classes, **kw)


# --------------------------------------------------------------------------- loss


def normalize(images: jax.Array, normalization: str) -> jax.Array:
  """uint8-valued images in [0, 255] -> float32 in [-1, 1] or ImageNet mean/std normalised."""
  x = images.astype(jnp.float32)
  if normalization == "imagenet":
    return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return x / 127.5 - 1.0


def smooth_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  """Hard labels [B] or soft labels [B, K] -> (1 - eps) t + eps / K (label smoothing)."""
  t = labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
  return (1.0 - smoothing) * t + smoothing / num_classes


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example CE(t, softmax(z)) = -sum_k t_k log softmax(z)_k."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


def softmax_entropy(logits: jax.Array) -> jax.Array:
  """Per-example Shannon entropy H(softmax(z)) = -sum_k p_k log p_k (nats)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def classification_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                        entropy_weight: float) -> tuple[jax.Array, dict]:
  """sum_i w_i CE_i / B - entropy_weight * mean_i H_i (paper 003 sec. 4.3 for the entropy term)."""
  ce = soft_cross_entropy(logits, targets)
  ent = softmax_entropy(logits)
  loss = jnp.mean(weights * ce) - entropy_weight * jnp.mean(ent)
  return loss, {"cross_entropy": jnp.mean(ce), "entropy": jnp.mean(ent)}


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
    x, targets = augment.mix_batch(k_mix, x, targets, mixup_alpha=cfg.mixup_alpha,
                                   cutmix_alpha=cfg.cutmix_alpha, mix_prob=cfg.mix_prob)
    bn = state.batch_stats is not None  # ViTs have no BatchNorm

    def loss_fn(params):
      variables = {"params": params}
      if bn:
        variables["batch_stats"] = state.batch_stats
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": k_drop})
      else:
        logits, updates = model.apply(variables, x, train=True, rngs={"dropout": k_drop}), {}
      loss, aux = classification_loss(logits, targets, batch["weight"], cfg.entropy_weight)
      return loss, (logits, updates, aux)

    (loss, (logits, updates, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    changes = {"batch_stats": updates["batch_stats"]} if bn else {}
    state = state.apply_gradients(grads, **changes)
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    return state, {"loss": loss, "accuracy": acc, **aux}

  return step_fn


# --------------------------------------------------------------------------- trained classifier


_FORWARD_CACHE: dict[tuple[nn.Module, str], Callable] = {}


def _forward_fn(module: nn.Module, normalization: str) -> Callable:
  """One jitted inference function per (module, normalisation), shared by Classifier objects so a
  restored classifier does not compile again."""

  def forward(variables, images):
    x = normalize(images, normalization)
    return module.apply(variables, x, train=False, return_features=True)

  try:
    return _FORWARD_CACHE.setdefault((module, normalization), jax.jit(forward))
  except TypeError:  # an unhashable module: no sharing
    return jax.jit(forward)


class Classifier:
  """A trained (or imported) classifier: module + variables, with batched jitted inference.

  `variables` are {'params', 'batch_stats'?} (the EMA parameters when training kept an EMA);
  `apply_fn(variables, x, **kw)` is `module.apply` on already normalised float inputs (e.g. for
  feature extractors that capture intermediates); the other methods take uint8 NHWC images.
  """

  def __init__(self, module: nn.Module, variables: dict, num_classes: int, *,
               normalization: str = "minus_one_one", mesh: Mesh | None = None,
               class_names: tuple[str, ...] | None = None):
    self.module, self.variables, self.num_classes = module, variables, num_classes
    self.normalization, self.mesh = normalization, mesh
    self.class_names = class_names
    self.apply_fn = module.apply
    self._forward = _forward_fn(module, normalization)

  def preprocess(self, images: np.ndarray) -> jax.Array:
    """uint8 images -> the normalised float32 model input."""
    return normalize(jnp.asarray(images), self.normalization)

  def _run(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise DataError(f"classifier input has shape {images.shape} and dtype {images.dtype}; "
                      "expected uint8 [N, H, W, C]")
    n = len(images)
    multiple = data_parallel_size(self.mesh) if self.mesh is not None else 1
    bs = max(1, min(batch_size, n))
    bs = -(-bs // multiple) * multiple  # padded batches split evenly over the mesh
    logits, feats = [], []
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      m = len(chunk)
      if m < bs:  # pad the last batch so one compiled shape serves every call
        chunk = np.concatenate([chunk, np.zeros((bs - m,) + chunk.shape[1:], chunk.dtype)])
      if self.mesh is not None:
        chunk = jax.device_put(chunk, batch_sharding(self.mesh))
      z, f = jax.device_get(self._forward(self.variables, chunk))
      logits.append(np.asarray(z[:m], np.float32))
      feats.append(np.asarray(f[:m], np.float32))
    if not logits:
      return np.zeros((0, self.num_classes), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(feats)

  def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 logits [N, K] of uint8 images [N, H, W, C]."""
    return self._run(images, batch_size)[0]

  def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The head's input features [N, D] (pooled backbone output) of uint8 images."""
    return self._run(images, batch_size)[1]

  def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """softmax(logits) [N, K]."""
    z = self.logits(images, batch_size)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted class ids int32 [N] (argmax of the logits)."""
    return np.argmax(self.logits(images, batch_size), axis=1).astype(np.int32)


# --------------------------------------------------------------------------- fitting


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


def _check_structure(model: nn.Module, variables: dict, image_shape: tuple[int, ...]) -> dict:
  """Check `variables` fit `model` (same tree and shapes); returns them as jnp float32 arrays."""
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1,) + image_shape), train=False),
                            jax.random.key(0))
  want = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
  got = {jax.tree_util.keystr(p): np.shape(v)
         for p, v in jax.tree_util.tree_leaves_with_path(dict(variables))}
  if want != got:
    diff = sorted(set(want.items()) ^ set(got.items()))[:3]
    raise DataError(f"init variables do not match the {type(model).__name__} being trained "
                    f"(first differences: {diff}); use the same arch, arch_kw and num_classes")
  return jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), dict(variables))


def initial_variables(model: nn.Module, cfg: ml_collections.ConfigDict, num_classes: int,
                      image_shape: tuple[int, ...], key: jax.Array,
                      init_variables: dict | None = None) -> dict:
  """Fresh `model.init`, or given variables, or torchvision weights from `cfg.pretrained_path`."""
  if init_variables is not None:
    return _check_structure(model, init_variables, image_shape)
  if cfg.pretrained_path:
    from jaxgen.io.torch_state_dict import load_state_dict  # pylint: disable=import-outside-toplevel
    from jaxgen.io.torchvision_import import import_torchvision  # pylint: disable=import-outside-toplevel
    state_dict = load_state_dict(cfg.pretrained_path,
                                 hint=f"set config pretrained_path to a torchvision {cfg.arch} file")
    kw = dict(cfg.arch_kw)
    if kw.get("image_size", None) == 0:
      kw["image_size"] = image_shape[0]
    variables = import_torchvision(cfg.arch, state_dict, num_classes, rng=key, dtype=cfg.dtype, **kw)
    return _check_structure(model, variables, image_shape)
  x = jnp.zeros((1,) + image_shape, jnp.float32)
  init = lambda k: model.init({"params": k, "dropout": k}, x, train=False)  # noqa: E731
  if jax.default_backend() == "cpu":
    # Init runs once and is cheap, but XLA:CPU's optimising passes over its hundreds of PRNG ops
    # take ~20 s for a ResNet-18; unoptimised it compiles ~8x faster with the same values.
    return jax.jit(init, compiler_options={"xla_backend_optimization_level": 0,
                                           "xla_llvm_disable_expensive_passes": True})(key)
  return jax.jit(init)(key)


def fit_classifier(cfg: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                   num_classes: int, *, workdir: str, name: str, mesh: Mesh, key: jax.Array,
                   writer: Any = None, synthetic: tuple[np.ndarray, np.ndarray] | None = None,
                   init_variables: dict | None = None, verbose: bool = True) -> Classifier:
  """Train (or resume, or just restore when finished) a classifier on uint8 NHWC images.

  Args:
    cfg: a `classifier_config` section.
    images, labels: uint8 [N, H, W, C]; int class ids [N] or float class probabilities [N, K].
    num_classes: K.
    workdir, name: checkpoints go to `workdir/checkpoints/<name>` (resumable).
    mesh, key, writer: as for `jaxgen.train.loop.train`.
    synthetic: optional (images, labels) pool; with `cfg.synthetic_replace_prob = p` each real
      example of a batch is replaced by a random synthetic one with probability p (paper 001).
    init_variables: start from these ({'params', 'batch_stats'?}, e.g. from
      `load_classifier_variables`) instead of a fresh init / `cfg.pretrained_path`.
  Returns:
    The `Classifier` with the final (EMA when kept) parameters and BatchNorm statistics.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  _check_inputs(images, labels, num_classes, "training")
  soft = labels.ndim == 2
  if synthetic is not None:
    syn_images, syn_labels = np.asarray(synthetic[0]), np.asarray(synthetic[1])
    _check_inputs(syn_images, syn_labels, num_classes, "synthetic")
    if syn_images.shape[1:] != images.shape[1:]:
      raise DataError(f"synthetic images have shape {syn_images.shape[1:]}; the real ones "
                      f"{images.shape[1:]}")
    soft = soft or syn_labels.ndim == 2
  image_shape = tuple(images.shape[1:])
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
  arrays = {"image": images, "label": _as_training_labels(labels, soft, num_classes),
            "weight": weights[class_ids]}
  seed = int(jax.random.randint(jax.random.fold_in(k_train, 1), (), 0, 2**31 - 1))
  pidx, pcount = jax.process_index(), jax.process_count()
  if cfg.sampling == "class_balanced":
    batches = ClassBalancedBatches(arrays, class_ids, global_batch_size=cfg.train.batch_size,
                                   seed=seed, process_index=pidx, process_count=pcount)
  else:
    batches = ArrayBatches(arrays, global_batch_size=cfg.train.batch_size, seed=seed,
                           process_index=pidx, process_count=pcount)
  if synthetic is not None and cfg.synthetic_replace_prob > 0:
    syn_ids = _class_ids(syn_labels)
    syn_arrays = {"image": syn_images, "label": _as_training_labels(syn_labels, soft, num_classes),
                  "weight": weights[syn_ids]}
    batches = SyntheticReplacement(batches, syn_arrays, cfg.synthetic_replace_prob, seed=seed,
                                   process_index=pidx)
  step_fn = make_step_fn(model, cfg, num_classes)
  state = loop.train(name=name, state=state, step_fn=step_fn, batches=batches, cfg=cfg.train,
                     workdir=workdir, mesh=mesh, key=jax.random.fold_in(k_train, 2), writer=writer,
                     verbose=verbose)
  return Classifier(model, _eval_variables(state.eval_params, state.batch_stats), num_classes,
                    normalization=cfg.normalization, mesh=mesh)


def _eval_variables(params: Any, batch_stats: Any) -> dict:
  variables = {"params": params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


def load_classifier_variables(workdir: str, name: str) -> dict:
  """{'params' (EMA if kept), 'batch_stats'?} from the newest checkpoint of `workdir/checkpoints/name`.

  Reads the checkpoint without a template, so the caller need not rebuild the optimiser; use the
  result as `init_variables` (fine-tuning) or in `Classifier(module, variables, K)`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(os.path.join(workdir, "checkpoints", name))
  if not os.path.isdir(directory):
    raise DataError(f"{directory}: no classifier checkpoint directory; expected a finished "
                    f"training stage '{name}' in {workdir}")
  manager = ocp.CheckpointManager(directory, item_names=("state", "data", "meta"))
  try:
    step = manager.latest_step()
    if step is None:
      raise DataError(f"{directory}: holds no finished checkpoint")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  except DataError:
    raise
  except Exception as err:  # orbax raises many types for unreadable data
    raise DataError(f"{directory}: checkpoint unreadable ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
  finally:
    manager.close()
  state = restored.state
  params = state.get("ema_params") or state["params"]
  variables = _eval_variables(params, state.get("batch_stats"))
  return jax.tree.map(np.asarray, variables)


def load_classifier(cfg: ml_collections.ConfigDict, num_classes: int, image_shape: tuple[int, ...],
                    *, workdir: str, name: str, mesh: Mesh | None = None) -> Classifier:
  """The `Classifier` saved by `fit_classifier(cfg, ..., workdir=workdir, name=name)`."""
  model = build_model(cfg, num_classes, image_size=image_shape[0])
  variables = _check_structure(model, load_classifier_variables(workdir, name), tuple(image_shape))
  if mesh is not None:
    variables = jax.device_put(variables, replicated(mesh))
  return Classifier(model, variables, num_classes, normalization=cfg.normalization, mesh=mesh)


__all__ = ["Classifier", "classification_loss", "classifier_config", "fit_classifier",
           "load_classifier", "load_classifier_variables", "normalize", "smooth_targets",
           "soft_cross_entropy", "softmax_entropy", "validate_classifier_config"]
