"""Attention mix: each task runs the trunk with a learned blend of shared and own parameters.

Every task k has its own copy Θ_k of the trunk (input layer + encoder), there is one shared copy
Θ_s of the same structure, and a learnable mixing weight a_k ∈ [0, 1]. Task k's features are the
trunk evaluated at the blended parameters

    θ_k = a_k Θ_s + (1 − a_k) Θ_k,        y_k = head_k(trunk(x; θ_k)),

and the architecture adds the regulariser

    R(a) = λ Σ_k a_k²                     (`penalty(params)`, λ = `penalty_strength`),

which the trainer adds to the update as its gradient (`mtl_jax.optim.penalty`, through
`train.loop.make_optimizer`); it never enters the per-task gradients a method combines. Pushing a_k
down hands task k over to its own parameters, so a task keeps a large a_k only where the shared
parameters pay for the penalty in its loss. a_k = 1 is hard sharing for task k, a_k = 0 an
independent network.

This is a parameter-space form of the convex combination of a common and task-specific models
(Ruiz, Alaíz & Dorronsoro, "A Convex Formulation of SVM-Based Multi-task Learning", HAIS 2019, and
"Convex Multi-Task Learning with Neural Networks", HAIS 2022, which blend the models' *outputs*
with a per-task λ_k); the blend and its penalty are as specified for this project, not taken from
one paper.

Parameterisation: a_k = sigmoid(ρ_k) with ρ_k the stored parameter (`tasks/<k>/mix`). A sigmoid
rather than a clip to [0, 1]: a clipped a_k that reaches 0 or 1 has zero gradient from both the
loss and the penalty and stays there for good, while the sigmoid always has a gradient and keeps
a_k inside (0, 1). Its ends are still reachable in floating point (sigmoid(±inf) = 1 and 0 exactly),
which the tests use to check that a_k = 1 runs exactly Θ_s and a_k = 0 exactly Θ_k.

Parameters: {'shared': Θ_s (the trunk's params), 'tasks': {k: {'trunk': Θ_k, 'head': ..., 'mix':
ρ_k}}}. Task k's loss reaches Θ_s and only task k's Θ_k, ρ_k and head. Every Θ_k starts as a copy
of Θ_s, so every task starts from the same function whatever its a_k (a blend of two independent
random initialisations would shrink the weights' scale by up to √2 per layer); ∂L_k/∂a_k =
⟨∇_θ L_k, Θ_s − Θ_k⟩ is then zero at the first step and grows as Θ_s and Θ_k part. Non-trainable
collections (batch statistics) belong to the network that actually runs, task k's blended trunk:
they live under `<collection>/tasks/<k>/trunk`. The K blended trunks run as one vmapped program
over a task axis, as `soft.py` runs its towers.

There is no single shared representation (each task's trunk differs), so "rep" mode is refused;
the shared parameters Θ_s are what "jacobian"-mode methods arbitrate.
"""

import dataclasses
import math
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import inputs


@dataclasses.dataclass(frozen=True)
class AttentionMix(base.MultiTaskModel):
  trunk: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  penalty_strength: float = 0.0
  init_mix: float = 0.5

  def init(self, rng, inputs):
    trunk_key, *head_keys = jax.random.split(rng, 1 + len(self.task_names))
    trunk_vars = self.trunk.init(trunk_key, inputs, train=False)
    features = self.trunk.apply(trunk_vars, inputs, train=False)
    logit = math.log(self.init_mix / (1.0 - self.init_mix))
    parts = {('shared',): {'params': trunk_vars['params']}}
    for key, name in zip(head_keys, self.task_names):
      # Real copies, one buffer per leaf: the train step donates the state, and one buffer
      # donated twice crashes the process.
      parts[('tasks', name, 'trunk')] = jax.tree.map(jnp.copy, trunk_vars)
      parts[('tasks', name, 'head')] = self.heads[name].init(key, features, train=False)
      parts[('tasks', name, 'mix')] = {'params': jnp.full((), logit, jnp.float32)}
    return base.nest(parts)

  def mix_weights(self, params) -> jax.Array:
    """a = sigmoid(ρ), [K], in task order."""
    return jnp.stack([jax.nn.sigmoid(params['tasks'][name]['mix']) for name in self.task_names])

  def penalty(self, params) -> jax.Array:
    """λ Σ_k a_k²."""
    return self.penalty_strength * jnp.sum(jnp.square(self.mix_weights(params)))

  def trunks(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    """Every task's features from its blended trunk, [K, batch, ...], and updated collections."""
    params = variables['params']
    num_tasks = len(self.task_names)
    stack = lambda *xs: jnp.stack(xs)
    own = [base.subtree(variables, 'tasks', name, 'trunk') for name in self.task_names]
    stacked = jax.tree.map(stack, *own)
    a = self.mix_weights(params)

    def blend(shared, task):
      weight = a.reshape((num_tasks,) + (1,) * shared.ndim).astype(task.dtype)
      return weight * shared[None] + (1 - weight) * task

    stacked['params'] = jax.tree.map(blend, params['shared'], stacked['params'])
    per_task_rngs = None
    if rngs:
      per_task_rngs = {name: jax.random.split(jax.random.fold_in(key, 0), num_tasks)
                       for name, key in rngs.items()}

    def one_trunk(v, r):
      return base.call(self.trunk, v, inputs, train=train, rngs=r, mutable=mutable)

    features, updates = jax.vmap(one_trunk)(stacked, per_task_rngs)
    parts = {}
    if updates:
      for index, name in enumerate(self.task_names):
        parts[('tasks', name, 'trunk')] = jax.tree.map(lambda x, i=index: x[i], updates)
    return features, base.nest(parts)

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    features, updates = self.trunks(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names):
      outputs[name], head_updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name, 'head'), features[index],
          train=train, rngs=base.component_rngs(rngs, index + 1), mutable=mutable)
      if head_updates:
        parts[('tasks', name, 'head')] = head_updates
    return (outputs, base.merge(updates, base.nest(parts))) if mutable else outputs


@base.ARCHS.register('attention_mix')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          penalty_strength=1e-3, init_mix=0.5) -> AttentionMix:
  """arch_kwargs: `penalty_strength` λ >= 0 of λ Σ_k a_k²; `init_mix`, every a_k at the start,
  strictly between 0 and 1 (a_k = sigmoid(ρ_k) only reaches 0 and 1 at ρ_k = ∓inf)."""
  try:
    penalty_strength = float(penalty_strength)
    init_mix = float(init_mix)
  except (TypeError, ValueError):
    raise UserError('attention_mix: penalty_strength and init_mix must be numbers, got '
                    f'{penalty_strength!r} and {init_mix!r}') from None
  if not penalty_strength >= 0:
    raise UserError(f'attention_mix: penalty_strength (λ in λ Σ_k a_k²) must be >= 0, got '
                    f'{penalty_strength}; e.g. --config.arch_kwargs.penalty_strength=1e-3')
  if not 0 < init_mix < 1:
    raise UserError(f'attention_mix: init_mix must be strictly between 0 and 1 (a_k is a '
                    f'sigmoid), got {init_mix}; e.g. --config.arch_kwargs.init_mix=0.5')
  trunk = inputs.Trunk(input_layer, base.make_encoder(encoder, encoder_kwargs))
  return AttentionMix(task_names=tuple(t.name for t in tasks), trunk=trunk,
                      heads=base.make_heads(tasks, head_hidden_sizes),
                      penalty_strength=penalty_strength, init_mix=init_mix)
