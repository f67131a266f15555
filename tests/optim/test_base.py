"""The shared pieces the methods are built from (mtl_jax/optim/base.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import combine, gramian, loss_weighting
from mtl_jax.optim.base import EmptyState
from tests.optim import helpers


def test_gramian_and_combine_match_numpy():
  grads, _ = helpers.random_problem(0, 4)
  jac = helpers.jacobian_matrix(grads)
  np.testing.assert_allclose(gramian(grads), jac @ jac.T, rtol=1e-5, atol=1e-5)
  w = np.array([0.5, -1.0, 2.0, 0.0])
  np.testing.assert_allclose(helpers.flat(combine(jnp.asarray(w), grads)), w @ jac, rtol=1e-5,
                             atol=1e-6)


def test_bf16_gramian_accumulates_in_float32():
  grads = {'a': jnp.full((2, 4096), 1.0 + 2 ** -7, jnp.bfloat16)}
  g = gramian(grads)
  assert g.dtype == jnp.float32
  np.testing.assert_allclose(g, 4096 * (1 + 2 ** -7) ** 2, rtol=1e-6)
  assert combine(jnp.array([0.5, 0.5]), grads)['a'].dtype == jnp.bfloat16


def test_losses_are_checked():
  tx = loss_weighting('x', EmptyState, lambda s, l: jnp.ones_like(l))
  grads = {'a': jnp.ones((3, 2))}
  with pytest.raises(UserError, match='pass the per-task losses'):
    tx.update(grads, tx.init(None))
  with pytest.raises(UserError, match='shape'):
    tx.update(grads, tx.init(None), losses=jnp.ones((3, 1)))
  with pytest.raises(UserError, match='leading task axis'):
    tx.update(grads, tx.init(None), losses=jnp.ones(2))
