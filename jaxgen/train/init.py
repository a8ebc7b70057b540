"""Network initialisation as one compiled call.

Calling `module.init` eagerly dispatches every random-initialiser op on its own, and each is
compiled on first use: seconds per network on CPU (hundreds of tiny XLA programs). One `jax.jit`
compiles the whole init once, and gives the eager values bit for bit (tests/test_train_loop.py).

`fast_compile=True` also switches XLA:CPU's optimising passes off, which compile a ResNet-18's
init ~8x faster, at the price of last-bit differences from eager init (the classifiers use it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled_init(init: Callable[..., Any], *args: Any, fast_compile: bool = False) -> Any:
  """`init(*args)` (e.g. `lambda k: model.init(k, x)`) run as one jitted call."""
  if fast_compile and jax.default_backend() == "cpu":
    return jax.jit(init, compiler_options=_FAST_COMPILE)(*args)
  return jax.jit(init)(*args)
