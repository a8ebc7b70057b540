"""Which library runs the convolutions of jaxgen's training steps on XLA:CPU.

jaxlib 0.10.2's XLA:CPU hands convolutions, dots, reductions and elementwise fusions to YNNPACK.
On the 2-core Xeon (AVX-512) where jaxgen's CPU figures are measured, YNNPACK's convolutions are
the slow part of a ResNet training step: a 3x3 64->64 weight gradient on 16x16 maps at batch 128
takes ~82 ms there against ~24 ms in XLA's own (Eigen) convolution, while YNNPACK's dots and
reductions are the faster ones (a batch-norm sum over 128x32x32x64 values: ~1.5 ms against
~28 ms). `benchmarks/conv_cpu.py` prints these per shape, `benchmarks/classifier.py` the whole
step (RESULTS.md).

`JAXGEN_XLA_CPU_CONV=eigen` compiles every training step (the one loop in `jaxgen.train.loop`)
with YNNPACK kept for dots and reductions only, so convolutions run in Eigen, and the sampling
loops (MVLD's generation with the autoencoder around it: `jaxgen.mvld.evaluate.make_generator`,
the transmission receiver; the text-to-image and Softlabel-GAN Table 7 diffusion sampling through
`sampling_jit`) with YNNPACK for dots only: there YNNPACK's reductions are the slow part, because
it fuses each GroupNorm's sums into the next matmul (docs/classifiers.md has the figures), while
in a training step the batch-norm sums over large convolution maps are faster in YNNPACK. It is
opt-in: the sums are the same up to float rounding, but training amplifies rounding, so a run
with it does not reproduce the published results pages bit for bit (they were made with XLA's
default, `JAXGEN_XLA_CPU_CONV=xla`). Other backends ignore it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator

import jax

from jaxgen.errors import EnvironmentSettingError

ENV_VAR = "JAXGEN_XLA_CPU_CONV"

# Per-compile XLA options of each choice (None: XLA's defaults). Compile options, not XLA_FLAGS,
# so the choice applies to the training steps only and the enum names are checked by XLA.
COMPILER_OPTIONS: dict[str, dict[str, Any] | None] = {
    "xla": None,
    "eigen": {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
}


# The same for jitted sampling (inference only, no batch statistics).
SAMPLING_COMPILER_OPTIONS: dict[str, dict[str, Any] | None] = {
    "xla": None,
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
}


def conv_route() -> str:
  """The value of JAXGEN_XLA_CPU_CONV ('xla' when unset); EnvironmentSettingError if unknown."""
  value = os.environ.get(ENV_VAR, "xla")
  if value not in COMPILER_OPTIONS:
    raise EnvironmentSettingError(ENV_VAR, value, " or ".join(COMPILER_OPTIONS))
  return value


def step_compiler_options(route: str | None = None) -> dict[str, Any] | None:
  """`compiler_options` for a training step's `jax.jit` on this backend (None off the CPU)."""
  return _options(COMPILER_OPTIONS, route)


def sampling_compiler_options(route: str | None = None) -> dict[str, Any] | None:
  """`compiler_options` for a jitted sampling loop on this backend (None off the CPU)."""
  return _options(SAMPLING_COMPILER_OPTIONS, route)


def sampling_jit(fn: Callable | None = None, **jit_kwargs: Any) -> Callable:
  """`jax.jit(fn, **jit_kwargs)` compiled with `sampling_compiler_options()` of the route set when
  it is called (one jitted function per route), for module-level sampling functions; usable as
  `@sampling_jit(static_argnames=...)`. The default route compiles exactly as `jax.jit` does, and
  so does a call inside another jit (traced arguments), where the outer options apply."""
  if fn is None:
    return functools.partial(sampling_jit, **jit_kwargs)
  plain = jax.jit(fn, **jit_kwargs)
  per_route: dict[str, Callable] = {}

  @functools.wraps(fn)
  def call(*args: Any, **kwargs: Any) -> Any:
    # Called inside another jit, the enclosing jit's options apply (XLA takes them at the top).
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
      return plain(*args, **kwargs)
    route = conv_route()
    if route not in per_route:
      options = sampling_compiler_options(route)
      per_route[route] = plain if options is None else jax.jit(fn, compiler_options=options,
                                                               **jit_kwargs)
    return per_route[route](*args, **kwargs)

  call.for_route = lambda route: per_route.get(route)  # the jitted function (tests, .lower)
  return call


def _options(table: dict[str, dict[str, Any] | None], route: str | None) -> dict[str, Any] | None:
  route = conv_route() if route is None else route
  if route not in table:
    raise ValueError(f"route must be one of {', '.join(table)}, got {route!r}")
  if jax.default_backend() != "cpu":
    return None
  options = table[route]
  return dict(options) if options else None


@contextlib.contextmanager
def use_conv_route(route: str) -> Iterator[None]:
  """Set JAXGEN_XLA_CPU_CONV for the duration (what is traced and jitted inside sees it), e.g. to
  time several routes in one process (benchmarks/)."""
  if route not in COMPILER_OPTIONS:
    raise ValueError(f"route must be one of {', '.join(COMPILER_OPTIONS)}, got {route!r}")
  previous = os.environ.get(ENV_VAR)
  os.environ[ENV_VAR] = route
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop(ENV_VAR, None)
    else:
      os.environ[ENV_VAR] = previous
