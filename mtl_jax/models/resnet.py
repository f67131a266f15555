"""`resnet`: a residual network of basic blocks (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016), images [B, H, W, C] (or [B, H, W]) -> pooled features [B, C_last].

Batch norm (the default `norm`) keeps running statistics in the `batch_stats` collection:

* training (`train=True`) normalises with the statistics of the batch and returns updated running
  averages, which the train step collects through `apply(..., mutable=True)` and stores in
  `TrainState.collections`;
* evaluation (`train=False`) normalises with the running averages and changes nothing.

Under data parallelism the statistics are those of the GLOBAL batch: the step is one jitted program
over the logical batch sharded on the mesh's `data` axis, so the batch mean is a mean over every
device's rows (XLA inserts the cross-device reduction); no `axis_name` is needed, and a step on 8
devices gives the batch statistics of the same batch on 1 (`tests/models/test_resnet.py`).
`norm='group'` / `'layer'` need no statistics and give each example features independent of the
rest of the batch.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.models.encoders import ENCODERS

NORMS = ('batch', 'group', 'layer')
STEMS = ('small', 'imagenet')

# He-normal over the output fan, as in torchvision's ResNet.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _norm(kind: str, *, train: bool, dtype: Any, num_groups: int, zero: bool = False,
          name: str | None = None) -> nn.Module:
  """The normalisation layer; `zero` starts its scale at 0 (the last norm of a residual branch,
  so each block starts as the identity: Goyal et al. 2017, "Accurate, Large Minibatch SGD")."""
  scale_init = nn.initializers.zeros if zero else nn.initializers.ones
  if kind == 'batch':
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        scale_init=scale_init, name=name)
  if kind == 'group':
    return nn.GroupNorm(num_groups=num_groups, dtype=dtype, scale_init=scale_init, name=name)
  # Over the channels at each position (as in ConvNeXt, Liu et al. 2022).
  return nn.LayerNorm(dtype=dtype, scale_init=scale_init, name=name)


class BasicBlock(nn.Module):
  """relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x)); a 1x1 projection shortcut where
  the shape changes."""

  filters: int
  strides: int = 1
  norm: str = 'batch'
  num_groups: int = 8
  zero_init_residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    def norm(zero=False, name=None):
      return _norm(self.norm, train=train, dtype=self.dtype, num_groups=self.num_groups,
                   zero=zero, name=name)

    def conv(kernel, strides, name):
      # No bias: the norm that follows has its own.
      return nn.Conv(self.filters, (kernel, kernel), (strides, strides), use_bias=False,
                     kernel_init=_conv_init, dtype=self.dtype, name=name)

    y = nn.relu(norm(name='norm1')(conv(3, self.strides, 'conv1')(x)))
    y = norm(zero=self.zero_init_residual, name='norm2')(conv(3, 1, 'conv2')(y))
    shortcut = x
    if x.shape[-1] != self.filters or self.strides != 1:
      shortcut = norm(name='shortcut_norm')(conv(1, self.strides, 'shortcut_conv')(x))
    return nn.relu(y + shortcut)


@ENCODERS.register('resnet')
class ResNet(nn.Module):
  """Stem, then stages of basic blocks, then global average pooling -> [B, C_last] float32.

  Attributes:
    stage_sizes: blocks per stage; (2, 2, 2, 2) is ResNet-18.
    num_filters: channels of the stem and the first stage; each later stage doubles them.
    strides: the first block's stride in each stage; default 1 for the first stage, 2 after.
    stem: 'small' (one 3x3 conv, stride 1: CIFAR-size images) or 'imagenet' (7x7 conv with stride
      2 and a 3x3 max pool with stride 2).
    norm: 'batch' (running statistics in `batch_stats`), 'group' or 'layer'.
    num_groups: groups of `norm='group'`; must divide every stage's channels.
    zero_init_residual: start each block's last norm scale at 0, so each block starts as the
      identity.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and batch statistics stay float32,
      and the output is float32.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  strides: Sequence[int] | None = None
  stem: str = 'small'
  norm: str = 'batch'
  num_groups: int = 8
  zero_init_residual: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.norm not in NORMS:
      raise UserError(f'unknown norm {self.norm!r}; valid: {", ".join(NORMS)}')
    if self.stem not in STEMS:
      raise UserError(f'unknown stem {self.stem!r}; valid: {", ".join(STEMS)}')
    strides = self.strides
    if strides is None:
      strides = (1,) + (2,) * (len(self.stage_sizes) - 1)
    if len(strides) != len(self.stage_sizes):
      raise UserError(f'strides {tuple(strides)} must give one stride per stage of '
                      f'stage_sizes {tuple(self.stage_sizes)}')
    dtype = jnp.dtype(self.dtype)
    if x.ndim == 3:
      x = x[..., None]
    x = jnp.asarray(x).astype(dtype)
    if self.stem == 'small':
      x = nn.Conv(self.num_filters, (3, 3), use_bias=False, kernel_init=_conv_init, dtype=dtype,
                  name='stem_conv')(x)
    else:
      x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                  kernel_init=_conv_init, dtype=dtype, name='stem_conv')(x)
    x = nn.relu(_norm(self.norm, train=train, dtype=dtype, num_groups=self.num_groups,
                      name='stem_norm')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for stage, (size, stride) in enumerate(zip(self.stage_sizes, strides)):
      for index in range(size):
        x = BasicBlock(self.num_filters * 2 ** stage, stride if index == 0 else 1, self.norm,
                       self.num_groups, self.zero_init_residual, dtype,
                       name=f'stage{stage}_block{index}')(x, train=train)
    # The mean over positions in float32: a bfloat16 sum over a large image loses precision.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
