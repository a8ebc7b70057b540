"""The Colab notebooks: one per method, each the output of colabs/build.py (never edited by hand),
every code cell valid Python. Each notebook is executed in a Jupyter kernel on a tiny run's workdir
by a test of its method in the default suite: tests/test_mvld_end_to_end.py, tests/test_lrgmm.py,
tests/test_softlabel_gan.py, tests/test_dimvida.py and tests/test_diffmix.py."""

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "colabs"))
import build  # noqa: E402  (colabs/build.py)

from jaxgen.main import METHODS  # noqa: E402


def test_one_notebook_per_method_and_each_is_built_from_its_spec():
  assert set(build.METHODS) == set(METHODS) - {"classifier", "t2i"}  # the five papers' methods
  done = subprocess.run([sys.executable, os.path.join(ROOT, "colabs", "build.py"), "--check"],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("method", sorted(build.METHODS))
def test_every_code_cell_is_valid_python_and_runs_the_methods_config(method):
  nb = json.load(open(os.path.join(ROOT, "colabs", f"{method}.ipynb")))
  code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  for source in code:
    ast.parse(source)
  assert any(f"configs/{method}.py" in source for source in code)
  assert os.path.exists(os.path.join(ROOT, "configs", f"{method}.py"))
