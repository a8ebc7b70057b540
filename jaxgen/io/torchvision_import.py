"""Import torchvision classifier state dicts into the Flax networks of `jaxgen.nets.classifiers`.

Supports torchvision's resnet18, resnet50, mobilenet_v3_large, mobilenet_v3_small and vit_b_16
key layouts (ViT-layout variants such as 'vit_tiny' map the same way). The state dict is an
in-memory `Mapping[str, np.ndarray]` (read it with `jaxgen.io.torch_state_dict.load_state_dict`, or
convert a torch `state_dict()` with `.numpy()`), so this module needs no torch.

Conversions: conv weight OIHW -> HWIO (depthwise (C,1,kh,kw) -> (kh,kw,1,C)); Linear weight
(out, in) -> kernel (in, out); BatchNorm weight/bias/running_mean/running_var -> params
scale/bias and batch_stats mean/var (num_batches_tracked is unused); ViT's packed
self_attention.in_proj_weight/bias (3D, D) -> query/key/value kernels; encoder.pos_embedding is
bicubically resized when the model's image size differs from the checkpoint's.

The result has exactly the structure `model.init` returns ({'params', 'batch_stats'}), so a
torchvision import and a jaxgen checkpoint plug into the same code.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import DataError
from jaxgen.nets import mobilenet_v3
from jaxgen.nets.classifiers import build_classifier, canonical_name
from jaxgen.nets.vit import interpolate_pos_embedding
from jaxgen.train.init import compiled_init

_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
         ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}
_HEAD = {"resnet": ("fc", "fc"), "mobilenet": ("classifier_3", "classifier.3"),
         "vit": ("head", "heads.head")}
_QKV = {"query": 0, "key": 1, "value": 2}


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import did beyond a one-to-one copy."""

  name: str
  num_classes: int
  checkpoint_num_classes: int
  reinitialised: tuple[str, ...]  # flax variable paths freshly initialised (new head)
  ignored_keys: tuple[str, ...]  # checkpoint keys not used (old head; num_batches_tracked omitted)
  resized: tuple[str, ...]  # e.g. "encoder.pos_embedding (1, 197, 768) -> (1, 577, 768)"

  def summary(self) -> str:
    """One line for logs / reports."""
    parts = [f"imported torchvision {self.name} ({self.checkpoint_num_classes} classes)"]
    if self.reinitialised:
      parts.append(f"freshly initialised {len(self.reinitialised)} head variables for "
                   f"{self.num_classes} classes")
    if self.resized:
      parts.append("resized " + ", ".join(self.resized))
    return "; ".join(parts)


def _family(name: str) -> str:
  return "resnet" if name.startswith("resnet") else "mobilenet" if name.startswith("mobilenet") \
      else "vit"


@dataclasses.dataclass(frozen=True)
class _Ref:
  key: str  # torch state-dict key
  part: int | None = None  # which third of a packed in_proj tensor


def _torch_ref(family: str, path: tuple[str, ...], model: Any) -> _Ref | None:
  """Torch key of the flax variable at (collection, *modules, leaf); None: no counterpart."""
  col, mods, leaf = path[0], list(path[1:-1]), path[-1]
  if mods and mods[0] == "spinal":
    return None
  if family == "vit" and not mods:
    return _Ref(leaf)  # class_token
  if family == "vit" and mods == ["encoder"]:
    return _Ref("encoder." + leaf)  # pos_embedding
  part = None
  if family == "resnet":
    if mods[0].startswith("stage"):
      rename = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
      mods = [f"layer{mods[0][5:]}", mods[1][5:]] + [rename.get(m, m) for m in mods[2:]]
  elif family == "mobilenet":
    cfgs = mobilenet_v3.block_configs(model.variant, model.width_mult)
    if mods[0] in ("stem_conv", "stem_bn"):
      mods = ["features.0", "0" if mods[0] == "stem_conv" else "1"]
    elif mods[0] in ("last_conv", "last_bn"):
      mods = [f"features.{len(cfgs) + 1}", "0" if mods[0] == "last_conv" else "1"]
    elif mods[0].startswith("block"):
      i = int(mods[0][5:])
      cfg = cfgs[i - 1]
      dw = int(cfg.expanded != cfg.in_channels)
      proj = dw + 1 + int(cfg.use_se)
      idx = {"expand_conv": "0.0", "expand_bn": "0.1", "dw_conv": f"{dw}.0", "dw_bn": f"{dw}.1",
             "se": str(dw + 1), "project_conv": f"{proj}.0", "project_bn": f"{proj}.1"}
      mods = [f"features.{i}.block", idx[mods[1]]] + mods[2:]
    else:
      mods = [m.replace("classifier_", "classifier.") for m in mods]
  else:
    if mods[0] == "encoder" and mods[1].startswith("encoder_layer_"):
      rest = mods[2:]
      if rest[0] == "self_attention" and rest[1] in _QKV:
        part, rest = _QKV[rest[1]], ["self_attention"]
        leaf = "in_proj_" + ("weight" if leaf == "kernel" else "bias")
      elif rest[0] == "self_attention":
        rest = ["self_attention", "out_proj"]
      rest = [{"mlp_0": "mlp.0", "mlp_3": "mlp.3"}.get(m, m) for m in rest]
      mods = ["encoder", "layers", mods[1]] + rest
    elif mods[0] == "head":
      mods = ["heads", "head"]
  if part is None:
    leaf = _LEAF[(col, leaf)]
  return _Ref(".".join(mods + [leaf]), part)


def _to_flax(t: np.ndarray, flax_ndim: int, ref: _Ref) -> np.ndarray:
  """Torch layout -> flax layout (OIHW -> HWIO, (out, in) -> (in, out), in_proj third)."""
  if ref.part is not None:
    d = t.shape[0] // 3
    t = t[ref.part * d:(ref.part + 1) * d]
  if flax_ndim == 4 and t.ndim == 4:
    return np.transpose(t, (2, 3, 1, 0))
  if flax_ndim == 2 and t.ndim == 2:
    return t.T
  return t


def _to_torch(v: np.ndarray) -> np.ndarray:
  """Flax layout -> torch layout (inverse of `_to_flax` for one tensor)."""
  if v.ndim == 4:
    return np.transpose(v, (3, 2, 0, 1))
  if v.ndim == 2:
    return v.T
  return v


def _torch_shape(shape: tuple[int, ...], ref: _Ref) -> tuple[int, ...]:
  s = tuple(_to_torch(np.empty(shape, np.uint8)).shape)
  return (3 * s[0],) + s[1:] if ref.part is not None else s


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out: dict[tuple[str, ...], Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def _abstract_variables(model: Any, family: str) -> dict[str, Any]:
  size = model.image_size if family == "vit" else 224
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.PRNGKey(0), x)


def _fmt(items: list[str], n: int = 5) -> str:
  return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def import_torchvision_with_report(
    name: str, state_dict: Mapping[str, Any], num_classes: int | None = None, *,
    rng: jax.Array | None = None, **model_kw: Any) -> tuple[dict[str, Any], ImportReport]:
  """Like `import_torchvision`, also returning an `ImportReport` of reinitialised/resized parts."""
  key = canonical_name(name)
  family = _family(key)
  head_mod, head_key = _HEAD[family]
  sd = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
  if head_key + ".weight" not in sd:
    raise DataError(f"torchvision {name} state dict has no '{head_key}.weight': expected a "
                    f"{key} checkpoint (keys start with {_fmt(sorted(sd), 3)})")
  ckpt_classes = int(np.shape(sd[head_key + ".weight"])[0])
  num_classes = ckpt_classes if num_classes is None else num_classes
  model = build_classifier(key, num_classes, **model_kw)
  abstract = _flat(_abstract_variables(model, family))

  values: dict[tuple[str, ...], np.ndarray] = {}
  used: set[str] = set()
  reinit: list[tuple[str, ...]] = []
  missing, misshaped, resized = [], [], []
  new_head = num_classes != ckpt_classes or model.head == "spinal"
  for path, leaf in abstract.items():
    ref = _torch_ref(family, path, model)
    if ref is None or (new_head and len(path) > 2 and path[1] == head_mod):
      reinit.append(path)
      continue
    if ref.key not in sd:
      missing.append(ref.key)
      continue
    used.add(ref.key)
    try:
      t = np.asarray(sd[ref.key], dtype=np.float32)
    except (TypeError, ValueError) as err:
      raise DataError(f"torchvision {name} state dict: '{ref.key}' is not a numeric array "
                      f"({type(sd[ref.key]).__name__}: {err})") from err
    want = _torch_shape(tuple(leaf.shape), ref)
    if ref.key == "encoder.pos_embedding" and t.ndim == 3 and t.shape[2] == want[2] \
        and t.shape != want:
      grid = int(round((want[1] - 1) ** 0.5))
      new = interpolate_pos_embedding(t, grid)
      resized.append(f"{ref.key} {t.shape} -> {new.shape}")
      t = new
    if tuple(t.shape) != want:
      misshaped.append(f"{ref.key} {tuple(t.shape)} (expected {want})")
      continue
    values[path] = _to_flax(t, len(leaf.shape), ref)
  ignored = sorted(k for k in sd if k not in used and k.startswith(head_key + ".") and new_head)
  unexpected = sorted(k for k in sd if k not in used and k not in ignored
                      and not k.endswith("num_batches_tracked"))
  if missing or unexpected or misshaped:
    problems = [f"{label} [{_fmt(items)}]" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if items]
    if family == "resnet" and model.small_input and any(m.startswith("conv1.") for m in misshaped):
      problems.append("torchvision checkpoints use the 7x7 stem: set small_input=False")
    raise DataError(f"torchvision {name} state dict does not match jaxgen {key}"
                    f"{' ' + str(model_kw) if model_kw else ''}: " + "; ".join(problems))
  if reinit:
    size = model.image_size if family == "vit" else 32
    def init_reinit(k: jax.Array) -> list[jax.Array]:
      # Only the new leaves are returned, so XLA drops the forward pass and the other inits.
      flat = _flat(model.init(k, jnp.zeros((1, size, size, 3)), train=False))
      return [flat[p] for p in reinit]

    fresh = compiled_init(init_reinit, jax.random.PRNGKey(0) if rng is None else rng,
                          fast_compile=True)
    for path, v in zip(reinit, fresh):
      values[path] = np.asarray(v)
  variables = _unflat({p: jnp.asarray(values[p], dtype=abstract[p].dtype) for p in abstract})
  report = ImportReport(key, num_classes, ckpt_classes, tuple("/".join(p) for p in reinit),
                        tuple(ignored), tuple(resized))
  return variables, report


def import_torchvision(name: str, state_dict: Mapping[str, Any], num_classes: int | None = None,
                       *, rng: jax.Array | None = None, **model_kw: Any) -> dict[str, Any]:
  """Converts a torchvision state dict into Flax variables {'params', 'batch_stats'}.

  Args:
    name: 'resnet18', 'resnet50', 'mobilenet_v3_large', 'mobilenet_v3_small', 'vit_b_16' (or any
      `build_classifier` name with the same layout).
    state_dict: torchvision key -> array (numpy or array-like).
    num_classes: logits of the target model; default the checkpoint's. When it differs (fine-tuning
      on a new data set), or when model_kw has head='spinal', the head is freshly initialised
      from `rng` and the old head's keys are ignored; this is logged and listed in the report of
      `import_torchvision_with_report`.
    rng: PRNG key for freshly initialised variables (default PRNGKey(0)).
    **model_kw: `build_classifier` options of the target model (dtype, head, image_size, ...);
      use the same options to build the model that consumes the variables.

  Raises:
    DataError: naming missing, unexpected and mis-shaped keys (torch shapes), or a missing head.
    ConfigError: unknown name or model option.
  """
  variables, report = import_torchvision_with_report(name, state_dict, num_classes, rng=rng,
                                                      **model_kw)
  if report.reinitialised or report.resized:
    logging.info(report.summary())
  return variables


def export_torchvision(name: str, variables: Mapping[str, Any], **model_kw: Any
                       ) -> dict[str, np.ndarray]:
  """Inverse of `import_torchvision`: Flax variables -> torchvision-named float32 state dict.

  For checking key mappings and for loading jaxgen-trained weights into torchvision. Variables of
  a SpinalNet head have no torchvision counterpart and raise DataError; BatchNorm's
  num_batches_tracked is not written.
  """
  key = canonical_name(name)
  family = _family(key)
  model = build_classifier(key, 1, **model_kw)
  out: dict[str, np.ndarray] = {}
  packed: dict[str, list[Any]] = {}
  for path, v in _flat(variables).items():
    ref = _torch_ref(family, path, model)
    if ref is None:
      raise DataError(f"variable {'/'.join(path)} has no torchvision counterpart (SpinalNet head)")
    t = _to_torch(np.asarray(v, dtype=np.float32))
    if ref.part is None:
      out[ref.key] = t
    else:
      packed.setdefault(ref.key, [None, None, None])[ref.part] = t
  for k, parts in packed.items():
    if any(p is None for p in parts):
      raise DataError(f"{k}: query/key/value incomplete in the given variables")
    out[k] = np.concatenate(parts, axis=0)
  return out
