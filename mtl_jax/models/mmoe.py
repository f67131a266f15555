"""Multi-gate Mixture-of-Experts (MMoE): shared experts, one softmax gate per task.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018. With x the output of the (shared) input layer, E experts f_1..f_E (each an
instance of the configured encoder) and one gate per task:

    g_k(x) = softmax(W_k x)                        W_k ∈ R^{E×d}, no bias, as in the paper
    y_k    = h_k( Σ_e g_k(x)_e f_e(x) )            h_k: task k's head (tower)

The E experts are one Linen module whose variables are stacked on a leading expert axis and run
with `jax.vmap` (as `soft.py` stacks its towers), so E experts compile to one program.

Parameters: {'shared': {'input': input layer, 'experts': <stacked, E>},
             'tasks': {k: {'gate': W_k, 'head': h_k}}}.
The representation for the "rep" gradient mode is {'input': x [B, d], 'experts': [B, E, D]}: both
come from shared parameters only, and `decode` reads only the gates and heads. The gates read x,
so the gradient at the representation reaches the input layer through the gates as well.

`init_experts`, `run_experts`, `SoftmaxGate` and `mix` are shared with the other
mixture-of-experts architectures (cgc.py, ple.py, dselect_k.py).
"""

import dataclasses
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.models import base


class SoftmaxGate(nn.Module):
  """g(x) = softmax(W x) over `num_experts`; x is flattened per example (images, embeddings)."""

  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    logits = nn.Dense(self.num_experts, use_bias=False, name='dense')(x.reshape(x.shape[0], -1))
    return jax.nn.softmax(logits, axis=-1)


def mix(weights: jax.Array, experts: jax.Array) -> jax.Array:
  """Σ_e w_e f_e per example: weights [B, E], expert outputs [B, E, ...] -> [B, ...]."""
  return jnp.einsum('be,be...->b...', weights.astype(experts.dtype), experts)


def init_experts(expert: nn.Module, rng: jax.Array, x, num: int):
  """Variables of `num` independently initialised experts, stacked on a leading expert axis."""
  return jax.vmap(lambda key: expert.init(key, x, train=False))(jax.random.split(rng, num))


def num_stacked(variables) -> int:
  """The length of the expert axis of stacked expert variables."""
  leaves = jax.tree.leaves(variables.get('params', {}))
  if not leaves:
    raise UserError('an expert must have parameters (its encoder has none)')
  return leaves[0].shape[0]


def run_experts(expert: nn.Module, groups: Sequence[Mapping], inputs, *, train: bool,
                rngs: Sequence[Mapping | None] | None, mutable: bool):
  """Runs G groups of stacked experts (same structure, different owners) as ONE vmapped program.

  Args:
    expert: the Linen module every expert instantiates.
    groups: per group, its stacked variables {collection: tree with a leading axis n_g}.
    inputs: one array every expert reads, or a list with one array per group (PLE's upper levels,
      where task k's experts read task k's branch).
    train: passed to the experts.
    rngs: per group, its own rng streams (or None): each group's keys depend only on the group,
      never on which other groups run beside it, so a group sees the same dropout masks alone or
      batched with others.
    mutable: whether to return updated non-param collections (batch statistics).

  Returns:
    ([outputs [B, n_g, ...] per group], [updated collections per group, stacked like its
    variables, {} when there are none]).
  """
  sizes = [num_stacked(g) for g in groups]
  # Concatenating the groups' parameters costs a copy of the (small) expert weights; it buys one
  # batched dot per layer for all experts instead of one per group.
  variables = groups[0] if len(groups) == 1 else jax.tree.map(
      lambda *xs: jnp.concatenate(xs), *groups)
  if isinstance(inputs, (list, tuple)):
    x = jnp.concatenate([jnp.broadcast_to(xg, (n,) + xg.shape) for xg, n in zip(inputs, sizes)])
    x_axis = 0
  else:
    x, x_axis = inputs, None
  expert_rngs = None
  if rngs and rngs[0]:
    expert_rngs = {name: jnp.concatenate([jax.random.split(r[name], n)
                                          for r, n in zip(rngs, sizes)])
                   for name in rngs[0]}

  def one(v, r, xi):
    return base.call(expert, v, xi, train=train, rngs=r, mutable=mutable)

  out, updates = jax.vmap(one, in_axes=(0, 0, x_axis))(variables, expert_rngs, x)
  out = jnp.moveaxis(out, 0, 1)  # [B, E, ...]: the representation's leading axis is the batch
  bounds = np.cumsum([0] + sizes)
  outs = [out[:, start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]
  group_updates = [jax.tree.map(lambda u, a=start, b=stop: u[a:b], updates)
                   for start, stop in zip(bounds[:-1], bounds[1:])]
  return outs, group_updates


def check_count(arch: str, name: str, value, minimum: int) -> int:
  """An integer arch_kwarg >= minimum, or a UserError that says how to set it."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise UserError(f'arch {arch!r}: {name} must be an integer >= {minimum}, got {value!r}; set '
                    f'e.g. --config.arch_kwargs.{name}={max(minimum, 1)}')
  return int(value)


@dataclasses.dataclass(frozen=True)
class MMoE(base.MultiTaskModel):
  """E shared experts stacked on a leading axis; task k's head reads Σ_e g_k(x)_e f_e(x)."""

  input_layer: nn.Module = None
  expert: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  num_experts: int = 8
  has_shared_representation: bool = True

  def gate(self) -> nn.Module:
    """Task k's gate module (the same architecture for every task; its own parameters)."""
    return SoftmaxGate(self.num_experts)

  def init(self, rng, inputs):
    input_key, expert_key, *task_keys = jax.random.split(rng, 2 + 2 * len(self.task_names))
    input_vars = self.input_layer.init(input_key, inputs, train=False)
    x = self.input_layer.apply(input_vars, inputs, train=False)
    expert_vars = init_experts(self.expert, expert_key, x, self.num_experts)
    (experts,), _ = run_experts(self.expert, [expert_vars], x, train=False, rngs=None,
                                mutable=False)
    parts = {('shared', 'input'): input_vars, ('shared', 'experts'): expert_vars}
    for index, name in enumerate(self.task_names):
      parts[('tasks', name, 'gate')] = self.gate().init(task_keys[2 * index], x)
      parts[('tasks', name, 'head')] = self.heads[name].init(task_keys[2 * index + 1],
                                                             experts[:, 0], train=False)
    return base.nest(parts)

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    x, input_updates = base.call(self.input_layer, base.subtree(variables, 'shared', 'input'),
                                 inputs, train=train, rngs=base.component_rngs(rngs, 0),
                                 mutable=mutable)
    (experts,), (expert_updates,) = run_experts(
        self.expert, [base.subtree(variables, 'shared', 'experts')], x, train=train,
        rngs=[base.component_rngs(rngs, 1)], mutable=mutable)
    features = {'input': x, 'experts': experts}
    if not mutable:
      return features
    return features, base.nest({('shared', 'input'): input_updates,
                                ('shared', 'experts'): expert_updates})

  def gate_weights(self, variables, features, task_names=None) -> dict:
    """{task: g_k(x) [B, E]} from the representation `encode` returns (for inspection)."""
    return {name: self.gate().apply(base.subtree(variables, 'tasks', name, 'gate'),
                                    features['input'])
            for name in self.task_names if task_names is None or name in task_names}

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    weights = self.gate_weights(variables, features, task_names)
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names):
      if name not in weights:
        continue
      outputs[name], parts[('tasks', name, 'head')] = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name, 'head'),
          mix(weights[name], features['experts']), train=train,
          rngs=base.component_rngs(rngs, 2 + index), mutable=mutable)
    return (outputs, base.nest(parts)) if mutable else outputs

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if not mutable:
      return self.decode(variables, self.encode(variables, inputs, train=train, rngs=rngs),
                         train=train, rngs=rngs)
    features, shared_updates = self.encode(variables, inputs, train=train, rngs=rngs,
                                           mutable=True)
    outputs, task_updates = self.decode(variables, features, train=train, rngs=rngs,
                                        mutable=True)
    return outputs, base.merge(shared_updates, task_updates)


@base.ARCHS.register('mmoe')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          num_experts=8) -> MMoE:
  """`num_experts` E (default 8, the paper's census-income setting)."""
  return MMoE(task_names=tuple(t.name for t in tasks), input_layer=input_layer,
              expert=base.make_encoder(encoder, encoder_kwargs),
              heads=base.make_heads(tasks, head_hidden_sizes),
              num_experts=check_count('mmoe', 'num_experts', num_experts, 1))
