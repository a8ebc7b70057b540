"""Writes docs/results_t2i.md from a t2i run's results.json (never by hand).

  python -m jaxgen.t2i.results_page --workdir=workdirs/t2i --out=docs/results_t2i.md

The page is the run's report rebuilt from results.json by the same code (`report.sections`) with
the shared builder `jaxgen.io.results_page` (stage wall times, figures in docs/img/t2i/, every
table number checked against the JSON files).
"""

from __future__ import annotations

import re
import sys

from jaxgen.io import results_page
from jaxgen.t2i import report

FIGURES = ("pretrain_real.png", "vanilla_guided.png", "sdedit.png", "target_real.png",
           "target_diff_gen_seed0.png")
BUILD = dict(module="jaxgen.t2i.results_page", config_file="configs/t2i.py", title=report.TITLE,
             sections=report.sections, key_pattern=re.compile(r"\d+\.\d+"))  # SDEdit strengths


def build(workdir: str) -> tuple[str, list]:
  return results_page.build(workdir, figures=FIGURES, image_dir="img/t2i", **BUILD)


def main(argv: list[str] | None = None) -> int:
  return results_page.main(argv, description=__doc__.splitlines()[0], default_workdir="workdirs/t2i",
                           default_out="docs/results_t2i.md", figures=FIGURES, image_subdir="t2i",
                           **BUILD)


if __name__ == "__main__":
  sys.exit(main())
