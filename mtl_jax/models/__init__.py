"""Sharing architectures and feature learners, selectable by name.

`build(arch, tasks, input_layer, encoder, encoder_kwargs, head_hidden_sizes, **arch_kwargs)`
returns a `MultiTaskModel` (see `models/base.py` for the contract).

Adding an architecture: one file in this package with a `MultiTaskModel` subclass and a builder
decorated `@base.ARCHS.register('<name>')`, and one test. Adding an encoder: one Linen module
decorated `@ENCODERS.register('<name>')`. Every module of the package is imported below, so the
decorator is the only registry line.
"""

import importlib
import pkgutil
from typing import Sequence

import flax.linen as nn

from mtl_jax.errors import UserError
from mtl_jax.models import inputs
from mtl_jax.models.base import ARCHS, MultiTaskModel, make_encoder, make_heads
from mtl_jax.models.encoders import ENCODERS, CNN, MLP
from mtl_jax.models.hard import HardSharing
from mtl_jax.models.heads import Head
from mtl_jax.models.soft import SoftSharing

for _module in pkgutil.iter_modules(__path__):
  if not _module.name.startswith('_'):
    importlib.import_module(f'{__name__}.{_module.name}')


def build(arch: str, tasks: Sequence, input_layer: nn.Module, encoder: str | nn.Module = 'mlp',
          encoder_kwargs: dict | None = None, head_hidden_sizes=(), **arch_kwargs
          ) -> MultiTaskModel:
  """`encoder` is a registered name (configured by `encoder_kwargs`) or any Linen module called as
  `encoder(x, train=...)`; an NNX module becomes one with `flax.nnx.bridge.ToLinen`.
  `arch_kwargs` are the architecture's own options (e.g. `num_experts` for mmoe)."""
  builder = ARCHS.get(arch)
  try:
    return builder(tasks, input_layer, encoder, dict(encoder_kwargs or {}),
                   tuple(head_hidden_sizes), **arch_kwargs)
  except TypeError as e:
    if 'unexpected keyword argument' not in str(e):
      raise
    import inspect  # pylint: disable=import-outside-toplevel
    options = [p for p in inspect.signature(builder).parameters
               if p not in ('tasks', 'input_layer', 'encoder', 'encoder_kwargs',
                            'head_hidden_sizes')]
    raise UserError(f'arch {arch!r}: {e}; its options (config.arch_kwargs) are: '
                    f'{", ".join(options) or "none"}') from None


__all__ = ['ARCHS', 'ENCODERS', 'MLP', 'CNN', 'Head', 'HardSharing', 'SoftSharing',
           'MultiTaskModel', 'build', 'inputs', 'make_encoder', 'make_heads']
