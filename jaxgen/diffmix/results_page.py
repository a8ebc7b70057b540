"""Writes docs/results_diffmix.md from a Diff-Mix run's results.json (never by hand).

  python -m jaxgen.diffmix.results_page --workdir=workdirs/diffmix --out=docs/results_diffmix.md
  python -m jaxgen.diffmix.results_page --workdir=workdirs/diffmix-s_gamma \
      --out=docs/results_diffmix_s_gamma.md      # a study preset's run: its study table

The run's report rebuilt from results.json by the same code (`report.sections`) with the shared
builder `jaxgen.io.results_page` (stage wall times, figures in docs/img/diffmix/, every table
number checked against the JSON files).
"""

from __future__ import annotations

import sys

from jaxgen.diffmix import report
from jaxgen.io import results_page

FIGURES = ("diff_mix_translation_grid.png", "diff_mix.png", "diff_aug.png", "diff_gen.png",
           "real_mix.png")
BUILD = dict(module="jaxgen.diffmix.results_page", config_file="configs/diffmix.py",
             title=report.TITLE, sections=report.sections)


def build(workdir: str) -> tuple[str, list]:
  return results_page.build(workdir, figures=FIGURES, image_dir="img/diffmix", **BUILD)


def main(argv: list[str] | None = None) -> int:
  return results_page.main(argv, description=__doc__.splitlines()[0],
                           default_workdir="workdirs/diffmix", default_out="docs/results_diffmix.md",
                           figures=FIGURES, image_subdir="diffmix", **BUILD)


if __name__ == "__main__":
  sys.exit(main())
