"""Progressive Layered Extraction (PLE): L stacked extraction levels of CGC.

Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model for
Personalized Recommendations", RecSys 2020. Level j has S shared experts and T experts per task;
every branch (each task k, and the shared branch s) reads its own input, the previous level's
output of that branch (x at level 0):

    S_k^j = [f^{k,j}_1(x_k^j), ..., f^{k,j}_T(x_k^j), f^{s,j}_1(x_s^j), ..., f^{s,j}_S(x_s^j)]
    x_k^{j+1} = softmax(W_k^j x_k^j)ᵀ S_k^j                        (task k's gate, T+S experts)
    x_s^{j+1} = softmax(W_s^j x_s^j)ᵀ [all tasks' experts, shared experts]     (K·T+S experts)
    y_k = h_k(x_k^L)

The shared branch's gate exists at every level but the last (its output would be unused). The
last level is CGC's task side (cgc.py) on inputs x_k^{L-1} and x_s^{L-1}; with L = 1, PLE is
CGC. At each lower level the shared experts and every task's experts run as ONE vmapped program.
Levels above the first feed the encoder the previous level's [B, D] outputs, so the encoder must
accept flat features (an MLP does; a CNN does not).

Parameters, partitioned by which losses reach them (the train step's contract):
  * Below the last level the shared gate mixes every task's experts, and its output reaches every
    task. So a task's experts at levels 0..L-2, and its gates at levels 0..L-3 (which feed those
    experts), are shared parameters by the gradient, and sit under `shared`:
        shared/level_j/{experts, gate, task_experts/<k>, task_gates/<k>}
  * Task k's loss alone reaches its last-level experts and gate, its head, and its gate at level
    L-2 (read only by task k's last-level experts and gate): they are under `tasks/<k>`:
        tasks/<k>/{experts, gate, head, lower_gate}
  * The last level's shared experts are shared/experts, as in CGC.
So task k's loss never reaches tasks/<other> (the isolation the "jacobian" mode relies on), at
the cost that "task-specific expert" in the paper's sense is not "task parameter" in ours below
the last level. With L > 1 there is no representation computed from shared parameters alone that
`decode` could finish with task parameters alone, so "rep" mode is refused; with L = 1 it is CGC's.
"""

import dataclasses

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import cgc
from mtl_jax.models import mmoe


@dataclasses.dataclass(frozen=True)
class PLE(cgc.CGC):
  """`num_levels` extraction levels; the last is CGC's task side."""

  num_levels: int = 2

  def shared_gate(self):
    return mmoe.SoftmaxGate(len(self.task_names) * self.num_task_experts
                            + self.num_shared_experts)

  def _path(self, level: int, part: str, task: str | None = None) -> tuple[str, ...]:
    """Where a lower level's (level < L-1) component lives (see the module docstring)."""
    if part == 'task_gate' and level == self.num_levels - 2:
      return ('tasks', task, 'lower_gate')
    node = ('shared', f'level_{level}')
    return {'experts': node + ('experts',), 'gate': node + ('gate',),
            'task_experts': node + ('task_experts', task),
            'task_gate': node + ('task_gates', task)}[part]

  def _groups(self, level):
    """The expert stacks of a lower level, shared first: (path, owner) pairs."""
    groups = [(self._path(level, 'experts'), None)]
    if self.num_task_experts:
      groups += [(self._path(level, 'task_experts', name), name) for name in self.task_names]
    return groups

  def _mix_level(self, variables, level, task_inputs, shared_input, outs):
    """The level's gates: task k over [own, shared] experts, the shared one over all."""
    shared_out, own = outs[0], dict(zip(self.task_names, outs[1:]))
    task_out = {}
    for name in self.task_names:
      experts = jnp.concatenate([own[name], shared_out], axis=1) if own else shared_out
      weights = self.task_gate().apply(
          base.subtree(variables, *self._path(level, 'task_gate', name)), task_inputs[name])
      task_out[name] = mmoe.mix(weights, experts)
    everything = jnp.concatenate([own[n] for n in self.task_names] + [shared_out], axis=1)
    weights = self.shared_gate().apply(base.subtree(variables, *self._path(level, 'gate')),
                                       shared_input)
    return task_out, mmoe.mix(weights, everything)

  def init(self, rng, inputs):
    input_key, top_key, *level_keys = jax.random.split(rng, 1 + self.num_levels)
    input_vars = self.input_layer.init(input_key, inputs, train=False)
    x = self.input_layer.apply(input_vars, inputs, train=False)
    parts = {('shared', 'input'): input_vars}
    task_inputs, shared_input = {name: x for name in self.task_names}, x
    for level, key in enumerate(level_keys):
      groups = self._groups(level)
      keys = jax.random.split(key, len(groups) + len(self.task_names) + 1)
      level_vars = []
      for (path, owner), k in zip(groups, keys):
        group_input = shared_input if owner is None else task_inputs[owner]
        num = self.num_shared_experts if owner is None else self.num_task_experts
        parts[path] = mmoe.init_experts(self.expert, k, group_input, num)
        level_vars.append(parts[path])
      gate_keys = keys[len(groups):]
      for name, k in zip(self.task_names, gate_keys):
        parts[self._path(level, 'task_gate', name)] = self.task_gate().init(k, task_inputs[name])
      parts[self._path(level, 'gate')] = self.shared_gate().init(gate_keys[-1], shared_input)
      outs, _ = mmoe.run_experts(
          self.expert, level_vars,
          [shared_input if owner is None else task_inputs[owner] for _, owner in groups],
          train=False, rngs=None, mutable=False)
      task_inputs, shared_input = self._mix_level(base.nest(parts), level, task_inputs,
                                                  shared_input, outs)
    parts.update(self.init_top(top_key, task_inputs, shared_input))
    return base.nest(parts)

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    x, input_updates = base.call(self.input_layer, base.subtree(variables, 'shared', 'input'),
                                 inputs, train=train, rngs=base.component_rngs(rngs, 0),
                                 mutable=mutable)
    parts = {('shared', 'input'): input_updates}
    task_inputs, shared_input = {name: x for name in self.task_names}, x
    for level in range(self.num_levels - 1):
      groups = self._groups(level)
      # Level 0: every expert reads x (no per-expert copies of the input).
      inputs_of_groups = x if level == 0 else [
          shared_input if owner is None else task_inputs[owner] for _, owner in groups]
      # Streams by level and group, disjoint from CGC's (0 .. 2 + 2K).
      group_rngs = [base.component_rngs(rngs, 1000 * (level + 1) + index)
                    for index in range(len(groups))]
      outs, updates = mmoe.run_experts(
          self.expert, [base.subtree(variables, *path) for path, _ in groups], inputs_of_groups,
          train=train, rngs=group_rngs, mutable=mutable)
      parts.update({path: update for (path, _), update in zip(groups, updates)})
      task_inputs, shared_input = self._mix_level(variables, level, task_inputs, shared_input,
                                                  outs)
    shared_out, shared_updates = self.shared_experts(variables, shared_input, train=train,
                                                     rngs=rngs, mutable=mutable)
    top = self.task_side(variables, task_inputs if self.num_levels > 1 else x, shared_out,
                         train=train, rngs=rngs, mutable=mutable)
    if not mutable:
      return top
    outputs, task_updates = top
    return outputs, base.merge(base.merge(base.nest(parts), shared_updates), task_updates)

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if self.num_levels > 1:  # the base class's UserError: no single shared representation
      return base.MultiTaskModel.encode(self, variables, inputs)
    return super().encode(variables, inputs, train=train, rngs=rngs, mutable=mutable)

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    if self.num_levels > 1:
      return base.MultiTaskModel.decode(self, variables, features)
    return super().decode(variables, features, train=train, rngs=rngs, mutable=mutable,
                          task_names=task_names)


@base.ARCHS.register('ple')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          num_shared_experts=4, num_task_experts=2, num_levels=2) -> PLE:
  """`num_shared_experts` S >= 1 and `num_task_experts` T >= 0 per level (defaults 4 and 2, as
  cgc's), `num_levels` L >= 1 (default 2); L = 1 is CGC."""
  num_levels = mmoe.check_count('ple', 'num_levels', num_levels, 1)
  if num_levels > 1 and encoder == 'cnn':
    raise UserError('arch \'ple\': levels above the first feed the experts the previous level\'s '
                    'flat [batch, features] outputs, which the cnn encoder cannot read; use '
                    'encoder mlp, or --config.arch_kwargs.num_levels=1')
  return PLE(task_names=tuple(t.name for t in tasks), input_layer=input_layer,
             expert=base.make_encoder(encoder, encoder_kwargs),
             heads=base.make_heads(tasks, head_hidden_sizes),
             num_shared_experts=mmoe.check_count('ple', 'num_shared_experts',
                                                 num_shared_experts, 1),
             num_task_experts=mmoe.check_count('ple', 'num_task_experts', num_task_experts, 0),
             num_levels=num_levels, has_shared_representation=num_levels == 1)
