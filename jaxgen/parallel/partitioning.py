"""Parameter sharding: rules from parameter paths to `PartitionSpec`s over the ('data', 'model') mesh.

A rule is a string `REGEX=SPEC` (config key `mesh.param_rules`, a tuple of them, first fitting rule
wins, as big_vision's `sharding_strategy`). REGEX is searched in a state leaf's path, its keys
joined by '/' (e.g. `params/Dense_0/kernel`, `opt_state/0/mu/Dense_0/kernel`, `ema_params/...`,
`extra/disc_params/...`), so one rule covers a parameter, its optimiser moments and its EMA alike.
SPEC is one of

- `replicate`: every device holds the whole leaf;
- `fsdp`: the leaf's largest dimension divisible by the model axis is split over 'model' (fully
  sharded data parallel: parameters, moments and EMA are stored 1/M per device; XLA gathers them
  for the forward and backward pass and reduce-scatters the gradients);
- an explicit spec, one entry per leading dimension, each `model`, `data` or `_` (not split), e.g.
  `_,model` splits a Dense kernel's output features (tensor parallelism).

A rule fits a leaf when its regex matches and its spec divides the leaf's shape; a leaf that no
rule fits (scalars, PRNG keys, odd sizes) is replicated, so no shape fails a run after training
began. With a model axis of size 1 and no rule naming 'data' everything is replicated, exactly as
a data-parallel run.

The rules in force are set once per run by `use_param_rules` (the entry point does it from
`config.mesh.param_rules`), in the manner of flax's `nn.logical_axis_rules`, so every stage's
training loop reads them without each method threading them through.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.configlib import DEFAULT_PARAM_RULES
from jaxgen.parallel.mesh import DATA, MODEL

_AXES = {"model": MODEL, "data": DATA, "_": None}

_current: tuple[str, ...] = DEFAULT_PARAM_RULES


def parse_rule(rule: str) -> tuple[re.Pattern, str | tuple[str | None, ...]]:
  """`REGEX=SPEC` -> (compiled regex, 'replicate' | 'fsdp' | axis tuple); ValueError names the fault."""
  if not isinstance(rule, str) or "=" not in rule:
    raise ValueError(f"{rule!r} is not REGEX=SPEC (e.g. '.*kernel$=fsdp')")
  pattern, spec = rule.rsplit("=", 1)
  try:
    regex = re.compile(pattern)
  except re.error as err:
    raise ValueError(f"{pattern!r} is not a regular expression ({err})") from None
  spec = spec.strip()
  if spec in ("replicate", "fsdp"):
    return regex, spec
  entries = tuple(s.strip() for s in spec.split(","))
  if not entries or any(e not in _AXES for e in entries):
    raise ValueError(f"spec {spec!r} of {rule!r} is not replicate, fsdp or a comma list of "
                     "model / data / _")
  return regex, tuple(_AXES[e] for e in entries)


def validate_rules(rules: Sequence[str]) -> None:
  """Raise ValueError naming the first malformed rule."""
  if isinstance(rules, str) or not isinstance(rules, (tuple, list)):
    raise ValueError(f"{rules!r} is not a tuple of REGEX=SPEC strings")
  for rule in rules:
    parse_rule(rule)


def path_string(path: Sequence[Any]) -> str:
  """A tree path as 'a/b/0/c' (dict keys, attribute names and sequence indices)."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P | None:
  """Split the largest dimension divisible by `size` (ties: the last one, a kernel's outputs)."""
  best = None
  for axis, dim in enumerate(shape):
    if dim % size == 0 and dim >= size and (best is None or dim >= shape[best]):
      best = axis
  if best is None:
    return None
  return P(*([None] * best), MODEL)


def _fits(spec: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> bool:
  if len(spec) > len(shape):
    return False
  named = [a for a in spec if a is not None]
  if len(named) != len(set(named)):
    return False
  return all(a is None or shape[i] % mesh.shape[a] == 0 for i, a in enumerate(spec))


def leaf_spec(path: str, shape: tuple[int, ...], dtype: Any, mesh: Mesh,
              rules: Sequence[str]) -> P:
  """The PartitionSpec of one leaf: the first rule that matches `path` and fits `shape`."""
  if not shape or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return P()
  for rule in rules:
    regex, spec = parse_rule(rule)
    if not regex.search(path):
      continue
    if spec == "replicate":
      return P()
    if spec == "fsdp":
      if mesh.shape[MODEL] == 1:
        return P()
      fsdp = _fsdp_spec(shape, mesh.shape[MODEL])
      if fsdp is not None:
        return fsdp
      continue
    if _fits(spec, shape, mesh):
      return P(*spec)
  return P()


def is_data_parallel_only(mesh: Mesh, rules: Sequence[str]) -> bool:
  """True when the rules can only replicate on this mesh (no model axis, nothing over 'data')."""
  return mesh.shape[MODEL] == 1 and not any(
      isinstance(spec, tuple) and DATA in spec for _, spec in map(parse_rule, rules))


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[str] | None = None) -> Any:
  """A NamedSharding per leaf of `state` (arrays or ShapeDtypeStructs), by `rules` (default: the
  rules in force)."""
  rules = current_rules() if rules is None else tuple(rules)
  if is_data_parallel_only(mesh, rules):
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), state)

  def leaf(path, x):
    dtype = getattr(x, "dtype", None) or np.result_type(x)
    return NamedSharding(mesh, leaf_spec(path_string(path), tuple(np.shape(x)), dtype, mesh, rules))

  return jax.tree_util.tree_map_with_path(leaf, state)


def bytes_per_device(tree: Any, shardings: Any = None) -> int:
  """Bytes each device holds of a pytree: placed arrays by their own shardings, or abstract
  shapes (jax.ShapeDtypeStruct) by `shardings` (e.g. `state_shardings(tree, mesh)`). The rules
  only split dimensions evenly, so every device holds the same share."""
  leaves = jax.tree.leaves(tree)
  placements = [x.sharding for x in leaves] if shardings is None else jax.tree.leaves(shardings)
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x, s in zip(leaves, placements, strict=True))


def current_rules() -> tuple[str, ...]:
  return _current


@contextlib.contextmanager
def use_param_rules(rules: Sequence[str]) -> Iterator[None]:
  """Make `rules` the ones every training loop inside the block shards its state by."""
  global _current
  validate_rules(rules)
  previous, _current = _current, tuple(rules)
  try:
    yield
  finally:
    _current = previous
