"""Cross-stitch networks: one column per task, mixed after every layer by learned K×K units.

Misra, Shrivastava, Gupta & Hebert, "Cross-stitch Networks for Multi-task Learning", CVPR 2016.
Each task k has a column, a copy of the encoder cut into L blocks (`hierarchical.layer_blocks`);
after each block l a cross-stitch unit α^l ∈ R^{K×K} mixes the columns' activations:

    h_k^l  = block_l(h̃_k^{l−1}; Θ_k^l)          (h̃_k^0 = input_layer(x), the same for every k)
    h̃_k^l  = Σ_j α^l_{kj} h_j^l                  (the paper's eq. 1, for K columns)
    y_k    = head_k(h̃_k^L)

α^l starts near the identity, α_same = `init_same` on the diagonal and α_diff = (1 − α_same)/(K − 1)
off it, so every row is a convex combination; the paper's two-task initialisation (0.9, 0.1)
is the default. (The paper also scales the units' learning rate up by 10^2–10^3; here they use
the optimizer's rate, and `optax.multi_transform` can give them their own.) The units act on
whole activations (one scalar per pair of columns), on feature maps and per-token features alike.

The K columns are one set of block modules whose variables are stacked on a leading task axis and
run with `jax.vmap` (as `soft.py` runs its towers): K columns compile to one program per layer.

Who owns what. Task k's loss reaches column j ≠ k through the units: through α^L_{kj} at the top,
and at lower layers through every path that crosses over (that is the architecture's point). So
the columns are not task k's alone the way a head is, and neither are the units (task k's loss
moves row k of α^L, and every row of the α^l below). They go in groups declared 'shared':

    {'shared': input layer, 'columns': {'layer_l': stacked [K, ...]} ('shared'),
     'stitch': {'layer_l': α^l [K, K]} ('shared'), 'tasks': {k: head_k}}

so a gradient-aggregation method arbitrates every parameter that more than one task moves, and
the heads are the task-owned parameters. With identity units (`init_same=1`) the columns are
independent: task k's loss then moves column k only and row k of every α^l only, which the tests
check, as they check that with the paper's initialisation it moves every column. There is no
single shared representation (K columns), so "rep" mode is refused.
"""

import dataclasses
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import hierarchical


def stitch_init(num_tasks: int, same: float) -> np.ndarray:
  """α_same on the diagonal, (1 − α_same)/(K − 1) elsewhere (rows sum to 1); [[1]] for K = 1."""
  if num_tasks == 1:
    return np.ones((1, 1), np.float32)
  off = (1.0 - same) / (num_tasks - 1)
  return (np.full((num_tasks, num_tasks), off) + (same - off) * np.eye(num_tasks)).astype(
      np.float32)


def stitch(alpha: jax.Array, h):
  """h̃_k = Σ_j α_kj h_j over the leading column axis of h's features."""
  return hierarchical.map_features(
      lambda f: jnp.einsum('kj,j...->k...', alpha.astype(f.dtype), f), h)


@dataclasses.dataclass(frozen=True)
class CrossStitch(base.MultiTaskModel):
  input_layer: nn.Module = None
  blocks: Sequence[nn.Module] = ()
  heads: Mapping[str, nn.Module] = None
  init_same: float = 0.9
  param_groups: Mapping[str, str] = dataclasses.field(default_factory=lambda: {
      'shared': 'shared', 'columns': 'shared', 'stitch': 'shared', 'tasks': 'tasks'})

  def init(self, rng, inputs):
    num_tasks = len(self.task_names)
    input_key, head_key, *block_keys = jax.random.split(rng, 2 + len(self.blocks))
    input_vars = self.input_layer.init(input_key, inputs, train=False)
    h = self.input_layer.apply(input_vars, inputs, train=False)
    parts = {('shared',): input_vars}
    alpha = stitch_init(num_tasks, self.init_same)
    for index, (block, key) in enumerate(zip(self.blocks, block_keys)):
      keys = jax.random.split(key, num_tasks)
      if index == 0:
        column_vars = jax.vmap(lambda k, b=block, x=h: b.init(k, x, train=False))(keys)
        h = jax.vmap(lambda v, b=block, x=h: b.apply(v, x, train=False))(column_vars)
      else:
        column_vars = jax.vmap(lambda k, x, b=block: b.init(k, x, train=False))(keys, h)
        h = jax.vmap(lambda v, x, b=block: b.apply(v, x, train=False))(column_vars, h)
      h = stitch(jnp.asarray(alpha), h)
      parts[('columns', f'layer_{index}')] = column_vars
      parts[('stitch', f'layer_{index}')] = {'params': jnp.asarray(alpha)}
    for index, (key, name) in enumerate(zip(jax.random.split(head_key, num_tasks),
                                            self.task_names)):
      column = jax.tree.map(lambda a, i=index: a[i], h)
      parts[('tasks', name)] = self.heads[name].init(
          key, hierarchical.features(column), train=False)
    variables = base.nest(parts)
    variables['params'].setdefault('shared', {})  # an input layer may have no parameters
    return variables

  def columns(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    """Every column's stitched output of the last layer (leading axis K), and the updated
    collections."""
    num_tasks = len(self.task_names)
    h, updates = base.call(self.input_layer, base.subtree(variables, 'shared'), inputs,
                           train=train, rngs=base.component_rngs(rngs, 0), mutable=mutable)
    parts = {('shared',): updates} if updates else {}
    for index, block in enumerate(self.blocks):
      layer = f'layer_{index}'
      column_vars = base.subtree(variables, 'columns', layer)
      column_rngs = None
      if rngs:
        column_rngs = {name: jax.random.split(jax.random.fold_in(key, index + 1), num_tasks)
                       for name, key in rngs.items()}

      def one_column(v, x, r, b=block):
        return base.call(b, v, x, train=train, rngs=r, mutable=mutable)

      in_axes = (0, None if index == 0 else 0, 0)
      h, layer_updates = jax.vmap(one_column, in_axes=in_axes)(column_vars, h, column_rngs)
      if layer_updates:
        parts[('columns', layer)] = layer_updates
      h = stitch(variables['params']['stitch'][layer], h)
    return h, base.nest(parts)

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    h, updates = self.columns(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names):
      column = jax.tree.map(lambda a, i=index: a[i], h)
      outputs[name], head_updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name),
          hierarchical.features(column), train=train,
          rngs=base.component_rngs(rngs, len(self.blocks) + 1 + index), mutable=mutable)
      if head_updates:
        parts[('tasks', name)] = head_updates
    return (outputs, base.merge(updates, base.nest(parts))) if mutable else outputs


@base.ARCHS.register('cross_stitch')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          init_same=0.9) -> CrossStitch:
  """arch_kwargs: `init_same`, the initial α_same in [0, 1] (1: the identity, independent
  columns at the start); off-diagonal entries start at (1 − init_same)/(K − 1)."""
  try:
    init_same = float(init_same)
  except (TypeError, ValueError):
    raise UserError(f'cross_stitch: init_same must be a number in [0, 1], got {init_same!r}'
                    ) from None
  if not 0.0 <= init_same <= 1.0:
    raise UserError(f'cross_stitch: init_same must be in [0, 1] (the paper uses 0.9), got '
                    f'{init_same}; e.g. --config.arch_kwargs.init_same=0.9')
  return CrossStitch(task_names=tuple(t.name for t in tasks), input_layer=input_layer,
                     blocks=hierarchical.layer_blocks(encoder, encoder_kwargs),
                     heads=base.make_heads(tasks, head_hidden_sizes), init_same=init_same)
