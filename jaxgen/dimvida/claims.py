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

import json
import os
import sys

from jaxgen.dimvida.report import build_tables
from jaxgen.io.files import atomic_write_json, read_json
from jaxgen.seeds import parse_seed_args, run_seeds, seed_workdir


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
  args, seeds, extra = parse_seed_args(sys.argv[1:] if argv is None else argv,
                                       __doc__.split("\n")[0], "configs/dimvida.py",
                                       "workdirs/dimvida-claims")
  first = seed_workdir(args.root, seeds[0])

  def reuse(seed: int) -> list[str]:  # later seeds share the first one's MVLD and pre-training
    return [] if seed == seeds[0] else [f"--config.mvld_workdir={os.path.join(first, 'mvld')}",
                                        f"--config.finetune.pretrained_workdir={first}"]

  code = run_seeds(args.config, args.root, seeds, extra, per_seed=reuse)
  if code:
    return code
  summary = summarise(args.root, seeds)
  atomic_write_json(os.path.join(args.root, "claims.json"), summary)
  print(json.dumps(summary["claims"], indent=1), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
