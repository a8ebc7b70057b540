"""The `classifier` method end to end through `jaxgen.main.run`, and its config errors."""

import json
import os

import pytest

from jaxgen import main as jaxgen_main


def test_tiny_run_writes_results_report_and_resumes(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  argv = ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={workdir}"]
  assert jaxgen_main.run(argv) == 0
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for key in ("accuracy", "per_class_accuracy", "ece", "multiview_accuracy", "seed", "data"):
    assert key in results, key
  assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["ece"] <= 1.0
  assert len(results["per_class_accuracy"]) == len(results["confusion_matrix"])
  assert len(results["per_view_accuracy"]) == results["num_views"] == 2
  report = open(os.path.join(workdir, "report.md")).read()
  assert "multi-view accuracy" in report and "seed: 0" in report and "multiview renderer" in report
  assert os.path.getsize(os.path.join(workdir, "eval", "confusion.png")) > 0
  capsys.readouterr()
  assert jaxgen_main.run(argv) == 0  # every stage is done: nothing is recomputed
  assert capsys.readouterr().out.count("already done") == 3


@pytest.mark.parametrize("override, needle", [
    ("--config.classifier.nope=1", "nope"),
    ("--config.classifier.arch=resnet19", "classifier.arch"),
    ("--config.data.name=imagenet", "data.name"),
    ("--config.classifier.train.batch_size=1000", "batch_size"),
    ("--config.classifier.label_smoothing=1.5", "label_smoothing"),
])
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, override, needle):
  argv = ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={tmp_path}", override]
  assert jaxgen_main.run(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and needle in err, err
  assert not os.path.exists(tmp_path / "checkpoints")  # failed before anything ran


def test_finetune_from_missing_run_is_a_config_error(tmp_path, capsys):
  argv = ["jaxgen", "--config=configs/classifier.py:tiny", f"--workdir={tmp_path}",
          f"--config.init_from.workdir={tmp_path / 'nowhere'}"]
  assert jaxgen_main.run(argv) == 2
  assert "init_from.workdir" in capsys.readouterr().err
