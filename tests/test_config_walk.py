"""Every key of every method's config, set to a bad value, is refused at start-up.

For each method and each preset that validates on this machine, every leaf not yet walked in an
earlier preset is set in turn to a value of its own type that no setting can mean: NaN for a float, -1000003 for an int, an unknown word for a string, a bad first
element for a tuple of those. `validate_config` (what `jaxgen.main` runs before anything is
written or trained; exit code 2 through `jaxgen.main.run`) must raise a JaxgenError naming the
key by its full path (`mvld.data.variant` inside DIMVIDA's config, not `data.variant`). Keys for which such a value is legitimate are listed in ALLOWED with the reason; bools have
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
    "method": "jaxgen.main dispatches on it and refuses unknown methods (tests/test_main_cli.py)",
    "preset": "a label for reports and workdir names; get_config refuses unknown presets",
    "data_dir": "the embedded sets' render cache, created on demand (folder/NMR/TFDS runs check it)",
    "tfds_name": "read only with data.name='tfds', where opening the split checks it",
    "train_split": "read only with data.name='tfds', where opening the split checks it",
    "test_split": "read only with data.name='tfds', where opening the split checks it",
    "init_from.name": "read only with init_from.workdir, where its checkpoint folder is checked",
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
def test_every_key_with_a_bad_value_is_refused_before_training(method):
  module = importlib.import_module(f"configs.{method}")
  validate = jaxgen_main.method_module(module.get_config("tiny").method).validate_config
  accepted, unnamed, walked, skipped = [], [], set(), []
  for preset in module.PRESETS:
    try:  # presets that need files this machine lacks (TFDS sets, weights) cannot be walked
      validate(module.get_config(preset), 8)
    except JaxgenError:
      skipped.append(preset)
      continue
    for path, value in _leaves(module.get_config(preset)):
      bad = _bad(value)
      if path in walked or bad is None or _allowed(path):
        continue
      walked.add(path)
      cfg = module.get_config(preset)
      try:
        _set(cfg, path, bad)
      except (TypeError, ValueError):  # the config's own type lock refuses it (exit 2 on the CLI)
        continue
      try:
        validate(cfg, 8)
      except JaxgenError as err:
        if path not in str(err):  # the key as the user writes it, nested sections included
          unnamed.append(f"{preset}: {path}={bad!r}: {err}")
        continue
      accepted.append(f"{preset}: {path}={bad!r}")
  assert "tiny" not in skipped and walked
  assert not accepted, f"{len(accepted)} bad values accepted:\n" + "\n".join(accepted)
  assert not unnamed, "errors that do not name the key:\n" + "\n".join(unnamed)


@pytest.mark.parametrize("method, section", [("mvld", "classifier"), ("softlabel_gan", "judge")])
def test_a_judge_the_in_domain_lpips_cannot_use_is_refused(method, section):
  """Without LPIPS weight files the judges take LPIPS features from the classifier's stage1-4;
  a MobileNet has none, which used to fail after training (in the evaluate stage)."""
  import ml_collections
  from jaxgen.classifier.config import default_arch_kw
  module = importlib.import_module(f"configs.{method}")
  validate = jaxgen_main.method_module(method).validate_config
  cfg = module.get_config("tiny")
  cfg[section].arch = "mobilenet_v3_small"
  cfg[section].arch_kw = ml_collections.ConfigDict(default_arch_kw("mobilenet_v3_small"))
  with pytest.raises(JaxgenError, match=f"config.{section}.arch='mobilenet_v3_small'.*stage1"):
    validate(cfg, 8)


def _cli_text(value):
  if isinstance(value, bool):
    return "true" if value else "false"
  return value if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("method", METHODS)
def test_every_key_of_every_preset_can_be_set_on_the_command_line(method):
  """`--config.<key>=<value>` works for every leaf (ml_collections refuses to override list
  fields: MVLD's channel, width, count and bit lists could not be set before they became tuples).
  Each preset is parsed once with every leaf set to its own value, which must come back unchanged."""
  module = importlib.import_module(f"configs.{method}")
  for preset in module.PRESETS:
    leaves = [(path, value) for path, value in _leaves(module.get_config(preset))
              if value is not None]
    assert all(isinstance(v, (bool, int, float, str, tuple)) for _, v in leaves), [
        (p, type(v).__name__) for p, v in leaves if not isinstance(v, (bool, int, float, str, tuple))]
    argv = ["jaxgen.main", f"--config=configs/{method}.py:{preset}",
            *(f"--config.{path}={_cli_text(value)}" for path, value in leaves)]
    config = jaxgen_main.parse_flags(argv).config
    for path, value in leaves:
      node = config
      for part in path.split("."):
        node = node[part]
      assert node == value and type(node) is type(value), (preset, path, node, value)
