"""Soft parameter sharing: an L2 penalty pulling the K stacked task towers together."""

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.optim import _util


def soft_sharing(
    strength: float,
    mask: Optional[Union[Any, Callable[[optax.Params], Any]]] = None,
    *,
    num_tasks: Optional[int] = None,
) -> optax.GradientTransformation:
  """Adds the gradient of `strength * sum_{i<j} ||Theta_i - Theta_j||^2` to the updates.

  Soft sharing (Duong et al. 2015, Yang & Hospedales 2017) gives each task its own tower and
  penalises the distance between them. The towers are stacked along a leading task axis (leaf
  shape [K, ...]), and the penalty's gradient with respect to tower k is

      d/dTheta_k  lambda sum_{i<j} ||Theta_i - Theta_j||^2 = 2 lambda K (Theta_k - mean_j Theta_j).

  A plain optax transform (its inputs have no task axis, unlike the multi-task methods), used like
  `optax.add_decayed_weights`, after the multi-task method and before the optimiser::

      optax.chain(mtl_jax.optim.ew(), mtl_jax.optim.soft_sharing(1e-3, mask), optax.adam(1e-3))

  It needs `params`. Output scale: the updates plus lambda times the penalty's gradient.

  Args:
    strength: lambda >= 0.
    mask: which leaves are stacked towers: a pytree of bools with the structure of the params (or a
      prefix of it), or a callable params -> such a pytree, as in `optax.masked`. Default: all
      leaves.
    num_tasks: if given, only selected leaves whose leading axis has size `num_tasks` are
      penalised (the rest pass through); if None, every selected leaf with at least one axis is
      taken to be stacked along its first axis. Scalars are never penalised.
  """
  try:
    strength = float(strength)
  except (TypeError, ValueError):
    raise UserError(f'soft_sharing(strength=...) must be a number, got {strength!r}') from None
  if not strength >= 0:
    raise UserError(f'soft_sharing(strength=...) must be >= 0, got {strength!r}')
  if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int)
                                or num_tasks < 1):
    raise UserError(f'soft_sharing(num_tasks=...) must be a positive integer, got {num_tasks!r}')

  def init(params):
    del params
    return optax.EmptyState()

  def leaf_update(update, param):
    if update is None or param.ndim == 0:
      return update
    if num_tasks is not None and param.shape[0] != num_tasks:
      return update
    p = param.astype(jnp.promote_types(param.dtype, jnp.float32))
    penalty_grad = (2.0 * strength * p.shape[0]) * (p - _util.sum_tasks(p)[None] / p.shape[0])
    return (update + penalty_grad).astype(update.dtype)

  def update(updates, state, params=None):
    if params is None:
      raise UserError('soft_sharing needs the parameters: call tx.update(updates, state, params)')
    return jax.tree.map(leaf_update, updates, params, is_leaf=lambda x: x is None), state

  tx = optax.GradientTransformation(init, update)
  if mask is not None:
    return optax.masked(tx, mask)
  return tx
