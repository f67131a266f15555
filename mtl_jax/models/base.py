"""The model contract: pure functions over a variables pytree with `shared` and `tasks` parameters.

    variables = {'params': {'shared': Θ_s, 'tasks': {name: Θ_k}, <group>: ...},
                 <collection>: same layout}          # e.g. 'batch_stats'

* `init(rng, inputs) -> variables`
* `apply(variables, inputs, *, train=False, rngs=None, mutable=False) -> {task: output}`
  (with `mutable=True`: `(outputs, updated_collections)`, like Linen)
* `encode` / `decode`: inputs -> shared representation z -> outputs, for architectures that have a
  single shared representation (`has_shared_representation`); the "rep" gradient mode needs them.
  `encode` reads only `shared` parameters and `decode` only the others. The representation may be
  any pytree of arrays with a leading batch axis. `decode(..., task_names=[...])` computes only
  those tasks' outputs (the "rep" mode differentiates each task through its own head alone).

Architectures that need more than `shared` and `tasks` put it under a named key and declare it in
`param_groups` as 'shared' or 'tasks' (which decides how the train step differentiates it).
"""

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from mtl_jax.errors import UserError
from mtl_jax.registry import Registry

PyTree = Any

# name -> builder(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes, **arch_kwargs).
# Each architecture file registers itself; `mtl_jax.models` imports every module of the package.
ARCHS = Registry('arch')


def subtree(variables: Mapping, *path: str) -> dict:
  """For every collection, the node at `path` (collections without it are left out)."""
  out = {}
  for collection, tree in variables.items():
    node = tree
    for key in path:
      if not isinstance(node, Mapping) or key not in node:
        node = None
        break
      node = node[key]
    if node is not None:
      out[collection] = node
  return out


def nest(parts: Mapping[tuple[str, ...], Mapping]) -> dict:
  """Inverse of `subtree`: {path: {collection: node}} -> {collection: nested by path}."""
  out: dict = {}
  for path, collections in parts.items():
    for collection, node in collections.items():
      target = out.setdefault(collection, {})
      for key in path[:-1]:
        target = target.setdefault(key, {})
      target[path[-1]] = node
  return out


def merge(a: Mapping, b: Mapping) -> dict:
  """Deep merge of two collection trees (b wins on a shared leaf): updated collections into the
  old ones, or one component's updates beside another's."""
  out = dict(a)
  for key, value in b.items():
    out[key] = merge(out[key], value) if key in out and isinstance(value, Mapping) else value
  return out


def component_rngs(rngs: Mapping[str, jax.Array] | None, index: int):
  """Independent streams per component, so trunk and heads never share a dropout mask."""
  if not rngs:
    return None
  return {name: jax.random.fold_in(key, index) for name, key in rngs.items()}


def call(module: nn.Module, variables: Mapping, x, *, train: bool, rngs, mutable: bool):
  """Applies a Linen module; returns (output, updated non-param collections)."""
  collections = [c for c in variables if c != 'params'] if (mutable and train) else []
  if collections:
    return module.apply(variables, x, train=train, rngs=rngs, mutable=collections)
  return module.apply(variables, x, train=train, rngs=rngs), {}


@dataclasses.dataclass(frozen=True)
class MultiTaskModel:
  """Base class: subclasses implement `init`, `apply` and, if they have one, `encode`/`decode`."""

  task_names: tuple[str, ...]
  # Which gradient group each top-level params key belongs to.
  param_groups: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {'shared': 'shared', 'tasks': 'tasks'})
  has_shared_representation: bool = False
  # False when `shared` is empty (e.g. soft sharing): gradient aggregation has nothing to act on.
  has_shared_parameters: bool = True

  def init(self, rng: jax.Array, inputs) -> PyTree:
    raise NotImplementedError

  def apply(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    raise NotImplementedError

  def encode(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    raise UserError(f'{type(self).__name__} has no single shared representation; '
                    'use gradient mode "jacobian" or "weighted", not "rep"')

  def decode(self, variables, features, *, train=False, rngs=None, mutable=False,
             task_names=None):
    raise UserError(f'{type(self).__name__} has no single shared representation; '
                    'use gradient mode "jacobian" or "weighted", not "rep"')

  def penalty(self, params) -> jax.Array | None:
    """A regulariser the architecture adds to the objective (e.g. attention_mix's λ Σ a_k²), as
    a function of `params`; None when it has none. The trainer adds its gradient to the update
    (`mtl_jax.optim.penalty`), so it never enters the per-task gradients that methods combine."""
    del params
    return None

  def shared_keys(self) -> Sequence[str]:
    return [key for key, group in self.param_groups.items() if group == 'shared']


def make_encoder(name, kwargs: Mapping | None = None) -> nn.Module:
  """A registered encoder by name, configured by `kwargs`; a Linen module is returned as is."""
  from mtl_jax.models.encoders import ENCODERS  # pylint: disable=import-outside-toplevel
  if isinstance(name, nn.Module):  # a user's own encoder (Linen, or NNX through nnx.bridge)
    return name
  cls = ENCODERS.get(name)
  try:
    return cls(**dict(kwargs or {}))
  except TypeError as e:
    fields = [f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')]
    raise UserError(f'encoder {name!r}: {e}; its options are: {", ".join(fields)}') from None


def make_heads(tasks, hidden_sizes=()) -> dict:
  """One `Head` per task, keyed by task name. When some tasks are per-token (per-pixel) and
  others not, the others average features that have a position axis before their layers (breed
  and species beside segmentation on one `fcn` trunk). Without per-token tasks every head keeps
  applying position by position, as before."""
  from mtl_jax.models.heads import Head  # pylint: disable=import-outside-toplevel
  mixed = any(task.per_token for task in tasks)
  return {task.name: Head(task.output_size, tuple(hidden_sizes),
                          pool_positions=mixed and not task.per_token) for task in tasks}
