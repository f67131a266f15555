"""Recurrent sequence encoders: `lstm` and `bilstm` (LSTM: Hochreiter & Schmidhuber, "Long
Short-Term Memory", Neural Computation 1997; bidirectional LSTM: Graves & Schmidhuber, "Framewise
phoneme classification with bidirectional LSTM", Neural Networks 2005).

Inputs and outputs follow the convention of `models/token_inputs.py`:

    encoder(x [B, T, D] or {'features': [B, T, D], 'mask': [B, T]}, train=...)
      -> [B, T, H]                       pool='none' (per-token features, 0 at padding)
      -> [B, H]                          pool='mean' | 'max' | 'last'
      -> {'features': [B, T, H], 'mask'} pool='none', return_mask=True

H is `hidden_size` for `lstm` and 2 * `hidden_size` for `bilstm` (forward and backward states
concatenated). For `bilstm`, pool='last' is the forward state at the last real token next to the
backward state at the first: each direction's summary of the whole sentence.

Padding never leaks: the sequence lengths (`mask.sum(-1)`, padding on the right) go to
`flax.linen.RNN`, whose backward direction reverses only the real tokens, so neither direction
reads a padded position before a real one. `num_layers=1` is one block; stacking blocks with
`return_mask=True` equals one encoder with more layers (without the dropout between them).
"""

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax.models import token_inputs
from mtl_jax.models.encoders import ENCODERS


class _Recurrent(nn.Module):
  """Stacked LSTM layers, one or both directions."""

  hidden_size: int = 128
  num_layers: int = 1
  dropout: float = 0.0
  pool: str = 'none'
  return_mask: bool = False
  # A class constant, not an option: the registry name says which.
  bidirectional: ClassVar[bool] = False

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    token_inputs.check_pool(self.pool, self.return_mask)
    x, mask = token_inputs.split(inputs)
    seq_lengths = token_inputs.lengths(mask, x)
    carry = None
    for layer in range(self.num_layers):
      if layer and self.dropout:
        # Between layers only (Zaremba et al. 2014): dropout on the recurrent connections would
        # need the same mask at every step.
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      # Cells named here, where they are created: they are the layers' parameters.
      forward = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size, name=f'forward_{layer}'))
      if self.bidirectional:
        backward = nn.RNN(nn.OptimizedLSTMCell(self.hidden_size, name=f'backward_{layer}'))
        carry, x = nn.Bidirectional(forward, backward, return_carry=True)(
            x, seq_lengths=seq_lengths)
      else:
        carry, x = forward(x, seq_lengths=seq_lengths, return_carry=True)
    pooled = None
    if self.pool == 'last' and self.bidirectional:
      # OptimizedLSTMCell's carry is (c, h); RNN returns the carry at each row's last real step.
      (_, h_forward), (_, h_backward) = carry
      pooled = jnp.concatenate([h_forward, h_backward], -1)
      pooled = jnp.where(seq_lengths[:, None] > 0, pooled, 0)
    return token_inputs.finish(x, mask, self.pool, self.return_mask, pooled)


@ENCODERS.register('lstm')
class LSTM(_Recurrent):
  """Left-to-right LSTM over [B, T, D] (see the module docstring for inputs and outputs).

  Attributes:
    hidden_size: width H of the LSTM state and of the output.
    num_layers: stacked LSTM layers.
    dropout: dropout between stacked layers, in training.
    pool: 'none' (per-token [B, T, H]), 'mean', 'max' or 'last' (the state after the last real
      token) -> [B, H].
    return_mask: with pool='none', return {'features', 'mask'} so that encoders stack.
  """

  bidirectional: ClassVar[bool] = False


@ENCODERS.register('bilstm')
class BiLSTM(_Recurrent):
  """Bidirectional LSTM over [B, T, D]; output width 2 * hidden_size (see `LSTM` for options)."""

  bidirectional: ClassVar[bool] = True
