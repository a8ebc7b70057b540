"""A progress line for long work: steps/s, ETA and the latest metrics, at most every few seconds."""

from __future__ import annotations

import sys
import time
from typing import Mapping


class Progress:
  """Prints `[name] step 120/1000 (12%) 35.2 steps/s ETA 0:00:25 loss=0.123` to stderr."""

  def __init__(self, name: str, total: int, start: int = 0, *, every_seconds: float = 10.0,
               enabled: bool = True):
    self.name, self.total, self.enabled = name, total, enabled
    self.every_seconds = every_seconds
    self._t0 = time.perf_counter()
    self._start = start
    self._last_print = 0.0

  def update(self, step: int, metrics: Mapping[str, float] | None = None, force: bool = False) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if not force and now - self._last_print < self.every_seconds and step < self.total:
      return
    self._last_print = now
    elapsed = max(now - self._t0, 1e-9)
    rate = (step - self._start) / elapsed
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
    shown = " ".join(f"{k}={v:.4g}" for k, v in list((metrics or {}).items())[:4])
    pct = 100.0 * step / max(self.total, 1)
    print(f"[{self.name}] step {step}/{self.total} ({pct:.0f}%) {rate:.2f} steps/s ETA {eta_text} {shown}",
          file=sys.stderr, flush=True)

  def done(self) -> None:
    if self.enabled:
      elapsed = time.perf_counter() - self._t0
      print(f"[{self.name}] finished in {elapsed:.1f}s", file=sys.stderr, flush=True)
