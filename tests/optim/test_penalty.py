import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import optim


def test_penalty_adds_its_gradient():
  params = {'a': jnp.array([0.5, -1.0]), 'w': jnp.ones((2, 2))}
  tx = optim.penalty(lambda p: 3.0 * jnp.sum(p['a'] ** 2))
  updates = jax.tree.map(jnp.ones_like, params)
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_allclose(out['a'], 1.0 + 6.0 * np.array([0.5, -1.0]))
  np.testing.assert_allclose(out['w'], np.ones((2, 2)))


def test_penalty_needs_params():
  tx = optim.penalty(lambda p: jnp.sum(p ** 2))
  with pytest.raises(Exception, match='needs the parameters'):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))


def test_penalty_composes_with_optax_chain_under_jit():
  tx = optax.chain(optim.penalty(lambda p: jnp.sum(p ** 2)), optax.sgd(0.1))
  params = jnp.array([1.0, -2.0])
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  updates, _ = step(jnp.zeros(2), state, params)
  np.testing.assert_allclose(updates, -0.1 * 2 * np.array([1.0, -2.0]), rtol=1e-6)
