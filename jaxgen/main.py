"""The one entry point: `python -m jaxgen.main --config=configs/<method>.py[:preset] --workdir=DIR`.

`config.method` picks the method module `jaxgen.<method>.main`, which exposes
`STAGES` (ordered stage names), `validate_config(config, num_devices)` and
`main(config, workdir, stages, force)`. Overrides use ml_collections' syntax
(`--config.train.batch_size=32`). Every error a user can cause (unknown key, wrong type,
impossible value, missing data) ends in one line on stderr and exit code 2, before anything is
compiled; a run that fails later (e.g. a diverging loss) exits 1 and keeps its checkpoints.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from jaxgen.errors import ConfigError, JaxgenError

METHODS = {
    "mvld": "jaxgen.mvld.main",
    "classifier": "jaxgen.classifier.main",
    "lrgmm": "jaxgen.lrgmm.main",
    "dimvida": "jaxgen.dimvida.main",
    "softlabel_gan": "jaxgen.softlabel_gan.main",
    "t2i": "jaxgen.t2i.main",
    "diffmix": "jaxgen.diffmix.main",
}


def _define_flags(argv: Sequence[str]) -> flags.FlagValues:
  """A fresh flag set per run, so repeated in-process runs (tests, notebooks) never share state."""
  fv = flags.FlagValues()
  # sys_argv: config_flags finds the `--config.x=` overrides to define in this list, not sys.argv.
  config_flags.DEFINE_config_file("config", None, "Path to configs/<method>.py, optionally ':preset'.",
                                  lock_config=True, flag_values=fv, sys_argv=list(argv))
  flags.DEFINE_string("workdir", None, "Output directory (default: workdirs/<method>-<preset>).",
                      flag_values=fv)
  flags.DEFINE_list("stages", None, "Stages to run, e.g. 'train,sample' (default: all, in order).",
                    flag_values=fv)
  flags.DEFINE_bool("force", False, "Re-run stages already marked done in the workdir.", flag_values=fv)
  return fv


def _one_line(err: BaseException) -> str:
  """The informative line of an exception (the last non-empty line of a wrapped traceback)."""
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  if not lines:
    return type(err).__name__
  return lines[-1] if len(lines) > 1 else lines[0]


def _unknown_override(argv: Sequence[str]) -> str | None:
  """Name the first `--config.a.b=` override whose key is unknown or whose value has the wrong type."""
  config_arg = next((a for a in argv if a.startswith("--config=")), None)
  if config_arg is None:
    return None
  base_flags = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=base_flags,
                                  sys_argv=[argv[0], config_arg])
  try:
    base_flags([argv[0], config_arg])
    config = base_flags.config
  except Exception:  # the base config itself fails: reported by the caller
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, walked = config, []
    for part in path.split("."):
      if not hasattr(node, "keys") or part not in node:
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
        where = "config" + ("." + ".".join(walked) if walked else "")
        return f"config.{path}: unknown key {part!r}; {where} has: {known}"
      node, walked = node[part], walked + [part]
    value = arg.split("=", 1)[1] if "=" in arg else ""
    problem = _type_problem(node, value)
    if problem:
      return f"config.{path}={value!r}: expected {problem}"
  return None


def _type_problem(default, text: str) -> str | None:
  """What type an override should have, if `text` cannot be read as the default's type."""
  import ast
  if isinstance(default, bool):
    return None if text.lower() in ("true", "false", "1", "0") else "true or false"
  if isinstance(default, (int, float)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return "an integer" if isinstance(default, int) else "a number"
    if isinstance(default, int) and not isinstance(value, int):
      return "an integer"
    if not isinstance(value, (int, float)):
      return "a number"
  return None


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parse the command line; returns the flag values or raises ConfigError with one line."""
  fv = _define_flags(argv)
  try:
    fv(list(argv))
  except Exception as err:  # flags.Error, AttributeError for unknown keys, ValueError in get_config
    message = _unknown_override(argv)  # absl reports unknown nested keys in several ways
    raise ConfigError("(command line)", " ".join(argv[1:]), message or _one_line(err)) from None
  config = fv.config
  if config is None:
    raise ConfigError("(flag)", None, "--config=configs/<method>.py[:preset]")
  try:  # config_flags returns a lazy error object for a bad path; any access raises
    loaded = isinstance(config.to_dict(), dict)
  except Exception:
    loaded = False
  if not loaded:
    raise ConfigError("(flag)", [a for a in argv if a.startswith("--config=")],
                      "an existing config file, e.g. --config=configs/mvld.py")
  if not flags.FLAGS.is_parsed():  # grain's worker processes read absl's global flags
    flags.FLAGS.mark_as_parsed()
  return fv


def method_module(name: str):
  if name not in METHODS:
    raise ConfigError("method", name, "one of " + ", ".join(sorted(METHODS)))
  return importlib.import_module(METHODS[name])


def run(argv: Sequence[str]) -> int:
  """Parse, validate, dispatch. Returns the process exit code."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  try:
    fv = parse_flags(argv)
    config = fv.config
    module = method_module(config.method)
    stages = fv.stages
    if stages:
      unknown = [s for s in stages if s not in module.STAGES]
      if unknown:
        raise ConfigError("(flag --stages)", ",".join(stages), "stages among " + ", ".join(module.STAGES))
    import jax  # imported after flag parsing so XLA flags from the environment apply

    from jaxgen.train.xla_cpu import conv_route
    conv_route()  # a bad JAXGEN_XLA_CPU_CONV fails here, before anything trains

    from jaxgen.parallel.mesh import initialize_distributed
    initialize_distributed()
    module.validate_config(config, jax.device_count())
    workdir = fv.workdir or os.path.join("workdirs", f"{config.method}-{config.get('preset', 'default')}")
    from jaxgen.parallel.partitioning import use_param_rules
    with use_param_rules(config.mesh.param_rules):  # every stage's training loop places its state by them
      module.main(config, workdir, stages=stages, force=fv.force)
    return 0
  except JaxgenError as err:
    if isinstance(err, ConfigError) and err.key.startswith("("):
      print(f"jaxgen: error: {err.expected}" if err.key == "(command line)" else f"jaxgen: error: {err}",
            file=sys.stderr)
    else:
      print(f"jaxgen: error: {err}", file=sys.stderr)
    return err.exit_code
  except KeyboardInterrupt:
    print("jaxgen: interrupted; completed checkpoints and results are kept", file=sys.stderr)
    return 130


def main() -> None:
  sys.exit(run(sys.argv))


if __name__ == "__main__":
  main()
