"""Uncertainty weighting (UW), Kendall, Gal & Cipolla (CVPR 2018)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, loss_weighting


class UWState(NamedTuple):
  """`log_vars` holds s_k = log sigma_k^2 ([K], float32); `inner` the Adam state of s."""
  log_vars: jax.Array
  inner: optax.OptState


def uw(num_tasks: int, learning_rate: float = 1e-3,
       init_log_var: float = 0.0) -> MultiTaskTransformation:
  """Uncertainty weighting: learned per-task log-variances s_k.

  "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics",
  Kendall, Gal & Cipolla, CVPR 2018. The objective is

      L_uw(theta, s) = sum_k exp(-s_k) L_k(theta) + s_k,        s_k = log sigma_k^2,

  so the model is trained with the weights `w_k = exp(-s_k)` (the update is `sum_k w_k g_k`,
  on the scale of the sum of task gradients: `w = 1` at `s = 0`), and s is trained on the same
  objective, by its own Adam step inside `advance`, on

      dL_uw/ds_k = 1 - exp(-s_k) L_k,

  whose fixed point is s_k = log L_k (i.e. w_k L_k = 1: each weighted loss is pushed to 1).

  Args:
    num_tasks: K.
    learning_rate: the Adam learning rate of s (the paper trains s with the model's optimiser; here
      it has its own, so that the chain's optimiser and schedule act on the model only).
    init_log_var: the initial s_k (0: start as equal weighting).

  Notes: the weights (and s's gradient) treat the losses as constants. A task whose loss is exactly
  0 (e.g. absent from the batch) leaves its s_k unchanged (its fixed point would be -inf), and a
  step with a non-finite loss leaves the whole state unchanged.
  LibMTL writes the same objective halved, L_k / (2 exp(s_k)) + s_k / 2 with s_k = -0.5 at the
  start: the same fixed point, weights 1 / (2 sigma^2) instead of 1 / sigma^2.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'uw')
  if not learning_rate > 0:
    raise UserError(f'uw(learning_rate=...) must be positive, got {learning_rate!r}')
  inner = optax.adam(learning_rate)

  def init_state():
    log_vars = jnp.full((num_tasks,), init_log_var, jnp.float32)
    return UWState(log_vars, inner.init(log_vars))

  def loss_weights(state, losses):
    _util.check_losses_shape(losses, num_tasks, 'uw')
    return jnp.exp(-state.log_vars)

  def advance(state, losses, w):
    del w
    _util.check_losses_shape(losses, num_tasks, 'uw')
    losses = _util.as_float32(losses)
    s = state.log_vars
    return UWState(*_util.scale_step(inner, s, state.inner, 1.0 - jnp.exp(-s) * losses, losses))

  return loss_weighting('uw', init_state, loss_weights, advance)
