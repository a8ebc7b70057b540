"""TrainState: the one pytree a training stage carries (params, optimiser state, EMA, BN stats)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Parameters, optimiser state, EMA parameters, optional BatchNorm statistics and the step.

  `ema_params` is None when EMA is off (ema_decay == 0); evaluation code reads `eval_params`,
  which is the EMA when there is one and the raw parameters otherwise. `extra` holds any method-specific state (e.g. a second network's
  params for a GAN) that must be checkpointed with the rest.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  batch_stats: Any = None
  extra: Any = None
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, *, ema_decay: float = 0.0,
             batch_stats: Any = None, extra: Any = None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
               batch_stats=batch_stats, extra=extra, tx=tx,
               ema_decay=float(ema_decay))

  @property
  def eval_params(self) -> Any:
    """Parameters for evaluation and sampling: the EMA if kept, else the raw parameters."""
    return self.params if self.ema_params is None else self.ema_params

  def apply_gradients(self, grads: Any, **changes: Any) -> "TrainState":
    """One optimiser step, then the EMA update `ema <- d * ema + (1 - d) * params`."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    if self.ema_decay > 0:
      d = self.ema_decay
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, self.ema_params, params)
    else:
      ema = None
    return self.replace(step=self.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                        **changes)
