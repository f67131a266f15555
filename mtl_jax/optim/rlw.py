"""Random loss weighting (RLW), Lin et al. (TMLR 2022)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, loss_weighting


class RLWState(NamedTuple):
  """`key`: the raw (uint32) data of the PRNG key the next weights are drawn from."""
  key: jax.Array


def rlw(num_tasks: int, seed: int = 0) -> MultiTaskTransformation:
  """Random loss weighting: fresh random weights at every update.

  "Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning",
  Lin et al., TMLR 2022 (the variant with a standard normal, as in LibMTL):

      z ~ N(0, I_K),      w = K softmax(z).

  The paper (and LibMTL) use softmax(z), weights summing to 1; here they are multiplied by K so
  that the update is on the scale of the sum of task gradients, like equal weighting (E[w_k] = 1).

  The key lives in the state as raw uint32 data: `loss_weights` draws from a split of it and
  `advance` keeps the other half, so a fixed seed gives the same sequence of weights and restoring
  a checkpointed state resumes it.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'rlw')
  key = _util.key_data(seed)

  def init_state():
    return RLWState(key)

  def loss_weights(state, losses):
    _util.check_losses_shape(losses, num_tasks, 'rlw')
    _, use = _util.split_key_data(state.key)
    z = jax.random.normal(use, (num_tasks,), jnp.float32)
    return num_tasks * jax.nn.softmax(z)

  def advance(state, losses, w):
    del losses, w
    return RLWState(_util.split_key_data(state.key)[0])

  return loss_weighting('rlw', init_state, loss_weights, advance)
