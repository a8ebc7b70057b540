"""Which parameters a fine-tuning run trains, and with which optimiser: groups chosen by path.

Diff-Mix fine-tunes Stable Diffusion with textual inversion and DreamBooth-LoRA: the pretrained
weights stay frozen, the LoRA factors and the new token-embedding rows train with their own
learning rates. Here every leaf of the trained tree gets a group label from regular expressions
over its '/'-joined path (`label_params`), `multi_lr_optimizer` gives each group its own optax
transformation and the 'frozen' group exact zero updates, and `mask_rows` restricts a group to
some rows of an embedding table (the new tokens' rows), whatever the inner optimiser does.

Exactness: frozen leaves and masked rows receive an update of -0.0 rather than +0.0, because
`p + (-0.0) == p` bit for bit for every float p (including -0.0, which `+0.0` would turn into
+0.0), so after any number of steps they are bit-identical to where they started. The update is
masked after the inner optimiser, so neither Adam's moments nor decoupled weight decay (AdamW)
nor an L2 term can move a masked row. An EMA of the parameters (`TrainState(ema_decay>0)`) is
not covered: `d * p + (1 - d) * p` can round away from p, so keep EMA off or compare EMA copies
with a tolerance.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen.errors import ConfigError

FROZEN = "frozen"
Rules = Sequence[tuple[str, str]] | Mapping[str, str]


def path_str(key_path: Sequence[Any]) -> str:
  """'/'-joined names of a pytree key path: ('down_blocks_0', 'attn1', 'to_q', 'kernel') style."""
  return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def param_paths(tree: Any) -> list[str]:
  """The '/'-joined path of every leaf of `tree`, in flattening order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _compile_rules(rules: Rules, key: str) -> list[tuple[re.Pattern, str]]:
  items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  out = []
  for item in items:
    if not (isinstance(item, (tuple, list)) and len(item) == 2
            and all(isinstance(s, str) for s in item)):
      raise ConfigError(key, item, "(regex, group name) pairs")
    try:
      out.append((re.compile(item[0]), item[1]))
    except re.error as err:
      raise ConfigError(key, item[0], f"a valid regular expression ({err})") from None
  return out


def label_params(tree: Any, rules: Rules, *, default: str = FROZEN) -> Any:
  """A tree shaped like `tree` whose leaves are group names, for `multi_lr_optimizer`.

  Each leaf's '/'-joined path (e.g. 'lora/down_blocks_0/attn1/to_q/kernel/lora_a') is matched
  with `re.fullmatch` against the rules in order; the first match names its group, no match
  gives `default` ('frozen').

  Args:
    tree: the parameter tree (arrays or `jax.ShapeDtypeStruct`s).
    rules: `[(regex, group), ...]` or `{regex: group}` (insertion order is the priority).
    default: the group of unmatched leaves.
  """
  compiled = _compile_rules(rules, "param_groups.rules")

  def label(key_path, _leaf):
    name = path_str(key_path)
    return next((group for pattern, group in compiled if pattern.fullmatch(name)), default)

  return jax.tree_util.tree_map_with_path(label, tree)


def group_sizes(tree: Any, labels: Any) -> dict[str, int]:
  """Number of scalar parameters in each group (to log what is trained)."""
  sizes: dict[str, int] = {}
  for leaf, group in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)):
    sizes[group] = sizes.get(group, 0) + int(np.prod(np.shape(leaf)))
  return sizes


def _negative_zero_like(tree: Any) -> Any:
  return jax.tree.map(lambda u: jnp.full_like(u, -0.0), tree)


def freeze() -> optax.GradientTransformation:
  """Updates of exactly -0.0 and no state: the leaf never changes, not even its sign bit.

  Like `optax.set_to_zero()` but also exact for parameters equal to -0.0 (see module docstring).
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return _negative_zero_like(updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def multi_lr_optimizer(groups: Mapping[str, optax.GradientTransformation],
                       labels: Any) -> optax.GradientTransformation:
  """One optimiser whose parameter groups each run their own transformation.

  Leaves labelled 'frozen' get `freeze()` (exact zero updates, no optimiser state, so frozen
  weights cost no Adam moments). A gradient of a frozen leaf is still computed if it is in the
  differentiated tree; keep large frozen trees out of `jax.grad` when that matters.

  Args:
    groups: `{group name: optax transformation}` (e.g. `{"lora": optax.adamw(1e-4),
      "ti": mask_rows(optax.adamw(5e-3), row_mask)}`); 'frozen' may not be one of them.
    labels: a tree of group names from `label_params` (or a callable params -> labels).
  Raises:
    ConfigError: a label with no transformation, or 'frozen' given a transformation.
  """
  if FROZEN in groups:
    raise ConfigError("param_groups.groups", sorted(groups), f"no transformation for {FROZEN!r} "
                      "(frozen leaves always get exact zero updates)")
  if not callable(labels):
    unknown = sorted(set(jax.tree.leaves(labels)) - set(groups) - {FROZEN})
    if unknown:
      raise ConfigError("param_groups.labels", unknown,
                        f"group names among {sorted(groups) + [FROZEN]}")
  return optax.multi_transform({**groups, FROZEN: freeze()}, labels)


def embedding_row_mask(num_rows: int, new_ids: Sequence[int] | np.ndarray) -> np.ndarray:
  """Boolean `[num_rows]` mask, True at the token ids whose embedding rows may train.

  Raises:
    ConfigError: an id outside [0, num_rows) or no id at all.
  """
  ids = np.asarray(new_ids, dtype=np.int64).reshape(-1)
  if ids.size == 0 or ids.min() < 0 or ids.max() >= num_rows:
    raise ConfigError("textual_inversion.new_ids", ids.tolist(),
                      f"one or more token ids in [0, {num_rows})")
  mask = np.zeros((num_rows,), dtype=bool)
  mask[ids] = True
  return mask


def _row_masker(row_mask: jax.Array) -> Callable[[Any, Any], Any]:
  num_rows = row_mask.shape[0]

  def apply(tree: Any, fill: float) -> Any:
    def one(x):
      if x.ndim == 0 or x.shape[0] != num_rows:
        raise ConfigError("textual_inversion.row_mask", f"{num_rows} rows",
                          f"a mask as long as the leading axis of every leaf in its group "
                          f"(got a leaf of shape {x.shape})")
      keep = row_mask.reshape((num_rows,) + (1,) * (x.ndim - 1))
      return jnp.where(keep, x, jnp.asarray(fill, x.dtype))

    return jax.tree.map(one, tree)

  return apply


def mask_rows(inner: optax.GradientTransformation,
              row_mask: np.ndarray | jax.Array) -> optax.GradientTransformation:
  """`inner` restricted to the rows where `row_mask` is True of every leaf in its group.

  Gradients of masked rows are zeroed before `inner` (so they do not feed moments or a global-
  norm clip) and the final updates of masked rows are set to -0.0 after it, so weight decay or
  any other update `inner` makes cannot move them: those rows stay bit-identical. Meant for the
  token-embedding table of textual inversion (`row_mask = embedding_row_mask(vocab, new_ids)`).
  """
  mask = _row_masker(jnp.asarray(row_mask, dtype=bool))
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, **extra):
    updates, state = inner.update(mask(updates, 0.0), state, params, **extra)
    return mask(updates, -0.0), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
