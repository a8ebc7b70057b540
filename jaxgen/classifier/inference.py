"""A trained classifier (`Classifier`: batched, mesh-sharded inference on uint8 images) and
restoring one from a training workdir (`load_classifier`, `load_classifier_variables`)."""

from __future__ import annotations

import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from jaxgen.classifier.config import build_model
from jaxgen.classifier.losses import normalize
from jaxgen.errors import DataError
from jaxgen.parallel.batching import batched_apply
from jaxgen.parallel.mesh import replicated
from jaxgen.io import paths

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
    out = batched_apply(lambda chunk: self._forward(self.variables, chunk), images, batch_size,
                        mesh=self.mesh)
    if out is None:
      return np.zeros((0, self.num_classes), np.float32), np.zeros((0, 0), np.float32)
    return np.asarray(out[0], np.float32), np.asarray(out[1], np.float32)

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




def check_variables(model: nn.Module, variables: dict, image_shape: tuple[int, ...]) -> dict:
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


def eval_variables(params: Any, batch_stats: Any) -> dict:
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
  directory = paths.absolute(os.path.join(workdir, "checkpoints", name))
  if not paths.isdir(directory):
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
  variables = eval_variables(params, state.get("batch_stats"))
  return jax.tree.map(np.asarray, variables)


def load_classifier(cfg: ml_collections.ConfigDict, num_classes: int, image_shape: tuple[int, ...],
                    *, workdir: str, name: str, mesh: Mesh | None = None) -> Classifier:
  """The `Classifier` saved by `fit_classifier(cfg, ..., workdir=workdir, name=name)`."""
  model = build_model(cfg, num_classes, image_size=image_shape[0])
  variables = check_variables(model, load_classifier_variables(workdir, name), tuple(image_shape))
  if mesh is not None:
    variables = jax.device_put(variables, replicated(mesh))
  return Classifier(model, variables, num_classes, normalization=cfg.normalization, mesh=mesh)
