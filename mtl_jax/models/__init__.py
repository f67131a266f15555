"""Sharing architectures and feature learners, selectable by name.

`build(arch, tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes)` returns a
`MultiTaskModel` (see `models/base.py` for the contract). Adding an architecture: one file with a
`MultiTaskModel` subclass and a builder, one `ARCHS.register` line, one test.
"""

from typing import Sequence

import flax.linen as nn

from mtl_jax.errors import UserError
from mtl_jax.models import inputs
from mtl_jax.models.base import MultiTaskModel
from mtl_jax.models.encoders import ENCODERS, CNN, MLP
from mtl_jax.models.hard import HardSharing
from mtl_jax.models.heads import Head
from mtl_jax.models.soft import SoftSharing
from mtl_jax.registry import Registry

ARCHS = Registry('arch')


def _encoder(name: str | nn.Module, kwargs: dict) -> nn.Module:
  if isinstance(name, nn.Module):  # a user's own encoder (Linen, or NNX through nnx.bridge)
    return name
  cls = ENCODERS.get(name)
  try:
    return cls(**kwargs)
  except TypeError as e:
    fields = [f for f in cls.__dataclass_fields__ if f not in ('parent', 'name')]
    raise UserError(f'encoder {name!r}: {e}; its options are: {", ".join(fields)}') from None


def _heads(tasks, hidden_sizes):
  return {task.name: Head(task.output_size, tuple(hidden_sizes)) for task in tasks}


@ARCHS.register('hard')
def hard(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=()) -> HardSharing:
  trunk = inputs.Trunk(input_layer, _encoder(encoder, encoder_kwargs))
  return HardSharing(task_names=tuple(t.name for t in tasks), trunk=trunk,
                     heads=_heads(tasks, head_hidden_sizes))


@ARCHS.register('soft')
def soft(tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes=()) -> SoftSharing:
  tower = inputs.Trunk(input_layer, _encoder(encoder, encoder_kwargs))
  return SoftSharing(task_names=tuple(t.name for t in tasks), tower=tower,
                     heads=_heads(tasks, head_hidden_sizes))


def build(arch: str, tasks: Sequence, input_layer: nn.Module, encoder: str | nn.Module = 'mlp',
          encoder_kwargs: dict | None = None, head_hidden_sizes=()) -> MultiTaskModel:
  """`encoder` is a registered name (configured by `encoder_kwargs`) or any Linen module called as
  `encoder(x, train=...)`; an NNX module becomes one with `flax.nnx.bridge.ToLinen`."""
  builder = ARCHS.get(arch)
  return builder(tasks, input_layer, encoder, dict(encoder_kwargs or {}), head_hidden_sizes)


__all__ = ['ARCHS', 'ENCODERS', 'MLP', 'CNN', 'Head', 'HardSharing', 'SoftSharing',
           'MultiTaskModel', 'build', 'inputs']
