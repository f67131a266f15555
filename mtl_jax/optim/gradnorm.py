"""Gradient normalisation (GradNorm), Chen et al. (ICML 2018)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, gramian_weighting

# Weights are kept at or above this before the renormalisation, so that they stay positive.
_MIN_WEIGHT = 1e-6


class GradNormState(NamedTuple):
  """`weights`: w ([K], float32, sums to K); `initial_losses`: L(0), each task's first positive
  loss (0 until the task has been seen); `inner`: the Adam state of w."""
  weights: jax.Array
  initial_losses: jax.Array
  inner: optax.OptState


def gradnorm(num_tasks: int, alpha: float = 1.5,
             learning_rate: float = 0.025) -> MultiTaskTransformation:
  """GradNorm: learn loss weights that equalise the tasks' weighted gradient norms.

  "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
  Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018. With task weights w (init 1),

      G_k = ||w_k g_k|| = w_k sqrt(G_kk)          (from the Gramian's diagonal)
      L~_k = L_k / L_k(0),   r_k = L~_k / mean_j L~_j       (relative inverse training rate)
      target_k = mean_j G_j * r_k^alpha                     (held constant)
      L_grad = sum_k |G_k - target_k|,

  the update is `sum_k w_k g_k` with the current weights, and then w takes one gradient step of its
  own optimiser (Adam) on L_grad, dL_grad/dw_k = sign(G_k - target_k) sqrt(G_kk), and is
  renormalised to sum to K. Tasks that train slowly (large r_k) get larger target norms, hence
  larger weights; alpha sets the strength of that pull (alpha = 0: equal gradient norms).

  Output scale: the sum of the task gradients (the weights sum to K, as equal weighting's).

  Gradient norms: the paper takes them at the last shared layer's weights. In "jacobian" mode they
  are taken over all shared parameters (the Gramian of the whole shared Jacobian); in "rep" mode at
  the shared representation (LibMTL's rep_grad option). Task-specific parameters receive
  `w_k grad L_k` (the weights scale the losses: weights_task_params=True).

  Args:
    num_tasks: K.
    alpha: the restoring-force strength (the paper uses 1.5 on NYUv2, 0.12 on its regression
      benchmark).
    learning_rate: the Adam learning rate of w. The paper trains w with the network's optimiser;
      here w has its own, so the chain's optimiser and schedule act on the model only.

  Differences from LibMTL's GradNorm: LibMTL parametrises the weights as K softmax(v) instead of
  renormalising, takes L(0) as the mean loss of the first epoch, and trains with equal weights
  during that epoch. Here L_k(0) is the first step's loss (the paper's), recorded per task at the
  first update where the task's loss is positive.

  Notes: a task with no recorded L(0) yet or whose loss is not positive (a loss of exactly 0 marks
  a task absent from the batch) gets r_k = 1 and is left out of mean_j L~_j. Weights are clipped at
  1e-6 before renormalising, so they stay positive. A step whose losses or Gramian are not finite
  leaves the state unchanged.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'gradnorm')
  if not alpha >= 0:
    raise UserError(f'gradnorm(alpha=...) must be non-negative, got {alpha!r}')
  if not learning_rate > 0:
    raise UserError(f'gradnorm(learning_rate=...) must be positive, got {learning_rate!r}')
  inner = optax.adam(learning_rate)

  def init_state():
    weights = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(weights, jnp.zeros((num_tasks,), jnp.float32), inner.init(weights))

  def gramian_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'gradnorm')
    g = jnp.asarray(gramian).astype(jnp.float32)
    losses = _util.as_float32(losses)
    w = state.weights
    present = (losses > 0) & jnp.isfinite(losses)
    initial = jnp.where(state.initial_losses > 0, state.initial_losses,
                        jnp.where(present, losses, 0.0))
    valid = present & (initial > 0)
    ratio = jnp.where(valid, losses / jnp.where(valid, initial, 1.0), 0.0)
    mean_ratio = jnp.sum(ratio) / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    r = jnp.where(valid & (mean_ratio > 0), ratio / jnp.where(mean_ratio > 0, mean_ratio, 1.0),
                  1.0)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    weighted = w * norms
    target = jnp.mean(weighted) * r ** alpha
    grad = jnp.sign(weighted - target) * norms
    updates, inner_state = inner.update(grad, state.inner, w)
    new_w = jnp.maximum(w + updates, _MIN_WEIGHT)
    new_w = num_tasks * new_w / jnp.sum(new_w)
    new = GradNormState(new_w, initial, inner_state)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(g))
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return w, new

  return gramian_weighting('gradnorm', init_state, gramian_weights, weights_task_params=True)
