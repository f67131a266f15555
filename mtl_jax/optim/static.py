"""Static weighting: a fixed, user-chosen weight per task."""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, loss_weighting


def static(weights: Sequence[float]) -> MultiTaskTransformation:
  """Fixed weights: the update is `sum_k w_k g_k`, the gradient of `sum_k w_k L_k`.

  Args:
    weights: one finite weight per task, in the order of the task axis (K of them).

  Output scale: that of `sum_k w_k g_k`; with all weights 1 this is `ew()`. Stateless. The number
  of weights is checked against the number of losses when the update is traced.
  """
  try:
    w = np.asarray(weights, dtype=np.float64)
  except (TypeError, ValueError):
    raise UserError(f'static(weights=...) needs a list of numbers, got {weights!r}') from None
  if w.ndim != 1 or w.size == 0:
    raise UserError(f'static(weights=...) needs one weight per task (a non-empty list), '
                    f'got {weights!r}')
  if not np.all(np.isfinite(w)):
    raise UserError(f'static(weights=...) must be finite, got {weights!r}')
  w = w.astype(np.float32)

  def loss_weights(state, losses):
    del state
    if losses.shape != w.shape:
      raise UserError(f'static: {w.size} weights given for {losses.shape[0]} tasks; '
                      'pass one weight per task')
    return jnp.asarray(w)

  return loss_weighting('static', EmptyState, loss_weights)
