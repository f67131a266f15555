"""Customized Gate Control (CGC): shared experts plus task-specific experts, a gate per task.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020; CGC is the paper's single-level model. With x the
output of the (shared) input layer, S shared experts f^s_1..f^s_S and T experts f^k_1..f^k_T of
task k's own (all instances of the configured encoder):

    S_k(x) = [f^k_1(x), ..., f^k_T(x), f^s_1(x), ..., f^s_S(x)]     (own experts, then shared)
    g_k(x) = softmax(W_k x) ∈ R^{T+S}                                (no bias, as in the paper)
    y_k    = h_k( g_k(x)ᵀ S_k(x) )

With T = 0 this is MMoE with E = S experts. Every group of experts is stacked on a leading expert
axis and run with `jax.vmap`; the task-specific experts of all tasks run as ONE program (their
stacks are concatenated, `mmoe.run_experts`).

Parameters: {'shared': {'input': input layer, 'experts': <stacked, S>},
             'tasks': {k: {'experts': <stacked, T> (absent when T = 0), 'gate': W_k, 'head': h_k}}}
Task k's experts are read by task k's gate alone, so they are task parameters: task k's loss
never reaches another task's experts. The representation for the "rep" gradient mode is
{'input': x [B, d], 'experts': shared expert outputs [B, S, D]}; `decode` runs the task experts,
gates and heads.

PLE (ple.py) stacks such layers; its last level is this model's task side (`task_side`).
"""

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.models import base
from mtl_jax.models import mmoe


@dataclasses.dataclass(frozen=True)
class CGC(base.MultiTaskModel):
  """S shared experts, T experts per task; task k's gate mixes its own and the shared ones."""

  input_layer: nn.Module = None
  expert: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  num_shared_experts: int = 4
  num_task_experts: int = 2
  has_shared_representation: bool = True

  def task_gate(self) -> nn.Module:
    return mmoe.SoftmaxGate(self.num_task_experts + self.num_shared_experts)

  def _task_expert_rngs(self, rngs, name):
    # A stream per task, fixed by the task's index: task k's dropout masks do not depend on
    # which other tasks `decode` computes beside it.
    return base.component_rngs(rngs, 2 + len(self.task_names) + self.task_names.index(name))

  def init_top(self, rng, task_inputs: Mapping, shared_input) -> dict:
    """{path: variables} of the shared experts (on `shared_input`) and every task's experts,
    gate (on task_inputs[k]) and head: CGC's layer, and PLE's last level."""
    shared_key, *task_keys = jax.random.split(rng, 1 + 3 * len(self.task_names))
    shared_vars = mmoe.init_experts(self.expert, shared_key, shared_input,
                                    self.num_shared_experts)
    (shared_out,), _ = mmoe.run_experts(self.expert, [shared_vars], shared_input, train=False,
                                        rngs=None, mutable=False)
    parts = {('shared', 'experts'): shared_vars}
    for index, name in enumerate(self.task_names):
      expert_key, gate_key, head_key = task_keys[3 * index:3 * index + 3]
      if self.num_task_experts:
        parts[('tasks', name, 'experts')] = mmoe.init_experts(
            self.expert, expert_key, task_inputs[name], self.num_task_experts)
      parts[('tasks', name, 'gate')] = self.task_gate().init(gate_key, task_inputs[name])
      parts[('tasks', name, 'head')] = self.heads[name].init(head_key, shared_out[:, 0],
                                                             train=False)
    return parts

  def init(self, rng, inputs):
    input_key, top_key = jax.random.split(rng)
    input_vars = self.input_layer.init(input_key, inputs, train=False)
    x = self.input_layer.apply(input_vars, inputs, train=False)
    parts = {('shared', 'input'): input_vars,
             **self.init_top(top_key, {name: x for name in self.task_names}, x)}
    return base.nest(parts)

  def shared_experts(self, variables, x, *, train, rngs, mutable):
    """Outputs [B, S, D] of the shared experts on x, and their updated collections."""
    (out,), (updates,) = mmoe.run_experts(
        self.expert, [base.subtree(variables, 'shared', 'experts')], x, train=train,
        rngs=[base.component_rngs(rngs, 1)], mutable=mutable)
    return out, base.nest({('shared', 'experts'): updates})

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    x, input_updates = base.call(self.input_layer, base.subtree(variables, 'shared', 'input'),
                                 inputs, train=train, rngs=base.component_rngs(rngs, 0),
                                 mutable=mutable)
    experts, expert_updates = self.shared_experts(variables, x, train=train, rngs=rngs,
                                                  mutable=mutable)
    features = {'input': x, 'experts': experts}
    if not mutable:
      return features
    return features, base.merge(base.nest({('shared', 'input'): input_updates}), expert_updates)

  def task_side(self, variables, task_inputs, shared_out, *, train=False, rngs=None,
                mutable=False, task_names=None):
    """Task k's experts on its input, its gate over [own, shared] experts, its head.

    Args:
      variables: the model's variables.
      task_inputs: x_k per task ({name: array}), or one array every task reads (CGC).
      shared_out: the shared experts' outputs [B, S, D].
      train: training mode (dropout, batch statistics).
      rngs: the model's rng streams.
      mutable: whether to also return the updated collections.
      task_names: the tasks to compute (default: all).

    Returns:
      {task: output} (and the updated collections when `mutable`).
    """
    names = [n for n in self.task_names if task_names is None or n in task_names]

    def x_of(name):
      return task_inputs[name] if isinstance(task_inputs, Mapping) else task_inputs

    parts, own = {}, {}
    if self.num_task_experts and names:
      groups = [base.subtree(variables, 'tasks', n, 'experts') for n in names]
      inputs = [x_of(n) for n in names] if isinstance(task_inputs, Mapping) else task_inputs
      outs, updates = mmoe.run_experts(
          self.expert, groups, inputs, train=train,
          rngs=[self._task_expert_rngs(rngs, n) for n in names], mutable=mutable)
      for name, out, update in zip(names, outs, updates):
        own[name] = out
        parts[('tasks', name, 'experts')] = update
    outputs = {}
    for name in names:
      experts = jnp.concatenate([own[name], shared_out], axis=1) if own else shared_out
      weights = self.task_gate().apply(base.subtree(variables, 'tasks', name, 'gate'), x_of(name))
      outputs[name], parts[('tasks', name, 'head')] = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name, 'head'),
          mmoe.mix(weights, experts), train=train,
          rngs=base.component_rngs(rngs, 2 + self.task_names.index(name)), mutable=mutable)
    return (outputs, base.nest(parts)) if mutable else outputs

  def gate_weights(self, variables, features, task_names=None) -> dict:
    """{task: g_k(x) [B, T+S]} (own experts first) from the representation `encode` returns."""
    return {name: self.task_gate().apply(base.subtree(variables, 'tasks', name, 'gate'),
                                         features['input'])
            for name in self.task_names if task_names is None or name in task_names}

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    return self.task_side(variables, features['input'], features['experts'], train=train,
                          rngs=rngs, mutable=mutable, task_names=task_names)

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if not mutable:
      return self.decode(variables, self.encode(variables, inputs, train=train, rngs=rngs),
                         train=train, rngs=rngs)
    features, shared_updates = self.encode(variables, inputs, train=train, rngs=rngs,
                                           mutable=True)
    outputs, task_updates = self.decode(variables, features, train=train, rngs=rngs,
                                        mutable=True)
    return outputs, base.merge(shared_updates, task_updates)


@base.ARCHS.register('cgc')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          num_shared_experts=4, num_task_experts=2) -> CGC:
  """`num_shared_experts` S >= 1 (default 4), `num_task_experts` T >= 0 per task (default 2);
  our defaults (the paper tunes them per dataset): with two tasks, 8 experts like mmoe's."""
  return CGC(task_names=tuple(t.name for t in tasks), input_layer=input_layer,
             expert=base.make_encoder(encoder, encoder_kwargs),
             heads=base.make_heads(tasks, head_hidden_sizes),
             num_shared_experts=mmoe.check_count('cgc', 'num_shared_experts',
                                                 num_shared_experts, 1),
             num_task_experts=mmoe.check_count('cgc', 'num_task_experts', num_task_experts, 0))
