"""`fcn`: a small U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015) for dense prediction: images [B, H, W, C] (or [B, H, W]) -> one
feature vector per output pixel, [B, (H / output_stride) * (W / output_stride), features].

The output has a position axis, like a sequence encoder's [B, T, D]: a per-pixel task is a
per-token task (`Task(..., per_token=True)`) whose T is the flattened pixel grid, and its head
is a 1x1 convolution (a Dense applied at every position). A per-image task in the same model
(breed, species) reads the same features through its head's mean over positions
(`Head(pool_positions=True)`, what `make_heads` gives the tasks that are not per-token when
others are), so one trunk
serves both kinds, as in the dense multi-task benchmarks (NYUv2, Cityscapes).

Encoder: `len(channels)` blocks of two 3x3 conv + norm + relu, each but the last followed by a 2x2
max-pool; decoder: back up (nearest-neighbour x2, concatenate the encoder's features at that
scale, two 3x3 convs) until the resolution is H / output_stride. Group norm by default: its
features do not depend on the rest of the batch, and it keeps no running statistics.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models.encoders import ACTIVATIONS, ENCODERS, block_max_pool


class _ConvBlock(nn.Module):
  channels: int
  norm: str
  activation: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(2):
      x = nn.Conv(self.channels, (3, 3))(x)
      if self.norm == 'group':
        x = nn.GroupNorm(num_groups=min(8, self.channels))(x)
      elif self.norm == 'layer':
        x = nn.LayerNorm()(x)
      x = ACTIVATIONS[self.activation](x)
    return x


@ENCODERS.register('fcn')
class FCN(nn.Module):
  """U-Net features at stride `output_stride`, flattened to [B, positions, channels[0]]."""

  channels: Sequence[int] = (16, 32, 64)
  output_stride: int = 1
  norm: str = 'group'  # 'group' | 'layer' | 'none'
  activation: str = 'relu'
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.norm not in ('group', 'layer', 'none'):
      raise UserError(f'fcn: unknown norm {self.norm!r}; valid: group, layer, none')
    levels = len(self.channels)
    if self.output_stride not in [2**i for i in range(levels)]:
      raise UserError(f'fcn: output_stride must be a power of 2 below 2**len(channels) = '
                      f'{2**levels}, got {self.output_stride}')
    if x.ndim == 3:
      x = x[..., None]
    height, width = x.shape[1:3]
    if height % 2**(levels - 1) or width % 2**(levels - 1):
      raise UserError(f'fcn: image size {height}x{width} must be divisible by '
                      f'2**(len(channels) - 1) = {2**(levels - 1)}')
    skips = []
    for level, channels in enumerate(self.channels):
      x = _ConvBlock(channels, self.norm, self.activation)(x)
      if level < levels - 1:
        skips.append(x)
        x = block_max_pool(x)
    stride = 2**(levels - 1)
    for channels, skip in zip(reversed(self.channels[:-1]), reversed(skips)):
      if stride == self.output_stride:
        break
      batch, h, w, c = x.shape
      x = jax.image.resize(x, (batch, 2 * h, 2 * w, c), 'nearest')
      x = _ConvBlock(channels, self.norm, self.activation)(jnp.concatenate([x, skip], -1))
      stride //= 2
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x.reshape(x.shape[0], -1, x.shape[-1])
