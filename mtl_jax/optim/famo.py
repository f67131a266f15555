"""Fast adaptive multitask optimisation (FAMO), Liu et al. (NeurIPS 2023)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, loss_weighting


class FAMOState(NamedTuple):
  """`logits`: xi ([K], float32); `inner`: the optimiser state of xi; `prev_losses`: the losses of
  the last update; `count`: updates seen (int32, saturates at 1)."""
  logits: jax.Array
  inner: optax.OptState
  prev_losses: jax.Array
  count: jax.Array


def famo(num_tasks: int, learning_rate: float = 0.025, weight_decay: float = 1e-3,
         min_loss: float = 1e-8) -> MultiTaskTransformation:
  """FAMO: balance the rates at which the task losses fall, with O(1) extra work per step.

  "FAMO: Fast Adaptive Multitask Optimization", Liu, Feng, Stone & Liu, NeurIPS 2023. Task logits
  xi give z = softmax(xi); the update is

      d = sum_k w_k g_k,      w_k = c z_k / L_k,      c = 1 / sum_j (z_j / L_j),

  the gradient of sum_k (z_k / c) log L_k with c held constant (as in the official code), so
  the weights sum to 1: the output is a **convex combination** of the task gradients (the scale of
  one task gradient, about 1/K of equal weighting's sum). The logits follow the decrease of the
  log-losses between consecutive updates,

      delta_k = log L_k(t-1) - log L_k(t),
      xi <- xi - lr * Adam(J_softmax(xi)^T delta + weight_decay * xi),

  which raises the weight of the tasks whose loss fell least (Adam with L2 weight decay added to
  the gradient, as `torch.optim.Adam(weight_decay=...)` in the official code).

  Which losses: the official code calls `update` after the parameter step with the losses of the
  *same* batch at the new parameters (an extra forward pass). This transform has no extra forward:
  delta uses the losses of the previous update and those of the current one, which come from the
  next batch. Batch-to-batch noise enters delta; the logit step is small (lr 0.025) and Adam
  normalises it, so the noise mostly averages out. Order within a step: the logit step that
  delta(t) allows is taken first, then the weights of step t use the new logits, as in the
  official code where `update(L(t))` precedes the next weighting. The first update only records
  the losses (z = uniform).

  Args:
    num_tasks: K.
    learning_rate: the Adam learning rate of xi (the paper's beta = 0.025).
    weight_decay: gamma, the L2 regularisation of xi (1e-3 as in the official run scripts and
      LibMTL; the default argument of the official `famo.py` is 1e-2).
    min_loss: losses below it are taken as `min_loss` in L_k and log L_k (the official code adds
      1e-8 to every loss). Its `min_losses` offset (0 by default) is not offered.

  Notes: a task whose loss is not positive and finite (a loss of exactly 0 marks a task absent from
  the batch) gets w_k = 0 and delta_k = 0 (so its logit moves only through the softmax coupling
  and the decay). The official code's gradient-norm clipping (max_norm=1) is not part of this
  transform: chain `optax.clip_by_global_norm` after it. A step with a non-finite loss leaves the
  state unchanged.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'famo')
  if not learning_rate > 0:
    raise UserError(f'famo(learning_rate=...) must be positive, got {learning_rate!r}')
  if not weight_decay >= 0:
    raise UserError(f'famo(weight_decay=...) must be non-negative, got {weight_decay!r}')
  if not min_loss > 0:
    raise UserError(f'famo(min_loss=...) must be positive, got {min_loss!r}')
  inner = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  def init_state():
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(logits, inner.init(logits), jnp.zeros((num_tasks,), jnp.float32),
                     jnp.zeros((), jnp.int32))

  def present(losses):
    return (losses > 0) & jnp.isfinite(losses)

  def floored(losses):
    return jnp.maximum(jnp.where(present(losses), losses, 1.0), min_loss)

  def log_loss(losses):
    return jnp.log(floored(losses))

  def logit_step(state, losses):
    """(logits, inner state) after the step that the previous and current losses allow."""
    both = present(state.prev_losses) & present(losses)
    delta = jnp.where(both, log_loss(state.prev_losses) - log_loss(losses), 0.0)
    z = jax.nn.softmax(state.logits)
    grad = z * (delta - jnp.dot(z, delta))  # J_softmax^T delta (the Jacobian is symmetric)
    updates, inner_state = inner.update(grad, state.inner, state.logits)
    stepped = (state.logits + updates, inner_state)
    return jax.tree.map(lambda a, b: jnp.where(state.count > 0, a, b), stepped,
                        (state.logits, state.inner))

  def loss_weights(state, losses):
    _util.check_losses_shape(losses, num_tasks, 'famo')
    losses = _util.as_float32(losses)
    logits, _ = logit_step(state, losses)
    z = jax.nn.softmax(logits)
    ratio = jnp.where(present(losses), z / floored(losses), 0.0)
    total = jnp.sum(ratio)
    return ratio / jnp.where(total > 0, total, 1.0)

  def advance(state, losses, w):
    del w
    _util.check_losses_shape(losses, num_tasks, 'famo')
    losses = _util.as_float32(losses)
    logits, inner_state = logit_step(state, losses)
    new = FAMOState(logits, inner_state, losses, jnp.ones((), jnp.int32))
    finite = jnp.all(jnp.isfinite(losses))
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)

  return loss_weighting('famo', init_state, loss_weights, advance)
