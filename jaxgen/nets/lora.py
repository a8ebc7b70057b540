"""LoRA (low-rank adaptation) for the Dense and Conv kernels of any Flax linen model, unchanged.

Diff-Mix fine-tunes Stable Diffusion with DreamBooth-LoRA (rank 10) on the U-Net's attention
projections. Rather than a LoRA layer type that models would have to be written with, LoRA here
is a second parameter tree beside the model's own:

* `init_lora(key, params, config)` finds the kernels whose '/'-joined path fully matches one of
  `config.targets` (regular expressions, `re.fullmatch`) and returns, at the same path, a pair
  `{"lora_a": A, "lora_b": B}` for each. In Flax layout a Dense kernel W is [in, out] and
  y = x W; then A is [in, r] and B is [r, out]. A Conv kernel [*window, in, out] (e.g. kh, kw,
  in, out) gets A [*window, in, r] -- a conv with the layer's own window, strides and padding --
  and B [r, out], a 1x1 conv; equivalently the kernel is factored over (prod(window) * in, out).
  This is PEFT's Conv2d LoRA, so PEFT files map onto it exactly.
* The update is W' = W + (alpha / r) * A B (in PyTorch layout W' = W + (alpha / r) * B A).
  B starts at zero, so a fresh LoRA leaves the model exactly as it was; A starts uniform in
  +-1/sqrt(fan_in) with fan_in = prod(window) * in (PyTorch's Kaiming-uniform with a = sqrt(5),
  PEFT's default), or N(0, 1/r^2) (the older diffusers LoRA layers) with `init="normal"`.
* `merge_lora` adds the deltas into a copy of the params (pure, jit-able): for sampling.
* `apply_with_lora` runs the model with the LoRA side paths x W + s (x A) B computed next to each
  targeted nn.Dense / nn.Conv call, through `flax.linen.intercept_methods`, without forming the
  merged kernel: for training, where gradients should flow to A and B only.

`save_lora` / `load_lora` store the factors alone in the diffusers/PEFT safetensors key format,
so LoRAs trained here load in diffusers and published ones load here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import ConfigError, DataError
from jaxgen.train.param_groups import path_str

DEFAULT_TARGETS = (r".*attn[12]/to_(q|k|v|out_0)/kernel$",)
INITS = ("kaiming_uniform", "normal")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Rank, scale numerator and target kernels of a LoRA (hashable: usable as a static argument).

  Attributes:
    rank: r, the inner dimension of every factor pair (Diff-Mix uses 10).
    alpha: the update is scaled by alpha / r; None means alpha = r (scale 1, as diffusers'
      DreamBooth-LoRA script sets lora_alpha = rank).
    targets: regular expressions, fully matched against '/'-joined param paths of kernels. The
      default selects the U-Net's self/cross-attention q, k, v and output projections.
    init: "kaiming_uniform" (PEFT) or "normal" (std 1/r, older diffusers) for A.
  """

  rank: int = 10
  alpha: float | None = None
  targets: tuple[str, ...] = DEFAULT_TARGETS
  init: str = "kaiming_uniform"

  def __post_init__(self):
    targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
    object.__setattr__(self, "targets", targets)
    if not isinstance(self.rank, (int, np.integer)) or isinstance(self.rank, bool) or self.rank < 1:
      raise ConfigError("lora.rank", self.rank, "a positive integer")
    if self.alpha is not None and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
      raise ConfigError("lora.alpha", self.alpha, "a positive number or None (= rank)")
    if not self.targets:
      raise ConfigError("lora.targets", self.targets, "at least one regular expression")
    for t in self.targets:
      try:
        re.compile(t)
      except (re.error, TypeError) as err:
        raise ConfigError("lora.targets", t, f"a valid regular expression ({err})") from None
    if self.init not in INITS:
      raise ConfigError("lora.init", self.init, " or ".join(INITS))

  @property
  def scale(self) -> float:
    return float(self.rank if self.alpha is None else self.alpha) / self.rank


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {path_str(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def target_paths(params: Any, config: LoRAConfig) -> list[str]:
  """Paths of the kernels (ndim >= 2) in `params` that LoRA `config` adapts, in tree order."""
  patterns = [re.compile(t) for t in config.targets]
  out = []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = path_str(key_path)
    if any(p.fullmatch(name) for p in patterns):
      if len(np.shape(leaf)) < 2:
        raise ConfigError("lora.targets", name, "paths of Dense/Conv kernels (ndim >= 2), not "
                          f"a leaf of shape {tuple(np.shape(leaf))}")
      out.append(name)
  return out


def flatten_lora(lora_params: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """`{kernel path: (A, B)}` from the nested LoRA tree."""
  out: dict[str, tuple[Any, Any]] = {}

  def walk(node, prefix):
    if isinstance(node, Mapping) and set(node) == {"lora_a", "lora_b"}:
      out[prefix] = (node["lora_a"], node["lora_b"])
    elif isinstance(node, Mapping):
      for k, v in node.items():
        walk(v, f"{prefix}/{k}" if prefix else str(k))
    else:
      raise ConfigError("lora_params", prefix or "<root>", "nested dicts ending in "
                        "{'lora_a': A, 'lora_b': B} pairs")

  walk(lora_params, "")
  return out


def unflatten_lora(flat: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
  """The nested LoRA tree (pairs at their kernels' paths) from `{kernel path: (A, B)}`."""
  tree: dict[str, Any] = {}
  for path, (a, b) in flat.items():
    node = tree
    for part in path.split("/"):
      node = node.setdefault(part, {})
    node.update(lora_a=a, lora_b=b)
  return tree


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _init_factors(key: jax.Array, kernel_shapes: tuple[tuple[int, ...], ...], rank: int,
                  init: str) -> list[tuple[jax.Array, jax.Array]]:
  """(A, B) for each kernel shape: one random draw for all A's (one small compile), B = 0."""
  a_shapes = [shape[:-1] + (rank,) for shape in kernel_shapes]
  sizes = [math.prod(s) for s in a_shapes]
  if init == "kaiming_uniform":
    noise = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  else:
    noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
  out, start = [], 0
  for shape, a_shape, size in zip(kernel_shapes, a_shapes, sizes):
    # Kaiming-uniform with a = sqrt(5): bound 1/sqrt(fan_in); normal: std 1/r.
    std = 1.0 / math.sqrt(math.prod(shape[:-1])) if init == "kaiming_uniform" else 1.0 / rank
    a = noise[start:start + size].reshape(a_shape) * std
    out.append((a, jnp.zeros((rank, shape[-1]), jnp.float32)))
    start += size
  return out


def init_lora(key: jax.Array, params: Any, config: LoRAConfig) -> dict[str, Any]:
  """Fresh float32 LoRA factors for every kernel of `params` matched by `config.targets`.

  `params` is the model's 'params' collection (arrays or `jax.ShapeDtypeStruct`s); the result
  is a nested dict with `{"lora_a": A, "lora_b": B}` at each kernel's path (A random, B zero).

  Raises:
    ConfigError: no kernel matches the targets, or a match is not a kernel.
  """
  paths = target_paths(params, config)
  if not paths:
    raise ConfigError("lora.targets", config.targets, "regexes fully matching at least one "
                      "kernel path of the model (e.g. 'down_blocks_0/.../attn1/to_q/kernel')")
  shapes = _leaf_shapes(params)
  factors = _init_factors(key, tuple(shapes[p] for p in paths), config.rank, config.init)
  return unflatten_lora(dict(zip(paths, factors)))


def lora_delta(lora_a: jax.Array, lora_b: jax.Array, scale: float) -> jax.Array:
  """scale * A B contracted over the rank: a kernel-shaped [*window, in, out] float32 delta."""
  a, b = jnp.asarray(lora_a, jnp.float32), jnp.asarray(lora_b, jnp.float32)
  return scale * jnp.tensordot(a, b, axes=1)


def merge_lora(params: Any, lora_params: Mapping[str, Any], config: LoRAConfig) -> Any:
  """A copy of `params` with W + (alpha / r) A B at every LoRA'd kernel (pure, jit-able).

  Raises:
    DataError: the LoRA tree names a kernel `params` lacks or whose shape differs.
  """
  flat = flatten_lora(lora_params)
  seen = set()

  def merge(key_path, w):
    name = path_str(key_path)
    if name not in flat:
      return w
    seen.add(name)
    delta = lora_delta(*flat[name], config.scale)
    if delta.shape != tuple(np.shape(w)):
      raise DataError(f"LoRA for {name} has delta shape {delta.shape}, the kernel is "
                      f"{tuple(np.shape(w))}; was it made for another model?")
    return (w.astype(jnp.float32) + delta).astype(w.dtype)

  out = jax.tree_util.tree_map_with_path(merge, params)
  missing = sorted(set(flat) - seen)
  if missing:
    raise DataError(f"LoRA weights for {missing[0]} (and {len(missing) - 1} more) but the model "
                    "has no such kernel; was it made for another model?")
  return out


def _side_path(module: nn.Module, x: jax.Array, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """(x A) B for a Dense, (conv(x, A) then 1x1 B) for a Conv, in `dtype`, unscaled."""
  a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  if type(module) is nn.Dense:
    h = jnp.matmul(jnp.asarray(x, dtype), a, precision=module.precision)
  elif type(module) is nn.Conv:
    if module.feature_group_count != 1 or module.mask is not None:
      raise ConfigError("lora.targets", "/".join(module.path), "convs without feature groups or "
                        "kernel masks for the unmerged forward (use merge_lora)")
    down = module.clone(parent=None, name=None, features=a.shape[-1], use_bias=False)
    h = down.apply({"params": {"kernel": a}}, jnp.asarray(x, dtype))
  else:
    raise ConfigError("lora.targets", "/".join(module.path), "kernels of nn.Dense or nn.Conv "
                      f"for apply_with_lora, not {type(module).__name__} (use merge_lora)")
  return jnp.matmul(h, b, precision=getattr(module, "precision", None))


def apply_with_lora(module: nn.Module, variables: Mapping[str, Any], lora_params: Mapping[str, Any],
                    config: LoRAConfig, *args, strict: bool = True, **kwargs) -> Any:
  """`module.apply(variables, *args, **kwargs)` with LoRA side paths, the kernels left unmerged.

  Every call of a targeted nn.Dense / nn.Conv returns its own output plus
  (alpha / r) * (x A) B, so gradients with respect to `lora_params` never touch W and no merged
  kernel is formed. LoRA paths are relative to `variables["params"]`.

  Args:
    strict: raise if some LoRA pair was never used in this forward (its module is not an
      nn.Dense / nn.Conv called through `__call__`, or was not called at all).
    kwargs: passed to `module.apply` (method, mutable, rngs, ...).
  Raises:
    ConfigError: a pair not on a 'kernel', on an unsupported module type, or (strict) unused.
  """
  by_module: dict[tuple[str, ...], tuple[Any, Any]] = {}
  for path, pair in flatten_lora(lora_params).items():
    parts = tuple(path.split("/"))
    if parts[-1] != "kernel":
      raise ConfigError("lora.targets", path, "paths ending in '/kernel' for apply_with_lora")
    by_module[parts[:-1]] = pair
  used: set[tuple[str, ...]] = set()
  busy = [False]  # the Conv side path applies a module itself: do not intercept that call
  scale = config.scale

  def interceptor(next_fun, call_args, call_kwargs, context):
    mod = context.module
    if busy[0] or context.method_name != "__call__":
      return next_fun(*call_args, **call_kwargs)
    key = tuple(str(p) for p in mod.path)
    pair = by_module.get(key)
    if pair is None:
      return next_fun(*call_args, **call_kwargs)
    y = next_fun(*call_args, **call_kwargs)
    x = call_args[0] if call_args else call_kwargs["inputs"]
    busy[0] = True
    try:
      side = _side_path(mod, x, pair[0], pair[1], y.dtype)
    finally:
      busy[0] = False
    used.add(key)
    return y + (scale * side).astype(y.dtype)

  with nn.intercept_methods(interceptor):
    out = module.apply(variables, *args, **kwargs)
  unused = sorted(set(by_module) - used)
  if strict and unused:
    raise ConfigError("lora.targets", "/".join(unused[0]) + "/kernel",
                      "kernels of nn.Dense/nn.Conv modules called in this forward (use "
                      "merge_lora for others, or strict=False)")
  return out


# --- diffusers / PEFT safetensors files ------------------------------------------------------

# Flax names of PyTorch ModuleList items are '<list>_<i>' (diffusers' Flax port turns
# 'down_blocks.0' into 'down_blocks_0'); only these list names are turned back into '<list>.<i>',
# since diffusers also has plain attributes such as 'linear_1'.
TORCH_LISTS = frozenset({"down_blocks", "up_blocks", "attentions", "resnets", "downsamplers",
                         "upsamplers", "transformer_blocks", "to_out", "net", "layers", "blocks"})
_LIST_ITEM = re.compile(r"^(.+)_(\d+)$")
_PEFT_SUFFIXES = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"),
                  (".lora_down.weight", ".lora_up.weight"))
# diffusers < 0.20 attention processors: '<attn>.processor.to_q_lora.down.weight'.
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
_METADATA_KEY = "lora_adapter_metadata"  # diffusers' __metadata__ entry with the PEFT LoraConfig
_JAXGEN_KEY = "jaxgen_lora"


def torch_module_name(path: str) -> str:
  """'down_blocks_0/attentions_1/.../to_out_0' -> 'down_blocks.0.attentions.1....to_out.0'."""
  parts = []
  for part in path.split("/"):
    m = _LIST_ITEM.match(part)
    parts.append(f"{m.group(1)}.{m.group(2)}" if m and m.group(1) in TORCH_LISTS else part)
  return ".".join(parts)


def flax_module_path(name: str) -> str:
  """Inverse of `torch_module_name`: every '.<digits>' joins its list name with '_'."""
  return "/".join(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", name).split("."))


def save_lora(path: str, lora_params: Mapping[str, Any], config: LoRAConfig, *,
              prefix: str | None = None) -> None:
  """Writes the LoRA factors alone to a safetensors file in the diffusers/PEFT key format.

  Keys are `[prefix.]<torch module name>.lora_A.weight` ([r, in], or [r, in, kh, kw] for a conv)
  and `...lora_B.weight` ([out, r], or [out, r, 1, 1]); `__metadata__` holds diffusers'
  `lora_adapter_metadata` (r, lora_alpha, target_modules) and this module's own config. Use
  `prefix="unet"` for a file a diffusers pipeline's `load_lora_weights` accepts.
  """
  from jaxgen.io.safetensors import save_safetensors  # local: nets need no io at import time

  tensors, modules = {}, []
  for kpath, (a, b) in flatten_lora(lora_params).items():
    if not kpath.endswith("/kernel"):
      raise ConfigError("lora.targets", kpath, "paths ending in '/kernel' to save in PEFT format")
    module = torch_module_name(kpath[: -len("/kernel")])
    modules.append(module)
    a, b = np.asarray(a), np.asarray(b)
    window = a.ndim - 2
    a_t = np.transpose(a, (a.ndim - 1, a.ndim - 2) + tuple(range(window)))  # [r, in, *window]
    b_t = b.T.reshape(b.shape[::-1] + (1,) * window)  # [out, r, 1...]
    key = f"{prefix}.{module}" if prefix else module
    tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(a_t)
    tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(b_t)
  alpha = float(config.rank if config.alpha is None else config.alpha)
  peft = {"r": config.rank, "lora_alpha": alpha, "target_modules": sorted(set(modules)),
          "init_lora_weights": True}
  if prefix:
    peft = {f"{prefix}.{k}": v for k, v in peft.items()}
  own = {"rank": config.rank, "alpha": config.alpha, "targets": list(config.targets),
         "init": config.init}
  save_safetensors(path, tensors, metadata={"format": "pt", _METADATA_KEY: json.dumps(peft),
                                            _JAXGEN_KEY: json.dumps(own)})


def _split_key(key: str) -> tuple[str, str] | None:
  """'<module>.lora_A.weight' -> ('<module>', 'a'); None for keys that are not LoRA factors."""
  for down, up in _PEFT_SUFFIXES:
    for suffix, which in ((down, "a"), (up, "b")):
      if key.endswith(suffix):
        module = key[: -len(suffix)]
        m = _PROCESSOR.search(module)
        if m:  # '<attn>.processor.to_q_lora' -> '<attn>.to_q'
          module = module[: m.start()] + "." + m.group(1) + (".0" if m.group(1) == "to_out" else "")
        return module, which
  return None


def load_lora(path: str, *, prefix: str | None = None,
              params: Any = None) -> tuple[dict[str, Any], LoRAConfig]:
  """Reads a LoRA file written by `save_lora`, diffusers/PEFT, or kohya-style trainers.

  Accepts `.lora_A/.lora_B` (PEFT), `.lora.down/.lora.up` (diffusers 0.2x) and
  `.lora_down/.lora_up` (kohya, with per-module `.alpha`) key suffixes. Kohya's underscored
  module names ('lora_unet_down_blocks_0_..._to_q') can only be resolved against the model, so
  they need `params`. Per-module alpha or rank differences are folded into B so that one
  `LoRAConfig` scale holds for all pairs.

  Args:
    path: a `.safetensors` (or torch `.bin`) LoRA file.
    prefix: keep only keys under this component ('unet', 'text_encoder') and strip it; by default
      a 'unet.' / 'text_encoder.' / 'base_model.model.' prefix shared by all keys is stripped.
    params: the model's params, to resolve kohya names and check every shape.
  Returns:
    (lora_params, config) with `config.targets` the exact kernel paths found.
  Raises:
    DataError: no LoRA keys, an unpaired factor, an unknown kernel or a shape mismatch.
  """
  from jaxgen.io.safetensors import load_safetensors_metadata  # local: see save_lora
  from jaxgen.io.weights import load_weights

  tensors = load_weights(path)
  metadata = load_safetensors_metadata(path) if path.endswith(".safetensors") else {}
  if prefix is not None:
    tensors = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
  else:
    for common in ("unet.", "text_encoder.", "base_model.model."):
      if tensors and all(k.startswith(common) for k in tensors):
        tensors = {k[len(common):]: v for k, v in tensors.items()}
        prefix = common.rstrip(".")
        break
  pairs: dict[str, dict[str, np.ndarray]] = {}
  alphas: dict[str, float] = {}
  for key, value in tensors.items():
    split = _split_key(key)
    if split is not None:
      pairs.setdefault(split[0], {})[split[1]] = np.array(value, np.float32)
    elif key.endswith(".alpha"):
      alphas[key[: -len(".alpha")]] = float(np.asarray(value, np.float64).reshape(-1)[0])
  if not pairs:
    raise DataError(f"{path}: no LoRA factors (keys ending in .lora_A.weight / .lora_down.weight"
                    f"{' under ' + prefix if prefix else ''})")
  kernels = None if params is None else _leaf_shapes(params)
  # With the model at hand, names resolve through the forward mapping (any list naming works);
  # kohya names are the torch module names with every '.' turned into '_'.
  by_torch = {torch_module_name(k[:-7]): k for k in kernels or () if k.endswith("/kernel")}
  kohya = {name.replace(".", "_"): k for name, k in by_torch.items()}

  # The file's alpha and rank: ours, else diffusers' LoraConfig metadata, else alpha = rank.
  own = json.loads(metadata[_JAXGEN_KEY]) if _JAXGEN_KEY in metadata else {}
  peft = json.loads(metadata[_METADATA_KEY]) if _METADATA_KEY in metadata else {}
  pre = f"{prefix}." if prefix and f"{prefix}.r" in peft else ""
  file_alpha = own.get("alpha") if own else peft.get(f"{pre}lora_alpha")

  flat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
  scales: dict[str, float] = {}
  for module, ab in sorted(pairs.items()):
    if set(ab) != {"a", "b"}:
      raise DataError(f"{path}: LoRA module {module} has only its "
                      f"{'down/A' if 'a' in ab else 'up/B'} factor")
    a_t, b_t = ab["a"], ab["b"]
    r = a_t.shape[0]
    if (a_t.ndim < 2 or a_t.ndim != b_t.ndim or b_t.shape[1] != r
        or any(s != 1 for s in b_t.shape[2:])):
      raise DataError(f"{path}: LoRA module {module} has A {a_t.shape} and B {b_t.shape}, "
                      "expected [r, in(, kh, kw)] and [out, r(, 1, 1)]")
    if module.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
      stem = module.split("_", 2)[2]
      if kernels is None or stem not in kohya:
        raise DataError(f"{path}: kohya-style LoRA module {module} " + (
            "needs params= to be resolved" if kernels is None else "matches no model kernel"))
      kpath = kohya[stem]
    else:
      kpath = by_torch.get(module) or flax_module_path(module) + "/kernel"
    a = np.transpose(a_t, tuple(range(2, a_t.ndim)) + (1, 0))  # [*window, in, r]
    b = b_t.reshape(b_t.shape[:2]).T  # [r, out]
    if kernels is not None:
      if kpath not in kernels:
        raise DataError(f"{path}: LoRA module {module} -> {kpath}, which the model does not have")
      want = kernels[kpath]
      if a.shape[:-1] != want[:-1] or b.shape[1] != want[-1]:
        raise DataError(f"{path}: LoRA module {module} gives a {a.shape[:-1] + b.shape[1:]} delta "
                        f"for kernel {kpath} of shape {want}")
    alpha = alphas.get(module, file_alpha if file_alpha is not None else r)
    flat[kpath] = (a, b)
    scales[kpath] = float(alpha) / r
  rank = int(own.get("rank") or peft.get(f"{pre}r") or next(iter(flat.values()))[0].shape[-1])
  alpha = own.get("alpha") if own else float(file_alpha if file_alpha is not None else rank)
  config = LoRAConfig(rank=rank, alpha=alpha, targets=tuple(re.escape(k) for k in flat),
                      init=own.get("init", "kaiming_uniform"))
  for kpath, (a, b) in flat.items():  # per-module scale differences go into B
    if not math.isclose(scales[kpath], config.scale, rel_tol=1e-7):
      flat[kpath] = (a, (b * (scales[kpath] / config.scale)).astype(np.float32))
  return unflatten_lora(flat), config
