"""Writes the Colab notebooks `colabs/<method>.ipynb`, one per method, from the specs below.

    python colabs/build.py            # rewrite every notebook
    python colabs/build.py --check    # exit 1 if a committed notebook differs from its spec

Every notebook installs jaxgen from the repository (with jax for the runtime's TPU / GPU / CPU),
reports the devices, runs the method through `jaxgen.main.run` (the `tiny` preset unless
JAXGEN_NOTEBOOK_PRESET says otherwise) and shows the report with its tables and the run's figures.
The test suite executes them (tests/test_colabs.py) so they never fall behind the code.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
# Colab: put the repository at /content/jaxgen first (clone your fork or upload it); elsewhere this
# notebook runs inside a checkout. jax is installed for the runtime's accelerator.
import os, shutil, subprocess, sys
IN_COLAB = 'google.colab' in sys.modules
REPO = os.environ.get('JAXGEN_REPO_DIR') or ('/content/jaxgen' if IN_COLAB else os.path.abspath(
    '..' if os.path.basename(os.getcwd()) == 'colabs' else '.'))
if IN_COLAB:
    extra = '[tpu]' if os.path.exists('/dev/accel0') or 'COLAB_TPU_ADDR' in os.environ else (
        '[cuda]' if shutil.which('nvidia-smi') else '')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '-e', REPO + extra], check=True)
os.chdir(REPO)
sys.path.insert(0, REPO)"""

DEVICES = """\
import jax
print('backend:', jax.default_backend(), '| devices:', jax.device_count(), jax.devices()[0].device_kind)"""

RUN = """\
import json
from jaxgen import main as jaxgen_main
PRESET = os.environ.get('JAXGEN_NOTEBOOK_PRESET', 'tiny')  # {presets}
WORKDIR = os.environ.get('JAXGEN_NOTEBOOK_WORKDIR', 'workdirs/colab-{method}-' + PRESET)
EXTRA = json.loads(os.environ.get('JAXGEN_NOTEBOOK_ARGS', '[]'))  # more jaxgen.main flags
code = jaxgen_main.run(['jaxgen.main', f'--config=configs/{method}.py:{{PRESET}}', f'--workdir={{WORKDIR}}', *EXTRA])
assert code == 0, f'jaxgen exited with code {{code}}'  # finished stages are skipped on a rerun"""

REPORT = """\
from IPython.display import Image, Markdown, display
display(Markdown(open(os.path.join(WORKDIR, 'report.md')).read()))"""

FIGURES = """\
import glob
figures = sorted(glob.glob(os.path.join(WORKDIR, 'samples', '*.png'))) + sorted(
    glob.glob(os.path.join(WORKDIR, 'eval', '*.png')))
for png in figures[:{count}]:
    print(os.path.relpath(png, WORKDIR))
    display(Image(png))
if not figures:
    print('no figures: the run was made with log_images=False')"""

METHODS = {
    "mvld": {
        "title": "MVLD: multi-view latent diffusion",
        "intro": "Paper 002 (details in paper 000 II-IV): a per-view autoencoder and a multi-time "
                 "masked latent diffusion that generates any missing views from any observed ones, "
                 "and latent transmission. Runs on the embedded multi-view renders.",
        "presets": "'default': the full embedded run (~23 min on 2 CPU cores)",
        "figures": 8,
        "extra": [
            ("markdown", "## Generate any views from any views with the Python API"),
            ("code", """\
import numpy as np
from PIL import Image as PILImage
from jaxgen.data.multiview import build_multiview_splits
from jaxgen.io.images import image_grid
from jaxgen.mvld.api import MVLD

model = MVLD.from_workdir(WORKDIR)
c = model.config.data
test = build_multiview_splits(os.path.join(WORKDIR, 'data'), seed=model.config.seed, num_train=c.num_train,
                              num_test=c.num_test, num_views=c.num_views, image_size=c.image_size)['test']
images = test['images'][:4]
observed = np.zeros((4, c.num_views), bool); observed[:, 0] = True  # only the front view is sent
views = model.generate(images, observed, jax.random.key(0))
assert views.shape == images.shape
PILImage.fromarray(image_grid(np.concatenate([views, images]))).resize((512, 512), PILImage.NEAREST)"""),
        ],
    },
    "lrgmm": {
        "title": "LR-GMM-NN: low-rank Gaussian mixtures in a reduced latent space",
        "intro": "Paper 004: PCA-reduced autoencoder latents, a Gaussian mixture fit by a jit-compiled "
                 "EM, low-rank sampling and nearest-neighbour patch projection, on the embedded faces.",
        "presets": "'default': the full embedded run",
        "figures": 6,
    },
    "softlabel_gan": {
        "title": "Softlabel-GAN: BigGAN with a soft-label projection discriminator",
        "intro": "Paper 003: a classifier's class probabilities for real images condition BigGAN's "
                 "projection discriminator, on embedded renders made imbalanced as in the paper.",
        "presets": "'default': the embedded comparison of label sources",
        "figures": 6,
    },
    "dimvida": {
        "title": "DIMVIDA: generated views for single-view classification",
        "intro": "Paper 000: MVLD adds three generated views to every single-view sample, for "
                 "classifier training and at test time (the mean of the four outputs).",
        "presets": "'default': the embedded comparison (~14 min on 2 CPU cores)",
        "figures": 4,
    },
    "diffmix": {
        "title": "Diff-Mix: inter-class image translation with a fine-tuned text-to-image model",
        "intro": "Paper 001: textual inversion + LoRA fine-tuning of the text-to-image backbone, "
                 "SDEdit translation between classes with soft labels, confidence filtering and "
                 "classifier training on the enlarged set, on the embedded fine-grained target.",
        "presets": "'default': the 5-shot comparison of Diff-Mix, Diff-Aug, Diff-Gen, Real-Mix and none",
        "figures": 6,
    },
}


def _cell(kind: str, source: str) -> dict:
  lines = source.splitlines(keepends=True)
  cell = {"cell_type": kind, "id": "", "metadata": {}, "source": lines}
  if kind == "code":
    cell.update(execution_count=None, outputs=[])
  return cell


def notebook(method: str) -> dict:
  spec = METHODS[method]
  cells = [
      _cell("markdown", f"# jaxgen: {spec['title']}\n\n{spec['intro']} Works on a Colab CPU, GPU "
                        "or TPU runtime: the mesh takes every device it finds."),
      _cell("code", SETUP),
      _cell("code", DEVICES),
      _cell("markdown", "## Run the method\n`tiny` takes a minute or two on a CPU; set "
                        "`JAXGEN_NOTEBOOK_PRESET` (or `PRESET`) for a larger preset."),
      _cell("code", RUN.format(method=method, presets=spec["presets"])),
      _cell("markdown", "## Report: data, seeds, feature networks and results tables"),
      _cell("code", REPORT),
      _cell("markdown", "## Figures"),
  ]
  cells.append(_cell("code", FIGURES.format(count=spec["figures"])))
  cells += [_cell(kind, source) for kind, source in spec.get("extra", ())]
  for i, cell in enumerate(cells):
    cell["id"] = f"{method}-{i}"  # stable ids: rebuilding changes nothing
  return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"},
                                       "language_info": {"name": "python"}, "accelerator": "TPU"},
          "nbformat": 4, "nbformat_minor": 5}


def path(method: str) -> str:
  return os.path.join(HERE, f"{method}.ipynb")


def text(method: str) -> str:
  return json.dumps(notebook(method), indent=1) + "\n"


def main(argv: list[str]) -> int:
  stale = []
  for method in METHODS:
    if "--check" in argv:
      if not os.path.exists(path(method)) or open(path(method)).read() != text(method):
        stale.append(method)
    else:
      with open(path(method), "w") as f:
        f.write(text(method))
  if stale:
    print("out of date (run python colabs/build.py): " + ", ".join(stale))
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
