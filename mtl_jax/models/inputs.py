"""Input layers: turn a dataset's raw inputs into features for the encoder.

`for_dataset` picks the layer by the dataset's `input_kind`: 'tabular' (`Tabular`), 'dense'
(`Identity`), or 'tokens' (`token_inputs.TokenEmbedding`, configured by `config.token_embedding`:
{'tokens', 'mask'[, 'chars']} -> {'features' [B, T, E], 'mask' [B, T]} for a sequence encoder).
"""

import inspect
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError


class Tabular(nn.Module):
  """Categorical columns through per-column embeddings, concatenated with the numeric columns.

  Inputs: {'categorical': int [B, C] (index 0 = unseen value), 'numeric': float [B, N]}.
  One table holds every column's vocabulary at its own offset, so C columns cost one gather.
  """

  vocab_sizes: Sequence[int]
  embed_dim: int = 8

  @nn.compact
  def __call__(self, inputs: dict, *, train: bool = False) -> jax.Array:
    del train
    categorical = inputs['categorical'].astype(jnp.int32)
    offsets = jnp.cumsum(jnp.array((0,) + tuple(self.vocab_sizes[:-1]), jnp.int32))
    table = nn.Embed(int(sum(self.vocab_sizes)), self.embed_dim, name='embedding')
    embedded = table(categorical + offsets).reshape(categorical.shape[0], -1)
    return jnp.concatenate([embedded, inputs['numeric'].astype(jnp.float32)], axis=-1)


class Identity(nn.Module):
  """For inputs that already are a float array (images, features)."""

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    return jnp.asarray(inputs, jnp.float32)


class Trunk(nn.Module):
  """Input layer followed by an encoder: the part of the model that maps inputs to features."""

  input_layer: nn.Module
  encoder: nn.Module

  def __call__(self, inputs, *, train: bool = False) -> jax.Array:
    return self.encoder(self.input_layer(inputs, train=train), train=train)


def for_dataset(spec, builder, config) -> nn.Module:
  """The input layer a dataset's `input_kind` calls for."""
  if spec.input_kind == 'tabular':
    info = spec.input_info(builder)
    return Tabular(tuple(int(v) for v in info['vocab_sizes']), config.get('embed_dim', 8))
  if spec.input_kind == 'dense':
    return Identity()
  if spec.input_kind == 'tokens':
    return _token_embedding(spec.input_info(builder), dict(config.get('token_embedding', {})))
  raise ValueError(f'no input layer for input kind {spec.input_kind!r}')


def _token_embedding(info: dict, kwargs: dict) -> nn.Module:
  """`TokenEmbedding` sized by the dataset (`vocab_size`), options from the config."""
  # Imported here, so that the other input kinds do not depend on the sequence-model modules.
  from mtl_jax.models import token_inputs  # pylint: disable=import-outside-toplevel
  cls = token_inputs.TokenEmbedding
  if 'vocab_size' in kwargs:
    raise UserError('config.token_embedding.vocab_size is set by the dataset; remove it')
  options = [p for p in inspect.signature(cls).parameters
             if p not in ('vocab_size', 'parent', 'name')]
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise UserError(f'config.token_embedding has unknown option(s) {", ".join(unknown)}; '
                    f'TokenEmbedding\'s options are: {", ".join(options)}')
  return cls(vocab_size=int(info['vocab_size']), **kwargs)
