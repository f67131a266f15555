"""Hard parameter sharing: one shared trunk, one head per task.

Caruana, "Multitask Learning", Machine Learning 28 (1997). The trunk's output is the shared
representation z, so the "rep" gradient mode applies.
"""

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax

from mtl_jax.models import base
from mtl_jax.models import inputs


@dataclasses.dataclass(frozen=True)
class HardSharing(base.MultiTaskModel):
  trunk: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  has_shared_representation: bool = True

  def init(self, rng, inputs):
    keys = jax.random.split(rng, 1 + len(self.task_names))
    trunk_vars = self.trunk.init(keys[0], inputs, train=False)
    features = self.trunk.apply(trunk_vars, inputs, train=False)
    parts = {('shared',): trunk_vars}
    for key, name in zip(keys[1:], self.task_names):
      parts[('tasks', name)] = self.heads[name].init(key, features, train=False)
    return base.nest(parts)

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    features, updates = base.call(self.trunk, base.subtree(variables, 'shared'), inputs,
                                  train=train, rngs=base.component_rngs(rngs, 0), mutable=mutable)
    updates = base.nest({('shared',): updates}) if updates else {}
    return (features, updates) if mutable else features

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names, start=1):
      if task_names is not None and name not in task_names:
        continue
      outputs[name], updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name), features, train=train,
          rngs=base.component_rngs(rngs, index), mutable=mutable)
      if updates:
        parts[('tasks', name)] = updates
    return (outputs, base.nest(parts)) if mutable else outputs

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if not mutable:
      return self.decode(variables, self.encode(variables, inputs, train=train, rngs=rngs),
                         train=train, rngs=rngs)
    features, trunk_updates = self.encode(variables, inputs, train=train, rngs=rngs, mutable=True)
    outputs, head_updates = self.decode(variables, features, train=train, rngs=rngs, mutable=True)
    return outputs, base.merge(trunk_updates, head_updates)


@base.ARCHS.register('hard')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=()) -> HardSharing:
  trunk = inputs.Trunk(input_layer, base.make_encoder(encoder, encoder_kwargs))
  return HardSharing(task_names=tuple(t.name for t in tasks), trunk=trunk,
                     heads=base.make_heads(tasks, head_hidden_sizes))
