"""Task heads: features -> the task's outputs (logits or values)."""

from typing import Sequence

import flax.linen as nn
import jax


class Head(nn.Module):
  """Optional hidden layers, then a linear output of `output_size` (squeezed when it is 1)."""

  output_size: int
  hidden_sizes: Sequence[int] = ()

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = features
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    out = nn.Dense(self.output_size)(x)
    return out[..., 0] if self.output_size == 1 else out
