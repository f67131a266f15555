"""Soft parameter sharing: one tower per task, kept close by an L2 penalty between towers.

Duong et al., "Low Resource Dependency Parsing: Cross-lingual Parameter Sharing in a Neural Network
Parser", ACL 2015; Yang & Hospedales, "Trace Norm Regularised Deep Multi-Task Learning", 2017. The
penalty λ Σ_{i<j} ||Θ_i − Θ_j||² is `mtl_jax.optim.soft_sharing`, applied to the `towers` group.

The K towers are one Linen module whose variables are stacked along a leading task axis and run
with `jax.vmap`: K towers compile to one program (no Python loop), and the task axis can be sharded.
Parameters: {'shared': {}, 'towers': <stacked, task-specific>, 'tasks': {name: head}}.
"""

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax

from mtl_jax.models import base
from mtl_jax.models import inputs


@dataclasses.dataclass(frozen=True)
class SoftSharing(base.MultiTaskModel):
  tower: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  param_groups: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {'shared': 'shared', 'towers': 'tasks', 'tasks': 'tasks'})
  has_shared_parameters: bool = False

  def init(self, rng, inputs):
    num_tasks = len(self.task_names)
    tower_key, *head_keys = jax.random.split(rng, 1 + num_tasks)
    tower_vars = jax.vmap(lambda key: self.tower.init(key, inputs, train=False))(
        jax.random.split(tower_key, num_tasks))
    features = jax.vmap(lambda v: self.tower.apply(v, inputs, train=False))(tower_vars)
    parts = {('towers',): tower_vars}
    for index, (key, name) in enumerate(zip(head_keys, self.task_names)):
      parts[('tasks', name)] = self.heads[name].init(key, features[index], train=False)
    variables = base.nest(parts)
    variables['params']['shared'] = {}
    return variables

  def towers(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    """Features of every tower, [K, batch, ...], and the towers' updated collections."""
    tower_vars = base.subtree(variables, 'towers')
    per_tower_rngs = None
    if rngs:
      per_tower_rngs = {name: jax.random.split(jax.random.fold_in(key, 0), len(self.task_names))
                        for name, key in rngs.items()}

    def one_tower(v, r):
      return base.call(self.tower, v, inputs, train=train, rngs=r, mutable=mutable)

    features, updates = jax.vmap(one_tower)(tower_vars, per_tower_rngs)
    return features, (base.nest({('towers',): updates}) if updates else {})

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    features, updates = self.towers(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names):
      outputs[name], head_updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name), features[index],
          train=train, rngs=base.component_rngs(rngs, index + 1), mutable=mutable)
      if head_updates:
        parts[('tasks', name)] = head_updates
    return (outputs, base.merge(updates, base.nest(parts))) if mutable else outputs


@base.ARCHS.register('soft')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=()) -> SoftSharing:
  tower = inputs.Trunk(input_layer, base.make_encoder(encoder, encoder_kwargs))
  return SoftSharing(task_names=tuple(t.name for t in tasks), tower=tower,
                     heads=base.make_heads(tasks, head_hidden_sizes))
