"""Running one method config for several seeds (the `claims` scripts of each method).

  ROOT/seed<S>/ is `python -m jaxgen.main --config=CONFIG --config.seed=S --workdir=ROOT/seedS`;
  arguments after `--` go to every run. Finished stages are skipped, so a rerun only recomputes
  what the caller summarises.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Sequence

from jaxgen import main as jaxgen_main
from jaxgen.io.files import atomic_write_json, read_json


def parse_seed_args(argv: Sequence[str], description: str, config: str, root: str
                    ) -> tuple[argparse.Namespace, list[int], list[str]]:
  """(args with .config / .root, seeds, extra arguments after '--')."""
  argv = list(argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", default=config)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--root", default=root)
  args = parser.parse_args(argv)
  return args, [int(s) for s in args.seeds.split(",") if s], extra


def run_seeds(config: str, root: str, seeds: Sequence[int], extra: Sequence[str],
              per_seed: Callable[[int], Sequence[str]] = lambda seed: ()) -> int:
  """Run the config once per seed into ROOT/seed<S> (`per_seed(seed)`: more arguments for that
  seed); returns the first non-zero exit code, else 0."""
  for seed in seeds:
    workdir = seed_workdir(root, seed)
    print(f"[claims] seed {seed} -> {workdir}", flush=True)
    code = jaxgen_main.run(["jaxgen.main", f"--config={config}", f"--config.seed={seed}",
                            f"--workdir={workdir}", *per_seed(seed), *extra])
    if code:
      return code
  return 0


def seed_workdir(root: str, seed: int) -> str:
  return os.path.join(root, f"seed{seed}")


def run_claims(argv: Sequence[str], description: str, config: str, root: str,
               summarise: Callable[[dict[int, dict]], dict]) -> tuple[int, dict | None]:
  """A claims script: parse its arguments, run every seed, then `summarise` the seeds'
  results.json ({seed: record}) into ROOT/claims.json. Returns (exit code, summary or None)."""
  args, seeds, extra = parse_seed_args(argv, description, config, root)
  code = run_seeds(args.config, args.root, seeds, extra)
  if code:
    return code, None
  results = {s: read_json(os.path.join(seed_workdir(args.root, s), "results.json")) for s in seeds}
  summary = summarise(results)
  atomic_write_json(os.path.join(args.root, "claims.json"), summary)
  return 0, summary
