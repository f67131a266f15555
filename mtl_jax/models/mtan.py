"""MTAN: a shared network of blocks, and per task a soft attention mask at every block.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. The shared
network is the encoder cut into L blocks (`hierarchical.layer_blocks`), s^l = block_l(s^{l−1}).
Task k has an attention module at every block that computes an elementwise mask from the block's
shared features and the task's attended features from the block before, and applies it to the
shared features:

    a_k^1 = g_k^1(s^1),        a_k^l = g_k^l([s^l ; m(â_k^{l−1})])   (l >= 2)
    â_k^l = a_k^l ⊙ s^l,       y_k = head_k(â_k^L)

with g_k^l = sigmoid ∘ Dense(C_l) ∘ relu ∘ Dense(C_l) over the feature (channel) axis, so a_k^l ∈
[0, 1] has the shape of s^l. On feature maps the Dense layers are the paper's 1×1 convolutions;
on per-token features they act per token. m matches â_k^{l−1} to s^l: max-pooling to the smaller
resolution between conv stages, flattening from a conv stage to a dense layer, nothing otherwise.
[;] concatenates on the feature axis. The shared network never reads the masks: it is the
network hard sharing would train, and with every mask at 1 the model is hard sharing.

Departures from the paper, and why: (1) the paper's shared "f" (a 3×3 conv + BN + ReLU that maps
â^{l−1} to the next block's channels before the concatenation) is folded into each task's g_k^l,
whose first layer sees the concatenation directly; so every parameter above the shared network
is task k's, `decode` reads task parameters only, and the "rep" mode works. (2) No batch norm in
g (the encoders here have none; the masks need no batch statistics). (3) The paper's blocks are
two or three conv layers with u^l (first layer) feeding the attention and p^l (last layer) being
masked; here a block is one encoder layer, so u^l = p^l = s^l. (4) Encoder side only: the paper's
decoder-side attention for dense prediction is not built.

Parameters: {'shared': {'input_layer', 'blocks_0', ...}, 'tasks': {k: {'attention': {'unit_l':
g_k^l}, 'head': head_k}}}. Task k's loss reaches the shared network and its own attention and
head only. The shared representation is the tuple of every block's features (s^1, ..., s^L):
every task reads all of it, and ∇_θ L_k = Jᵀ Z_k with J the Jacobian of that tuple, the same
linear structure as hard sharing's single z.
"""

import dataclasses
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import encoders
from mtl_jax.models import hierarchical


def _raw(x) -> jax.Array:
  """A block output's feature array, unflattened (feature maps stay [B, H, W, C])."""
  return x['features'] if isinstance(x, Mapping) else x


def match(previous: jax.Array, current: jax.Array) -> jax.Array:
  """â^{l−1} brought to s^l's layout: pooled between conv stages, flattened into a dense layer."""
  if previous.ndim == 4 and current.ndim == 4 and previous.shape[1:3] != current.shape[1:3]:
    window = (previous.shape[1] // current.shape[1], previous.shape[2] // current.shape[2])
    previous = encoders.block_max_pool(previous, window)
  elif previous.ndim == 4 and current.ndim == 2:
    previous = previous.reshape(previous.shape[0], -1)
  if previous.shape[:-1] != current.shape[:-1]:
    raise UserError(f'mtan: cannot attend across blocks whose features have shapes '
                    f'{previous.shape} and {current.shape}; the shared blocks must keep the '
                    'batch (and token or spatial) axes, as mlp, cnn, lstm, bilstm and '
                    'transformer blocks do')
  return previous


class AttentionUnit(nn.Module):
  """g = sigmoid ∘ Dense(C) ∘ relu ∘ Dense(C) on the last axis: a mask of width C in [0, 1]."""

  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.width)(x))
    return jax.nn.sigmoid(nn.Dense(self.width)(x))


class TaskAttention(nn.Module):
  """One task's attention modules along the shared blocks: (â^L, [a^1, ..., a^L])."""

  @nn.compact
  def __call__(self, shared: Sequence[jax.Array], *, train: bool = False):
    del train
    attended, masks = None, []
    for index, features in enumerate(shared):
      x = features if attended is None else jnp.concatenate(
          [features, match(attended, features).astype(features.dtype)], -1)
      mask = AttentionUnit(features.shape[-1], name=f'unit_{index}')(x)
      attended = mask * features
      masks.append(mask)
    return attended, masks


@dataclasses.dataclass(frozen=True)
class MTAN(base.MultiTaskModel):
  stack: nn.Module = None
  attention: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  has_shared_representation: bool = True

  def init(self, rng, inputs):
    stack_key, *keys = jax.random.split(rng, 1 + 2 * len(self.task_names))
    stack_vars = self.stack.init(stack_key, inputs, train=False)
    shared = tuple(_raw(s) for s in self.stack.apply(stack_vars, inputs, train=False))
    parts = {('shared',): stack_vars}
    for index, name in enumerate(self.task_names):
      attention_vars = self.attention.init(keys[2 * index], shared, train=False)
      attended, _ = self.attention.apply(attention_vars, shared)
      parts[('tasks', name, 'attention')] = attention_vars
      parts[('tasks', name, 'head')] = self.heads[name].init(
          keys[2 * index + 1], hierarchical.features(attended), train=False)
    return base.nest(parts)

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    """(s^1, ..., s^L): every shared block's features (float arrays, batch axis first)."""
    outputs, updates = base.call(self.stack, base.subtree(variables, 'shared'), inputs,
                                 train=train, rngs=base.component_rngs(rngs, 0), mutable=mutable)
    representation = tuple(_raw(s) for s in outputs)
    updates = base.nest({('shared',): updates}) if updates else {}
    return (representation, updates) if mutable else representation

  def _attend(self, variables, shared, *, task_names=None):
    """{task: (â^L, masks)}; the attention modules have no collections and no dropout."""
    return {name: self.attention.apply(base.subtree(variables, 'tasks', name, 'attention'),
                                       shared)
            for name in self.task_names if task_names is None or name in task_names}

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    outputs, parts = {}, {}
    attended = self._attend(variables, features, task_names=task_names)
    for index, name in enumerate(self.task_names, start=1):
      if name not in attended:
        continue
      outputs[name], updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name, 'head'),
          hierarchical.features(attended[name][0]), train=train,
          rngs=base.component_rngs(rngs, index), mutable=mutable)
      if updates:
        parts[('tasks', name, 'head')] = updates
    return (outputs, base.nest(parts)) if mutable else outputs

  def attention_masks(self, variables, inputs) -> dict:
    """{task: [a^1, ..., a^L]}, each mask the shape of its block's features (evaluation mode)."""
    shared = self.encode(variables, inputs)
    return {name: masks for name, (_, masks) in self._attend(variables, shared).items()}

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    if not mutable:
      return self.decode(variables, self.encode(variables, inputs, train=train, rngs=rngs),
                         train=train, rngs=rngs)
    shared, stack_updates = self.encode(variables, inputs, train=train, rngs=rngs, mutable=True)
    outputs, head_updates = self.decode(variables, shared, train=train, rngs=rngs, mutable=True)
    return outputs, base.merge(stack_updates, head_updates)


@base.ARCHS.register('mtan')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=()) -> MTAN:
  """No arch_kwargs: the blocks come from the encoder (see `hierarchical.layer_blocks`)."""
  return MTAN(task_names=tuple(t.name for t in tasks),
              stack=hierarchical.Stack(input_layer,
                                       hierarchical.layer_blocks(encoder, encoder_kwargs)),
              attention=TaskAttention(), heads=base.make_heads(tasks, head_hidden_sizes))
