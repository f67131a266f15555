"""Dynamic weight average (DWA), Liu, Johns & Davison (CVPR 2019)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, loss_weighting


class DWAState(NamedTuple):
  """The losses of the last two updates (`prev` = L(t-1), `prev2` = L(t-2)) and how many updates
  have been seen (`count`, int32, saturates at 2)."""
  prev: jax.Array
  prev2: jax.Array
  count: jax.Array


def dwa(num_tasks: int, temperature: float = 2.0) -> MultiTaskTransformation:
  """Dynamic weight average: weight each task by how slowly its loss is falling.

  "End-to-End Multi-Task Learning with Attention", Liu, Johns & Davison, CVPR 2019:

      r_k(t) = L_k(t-1) / L_k(t-2),      w(t) = K softmax(r(t) / T),

  and `w = 1` for the first two updates. The weights sum to K (the scale of the sum of task
  gradients, as equal weighting).

  Difference from the paper: the paper's L_k(t) is the average training loss of epoch t. This
  transform has no notion of epochs; it uses the losses of the previous two *updates* (the state
  holds the last two loss vectors). Step losses are noisier than epoch averages, so expect noisier
  weights; a larger temperature smooths them.

  Args:
    num_tasks: K.
    temperature: T (the paper's value is 2); larger T gives weights closer to 1.

  Notes: losses are treated as constants. Where L_k(t-2) is not positive or a ratio is not finite
  (e.g. a task absent from a batch, whose loss is 0), r_k = 1 is used. A step with a non-finite
  loss leaves the state unchanged.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'dwa')
  if not temperature > 0:
    raise UserError(f'dwa(temperature=...) must be positive, got {temperature!r}')

  def init_state():
    ones = jnp.ones((num_tasks,), jnp.float32)
    return DWAState(ones, ones, jnp.zeros((), jnp.int32))

  def loss_weights(state, losses):
    _util.check_losses_shape(losses, num_tasks, 'dwa')
    ok = state.prev2 > 0
    ratio = state.prev / jnp.where(ok, state.prev2, 1.0)
    ratio = jnp.where(ok & jnp.isfinite(ratio), ratio, 1.0)
    w = num_tasks * jax.nn.softmax(ratio / temperature)
    return jnp.where(state.count >= 2, w, jnp.ones_like(w))

  def advance(state, losses, w):
    del w
    _util.check_losses_shape(losses, num_tasks, 'dwa')
    losses = _util.as_float32(losses)
    new = DWAState(losses, state.prev, jnp.minimum(state.count + 1, 2).astype(jnp.int32))
    finite = jnp.all(jnp.isfinite(losses))
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)

  return loss_weighting('dwa', init_state, loss_weights, advance)
