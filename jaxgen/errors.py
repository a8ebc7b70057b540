"""Error types whose message is one line naming the value and what was expected.

`jaxgen.main` turns each into that line on stderr and exit code 2 (bad config or data) or 1 (a run
that started and then failed), so a user never has to read a traceback to learn what to fix.
"""

from __future__ import annotations

from typing import Any


class JaxgenError(Exception):
  """Base class: `str(err)` is a complete one-line message."""

  exit_code = 1


class ConfigError(JaxgenError):
  """A config key holds an unknown, mistyped or impossible value."""

  exit_code = 2

  def __init__(self, key: str, value: Any, expected: str):
    self.key, self.value, self.expected = key, value, expected
    super().__init__(f"config.{key}={value!r}: expected {expected}")


class EnvironmentSettingError(JaxgenError):
  """An environment variable jaxgen reads holds a value it does not know."""

  exit_code = 2

  def __init__(self, name: str, value: str, expected: str):
    self.name, self.value, self.expected = name, value, expected
    super().__init__(f"environment variable {name}={value!r}: expected {expected}")


class DataError(JaxgenError):
  """A data source is missing, unreadable or inconsistent (names the file, class or path)."""

  exit_code = 2


class CheckpointError(JaxgenError):
  """No usable checkpoint could be restored (every candidate was corrupt or unreadable)."""


class TrainingDivergedError(JaxgenError):
  """A loss or gradient became NaN/Inf; the last good checkpoint is kept."""

  def __init__(self, step: int, metric: str, value: float):
    self.step, self.metric, self.value = step, metric, value
    super().__init__(
        f"training diverged at step {step}: {metric}={value} is not finite; "
        "the last good checkpoint was kept (lower the learning rate or enable gradient clipping)")
