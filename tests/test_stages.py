"""jaxgen.stages: the shared run state, figures gated by log_images, stage skipping."""

import json

import jax
import numpy as np

from jaxgen import configlib
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

