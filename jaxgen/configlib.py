"""Config building blocks shared by every method, and their validation.

Configs are plain Python (`configs/<method>.py: get_config(preset)`) returning a locked
`ml_collections.ConfigDict`, as in big_vision and score_sde. Locking makes an unknown key an error at
override time; `validate_*` below catches impossible values before anything is compiled, so a bad
command line fails in a second with one line naming the key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os

from typing import Any, Callable, Iterable, Iterator, Sequence

import ml_collections

from jaxgen.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")


# Shard every state leaf over the mesh's 'model' axis (plain replication while that axis is 1).
DEFAULT_PARAM_RULES = (".*=fsdp",)


def mesh_config(data: int = -1, model: int = 1) -> ml_collections.ConfigDict:
  """Device mesh: `data` x `model` devices; -1 means all devices left after the other axis.

  `param_rules` place the training state over the mesh (`REGEX=SPEC` strings, first fitting rule
  wins; jaxgen.parallel.partitioning): the default splits every leaf over 'model' (fsdp), which
  is plain replication while `model` is 1.
  """
  return ml_collections.ConfigDict({"data": data, "model": model, "param_rules": DEFAULT_PARAM_RULES})


def optim_config(name: str = "adam", lr: float = 1e-4, **overrides: Any) -> ml_collections.ConfigDict:
  """Optimiser and learning-rate schedule, read by `jaxgen.train.optim.make_optimizer`."""
  cfg = ml_collections.ConfigDict({
      "name": name,
      "lr": lr,
      "schedule": "constant",
      "warmup_steps": 0,
      "end_lr_factor": 0.0,  # final lr = lr * end_lr_factor for cosine/linear decay
      "weight_decay": 0.0,
      "momentum": 0.9,  # sgd only
      "nesterov": False,  # sgd only
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-8,
      "clip_norm": 0.0,  # 0 disables global-norm clipping
  })
  cfg.update(overrides)
  return cfg


def train_config(num_steps: int, batch_size: int, lr: float = 1e-4, optimizer: str = "adam",
                 **overrides: Any) -> ml_collections.ConfigDict:
  """One training stage: steps, global batch, optimiser, EMA, logging and checkpoint cadence."""
  cfg = ml_collections.ConfigDict({
      "num_steps": num_steps,
      "batch_size": batch_size,  # global batch, split over the mesh's data axis
      "steps_per_call": 10,  # steps per host call (one host sync each)
      "scan_steps": "auto",  # fuse them in one lax.scan: 'auto' (not on CPU), 'always', 'never'
      "ema_decay": 0.0,  # 0 disables EMA
      "log_every": 50,
      "checkpoint_every": 500,
      "keep_checkpoints": 2,
      "async_checkpoints": True,
      "optim": optim_config(optimizer, lr),
  })
  cfg.update(overrides)
  return cfg


def base_config(method: str, preset: str | None = None,
                presets: Sequence[str] = ("default",)) -> ml_collections.ConfigDict:
  """Fields every method has: which method and preset, the seed, the mesh, the data and logging.

  `preset` (None = 'default') must be one of `presets`, else ConfigError naming them.
  """
  preset = preset or "default"
  if preset not in presets:
    raise ConfigError("preset", preset, "one of " + ", ".join(presets))
  return ml_collections.ConfigDict({
      "method": method,
      "preset": preset,
      "seed": 0,
      "mesh": mesh_config(),
      "data": ml_collections.ConfigDict({"name": "multiview", "data_dir": ""}),
      "log_images": True,  # write PNG figures (samples/, eval/); False: results and reports only
  })


_TRACED: set[str] = set()


def trace_once(config: ml_collections.ConfigDict, sections: Sequence[str],
               trace: Callable[[], None]) -> None:
  """Run `trace()` (the abstract network builds at the end of a validation) unless it already
  succeeded in this process for the same values of `sections`: it is a pure function of them,
  and whatever validates many configs (the key-walk test, claims scripts) would otherwise trace
  identical networks again. A failing trace raises every time."""
  fn = getattr(trace, "func", trace)  # a partial's function
  values = {s: get_path(config, s) for s in sections}
  key = json.dumps({"trace": f"{fn.__module__}.{fn.__qualname__}",
                    **{s: v.to_dict() if hasattr(v, "to_dict") else v for s, v in values.items()}},
                   sort_keys=True, default=repr)
  if key not in _TRACED:
    trace()
    _TRACED.add(key)


@contextlib.contextmanager
def nested_section(prefix: str, from_parent: Sequence[str] = ("mesh",)) -> Iterator[None]:
  """While validating the config embedded at `prefix` (e.g. DIMVIDA's `mvld`), its ConfigErrors
  name the key as the user writes it (`mvld.data.variant`), except the sections the embedded
  config takes from its parent (`from_parent`, e.g. the mesh), which keep their own name."""
  try:
    yield
  except ConfigError as err:
    if err.key.startswith("(") or err.key.split(".")[0] in from_parent:
      raise
    raise ConfigError(f"{prefix}.{err.key}", err.value, err.expected) from None


def require(ok: bool, key: str, value: Any, expected: str) -> None:
  """Raise `ConfigError(key, value, expected)` unless `ok`."""
  if not ok:
    raise ConfigError(key, value, expected)


def require_positive_int(config: ml_collections.ConfigDict, key: str, *, allow_zero: bool = False) -> None:
  value = get_path(config, key)
  ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
  require(ok, key, value, "a non-negative integer" if allow_zero else "a positive integer")


def require_choice(config: ml_collections.ConfigDict, key: str, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  value = get_path(config, key)
  require(value in choices, key, value, "one of " + ", ".join(repr(c) for c in choices))


def require_range(config: ml_collections.ConfigDict, key: str, low: float, high: float) -> None:
  value = get_path(config, key)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
  require(ok, key, value, f"a number in [{low}, {high}]")


def get_path(config: ml_collections.ConfigDict, key: str) -> Any:
  node: Any = config
  for part in key.split("."):
    node = node[part]
  return node


def validate_base(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """The fields of `base_config`: the seed (numpy generators need it >= 0), log_images and the
  mesh; returns the data-parallel size."""
  require_positive_int(config, "seed", allow_zero=True)
  if "log_images" in config:
    require(isinstance(config.log_images, bool), "log_images", config.log_images, "true or false")
  if "data" in config and "seed" in config.data:
    require_positive_int(config, "data.seed", allow_zero=True)
  return validate_mesh(config, num_devices)


def validate_mesh(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """Check the mesh fits the devices; returns the data-parallel size."""
  data, model = config.mesh.data, config.mesh.model
  require(isinstance(model, int) and model >= 1, "mesh.model", model, "an integer >= 1")
  require(isinstance(model, int) and num_devices % model == 0, "mesh.model", model,
          f"a divisor of the {num_devices} available devices")
  if "param_rules" in config.mesh:
    from jaxgen.parallel.partitioning import validate_rules
    try:
      validate_rules(config.mesh.param_rules)
    except ValueError as err:
      raise ConfigError("mesh.param_rules", config.mesh.param_rules,
                        f"a tuple of REGEX=SPEC rules, SPEC replicate / fsdp / e.g. _,model ({err})"
                        ) from None
  if data == -1:
    return num_devices // model
  require(isinstance(data, int) and data >= 1 and data * model == num_devices, "mesh.data", data,
          f"-1 or {num_devices // model} (devices {num_devices} / mesh.model {model})")
  return data


def validate_train(config: ml_collections.ConfigDict, prefix: str, data_parallel: int) -> None:
  """Validate one `train_config` section found at `prefix` (e.g. 'train' or 'autoencoder.train')."""
  for key in ("num_steps", "batch_size", "steps_per_call", "log_every", "checkpoint_every",
              "keep_checkpoints"):
    require_positive_int(config, f"{prefix}.{key}", allow_zero=(key == "num_steps"))
  batch = get_path(config, f"{prefix}.batch_size")
  require(batch % data_parallel == 0, f"{prefix}.batch_size", batch,
          f"a multiple of the data-parallel size {data_parallel}")
  require_range(config, f"{prefix}.ema_decay", 0.0, 0.999999)
  require_choice(config, f"{prefix}.scan_steps", ("auto", "always", "never"))
  validate_optim(config, f"{prefix}.optim")


def validate_optim(config: ml_collections.ConfigDict, prefix: str) -> None:
  """Validate one `optim_config` section found at `prefix` (e.g. 'train.optim')."""
  require_choice(config, f"{prefix}.name", OPTIMIZERS)
  require_choice(config, f"{prefix}.schedule", SCHEDULES)
  lr = get_path(config, f"{prefix}.lr")
  require(isinstance(lr, (int, float)) and lr > 0, f"{prefix}.lr", lr, "a positive number")
  require_positive_int(config, f"{prefix}.warmup_steps", allow_zero=True)
  clip = get_path(config, f"{prefix}.clip_norm")
  require(clip >= 0, f"{prefix}.clip_norm", clip, "0 (off) or a positive number")
  validate_optim_numbers(config, prefix)


def validate_optim_numbers(config: ml_collections.ConfigDict, prefix: str) -> None:
  """The optimiser's coefficients: Adam's decay rates in [0, 1), eps > 0, weight decay >= 0,
  SGD momentum in [0, 1), the schedule's end factor in [0, 1] (optax accepts the others and
  trains to NaN or diverges)."""
  def number(key: str):
    value = get_path(config, f"{prefix}.{key}")
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            f"{prefix}.{key}", value, "a finite number")
    return value

  for key in ("b1", "b2", "momentum"):
    value = number(key)
    require(0.0 <= value < 1.0, f"{prefix}.{key}", value, "a number in [0, 1)")
  eps = number("eps")
  require(eps > 0, f"{prefix}.eps", eps, "a positive number")
  wd = number("weight_decay")
  require(wd >= 0, f"{prefix}.weight_decay", wd, "a number >= 0")
  end = number("end_lr_factor")
  require(0.0 <= end <= 1.0, f"{prefix}.end_lr_factor", end, "a number in [0, 1]")
  nesterov = get_path(config, f"{prefix}.nesterov")
  require(isinstance(nesterov, bool), f"{prefix}.nesterov", nesterov, "true or false")


def config_from_file(path: str, preset: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(preset)` of the config file at `path` (a method config that embeds another
  method's config, e.g. DIMVIDA's MVLD or Diff-Mix's t2i, loads it by path)."""
  name = "_jaxgen_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)

