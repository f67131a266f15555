"""Equal weighting (EW): the plain sum of the task losses."""

import jax.numpy as jnp

from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, loss_weighting


def ew() -> MultiTaskTransformation:
  """Equal weighting: `w_k = 1`, the update is `sum_k g_k`, the gradient of `sum_k L_k`.

  The baseline every multi-task paper compares against. Output scale: the sum of the task
  gradients (K times their mean). Stateless.
  """
  def loss_weights(state, losses):
    del state
    return jnp.ones(losses.shape, jnp.float32)

  return loss_weighting('ew', EmptyState, loss_weights)
