"""Sequence inputs: the padding-mask convention of the sequence encoders, and token embeddings.

The convention (shared by `lstm`, `bilstm` and `transformer`):

* A sequence encoder is called with either an array `x` [B, T, D] (every position is real) or a
  dict `{'features': [B, T, D], 'mask': [B, T]}` where `mask` is True (or 1) at real tokens.
  Padding is on the right: the real tokens of row b are positions `0 .. sum(mask[b]) - 1`. The
  recurrent encoders need this (their sequence lengths are `mask.sum(-1)`); positional encodings
  rely on it so that a token's position does not depend on how much padding precedes it.
* It returns per-token features [B, T, H] (zero at padded positions, so padding never reaches
  anything downstream), or, with `pool='mean'|'max'|'last'`, one vector per sequence [B, H].
* With `return_mask=True` (and `pool='none'`) it returns `{'features': [B, T, H], 'mask': [B, T]}`
  instead: the form it accepts, so encoders stack (`bilstm` block -> `bilstm` block -> ...) and a
  hierarchical model can read every block's per-token features.

`TokenEmbedding` is the input layer that starts this chain: `{'tokens', 'mask'[, 'chars']}` ->
`{'features', 'mask'}`, so `inputs.Trunk(TokenEmbedding(...), encoder)` composes.
"""

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError

POOLS = ('none', 'mean', 'max', 'last')

# Word-boundary markers for character n-grams: above the largest Unicode code point (0x10FFFF),
# so they never collide with a real character.
BOW, EOW = 0x110001, 0x110002


def split(inputs) -> tuple[jax.Array, jax.Array | None]:
  """(features [B, T, D], mask [B, T] bool or None) from either accepted input form."""
  if isinstance(inputs, Mapping):
    features, mask = inputs['features'], inputs.get('mask')
  else:
    features, mask = inputs, None
  if features.ndim != 3:
    raise UserError(f'a sequence encoder expects features [batch, time, dim], got shape '
                    f'{features.shape}; pass token ids through an input layer such as '
                    'TokenEmbedding first')
  return features, (None if mask is None else jnp.asarray(mask).astype(bool))


def lengths(mask: jax.Array | None, features: jax.Array) -> jax.Array:
  """Number of real tokens per row, int32 [B]."""
  if mask is None:
    return jnp.full(features.shape[:1], features.shape[1], jnp.int32)
  return mask.sum(-1).astype(jnp.int32)


def check_pool(pool: str, return_mask: bool) -> None:
  if pool not in POOLS:
    raise UserError(f'unknown pool {pool!r}; valid: {", ".join(POOLS)}')
  if return_mask and pool != 'none':
    raise UserError(f'return_mask=True returns per-token features; it needs pool="none", '
                    f'got pool={pool!r}')


def last(features: jax.Array, mask: jax.Array | None) -> jax.Array:
  """The features of each row's last real token [B, H] (position 0 for an empty row)."""
  index = jnp.maximum(lengths(mask, features) - 1, 0)
  return jnp.take_along_axis(features, index[:, None, None], axis=1)[:, 0]


def pool_features(features: jax.Array, mask: jax.Array | None, pool: str) -> jax.Array:
  """'mean' / 'max' over the real tokens, 'last' real token; zeros for a row with none."""
  if pool == 'last':
    return last(features, mask)
  if mask is None:
    mask = jnp.ones(features.shape[:2], bool)
  keep = mask[..., None]
  if pool == 'mean':
    count = jnp.maximum(mask.sum(-1, keepdims=True), 1).astype(features.dtype)
    return jnp.where(keep, features, 0).sum(1) / count
  if pool == 'max':
    # -inf under the mask, then 0 for rows with no token at all rather than -inf.
    pooled = jnp.where(keep, features, -jnp.inf).max(1)
    return jnp.where(mask.any(-1, keepdims=True), pooled, 0)
  raise UserError(f'unknown pool {pool!r}; valid: {", ".join(POOLS)}')


def finish(features: jax.Array, mask: jax.Array | None, pool: str, return_mask: bool,
           pooled: jax.Array | None = None):
  """The encoder's output in the convention above; `pooled` overrides the generic pooling (a
  bidirectional RNN's 'last' is its two final states, not the last token's features)."""
  if mask is not None:
    features = jnp.where(mask[..., None], features, 0)
  if pool != 'none':
    return pooled if pooled is not None else pool_features(features, mask, pool)
  if return_mask:
    if mask is None:
      mask = jnp.ones(features.shape[:2], bool)
    return {'features': features, 'mask': mask}
  return features


def char_codes(words: Sequence[str], max_chars: int = 20) -> np.ndarray:
  """Host-side helper: Unicode code points of each word, int32 [len(words), max_chars], 0-padded.

  A word longer than `max_chars` keeps its first `max_chars // 2` and its last
  `max_chars - max_chars // 2` characters: prefixes carry capitalisation and affixes like "un-",
  suffixes the inflections ("-ing", "-ed", "-ly") a tagger needs most.
  """
  out = np.zeros((len(words), max_chars), np.int32)
  head = max_chars // 2
  for i, word in enumerate(words):
    if len(word) > max_chars:
      word = word[:head] + word[len(word) - (max_chars - head):]
    if word:
      out[i, :len(word)] = [ord(c) for c in word]
  return out


def char_ngram_ids(chars: jax.Array, ngram_sizes: Sequence[int], buckets: int
                   ) -> tuple[jax.Array, jax.Array]:
  """Hashed character n-grams of each word (Bojanowski et al. 2017, "Enriching Word Vectors with
  Subword Information"), computed on device from code points.

  Args:
    chars: int [..., L] code points of each word, 0-padded on the right (`char_codes`).
    ngram_sizes: the n of the n-grams, e.g. (1, 2, 3, 4).
    buckets: size of the hashed n-gram vocabulary.

  Returns:
    (ids int32 [..., W], valid bool [..., W]): the bucket of every n-gram window of the word
    wrapped in boundary markers ("<cats>"), and which windows lie inside the word. An n-gram's id
    depends only on its characters and n, so "walking" and "talking" share "ing>".
  """
  chars = jnp.asarray(chars).astype(jnp.uint32)
  size = chars.shape[-1]
  count = (chars > 0).sum(-1, keepdims=True)
  pad = jnp.zeros(chars.shape[:-1] + (1,), jnp.uint32)
  marked = jnp.concatenate([pad + BOW, chars, pad], axis=-1)  # [..., L + 2]
  positions = jnp.arange(size + 2)
  marked = jnp.where(positions == count + 1, jnp.uint32(EOW), marked)
  ids, valid = [], []
  for n in ngram_sizes:
    windows = size + 3 - n
    if windows <= 0:
      continue
    # FNV-1a over the n code points, seeded by n so that equal strings of different n differ.
    h = jnp.full(marked.shape[:-1] + (windows,), 2166136261 ^ (n * 0x9E3779B1 & 0xFFFFFFFF),
                 jnp.uint32)
    ok = jnp.ones(h.shape, bool)
    for j in range(n):
      c = marked[..., j:j + windows]
      h = (h ^ c) * jnp.uint32(16777619)
      ok &= c > 0
    ids.append((h % jnp.uint32(buckets)).astype(jnp.int32))
    valid.append(ok)
  return jnp.concatenate(ids, -1), jnp.concatenate(valid, -1)


class TokenEmbedding(nn.Module):
  """Input layer for token sequences: `{'tokens': int [B, T], 'mask': [B, T][, 'chars']}` ->
  `{'features': [B, T, E], 'mask': [B, T] bool}`.

  Features are a word embedding, concatenated (when `char_buckets` > 0) with the mean of the
  word's hashed character n-gram embeddings, which needs `'chars'`: int [B, T, L] code points of
  each token (`char_codes`). Character n-grams give unseen and rare words a representation from
  their affixes and capitalisation; word embeddings alone leave every out-of-vocabulary word the
  same vector, which costs a POS tagger several points of accuracy.

  Attributes:
    vocab_size: size of the word vocabulary; ids are in [0, vocab_size).
    embed_dim: width of the word embedding (0: no word embedding, characters only).
    char_buckets: size of the hashed character n-gram table; 0 turns character features off.
    char_embed_dim: width of the character n-gram embedding.
    char_ngrams: the n of the character n-grams.
    word_dropout: in training, the probability that a real token's id is replaced by `unk_id`,
      so the model learns to tag from characters and context the words it will see as unknown.
    unk_id: the id of the unknown word.
    dropout: dropout on the output features in training.
  """

  vocab_size: int
  embed_dim: int = 128
  char_buckets: int = 0
  char_embed_dim: int = 64
  char_ngrams: Sequence[int] = (1, 2, 3, 4)
  word_dropout: float = 0.0
  unk_id: int = 1
  dropout: float = 0.0

  @nn.compact
  def __call__(self, inputs: dict, *, train: bool = False) -> dict:
    tokens = jnp.asarray(inputs['tokens']).astype(jnp.int32)
    mask = inputs.get('mask')
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    parts = []
    if self.embed_dim:
      if train and self.word_dropout:
        drop = jax.random.bernoulli(self.make_rng('dropout'), self.word_dropout, tokens.shape)
        tokens = jnp.where(drop & mask, self.unk_id, tokens)
      parts.append(nn.Embed(self.vocab_size, self.embed_dim, name='words')(tokens))
    if self.char_buckets:
      if 'chars' not in inputs:
        raise UserError('TokenEmbedding(char_buckets > 0) needs inputs["chars"]: int '
                        '[batch, time, max_chars] code points (see token_inputs.char_codes)')
      ids, valid = char_ngram_ids(inputs['chars'], self.char_ngrams, self.char_buckets)
      grams = nn.Embed(self.char_buckets, self.char_embed_dim, name='char_ngrams')(ids)
      count = jnp.maximum(valid.sum(-1, keepdims=True), 1).astype(grams.dtype)
      parts.append(jnp.where(valid[..., None], grams, 0).sum(-2) / count)
    if not parts:
      raise UserError('TokenEmbedding needs embed_dim > 0 or char_buckets > 0')
    features = jnp.concatenate(parts, -1)
    if self.dropout:
      features = nn.Dropout(self.dropout, deterministic=not train)(features)
    return {'features': jnp.where(mask[..., None], features, 0), 'mask': mask}
