"""Execute a `colabs/<method>.ipynb` notebook in a fresh Jupyter kernel (nbclient), on a workdir.

The method's end-to-end test runs the tiny preset first and hands its workdir and arguments here:
the notebook's run cell calls `jaxgen.main.run` with them (its finished stages are skipped, the
path a Colab user takes on a rerun), then renders the report and the figures. What the notebook
adds to the end-to-end test (install cell, device cell, the API it calls, the files it reads) is
executed for real, at the price of a kernel start instead of a second training run.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_notebook(method: str, workdir: str, args: Sequence[str] = (), timeout: int = 600) -> dict:
  """Execute colabs/<method>.ipynb with the tiny preset on `workdir`; returns the executed notebook
  (raises nbclient's CellExecutionError naming the failing cell)."""
  import nbclient
  import nbformat

  nb = nbformat.read(os.path.join(ROOT, "colabs", f"{method}.ipynb"), as_version=4)
  env = {"JAXGEN_NOTEBOOK_WORKDIR": str(workdir), "JAXGEN_NOTEBOOK_ARGS": json.dumps(list(args)),
         "JAXGEN_NOTEBOOK_PRESET": "tiny", "JAXGEN_REPO_DIR": ROOT}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel process inherits this environment
  try:
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


def outputs_of(nb: dict, kind: str) -> list:
  """Every output of the executed notebook with a `kind` mime type (e.g. 'image/png')."""
  return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
          if kind in o.get("data", {})]
