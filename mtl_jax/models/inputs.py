"""Input layers: turn a dataset's raw inputs into features for the encoder.

`for_dataset` picks the layer by the dataset's `input_kind`: 'tabular' (`Tabular`), 'dense'
(`Identity`), 'image' (`ImageScale`: uint8 images [B, H, W, C] -> float in [0, 1]), or 'tokens':
{'tokens', 'mask'[, 'chars']} -> {'features' [B, T, E], 'mask' [B, T]} for a sequence encoder,
made of `token_inputs.TokenEmbedding` (word embeddings and optional hashed character n-grams;
options in `config.token_embedding`) and, when `config.char_cnn.filters` > 0, `CharCNN` word
features (options in `config.char_cnn`), concatenated by `TokenFeatures`.
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


class ImageScale(nn.Module):
  """uint8 images [B, H, W, C] (as the data pipeline keeps them) -> float32 in [0, 1]."""

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    return jnp.asarray(inputs, jnp.float32) / 255.0


class CharCNN(nn.Module):
  """Word features from characters (Ma & Hovy 2016, "End-to-end Sequence Labeling via
  Bi-directional LSTM-CNNs-CRF"): character embeddings, one convolution over each word's
  characters, max over positions.

  Input: int [B, T, L] character ids of each word (0 = padding after the word's end); output
  [B, T, filters]. The padding id has its own embedding, so windows at a word's end ("ng" + end)
  are suffix detectors, which is what tags an unknown word.
  """

  vocab_size: int
  embed_dim: int = 32
  filters: int = 64
  width: int = 3

  @nn.compact
  def __call__(self, chars: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    chars = jnp.asarray(chars).astype(jnp.int32)
    batch, length, word = chars.shape
    x = nn.Embed(self.vocab_size, self.embed_dim, name='embedding')(chars)
    x = nn.Conv(self.filters, (self.width,), padding='SAME', name='conv')(
        x.reshape(batch * length, word, self.embed_dim))
    return jnp.tanh(x.max(1)).reshape(batch, length, self.filters)


class TokenFeatures(nn.Module):
  """A token input layer ({'tokens', 'mask', ...} -> {'features', 'mask'}) with `CharCNN`
  features of `inputs['chars']` concatenated to its features (dropout on them in training)."""

  token_layer: nn.Module
  char_cnn: nn.Module
  dropout: float = 0.0

  @nn.compact
  def __call__(self, inputs: dict, *, train: bool = False) -> dict:
    out = self.token_layer(inputs, train=train)
    if 'chars' not in inputs:
      raise UserError('char_cnn features need inputs["chars"]: int [batch, time, chars]')
    chars = self.char_cnn(inputs['chars'], train=train)
    if self.dropout:
      chars = nn.Dropout(self.dropout, deterministic=not train)(chars)
    features = jnp.concatenate([out['features'], chars], -1)
    return {'features': jnp.where(out['mask'][..., None], features, 0), 'mask': out['mask']}


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
  if spec.input_kind == 'image':
    return ImageScale()
  if spec.input_kind == 'tokens':
    info = spec.input_info(builder)
    layer = _token_embedding(info, dict(config.get('token_embedding', {})))
    char_cnn = dict(config.get('char_cnn', {}))
    if char_cnn.get('filters', 0):
      dropout = char_cnn.pop('dropout', 0.0)
      layer = TokenFeatures(layer, _make('char_cnn', CharCNN, char_cnn,
                                         vocab_size=int(info['char_vocab_size'])), dropout)
    return layer
  raise ValueError(f'no input layer for input kind {spec.input_kind!r}')


def _make(key: str, cls: type, kwargs: dict, **fixed) -> nn.Module:
  """`cls(**fixed, **kwargs)`; a UserError naming `config.<key>` for an unknown option."""
  if set(kwargs) & set(fixed):
    raise UserError(f'config.{key}.{sorted(set(kwargs) & set(fixed))[0]} is set by the dataset; '
                    f'remove it')
  options = [p for p in inspect.signature(cls).parameters
             if p not in tuple(fixed) + ('parent', 'name')]
  unknown = sorted(set(kwargs) - set(options))
  if unknown:
    raise UserError(f'config.{key} has unknown option(s) {", ".join(unknown)}; {cls.__name__}\'s '
                    f'options are: {", ".join(options)}')
  return cls(**fixed, **kwargs)


def _token_embedding(info: dict, kwargs: dict) -> nn.Module:
  """`TokenEmbedding` sized by the dataset (`vocab_size`), options from the config."""
  # Imported here, so that the other input kinds do not depend on the sequence-model modules.
  from mtl_jax.models import token_inputs  # pylint: disable=import-outside-toplevel
  return _make('token_embedding', token_inputs.TokenEmbedding, kwargs,
               vocab_size=int(info['vocab_size']))
