"""Device setup, the header lines and the interleaved timing of the side-by-side benchmarks
(jaxgen vs PyTorch)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, ContextManager

import numpy as np


def jax_line() -> str:
  """'JAX <version> on <device kind> (<backend>, N CPU cores visible, host CPU <model>)'; the host
  CPU's model numbers tell apart machines whose model name is generic ('AMD EPYC')."""
  import jax  # pylint: disable=import-outside-toplevel

  from jaxgen.io.report import cpu_model  # pylint: disable=import-outside-toplevel

  dev = jax.devices()[0]
  return (f"JAX {jax.__version__} on {dev.device_kind} ({jax.default_backend()}, "
          f"{os.cpu_count()} CPU cores visible, host CPU {cpu_model()})")


def setup_torch(torch: Any, threads: int | None) -> str:
  """Same numerics as XLA on GPU (TF32 matmuls, cudnn autotuning), or `threads` CPU threads
  (all cores when None / 0); returns where torch runs."""
  if torch.cuda.is_available():
    torch.backends.cudnn.benchmark = True
    # TF32 matmuls as XLA's default precision on GPU (torch's convs already use TF32).
    torch.set_float32_matmul_precision("high")
    return torch.cuda.get_device_name()
  torch.set_num_threads(threads or os.cpu_count() or 1)
  return f"cpu, {torch.get_num_threads()} threads"


def interleaved_rates(measures: dict[str, Callable[[], float]], rounds: int
                      ) -> dict[str, list[float]]:
  """Each measure's rate in each round; the contenders take turns, so a slow spell of a shared
  machine lands on all of them rather than on one."""
  rates: dict[str, list[float]] = {name: [] for name in measures}
  for _ in range(rounds):
    for name, measure in measures.items():
      rates[name].append(measure())
  return rates


@dataclasses.dataclass
class Contender:
  """One side of a workload, built and ready: `run(n)` does n steps / calls and waits for them."""
  run: Callable[[int], None]
  warm: int  # untimed steps / calls first (compilation)
  timed: int  # steps / calls per measurement
  per_call: int  # units (steps or images) per step / call
  close: Callable[[], None] = lambda: None  # frees its weights (device memory)

  def rate_of(self, seconds: float) -> float:
    return self.per_call * self.timed / seconds


@dataclasses.dataclass
class Entry:
  """A contender to build (`build()`), the context it is built and run in, and whether its failure
  is reported and skipped (`optional`) rather than raised."""
  name: str
  build: Callable[[], Contender]
  context: Callable[[], ContextManager] = contextlib.nullcontext
  optional: bool = False


def time_contenders(label: str, entries: list[Entry], unit: str, rounds: int,
                    on_failure: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
  """{name: {'rate', 'warmup_s'}} of each entry that ran, printing a line each.

  rounds == 1: one entry at a time is built, warmed up, timed once and closed (what a GPU's memory
  allows for large models). rounds > 1: all are built and warmed up first, then timed in turns
  (`interleaved_rates`) and the rate is the median of the rounds; closed at the end.
  """
  out: dict[str, dict[str, float]] = {}
  live: dict[str, tuple[Contender, Entry]] = {}
  for e in entries:
    with e.context():
      try:
        c = e.build()
        t0 = time.perf_counter()
        c.run(c.warm)
        warm_s = time.perf_counter() - t0
        if rounds == 1:
          t0 = time.perf_counter()
          c.run(c.timed)
          out[e.name] = {"rate": c.rate_of(time.perf_counter() - t0), "warmup_s": warm_s}
          c.close()
      except Exception as err:  # pylint: disable=broad-except
        if not e.optional:
          raise
        print(f"{label}: {e.name} failed: {type(err).__name__}: {str(err).splitlines()[0]}")
        if on_failure is not None:
          on_failure()
        continue
    if rounds == 1:
      print(f"{label}: {e.name} {out[e.name]['rate']:.2f} {unit} (warm-up {warm_s:.1f}s)",
            flush=True)
    else:
      live[e.name] = (c, e)
      out[e.name] = {"warmup_s": warm_s}
      print(f"{label}: {e.name} warm-up {warm_s:.1f}s", flush=True)
  if rounds == 1:
    return out

  def measure(c: Contender, e: Entry) -> Callable[[], float]:
    def once() -> float:
      with e.context():
        t0 = time.perf_counter()
        c.run(c.timed)
        return c.rate_of(time.perf_counter() - t0)
    return once

  rates = interleaved_rates({name: measure(c, e) for name, (c, e) in live.items()}, rounds)
  for name, (c, _) in live.items():
    c.close()
    out[name]["rate"] = float(np.median(rates[name]))
    print(f"{label}: {name} median {out[name]['rate']:.2f} {unit} over {rounds} rounds ("
          + ", ".join(f"{r:.2f}" for r in rates[name]) + ")", flush=True)
  return out
