"""Task heads: features -> the task's outputs (logits or values)."""

from typing import Sequence

import flax.linen as nn
import jax


class Head(nn.Module):
  """Optional hidden layers, then a linear output of `output_size` (squeezed when it is 1).

  Features with position axes ([B, T, D] from a sequence or dense-prediction encoder) give one
  output per position; with `pool_positions` the head first averages them over the positions,
  for a per-example task (an image's class) on a trunk that also serves per-position tasks.
  """

  output_size: int
  hidden_sizes: Sequence[int] = ()
  pool_positions: bool = False

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = features
    if self.pool_positions and x.ndim > 2:
      x = x.mean(axis=tuple(range(1, x.ndim - 1)))
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    out = nn.Dense(self.output_size)(x)
    return out[..., 0] if self.output_size == 1 else out
