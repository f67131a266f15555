"""Gradient sign dropout (GradDrop), Chen et al. (NeurIPS 2020)."""

from typing import NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, elementwise


class GradDropState(NamedTuple):
  """`key`: the raw (uint32) data of the PRNG key the next uniforms are drawn from."""
  key: jax.Array


def graddrop_leaf(grads: jax.Array, uniform: jax.Array, leak: jax.Array) -> jax.Array:
  """GradDrop on one leaf [K, ...] given U (shape [...]) and the leaks [K]; returns [...].

  Two passes over the tasks (the purity, then the masked sum), each a loop of elementwise ops
  (`_util.task_loop`): a reduction over the leading task axis is slow on XLA:CPU.
  """
  num_tasks = grads.shape[0]
  dtype = jnp.promote_types(grads.dtype, jnp.float32)
  zeros = jnp.zeros(grads.shape[1:], dtype)

  def sums(k, acc):
    g = grads[k].astype(dtype)
    return acc[0] + g, acc[1] + jnp.abs(g)

  total, mass = _util.task_loop(num_tasks, sums, (zeros, zeros))
  purity = jnp.where(mass > 0, 0.5 * (1.0 + total / jnp.where(mass > 0, mass, 1.0)), 0.5)
  positive_survive, negative_survive = purity > uniform, purity < uniform
  leak = leak.astype(dtype)

  def masked_sum(k, acc):
    g = grads[k].astype(dtype)
    keep = (positive_survive & (g > 0)) | (negative_survive & (g < 0))
    return acc + (leak[k] + (1.0 - leak[k]) * keep.astype(dtype)) * g

  return _util.task_loop(num_tasks, masked_sum, zeros).astype(grads.dtype)


def graddrop(seed: int = 0, leak: Union[float, Sequence[float]] = 0.0) -> MultiTaskTransformation:
  """GradDrop: per element, keep the task-gradient components of one randomly chosen sign.

  "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", Chen et al.,
  NeurIPS 2020, Algorithm 1. Per element of the gradient (leaf by leaf):

      P = 1/2 (1 + sum_k g_k / sum_k |g_k|)          (sign purity, in [0, 1]; 1/2 where all g_k = 0)
      U ~ Uniform(0, 1), one per element, shared by the tasks
      M_k = [P > U] [g_k > 0] + [P < U] [g_k < 0]
      update = sum_k (l_k + (1 - l_k) M_k) g_k

  so with probability P the positive components survive and otherwise the negative ones (leak
  l_k = 0: pure GradDrop; l_k = 1: the plain sum). The output is on the scale of the sum of the
  task gradients.

  Modes: "rep" first, as in the paper (a GradDrop layer acts on the gradients at a layer's
  activations; LibMTL requires rep_grad): leaves are then [K, batch, ...] and the result is
  back-propagated through the trunk. "jacobian" applies the same rule to the parameter gradients.

  Differences from the paper and LibMTL:
    * The paper multiplies each task's gradient by sgn(A) (the activations' signs) before computing
      P. With P computed per element, that only swaps the roles of U and 1 - U where A < 0 (the
      keep probabilities are unchanged) and zeroes elements where A = 0 (whose gradient through a
      ReLU is 0 anyway); the train step does not pass activations, so we omit it.
    * The paper sums over the batch only for "batch-separated" gradients (tasks on different
      examples); here every task sees the same batch, so P is per element (LibMTL always sums
      over the batch with sgn(A)).
    * LibMTL adds 1e-7 to sum |g_k|, which pushes P to 1/2 for small gradients; we do not.
    * The paper's optional monotone f(P) is the identity here.

  Randomness: fresh uniforms at every update, from a key kept in the state as raw uint32 data
  (one split per leaf), so a fixed `seed` reproduces the run and a restored state resumes it.

  Args:
    seed: the PRNG seed.
    leak: the leak l in [0, 1], one number or one per task (K numbers).
  """
  key = _util.key_data(seed)
  if isinstance(leak, bool):
    raise UserError(f'graddrop(leak=...) must be a number or a sequence of numbers, got {leak!r}')
  try:
    leak_values = np.asarray(leak, np.float32)
  except (TypeError, ValueError):
    raise UserError(f'graddrop(leak=...) must be a number or a sequence of numbers, '
                    f'got {leak!r}') from None
  if leak_values.ndim > 1 or not np.all((leak_values >= 0) & (leak_values <= 1)):
    raise UserError(f'graddrop(leak=...) must be in [0, 1] (one number or one per task), '
                    f'got {leak!r}')

  def init(params):
    del params
    return GradDropState(key)

  def update(task_grads, state, params=None, *, losses=None, **extra_args):
    del params, extra_args
    num_tasks = losses.shape[0]
    if leak_values.ndim == 1 and leak_values.shape[0] != num_tasks:
      raise UserError(f'graddrop was given {leak_values.shape[0]} leaks but there are '
                      f'{num_tasks} tasks')
    leaks = jnp.broadcast_to(jnp.asarray(leak_values), (num_tasks,))
    keep, use = _util.split_key_data(state.key)
    leaves, treedef = jax.tree.flatten(task_grads)
    keys = jax.random.split(use, max(len(leaves), 1))
    out = []
    for leaf, leaf_key in zip(leaves, keys):
      uniform = jax.random.uniform(leaf_key, leaf.shape[1:], jnp.float32)
      out.append(graddrop_leaf(leaf, uniform, leaks))
    return jax.tree.unflatten(treedef, out), GradDropState(keep)

  return elementwise('graddrop', init, update, modes=('rep', 'jacobian'))
