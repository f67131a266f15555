"""HAM, a hybrid cross-task attention model: per-task features that attend to each other.

A hard-sharing trunk, then three stages:

1. Feature extraction, per task: f_k = E_k(z), z = trunk(x) (the shared input layer + encoder),
   E_k a small MLP (`extractor_sizes`, ReLU after each layer) applied on the feature axis, so
   per-token features stay per token. f_k ∈ R^D with D = extractor_sizes[-1].
2. Feature interaction, shared: multi-head dot-product attention (Vaswani et al., "Attention Is
   All You Need", NeurIPS 2017) over the task axis of F = [f_1; ...; f_K] ∈ R^{K×D}:

       A^h = softmax(F W_q^h (F W_k^h)ᵀ / √d_h) ∈ R^{K×K}       (row k: what task k reads)

3. Combination: each task's features mixed by its row of A, plus a residual:

       f̃_k = f_k + W_o [Σ_j A^1_kj F_j W_v^1 ; ... ; Σ_j A^H_kj F_j W_v^H],   y_k = head_k(f̃_k)

   With the interaction's output zeroed (W_o = 0) this is K per-task extractors on a shared trunk.

This is the general pattern of cross-task attention models (e.g. the task-interaction modules of
PAD-Net, Xu et al., CVPR 2018, and MTI-Net, Vandenhende et al., ECCV 2020, which distil one task's
features into another's); the formulation above is the one specified for this project, with the
attention taken over tasks rather than pixels. `attention(variables, inputs)` returns A, [..., H,
K, K] (leading axes: batch, and tokens for per-token features): its mean over examples and heads
is a K×K map of which task reads which.

Parameters, and who owns them:

    {'shared': {'trunk': input layer + encoder, 'interaction': W_q, W_k, W_v, W_o},
     'extractors': E_1..E_K stacked on a leading task axis, run with `jax.vmap` (group 'shared'),
     'tasks': {k: head_k}}

The trunk and the interaction module are shared by construction. The extractors are per task in
what they compute (E_k makes task k's features), but not in who trains them: task k's loss reaches
E_j through task k's row of A (as key and value) and through the queries, so E_j is moved by every
task, and the extractors go in a group declared 'shared', where gradient-aggregation methods
arbitrate them. The heads are task k's alone. With the interaction zeroed, task k's loss moves
E_k only (tested). Each head reads its own row f̃_k, so there is no single shared representation
(a Gramian of gradients at [f̃_1 ... f̃_K] would be diagonal: every task reads a disjoint part):
"rep" mode is refused.
"""

import dataclasses
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import hierarchical
from mtl_jax.models import inputs


class Extractor(nn.Module):
  """Dense + ReLU per entry of `sizes`, on the last axis."""

  sizes: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    for size in self.sizes:
      x = nn.relu(nn.Dense(size)(x))
    return x


class TaskInteraction(nn.Module):
  """Multi-head self-attention over the task axis: F [..., K, D] -> (F + O [..., K, D],
  A [..., H, K, K])."""

  num_heads: int

  @nn.compact
  def __call__(self, f: jax.Array):
    dim = f.shape[-1]
    head_dim = dim // self.num_heads
    project = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name)(f)
    query, key, value = project('query'), project('key'), project('value')
    logits = jnp.einsum('...qhd,...khd->...hqk', query, key) / math.sqrt(head_dim)
    weights = jax.nn.softmax(logits, axis=-1)
    mixed = jnp.einsum('...hqk,...khd->...qhd', weights, value)
    out = nn.DenseGeneral(dim, axis=(-2, -1), name='out')(mixed)
    return f + out, weights


@dataclasses.dataclass(frozen=True)
class HAM(base.MultiTaskModel):
  trunk: nn.Module = None
  extractor: nn.Module = None
  interaction: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  param_groups: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
      'shared': 'shared', 'extractors': 'shared', 'tasks': 'tasks'})

  def init(self, rng, inputs):
    num_tasks = len(self.task_names)
    trunk_key, extractor_key, interaction_key, *head_keys = jax.random.split(rng, 3 + num_tasks)
    trunk_vars = self.trunk.init(trunk_key, inputs, train=False)
    z = hierarchical.features(self.trunk.apply(trunk_vars, inputs, train=False))
    extractor_vars = jax.vmap(lambda key: self.extractor.init(key, z, train=False))(
        jax.random.split(extractor_key, num_tasks))
    f = jnp.moveaxis(jax.vmap(lambda v: self.extractor.apply(v, z))(extractor_vars), 0, -2)
    interaction_vars = self.interaction.init(interaction_key, f)
    combined, _ = self.interaction.apply(interaction_vars, f)
    parts = {('shared', 'trunk'): trunk_vars, ('shared', 'interaction'): interaction_vars,
             ('extractors',): extractor_vars}
    for index, (key, name) in enumerate(zip(head_keys, self.task_names)):
      parts[('tasks', name)] = self.heads[name].init(key, combined[..., index, :], train=False)
    return base.nest(parts)

  def task_features(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    """F = [f_1; ...; f_K], [..., K, D], before the interaction; and updated collections."""
    num_tasks = len(self.task_names)
    z, trunk_updates = base.call(
        self.trunk, base.subtree(variables, 'shared', 'trunk'), inputs, train=train,
        rngs=base.component_rngs(rngs, 0), mutable=mutable)
    z = hierarchical.features(z)
    extractor_rngs = None
    if rngs:
      extractor_rngs = {name: jax.random.split(jax.random.fold_in(key, 1), num_tasks)
                        for name, key in rngs.items()}

    def one_extractor(v, r):
      return base.call(self.extractor, v, z, train=train, rngs=r, mutable=mutable)

    f, extractor_updates = jax.vmap(one_extractor)(base.subtree(variables, 'extractors'),
                                                   extractor_rngs)
    parts = {}
    if trunk_updates:
      parts[('shared', 'trunk')] = trunk_updates
    if extractor_updates:
      parts[('extractors',)] = extractor_updates
    return jnp.moveaxis(f, 0, -2), base.nest(parts)

  def attention(self, variables, inputs) -> jax.Array:
    """A, [..., num_heads, K, K] (evaluation mode); rows (the last axis) sum to 1."""
    f, _ = self.task_features(variables, inputs)
    _, weights = self.interaction.apply(base.subtree(variables, 'shared', 'interaction'), f)
    return weights

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    f, updates = self.task_features(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    combined, _ = self.interaction.apply(base.subtree(variables, 'shared', 'interaction'), f)
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names):
      outputs[name], head_updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name), combined[..., index, :],
          train=train, rngs=base.component_rngs(rngs, 2 + index), mutable=mutable)
      if head_updates:
        parts[('tasks', name)] = head_updates
    return (outputs, base.merge(updates, base.nest(parts))) if mutable else outputs


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


@base.ARCHS.register('ham')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          extractor_sizes=(64,), num_heads=1) -> HAM:
  """arch_kwargs: `extractor_sizes`, each task extractor's layer widths (the last is the feature
  width D the tasks attend over); `num_heads`, attention heads (must divide D)."""
  if isinstance(extractor_sizes, int) and not isinstance(extractor_sizes, bool):
    extractor_sizes = (extractor_sizes,)
  try:
    extractor_sizes = tuple(extractor_sizes)
  except TypeError:
    extractor_sizes = ()
  if not extractor_sizes or not all(_positive_int(s) for s in extractor_sizes):
    raise UserError(f'ham: extractor_sizes must be a non-empty list of positive integers (the '
                    f'last is the width the tasks attend over), got {extractor_sizes!r}; e.g. '
                    '--config.arch_kwargs.extractor_sizes="(64,)"')
  if not _positive_int(num_heads) or extractor_sizes[-1] % num_heads:
    raise UserError(f'ham: num_heads must be a positive integer dividing the feature width '
                    f'{extractor_sizes[-1]} (extractor_sizes[-1]), got {num_heads!r}')
  trunk = inputs.Trunk(input_layer, base.make_encoder(encoder, encoder_kwargs))
  return HAM(task_names=tuple(t.name for t in tasks), trunk=trunk,
             extractor=Extractor(extractor_sizes), interaction=TaskInteraction(num_heads),
             heads=base.make_heads(tasks, head_hidden_sizes))
