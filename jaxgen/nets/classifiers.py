"""Registry of classifier networks: `build_classifier(name, num_classes, **kw)`.

Every network returned maps NHWC float32 images (already normalised by the caller) to float32
logits via `model.apply(variables, x, train=..., return_features=...)`; with
`return_features=True` it returns (logits, features), the features being the vector the
classification head consumes (pooled backbone output; see docs/classifiers.md).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.nets import mobilenet_v3, resnet, vit

_HEAD_KW = {"head", "spinal_width", "spinal_layers", "spinal_dropout", "dtype"}
_CNN_KW = _HEAD_KW | {"small_input"}
_VIT_KW = _HEAD_KW | {"image_size", "patch_size", "hidden_dim", "num_layers", "num_heads",
                      "mlp_dim", "dropout", "attention_dropout"}

# name -> (constructor, accepted keyword arguments)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], frozenset[str]]] = {
    "resnet18": (resnet.resnet18, frozenset(_CNN_KW | {"width"})),
    "resnet50": (resnet.resnet50, frozenset(_CNN_KW | {"width"})),
    "mobilenet_v3_large": (mobilenet_v3.mobilenet_v3_large,
                           frozenset(_CNN_KW | {"width_mult", "dropout", "bn_momentum"})),
    "mobilenet_v3_small": (mobilenet_v3.mobilenet_v3_small,
                           frozenset(_CNN_KW | {"width_mult", "dropout", "bn_momentum"})),
    "vit_b16": (vit.vit_b16, frozenset(_VIT_KW)),
    "vit_tiny": (vit.vit_tiny, frozenset(_VIT_KW)),
}
# torchvision spelling accepted as an alias.
_ALIASES = {"vit_b_16": "vit_b16"}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def classifier_names() -> tuple[str, ...]:
  """Names accepted by `build_classifier`."""
  return tuple(_REGISTRY)


def canonical_name(name: str) -> str:
  """Registry name for `name` (accepts torchvision's 'vit_b_16'); ConfigError if unknown."""
  key = _ALIASES.get(str(name).lower(), str(name).lower())
  if key not in _REGISTRY:
    raise ConfigError("classifier.name", name, f"one of {sorted(_REGISTRY)}")
  return key


def _positive_int(key: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(key, value, "a positive integer")
  return value


def build_classifier(name: str, num_classes: int, **kw: Any) -> nn.Module:
  """Builds the classifier `name` with `num_classes` logits.

  Args:
    name: 'resnet18', 'resnet50', 'mobilenet_v3_large', 'mobilenet_v3_small', 'vit_b16'
      (alias 'vit_b_16') or 'vit_tiny'.
    num_classes: number of logits.
    **kw: architecture options: head ('linear' | 'spinal'), spinal_width, spinal_layers,
      spinal_dropout, dtype ('float32' | 'bfloat16' or a jnp dtype); CNNs: small_input, (ResNet)
      width, (MobileNet) width_mult, dropout, bn_momentum (fraction of BatchNorm running
      averages kept per step, torchvision 0.99); ViTs: image_size, patch_size, hidden_dim,
      num_layers, num_heads, mlp_dim, dropout, attention_dropout.

  Raises:
    ConfigError: unknown name, option not accepted by that architecture, or a bad value.
  """
  key = canonical_name(name)
  ctor, allowed = _REGISTRY[key]
  _positive_int("classifier.num_classes", num_classes)
  for k in kw:
    if k not in allowed:
      raise ConfigError(f"classifier.{k}", kw[k], f"an option of {key}: one of {sorted(allowed)}")
  kw = dict(kw)
  if "head" in kw and kw["head"] not in ("linear", "spinal"):
    raise ConfigError("classifier.head", kw["head"], "'linear' or 'spinal'")
  if "dtype" in kw and isinstance(kw["dtype"], str):
    if kw["dtype"] not in _DTYPES:
      raise ConfigError("classifier.dtype", kw["dtype"], f"one of {sorted(_DTYPES)}")
    kw["dtype"] = _DTYPES[kw["dtype"]]
  for k in ("spinal_width", "spinal_layers", "width", "image_size", "patch_size", "hidden_dim",
            "num_layers", "num_heads", "mlp_dim"):
    if k in kw:
      _positive_int(f"classifier.{k}", kw[k])
  for k in ("dropout", "spinal_dropout", "attention_dropout", "bn_momentum"):
    if k in kw and not 0.0 <= float(kw[k]) < 1.0:
      raise ConfigError(f"classifier.{k}", kw[k], "a rate in [0, 1)")
  if key.startswith("vit"):
    model = ctor(num_classes, **kw)
    size, patch = model.image_size, model.patch_size
    if size % patch:
      raise ConfigError("classifier.patch_size", patch, f"a divisor of image_size={size}")
    if model.hidden_dim % model.num_heads:
      raise ConfigError("classifier.num_heads", model.num_heads,
                        f"a divisor of hidden_dim={model.hidden_dim}")
    return model
  return ctor(num_classes, **kw)
