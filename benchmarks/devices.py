"""Device setup, the header lines and the interleaved timing of the side-by-side benchmarks
(jaxgen vs PyTorch)."""

from __future__ import annotations

import os
from typing import Any, Callable


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
