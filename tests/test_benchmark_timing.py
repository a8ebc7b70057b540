"""The side-by-side benchmarks' timing protocol (benchmarks/devices.time_contenders): sequential
(one contender alive at a time) and interleaved rounds (medians), and optional contenders whose
failure is reported and skipped."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import devices  # noqa: E402


def _entry(name, log, fail=None, optional=False, per_call=2):
  def build():
    if fail == "build":
      raise RuntimeError("no toolchain\nsecond line")
    log.append(("build", name))

    def run(n):
      if fail == "run":
        raise RuntimeError("compile failed")
      log.append(("run", name, n))

    return devices.Contender(run, warm=1, timed=3, per_call=per_call,
                             close=lambda: log.append(("close", name)))
  return devices.Entry(name, build, optional=optional)


def test_sequential_closes_each_before_building_the_next(capsys):
  log = []
  out = devices.time_contenders("w", [_entry("a", log), _entry("b", log)], "steps/s", 1)
  assert log == [("build", "a"), ("run", "a", 1), ("run", "a", 3), ("close", "a"),
                 ("build", "b"), ("run", "b", 1), ("run", "b", 3), ("close", "b")]
  assert set(out) == {"a", "b"} and all(v["rate"] > 0 and v["warmup_s"] >= 0 for v in out.values())
  assert "w: a " in capsys.readouterr().out


def test_interleaved_builds_all_then_takes_turns_and_reports_medians(monkeypatch):
  log = []
  seen = {}

  def fake_rates(measures, rounds):
    seen["names"], seen["rounds"] = list(measures), rounds
    for _ in range(rounds):
      for m in measures.values():
        m()
    return {"a": [1.0, 5.0, 3.0], "b": [2.0, 2.0, 9.0]}

  monkeypatch.setattr(devices, "interleaved_rates", fake_rates)
  out = devices.time_contenders("w", [_entry("a", log), _entry("b", log)], "steps/s", 3)
  assert log[:4] == [("build", "a"), ("run", "a", 1), ("build", "b"), ("run", "b", 1)]
  assert log[4:10] == [("run", "a", 3), ("run", "b", 3)] * 3
  assert log[10:] == [("close", "a"), ("close", "b")]
  assert seen == {"names": ["a", "b"], "rounds": 3}
  assert out["a"]["rate"] == 3.0 and out["b"]["rate"] == 2.0


@pytest.mark.parametrize("rounds", [1, 2])
@pytest.mark.parametrize("fail", ["build", "run"])
def test_an_optional_contender_that_fails_is_reported_and_skipped(capsys, rounds, fail):
  log, released = [], []
  out = devices.time_contenders("w", [_entry("torch", log, fail=fail, optional=True),
                                      _entry("jaxgen", log)], "steps/s", rounds,
                                on_failure=lambda: released.append(True))
  assert set(out) == {"jaxgen"} and released == [True]
  assert "w: torch failed: RuntimeError:" in capsys.readouterr().out


def test_a_required_contender_that_fails_raises():
  with pytest.raises(RuntimeError, match="compile failed"):
    devices.time_contenders("w", [_entry("jaxgen", [], fail="run")], "steps/s", 1)
