"""`transformer`: a pre-LN Transformer encoder (Vaswani et al., "Attention Is All You Need",
NeurIPS 2017; layer norm before each sublayer as in Xiong et al., "On Layer Normalization in the
Transformer Architecture", ICML 2020, which trains without learning-rate warm-up).

Inputs and outputs follow the convention of `models/token_inputs.py`:

    encoder(x [B, T, D] or {'features': [B, T, D], 'mask': [B, T]}, train=...)
      -> [B, T, model_dim]                       pool='none' (per-token, 0 at padding)
      -> [B, model_dim]                          pool='mean' | 'max' | 'last'
      -> {'features': [B, T, model_dim], 'mask'} pool='none', return_mask=True

Padding never leaks: attention gives padded keys exactly zero weight, and every other operation
is per token. Positions count from the first token, so with padding on the right a token's
position does not depend on the padded length. Inputs whose width is not `model_dim` are first
projected to it; inputs already `model_dim` wide go in as they are, so that `num_layers=1` is
exactly one block and blocks stack (`return_mask=True`, later blocks with `positions='none'`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.models import token_inputs
from mtl_jax.models.encoders import ENCODERS

POSITIONS = ('learned', 'sinusoidal', 'none')


def sinusoidal(length: int, dim: int) -> np.ndarray:
  """Vaswani et al.'s fixed encoding: sin on even features, cos on odd, wavelengths to 10^4·2π."""
  position = np.arange(length)[:, None]
  rates = np.exp(-np.log(10000.0) * np.arange(0, dim, 2) / dim)
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * rates)
  table[:, 1::2] = np.cos(position * rates[:dim // 2])
  return table


class EncoderBlock(nn.Module):
  """x + Attention(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None, *, train: bool):
    y = nn.LayerNorm(name='attention_norm')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dropout_rate=self.attention_dropout, deterministic=not train,
        name='attention')(y, y, mask=attention_mask)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(name='mlp_norm')(x)
    y = nn.gelu(nn.Dense(self.mlp_dim, name='mlp_in')(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(x.shape[-1], name='mlp_out')(y)
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


@ENCODERS.register('transformer')
class Transformer(nn.Module):
  """Pre-LN Transformer encoder over [B, T, D] (see the module docstring for inputs/outputs).

  Attributes:
    model_dim: width of the residual stream and of the output.
    num_heads: attention heads; must divide `model_dim`.
    mlp_dim: hidden width of each block's MLP (default 4 * model_dim).
    num_layers: stacked blocks.
    dropout: dropout on the embeddings, on each sublayer's output and inside the MLP, in training.
    attention_dropout: dropout on the attention weights, in training.
    positions: 'learned' (a [max_len, model_dim] table), 'sinusoidal' or 'none' (for blocks after
      the first in a stack, or order-free inputs).
    max_len: longest sequence the learned table covers.
    final_norm: a last LayerNorm, which a pre-LN stack needs because its residual stream is
      never normalised otherwise.
    pool: 'none' (per-token [B, T, model_dim]), 'mean', 'max' or 'last' -> [B, model_dim].
    return_mask: with pool='none', return {'features', 'mask'} so that encoders stack.
  """

  model_dim: int = 128
  num_heads: int = 4
  mlp_dim: int | None = None
  num_layers: int = 2
  dropout: float = 0.1
  attention_dropout: float = 0.0
  positions: str = 'learned'
  max_len: int = 512
  final_norm: bool = True
  pool: str = 'none'
  return_mask: bool = False

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    token_inputs.check_pool(self.pool, self.return_mask)
    if self.positions not in POSITIONS:
      raise UserError(f'unknown positions {self.positions!r}; valid: {", ".join(POSITIONS)}')
    if self.model_dim % self.num_heads:
      raise UserError(f'num_heads={self.num_heads} must divide model_dim={self.model_dim}')
    x, mask = token_inputs.split(inputs)
    length = x.shape[1]
    x = x.astype(jnp.float32)
    if x.shape[-1] != self.model_dim:
      x = nn.Dense(self.model_dim, name='input_projection')(x)
    if self.positions == 'learned':
      if length > self.max_len:
        raise UserError(f'sequence length {length} exceeds the learned positions\' '
                        f'max_len={self.max_len}; raise max_len or use positions="sinusoidal"')
      table = self.param('position_embedding', nn.initializers.normal(0.02),
                         (self.max_len, self.model_dim))
      x = x + table[:length]
    elif self.positions == 'sinusoidal':
      x = x + sinusoidal(length, self.model_dim)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    # Keys only: a padded query still attends to the real tokens, so no row of the softmax is
    # empty (its output is zeroed at the end anyway).
    attention_mask = None if mask is None else mask[:, None, None, :]
    for layer in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_dim or 4 * self.model_dim, self.dropout,
                       self.attention_dropout, name=f'block_{layer}')(x, attention_mask,
                                                                      train=train)
    if self.final_norm:
      x = nn.LayerNorm(name='final_norm')(x)
    return token_inputs.finish(x, mask, self.pool, self.return_mask)
