"""A meta-learning loss from any `mtl_jax.models` architecture: `loss_fn(params, batch)`.

    L(θ; B) = Σ_{k ∈ tasks} L_k(model.apply({'params': θ, **collections}, B.inputs), B.labels_k)

with L_k the task's masked-mean loss, exactly as the train step computes it
(`mtl_jax.train.step.task_losses`), so a meta-learner works on every registered architecture.
The model runs in inference mode (no dropout; batch statistics are read from `collections`,
not updated): an inner loop that mutated them would make the adapted function depend on the
order of the inner steps' batches in a way MAML's derivation does not cover.
"""

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from mtl_jax.models.base import MultiTaskModel
from mtl_jax.tasks import Task
from mtl_jax.train.step import task_losses

PyTree = Any


def model_loss(model: MultiTaskModel, tasks: Sequence[Task],
               collections: Mapping | None = None, weights: Sequence[float] | None = None):
  """`loss_fn(params, batch) -> Σ_k w_k L_k` over `tasks` (a subset of the model's, in any
  order); `weights` default to 1. `batch` is the trainer's {'inputs', 'labels'[, 'label_mask']}."""
  tasks = tuple(tasks)
  unknown = [t.name for t in tasks if t.name not in model.task_names]
  if unknown:
    raise ValueError(f'tasks {unknown} are not among the model\'s: {list(model.task_names)}')
  collections = dict(collections or {})
  w = None if weights is None else jnp.asarray(weights, jnp.float32)

  def loss_fn(params: PyTree, batch: Mapping) -> jax.Array:
    outputs = model.apply({'params': params, **collections}, batch['inputs'])
    losses = task_losses(tasks, outputs, batch)
    return losses.sum() if w is None else jnp.dot(w, losses)

  return loss_fn


def task_specific(model: MultiTaskModel):
  """The ANIL mask of a model: its task-specific parameter groups (`model.param_groups` values
  'tasks': the heads, gates, towers) adapt, the shared ones do not. A function of params, so it
  can be handed to `inner_loop(..., mask=...)` before the params exist."""
  def mask(params: PyTree) -> dict:
    return {key: model.param_groups.get(key, 'shared') == 'tasks' for key in params}
  return mask
