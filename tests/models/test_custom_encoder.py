"""A user's own encoder, in Linen or in NNX, as the shared trunk (docs/MODELS.md)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import bridge

from mtl_jax import models
from tests import helpers


class LinenEncoder(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.tanh(nn.Dense(6)(x))


class NNXEncoder(nnx.Module):
  def __init__(self, in_features, rngs: nnx.Rngs):
    self.dense = nnx.Linear(in_features, 6, rngs=rngs)

  def __call__(self, x, *, train=False):
    return jnp.tanh(self.dense(x))


def _check(encoder):
  example = helpers.batch()
  model = models.build('hard', helpers.TASKS, models.inputs.Identity(), encoder)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(example['inputs']))
  outputs = model.apply(variables, example['inputs'])
  assert outputs['cls'].shape == (16, 3)
  leaves = jax.tree.leaves(variables['params']['shared'])
  assert sum(x.size for x in leaves) == 5 * 6 + 6  # the encoder's Dense/Linear is shared
  grads = jax.grad(lambda p: model.apply({'params': p}, example['inputs'])['reg'].sum())(
      variables['params'])
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads['shared']))


def test_linen_encoder_as_trunk():
  _check(LinenEncoder())


def test_nnx_encoder_as_trunk_through_the_bridge():
  _check(bridge.ToLinen(NNXEncoder, args=(5,)))
