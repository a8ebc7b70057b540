"""The architecture matrix's runner and its generated page (docs/classifier_results.md)."""

import json

from jaxgen import main as jaxgen_main
from jaxgen.classifier import matrix, results_page


def test_matrix_commands_and_bad_presets(tmp_path, capsys):
  """Every matrix preset plus finetune; multi-view runs share one render cache; finetune continues
  from resnet18_multiview; an unknown preset, or finetune without its source, exits 2."""
  from configs import classifier as classifier_config
  assert matrix.matrix_presets() == classifier_config.MATRIX + ("finetune",)
  root = str(tmp_path)
  assert f"--config.data.data_dir={root}/render_cache" in matrix.command(root, "vit_tiny_multiview")
  assert not any("data_dir" in a for a in matrix.command(root, "vit_tiny_digits"))
  assert f"--config.init_from.workdir={root}/resnet18_multiview" in matrix.command(root, "finetune")
  assert matrix.main([f"--root={root}", "--presets=resnet18_cifar"]) == 2
  assert "resnet18_cifar" in capsys.readouterr().err
  assert matrix.main([f"--root={root}", "--presets=finetune"]) == 2
  assert "resnet18_multiview" in capsys.readouterr().err


def test_results_page_prints_only_numbers_of_its_json_files(tmp_path):
  """The page from a matrix.json over a real (tiny) classifier run: one row per run, the finetune
  section, the reproduction scope; a number that is in no JSON file is reported."""
  work = tmp_path / "run"
  assert jaxgen_main.run(["jaxgen.main", "--config=configs/classifier.py:tiny",
                          f"--workdir={work}"]) == 0
  runs = {name: {"workdir": str(work), "wall_seconds": 12.3, "command": f"python -m jaxgen.main {name}"}
          for name in ("resnet18_multiview", "finetune")}
  (tmp_path / "matrix.json").write_text(json.dumps({"runs": runs}))
  page, unlisted = results_page.build(str(tmp_path))
  assert not unlisted, unlisted
  results = json.loads((work / "results.json").read_text())
  row = next(line for line in page.splitlines() if "`resnet18_multiview` |" in line
             and line.startswith("| vit_tiny"))
  assert f"| {results['single_view_accuracy']:.3f} |" in row and "| 12.3 |" in row
  assert "## Continuing a run (`finetune` preset)" in page and "same CPU model" in page
  runs["finetune"]["wall_seconds"] = 45.6
  (tmp_path / "matrix.json").write_text(json.dumps({"runs": runs}))
  assert "| 45.6 |" in results_page.build(str(tmp_path))[0]
  assert results_page.main([f"--root={tmp_path}", f"--out={tmp_path / 'page.md'}"]) == 0
  assert results_page.main([f"--root={tmp_path / 'none'}"]) == 2
  # a page number that no JSON file holds is caught (three rows print the 12.3 s)
  from jaxgen.io.report import unlisted_numbers
  known = results_page.known_numbers(runs, {"resnet18_multiview": results})
  assert unlisted_numbers(page.replace("| 12.3 |", "| 99.9 |"), known,
                          results_page.NUMBER) == ["99.9"] * 3
