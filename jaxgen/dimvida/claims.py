"""DIMVIDA's claims over seeds: Tables II and III with mean and std over 3 seeds.

  python -m jaxgen.dimvida.claims                      # seeds 0, 1, 2 of configs/dimvida.py
  python -m jaxgen.dimvida.claims --seeds=0,1,2 --root=workdirs/dimvida-claims -- --config.x=y

Seed S runs `python -m jaxgen.main --config=CONFIG --config.seed=S --workdir=ROOT/seedS`. The
first seed trains MVLD and the digits pre-training; the others reuse both (`mvld_workdir`,
`finetune.pretrained_workdir`), as the paper's runs share one MVLD and one set of torchvision
weights. So the seed changes the classifiers' initialisation and batches and the generated views.
Finished stages are skipped, so a rerun only recomputes the summary. Writes ROOT/claims.json:
every table cell's mean / std (ddof 1) / per-seed values, the paired per-seed gains and the
paper's three claims (`jaxgen.dimvida.report.build_tables`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxgen import main as jaxgen_main
from jaxgen.dimvida.report import build_tables
from jaxgen.io.files import atomic_write_json, read_json


def summarise(root: str, seeds: list[int]) -> dict:
  first = read_json(os.path.join(root, f"seed{seeds[0]}", "results.json"))
  cfg = first["config"]
  archs = tuple(cfg["archs"])
  inits = ("scratch", "finetuned") if cfg["finetune"]["enabled"] else ("scratch",)
  records = [read_json(os.path.join(root, f"seed{s}", "eval", "accuracy.json"))["accuracy"]
             for s in seeds]
  tables = build_tables(records, seeds, archs, inits, cfg["evaluate"]["average"])
  return {**tables, "seeds": seeds, "archs": list(archs), "inits": list(inits),
          "average": cfg["evaluate"]["average"], "num_generated": first["num_generated"],
          "num_eval_objects": first["num_eval_objects"], "data": first["data"],
          "preset": first["preset"], "pretrained_from": first["pretrained_from"]}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/dimvida.py")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--root", default="workdirs/dimvida-claims")
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(",") if s]
  first = os.path.join(args.root, f"seed{seeds[0]}")
  for seed in seeds:
    workdir = os.path.join(args.root, f"seed{seed}")
    reuse = [] if seed == seeds[0] else [f"--config.mvld_workdir={os.path.join(first, 'mvld')}",
                                         f"--config.finetune.pretrained_workdir={first}"]
    print(f"[claims] seed {seed} -> {workdir}", flush=True)
    code = jaxgen_main.run(["jaxgen.main", f"--config={args.config}", f"--config.seed={seed}",
                            f"--workdir={workdir}", *reuse, *extra])
    if code:
      return code
  summary = summarise(args.root, seeds)
  atomic_write_json(os.path.join(args.root, "claims.json"), summary)
  print(json.dumps(summary["claims"], indent=1), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
