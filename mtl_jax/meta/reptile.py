"""Reptile: move θ toward the parameters that k SGD steps on each task reach.

Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999, 2018.
For the T tasks of a meta-batch, φ_t = `inner_loop`(θ, S_t, α, k) and

    direction  g = θ − (1/T) Σ_t φ_t,        θ ← θ − ε g     (`optax.sgd(ε)`: the paper's update)

The direction is handed to the outer optax transform as a gradient, so any optimiser works
(the paper also uses Adam on it). With k = 1, θ − φ_t = α ∇L_t(θ; S_t), and g = α times the
joint-training gradient of the mean task loss: Reptile differs from joint training only from
k = 2 on, through the terms that maximise the inner product of gradients of different
mini-batches of a task (§5 of the paper). Reptile needs no query set and no second derivatives.

With a mask, only the adapted parameters move in the inner loop, so the others get g = 0 and
never learn: a mask with Reptile trains the masked parameters alone.
"""

from typing import Any, Callable

import jax
import optax

from mtl_jax.meta import adaptation as adapt_lib
from mtl_jax.meta import step as step_lib

PyTree = Any


def reptile_direction(loss_fn: adapt_lib.LossFn, params: PyTree, support: PyTree, inner_lr,
                      inner_steps: int, *, mask: adapt_lib.Mask = None,
                      per_step_batches: bool = False):
  """(g = θ − mean_t φ_t, support losses [T, k]) over a meta-batch (leading task axis T on
  `support`; with `per_step_batches`, then an axis of size k: task t's batch for step i)."""
  def one(support):
    return adapt_lib.inner_loop(loss_fn, params, support, inner_lr, inner_steps, mask=mask,
                                per_step_batches=per_step_batches)

  adapted, support_losses = jax.vmap(one)(support)
  direction = jax.tree.map(lambda p, a: p - a.mean(0), params, adapted)
  return direction, support_losses


def make_reptile_step(loss_fn: adapt_lib.LossFn, optimizer: optax.GradientTransformation,
                      inner_lr, inner_steps: int, *, mask: adapt_lib.Mask = None,
                      per_step_batches: bool = False) -> Callable:
  """`meta_step(state, support) -> (state, metrics)`, pure and jittable
  (`step.jit_meta_step(meta_step, mesh, num_batches=1)` shards it).

  metrics: `support_loss_before` / `support_loss_after_last_step` (mean over tasks of the inner
  loop's first and last step's support loss), `direction_norm` (|g|).
  """
  if inner_steps < 1:
    raise ValueError(f'Reptile needs inner_steps >= 1 (k = 0 gives g = 0), got {inner_steps}')

  def meta_step(state: step_lib.MetaState, support):
    direction, support_losses = reptile_direction(
        loss_fn, state.params, support, inner_lr, inner_steps, mask=mask,
        per_step_batches=per_step_batches)
    metrics = {'support_loss_before': support_losses[:, 0].mean(),
               'support_loss_after_last_step': support_losses[:, -1].mean(),
               'direction_norm': optax.tree.norm(direction)}
    return step_lib.apply_outer(optimizer, state, direction), metrics

  return meta_step
