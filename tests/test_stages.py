"""jaxgen.stages: the shared run state, figures gated by log_images, stage skipping."""

import json

import jax
import numpy as np
import pytest

from jaxgen import configlib
from jaxgen.errors import ConfigError, DataError
from jaxgen.stages import MethodRun, run_method


def _config(log_images):
  c = configlib.base_config("toy")
  c.log_images = log_images
  return c


def test_method_run_keys_config_and_figures(tmp_path):
  image = np.zeros((4, 4, 3), np.uint8)
  for flag in (True, False):
    workdir = tmp_path / str(flag)
    run = MethodRun(_config(flag), str(workdir), ("a", "b"))
    assert json.loads((workdir / "config.json").read_text())["log_images"] is flag
    run.save_figure(image, "samples", "x.png")
    assert (workdir / "samples" / "x.png").exists() is flag
    k_b = run.key("b")
    assert not np.array_equal(jax.random.key_data(k_b), jax.random.key_data(run.key("a")))
    np.testing.assert_array_equal(jax.random.key_data(run.key("b", 3)),
                                  jax.random.key_data(jax.random.fold_in(k_b, 3)))
    run.writer.close()


def test_run_method_skips_done_stages_and_closes_the_writer(tmp_path, capsys):
  calls = []
  run = MethodRun(_config(True), str(tmp_path), ("one", "report"))
  plan = [("one", lambda: calls.append("one")), ("report", lambda: calls.append("report"))]
  run_method(run, plan, "toy")
  assert calls == ["one", "report"] and "[toy] results:" in capsys.readouterr().out
  run = MethodRun(_config(True), str(tmp_path), ("one", "report"))
  run_method(run, plan, "toy", requested=["one"])
  assert calls == ["one", "report"] and "already done" in capsys.readouterr().out


def test_a_workdir_refuses_another_config(tmp_path):
  """Its stages would resume from outputs made with the recorded config (a changed value silently
  ignored) and the rewritten config.json would misstate them."""
  MethodRun(_config(True), str(tmp_path), ("a",)).writer.close()
  MethodRun(_config(True), str(tmp_path), ("a",)).writer.close()  # the same config goes on
  moved = _config(True)
  moved.mesh.model = 2  # another mesh resumes to the same numbers (docs/scaling.md)
  MethodRun(moved, str(tmp_path), ("a",)).writer.close()
  recorded = (tmp_path / "config.json").read_text()
  changed = _config(True)
  changed.seed = 7
  with pytest.raises(ConfigError, match=r"^config\.seed=7: expected 0, the value .* was run with"):
    MethodRun(changed, str(tmp_path), ("a",))
  grown = _config(True)
  grown.extra = {"depth": 2}
  with pytest.raises(ConfigError, match=r"^config\.extra=\{'depth': 2\}: expected '<absent>'"):
    MethodRun(grown, str(tmp_path), ("a",))
  assert (tmp_path / "config.json").read_text() == recorded
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(DataError, match="config.json: not readable as JSON"):
    MethodRun(_config(True), str(tmp_path), ("a",))
