"""Feature learners: Linen modules `x -> features`, called as `module(x, train=...)`.

Any Linen module with that call signature can be a trunk or a tower (see `docs/MODELS.md` for
bringing your own, Linen or NNX).
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.registry import Registry

ENCODERS = Registry('encoder')

ACTIVATIONS = {'relu': nn.relu, 'gelu': nn.gelu, 'tanh': jnp.tanh, 'silu': nn.silu}


@ENCODERS.register('mlp')
class MLP(nn.Module):
  """A stack of dense layers with an activation and dropout after each."""

  hidden_sizes: Sequence[int] = (256, 128)
  activation: str = 'relu'
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    x = x.reshape(x.shape[0], -1)
    for size in self.hidden_sizes:
      x = act(nn.Dense(size)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


def block_max_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """`nn.max_pool(x, window, strides=window)` on [B, H, W, C], as a reshape and a max.

  The same values (trailing rows and columns that do not fill a block are dropped, as by
  `max_pool`'s VALID padding). The gradient goes to each block's maximum, split evenly between
  exact ties where `max_pool` picks one; after a ReLU a tie is a block of zeros, whose gradient
  the ReLU stops either way. Why: XLA:CPU runs `max_pool`'s backward pass (select-and-scatter)
  slowly; this halves the gradient of `benchmarks/vs_pytorch.py`'s CNN on CPU (60 -> 30 ms).
  """
  batch, height, width, channels = x.shape
  wh, ww = window
  rows, cols = height // wh, width // ww
  x = x[:, :rows * wh, :cols * ww]
  return x.reshape(batch, rows, wh, cols, ww, channels).max(axis=(2, 4))


@ENCODERS.register('cnn')
class CNN(nn.Module):
  """Conv -> activation -> max-pool blocks, then dense layers; input [B, H, W, C] (or [B, H, W])."""

  channels: Sequence[int] = (32, 64)
  kernel_size: int = 3
  hidden_sizes: Sequence[int] = (128,)
  activation: str = 'relu'
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    act: Callable = ACTIVATIONS[self.activation]
    if x.ndim == 3:
      x = x[..., None]
    for channels in self.channels:
      x = act(nn.Conv(channels, (self.kernel_size, self.kernel_size))(x))
      x = block_max_pool(x)
    x = x.reshape(x.shape[0], -1)
    for size in self.hidden_sizes:
      x = act(nn.Dense(size)(x))
      if self.dropout:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x
