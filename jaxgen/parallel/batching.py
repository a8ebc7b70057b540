"""One pad-and-batch loop for inference over arrays (classifiers, judges, Inception, LPIPS, metrics).

`batched_apply(fn, inputs, batch_size, mesh=...)` runs `fn` on fixed-size batches: the last one
is padded (one compiled shape serves every call), batches are sharded over the mesh's data axis
when a mesh is given (the batch size is rounded up to a multiple of its size), and the outputs,
any pytree of arrays with a leading batch axis, come back unpadded and concatenated as NumPy.
Only for functions that treat examples independently (padding rows must not affect the others).

On several hosts every process passes the same inputs (evaluation sets are read on every host);
each computes the rows of its own devices only, and the outputs are gathered so every process
returns the whole result (tests/test_multiprocess.py).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from jaxgen.parallel.mesh import data_parallel_size, place_full_batch, to_host


def batch_size_for(n: int, batch_size: int, mesh: Mesh | None = None, *,
                   full_batches: bool = False) -> int:
  """min(batch_size, n) (batch_size when `full_batches`) rounded up to a multiple of the mesh's
  data-parallel size (>= 1)."""
  multiple = data_parallel_size(mesh) if mesh is not None else 1
  bs = max(1, batch_size if full_batches else min(batch_size, n))
  return -(-bs // multiple) * multiple


def batched_apply(fn: Callable[..., Any], inputs: np.ndarray | tuple[np.ndarray, ...],
                  batch_size: int, *, mesh: Mesh | None = None, pad: str = "zeros",
                  full_batches: bool = False) -> Any:
  """`fn(*batch)` over `inputs` (an array or a tuple of equally long arrays) in padded batches.

  pad: 'zeros' or 'edge' (repeat the last row). full_batches: pad inputs shorter than
  `batch_size` to a whole batch too, so calls with any number of rows share one compiled shape
  (by default a short input runs as one batch of its own length). Returns the concatenated
  outputs (NumPy), or None when the inputs are empty.
  """
  arrays = tuple(np.asarray(a) for a in (inputs if isinstance(inputs, tuple) else (inputs,)))
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"batched_apply: inputs of lengths {[len(a) for a in arrays]}; expected equal")
  if n == 0:
    return None
  bs = batch_size_for(n, batch_size, mesh, full_batches=full_batches)
  outs = []
  for start in range(0, n, bs):
    chunk = [a[start:start + bs] for a in arrays]
    m = len(chunk[0])
    if m < bs:
      chunk = [np.concatenate([c, np.zeros((bs - m,) + c.shape[1:], c.dtype) if pad == "zeros"
                               else np.repeat(c[-1:], bs - m, axis=0)]) for c in chunk]
    if mesh is not None:
      chunk = place_full_batch(chunk, mesh)
    out = jax.tree.map(to_host, fn(*chunk))
    outs.append(jax.tree.map(lambda o, m=m: o[:m], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
