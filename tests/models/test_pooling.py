"""`encoders.block_max_pool`, the non-overlapping max-pool the CNN, FCN and MTAN encoders use:
Flax's `max_pool` with strides equal to the window, values and gradients, on any shape."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mtl_jax.models import encoders


@pytest.mark.parametrize('shape,window', [((2, 8, 8, 3), (2, 2)), ((3, 7, 9, 2), (2, 2)),
                                          ((1, 12, 10, 4), (3, 2)), ((2, 5, 5, 1), (5, 5))])
def test_values_and_gradients_are_max_pool_s(shape, window):
  # Distinct values: without ties every max-pool picks the same entry, so gradients must agree.
  x = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape).astype(np.float32)
  weights = np.random.default_rng(1).normal(
      size=(shape[0], shape[1] // window[0], shape[2] // window[1], shape[3])).astype(np.float32)
  ours = encoders.block_max_pool(x, window)
  flax_ = nn.max_pool(x, window, strides=window)
  assert ours.shape == flax_.shape
  np.testing.assert_array_equal(ours, flax_)
  grad = lambda pool: jax.grad(lambda x: (pool(x) * weights).sum())(x)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_array_equal(grad(lambda x: encoders.block_max_pool(x, window)),
                                grad(lambda x: nn.max_pool(x, window, strides=window)))


def test_a_block_of_zeros_after_a_relu_passes_no_gradient():
  pre = np.array([[-1., -2.], [-3., -0.5]], np.float32).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: encoders.block_max_pool(jax.nn.relu(x)).sum())(pre)
  np.testing.assert_array_equal(grad, np.zeros_like(pre))
