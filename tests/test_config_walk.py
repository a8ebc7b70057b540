"""Every key of every method's config, set to a bad value, is refused at start-up.

For each method, the key set of every preset is the tiny preset's (so one walk covers every key
name), and on the tiny preset every leaf is set in turn to a value of its own type that no
setting can mean: NaN for a float, -1000003 for an int, an unknown word for a string, a bad first
element for a tuple of those. `validate_config` (what `jaxgen.main` runs before anything is
written or trained; exit code 2 through `jaxgen.main.run`) must raise a JaxgenError naming the
key. Keys for which such a value is legitimate are listed in ALLOWED with the reason; bools have
no bad value and are not walked.
"""

from __future__ import annotations

import importlib
import math

import pytest

from jaxgen import main as jaxgen_main
from jaxgen.errors import JaxgenError

METHODS = ("classifier", "mvld", "lrgmm", "softlabel_gan", "dimvida", "diffmix", "t2i")
BAD_INT = -1000003
BAD_STR = "no_such_setting"

# Keys that accept any value of their type, by design (path suffixes match nested sections).
ALLOWED = {
    "description": "free text for the report",
    "seed": "any integer seeds a run (negative ones included)",
}


def _leaves(cfg, prefix=""):
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _leaves(value, path + ".")
    else:
      yield path, value


def _bad(value):
  if isinstance(value, bool) or value is None:
    return None
  if isinstance(value, float):
    return math.nan
  if isinstance(value, int):
    return BAD_INT
  if isinstance(value, str):
    return BAD_STR
  if isinstance(value, (tuple, list)) and value:
    first = _bad(value[0])
    return None if first is None else type(value)([first, *value[1:]])
  return None


def _set(cfg, path, value):
  *parents, leaf = path.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value


def _allowed(path):
  return any(path == k or path.endswith("." + k) for k in ALLOWED)


@pytest.mark.parametrize("method", METHODS)
def test_every_preset_has_the_tiny_presets_keys(method):
  module = importlib.import_module(f"configs.{method}")
  tiny = {p for p, _ in _leaves(module.get_config("tiny"))}
  for preset in module.PRESETS:
    keys = {p for p, _ in _leaves(module.get_config(preset))}
    assert keys == tiny, (preset, sorted(keys ^ tiny))


@pytest.mark.parametrize("method", METHODS)
def test_every_key_with_a_bad_value_is_refused_before_training(method):
  module = importlib.import_module(f"configs.{method}")
  validate = jaxgen_main.method_module(module.get_config("tiny").method).validate_config
  accepted, unnamed = [], []
  for path, value in _leaves(module.get_config("tiny")):
    bad = _bad(value)
    if bad is None or _allowed(path):
      continue
    cfg = module.get_config("tiny")
    try:
      _set(cfg, path, bad)
    except (TypeError, ValueError):  # the config's own type lock refuses it (exit 2 on the CLI)
      continue
    try:
      validate(cfg, 8)
    except JaxgenError as err:
      if path.split(".")[-1] not in str(err):
        unnamed.append(f"{path}={bad!r}: {err}")
      continue
    accepted.append(f"{path}={bad!r}")
  assert not accepted, f"{len(accepted)} bad values accepted:\n" + "\n".join(accepted)
  assert not unnamed, "errors that do not name the key:\n" + "\n".join(unnamed)
