"""Scale-invariant loss (SI): the sum of the log-losses."""

import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, loss_weighting


def si(min_loss: float = 1e-8) -> MultiTaskTransformation:
  """Scale-invariant loss: minimise `sum_k log L_k`.

  The "SI" baseline of "Multi-Task Learning as a Bargaining Game" (Nash-MTL), Navon et al.,
  ICML 2022: rescaling any task's loss by a constant leaves the update unchanged. The gradient of

      L_si = sum_k log L_k      is      sum_k w_k g_k,      w_k = 1 / L_k

  (the losses treated as constants, so the "weighted" mode's one backward of `sum_k w_k L_k` is
  exactly the gradient of L_si).

  Output scale: a sum of the task gradients each divided by its loss (sum_k g_k / L_k); its size
  grows as the losses fall, so a learning rate tuned for equal weighting is usually too large
  late in training (an adaptive optimiser such as Adam absorbs most of this).

  Args:
    min_loss: losses below it are taken as `min_loss` (bounding each weight by 1 / min_loss).
      Nash-MTL's code takes the plain log of the losses.

  Notes: a task whose loss is not positive and finite (a loss of exactly 0 marks a task absent from
  the batch) gets w_k = 0. Stateless.
  """
  if not min_loss > 0:
    raise UserError(f'si(min_loss=...) must be positive, got {min_loss!r}')

  def loss_weights(state, losses):
    del state
    losses = _util.as_float32(losses)
    present = (losses > 0) & jnp.isfinite(losses)
    return jnp.where(present, 1.0 / jnp.maximum(jnp.where(present, losses, 1.0), min_loss), 0.0)

  return loss_weighting('si', EmptyState, loss_weights)
