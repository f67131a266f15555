"""Hierarchical supervision: tasks read the shared encoder at different depths.

Søgaard & Goldberg, "Deep multi-task learning with low level tasks supervised at lower layers",
ACL 2016. The shared encoder is a stack of L blocks; task k's head reads the output of block d_k:

    h_0 = input_layer(x),    h_l = block_l(h_{l−1})  (l = 1..L),    y_k = head_k(h_{d_k}).

The paper's tagger puts POS at the first of three BiLSTM layers and CCG supertagging / chunking at
the top; a low-level task then shapes only the layers below its depth, and the layers above it get
exactly zero gradient from its loss. `task_depths` ({task: d_k}, 1 <= d_k <= L) sets the depths;
tasks not named read the top (d_k = L), so the default is hard sharing. Blocks above the deepest
task would never receive a gradient, so only blocks 1..max_k d_k are built.

Parameters: {'shared': {'input_layer', 'blocks_0', ..., 'blocks_{D−1}'}, 'tasks': {k: head_k}}.
Task k's loss reaches blocks 1..d_k and its own head. With all d_k equal there is one shared
representation, h_d ("rep" mode works, and with d = L the model is hard sharing with the encoder
cut into blocks); with different depths there is none: the tasks read disjoint parts of
(h_1, ..., h_L), so a Gramian of representation gradients would show tasks at different depths as
never in conflict although they share every layer below the lower one. "rep" is refused then.

A stack of L blocks from an encoder name and kwargs (`layer_blocks`, also used by cross_stitch and
mtan): the configured encoder is cut into single-layer copies of itself (`module.clone(...)`), so
each block has the encoder's own code and options, and the stack equals the encoder:

* `mlp`: one copy per entry of `hidden_sizes` (`hidden_sizes=(h_l,)`).
* `cnn`: one copy per conv stage (`channels=(c_l,), hidden_sizes=()`, its flat output put back to
  [B, H/2, W/2, c_l] so the next stage gets a feature map), then one copy per dense layer
  (`channels=()`, `hidden_sizes=(h_l,)`, which flattens its input as the CNN does). A head reading
  a conv stage reads it flattened.
* `lstm`, `bilstm`, `transformer`: one copy per layer (`num_layers=1`); every block but the last
  returns `{'features', 'mask'}` (`pool='none', return_mask=True`, the padding-mask convention of
  `models/token_inputs.py`), which is what the next block accepts, and the last block keeps the
  configured `pool`/`return_mask`. Recurrent blocks after the first apply the encoder's `dropout`
  to their input, as its inter-layer dropout. Transformer blocks after the first take
  `positions='none'`, and only the last keeps `final_norm`; in training a later block also applies
  the encoder's input dropout to its input (in evaluation the stack equals the encoder exactly).
* any other encoder with an integer `num_layers`: copies with `num_layers=1` (and `pool='none',
  return_mask=True` below the top where it has those options).
* otherwise: register a splitter, `LAYER_SPLITS.register('<encoder>', fn)` with `fn(module) ->
  [block modules]`, or pass the blocks themselves as the encoder (a list of Linen modules).

A head reads a block's output through `features`: the `'features'` of a `{'features', 'mask'}`
dict (per-token, zero at padding), a 4-D feature map flattened, anything else as it is.
"""

import dataclasses
from typing import Callable, Mapping, Sequence

import flax.linen as nn
import jax

from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.registry import Registry

# Encoder name -> fn(configured encoder module) -> list of block modules whose chain equals it.
LAYER_SPLITS: Registry[Callable[[nn.Module], list]] = Registry('layer split')


def features(x) -> jax.Array:
  """What a head (or a dense layer) reads from a block's output."""
  if isinstance(x, Mapping):
    return x['features']
  if x.ndim == 4:
    return x.reshape(x.shape[0], -1)
  return x


def map_features(fn: Callable, x):
  """`fn` applied to a block output's features, keeping the rest (the padding mask)."""
  if isinstance(x, Mapping):
    return {**x, 'features': fn(x['features'])}
  return fn(x)


class SpatialBlock(nn.Module):
  """A one-stage CNN copy whose flat output is put back into a feature map: the CNN encoder
  flattens at its end, and a stage's output must stay [B, H/2, W/2, C] for the next stage."""

  encoder: nn.Module

  def __call__(self, x, *, train: bool = False):
    if x.ndim == 3:
      x = x[..., None]
    y = self.encoder(x, train=train)
    height, width = x.shape[1] // 2, x.shape[2] // 2
    if y.shape[1] % (height * width):
      raise UserError(f'cnn stage: {y.shape[1]} features do not fold into a {height}x{width} '
                      'map; the conv-stage split assumes 2x2 max-pooling after each conv')
    return y.reshape(x.shape[0], height, width, -1)


class DropoutThen(nn.Module):
  """Dropout on the features (not the mask) of the input, then `block`: a recurrent encoder's
  dropout between layers, kept when its layers become separate blocks."""

  rate: float
  block: nn.Module

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    drop = nn.Dropout(self.rate, deterministic=not train)
    return self.block(map_features(drop, x), train=train)


@LAYER_SPLITS.register('mlp')
def _split_mlp(module):
  return [module.clone(hidden_sizes=(size,)) for size in module.hidden_sizes]


@LAYER_SPLITS.register('cnn')
def _split_cnn(module):
  stages = [SpatialBlock(module.clone(channels=(c,), hidden_sizes=())) for c in module.channels]
  return stages + [module.clone(channels=(), hidden_sizes=(h,)) for h in module.hidden_sizes]


def _split_layers(module, **below_top):
  """`num_layers` single-layer copies; `below_top` options for every copy but the last."""
  count = module.num_layers
  return [module.clone(num_layers=1, **(below_top if layer < count - 1 else {}))
          for layer in range(count)]


def _token_options(module):
  fields = getattr(module, '__dataclass_fields__', {})
  return {k: v for k, v in (('pool', 'none'), ('return_mask', True)) if k in fields}


def _split_recurrent(module):
  blocks = _split_layers(module, pool='none', return_mask=True)
  return blocks[:1] + [DropoutThen(module.dropout, b) if module.dropout else b
                       for b in blocks[1:]]


LAYER_SPLITS.register('lstm', _split_recurrent)
LAYER_SPLITS.register('bilstm', _split_recurrent)


@LAYER_SPLITS.register('transformer')
def _split_transformer(module):
  blocks = _split_layers(module, pool='none', return_mask=True, final_norm=False)
  return blocks[:1] + [b.clone(positions='none') for b in blocks[1:]]


def _registered_name(module) -> str | None:
  from mtl_jax.models.encoders import ENCODERS  # pylint: disable=import-outside-toplevel
  for name in ENCODERS.names():
    if type(module) is ENCODERS.get(name):
      return name
  return None


def layer_blocks(encoder, encoder_kwargs: Mapping | None = None) -> tuple[nn.Module, ...]:
  """The configured encoder as a chain of single-layer blocks (see the module docstring)."""
  if isinstance(encoder, (list, tuple)):
    if not encoder or not all(isinstance(b, nn.Module) for b in encoder):
      raise UserError('a list given as the encoder must be a non-empty list of Linen modules, '
                      'the blocks of the stack')
    return tuple(encoder)
  module = base.make_encoder(encoder, encoder_kwargs)
  name = encoder if isinstance(encoder, str) else _registered_name(module)
  if name is not None and name in LAYER_SPLITS:
    blocks = LAYER_SPLITS.get(name)(module)
  elif isinstance(getattr(module, 'num_layers', None), int):
    blocks = _split_layers(module, **_token_options(module))
  else:
    raise UserError(
        f'encoder {name or type(module).__name__!r} cannot be cut into layers: register how with '
        'mtl_jax.models.hierarchical.LAYER_SPLITS.register(name, fn) (fn(module) -> list of '
        'block modules), or pass the blocks themselves as the encoder (a list of Linen modules)')
  if not blocks:
    raise UserError(f'encoder {name!r} with options {dict(encoder_kwargs or {})} has no layers '
                    'to stack; give it at least one (e.g. hidden_sizes=(64,))')
  return tuple(blocks)


class Stack(nn.Module):
  """Input layer, then the blocks in order; returns every block's output."""

  input_layer: nn.Module
  blocks: Sequence[nn.Module]

  def __call__(self, inputs, *, train: bool = False) -> list:
    x = self.input_layer(inputs, train=train)
    outputs = []
    for block in self.blocks:
      x = block(x, train=train)
      outputs.append(x)
    return outputs


@dataclasses.dataclass(frozen=True)
class Hierarchical(base.MultiTaskModel):
  stack: nn.Module = None
  heads: Mapping[str, nn.Module] = None
  task_depths: Mapping[str, int] = None

  def init(self, rng, inputs):
    keys = jax.random.split(rng, 1 + len(self.task_names))
    stack_vars = self.stack.init(keys[0], inputs, train=False)
    outputs = self.stack.apply(stack_vars, inputs, train=False)
    parts = {('shared',): stack_vars}
    for key, name in zip(keys[1:], self.task_names):
      parts[('tasks', name)] = self.heads[name].init(
          key, features(outputs[self.task_depths[name] - 1]), train=False)
    return base.nest(parts)

  def _blocks(self, variables, inputs, *, train, rngs, mutable):
    outputs, updates = base.call(self.stack, base.subtree(variables, 'shared'), inputs,
                                 train=train, rngs=base.component_rngs(rngs, 0), mutable=mutable)
    return outputs, (base.nest({('shared',): updates}) if updates else {})

  def _heads(self, variables, inputs_of, *, train, rngs, mutable, task_names=None):
    outputs, parts = {}, {}
    for index, name in enumerate(self.task_names, start=1):
      if task_names is not None and name not in task_names:
        continue
      outputs[name], updates = base.call(
          self.heads[name], base.subtree(variables, 'tasks', name), inputs_of(name), train=train,
          rngs=base.component_rngs(rngs, index), mutable=mutable)
      if updates:
        parts[('tasks', name)] = updates
    return outputs, base.nest(parts)

  def _check_representation(self):
    if not self.has_shared_representation:
      depths = ', '.join(f'{k}: {d}' for k, d in self.task_depths.items())
      raise UserError(f'Hierarchical with task_depths {{{depths}}} has no single shared '
                      'representation (tasks read different layers); use gradient mode '
                      '"jacobian" or "weighted", not "rep", or give every task the same depth')

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    self._check_representation()
    outputs, updates = self._blocks(variables, inputs, train=train, rngs=rngs, mutable=mutable)
    representation = features(outputs[-1])
    return (representation, updates) if mutable else representation

  def decode(self, variables, features_, *, train=False, rngs=None, mutable=False,
             task_names=None):
    self._check_representation()
    outputs, updates = self._heads(variables, lambda name: features_, train=train, rngs=rngs,
                                   mutable=mutable, task_names=task_names)
    return (outputs, updates) if mutable else outputs

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    blocks, block_updates = self._blocks(variables, inputs, train=train, rngs=rngs,
                                         mutable=mutable)
    outputs, head_updates = self._heads(
        variables, lambda name: features(blocks[self.task_depths[name] - 1]), train=train,
        rngs=rngs, mutable=mutable)
    return (outputs, base.merge(block_updates, head_updates)) if mutable else outputs


def check_depths(task_depths, task_names, num_layers: int, encoder) -> dict:
  """{task: depth} for every task (default: the top), or a UserError with the fix."""
  if task_depths is None:
    task_depths = {}
  if hasattr(task_depths, 'to_dict'):  # an ml_collections.ConfigDict from the config
    task_depths = task_depths.to_dict()
  if not isinstance(task_depths, Mapping):
    raise UserError(f'hierarchical: task_depths must be a dict {{task: depth}}, got '
                    f'{task_depths!r}; e.g. --config.arch_kwargs.task_depths.upos=1')
  unknown = sorted(set(task_depths) - set(task_names))
  if unknown:
    raise UserError(f'hierarchical: task_depths names unknown task(s) {", ".join(unknown)}; '
                    f'the tasks are: {", ".join(task_names)}')
  where = encoder if isinstance(encoder, str) else type(encoder).__name__
  depths = {}
  for name in task_names:
    depth = task_depths.get(name, num_layers)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_layers:
      raise UserError(f'hierarchical: task_depths[{name!r}] = {depth!r}, but the encoder '
                      f'{where!r} as configured has {num_layers} layer(s): use an integer in '
                      f'1..{num_layers} (1 = the first layer, {num_layers} = the top)')
    depths[name] = depth
  return depths


@base.ARCHS.register('hierarchical')
def build(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=(), *,
          task_depths=None) -> Hierarchical:
  """arch_kwargs: `task_depths`, {task: the encoder layer its head reads, 1..L}; default L."""
  blocks = layer_blocks(encoder, encoder_kwargs)
  names = tuple(t.name for t in tasks)
  depths = check_depths(task_depths, names, len(blocks), encoder)
  deepest = max(depths.values())
  return Hierarchical(
      task_names=names, stack=Stack(input_layer, blocks[:deepest]),
      heads=base.make_heads(tasks, head_hidden_sizes), task_depths=depths,
      has_shared_representation=len(set(depths.values())) == 1)
