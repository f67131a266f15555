import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import ew, soft_sharing


def penalty(towers, strength):
  """strength * sum_{i<j} ||Theta_i - Theta_j||^2, written out as the double sum."""
  total = 0.0
  k = towers.shape[0]
  for i in range(k):
    for j in range(i + 1, k):
      total = total + jnp.sum((towers[i] - towers[j]) ** 2)
  return strength * total


def make_params(seed=0, k=3):
  rng = np.random.default_rng(seed)
  return {'towers': {'kernel': jnp.asarray(rng.normal(size=(k, 4, 5)), jnp.float32),
                     'bias': jnp.asarray(rng.normal(size=(k, 5)), jnp.float32)},
          'head': jnp.asarray(rng.normal(size=(5, 2)), jnp.float32),
          'scale': jnp.asarray(1.5, jnp.float32)}


def random_updates(params, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def test_matches_grad_of_double_sum():
  params = make_params()
  updates = random_updates(params)
  strength = 0.37
  tx = soft_sharing(strength, mask={'towers': True, 'head': False, 'scale': False})
  out, _ = tx.update(updates, tx.init(params), params)
  for name in ('kernel', 'bias'):
    expected = updates['towers'][name] + jax.grad(penalty)(params['towers'][name], strength)
    np.testing.assert_allclose(out['towers'][name], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out['head'], updates['head'])
  np.testing.assert_array_equal(out['scale'], updates['scale'])


def test_default_mask_and_num_tasks_filter():
  params = make_params(k=3)
  updates = random_updates(params)
  # Default: every leaf with an axis is a stack along it; 'head' (5 x 2) is taken as 5 towers.
  out, _ = soft_sharing(0.1).update(updates, optax.EmptyState(), params)
  np.testing.assert_allclose(out['head'], updates['head'] + jax.grad(penalty)(params['head'], 0.1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out['scale'], updates['scale'])  # scalars never
  # num_tasks=3 keeps only the leaves stacked 3 deep.
  out, _ = soft_sharing(0.1, num_tasks=3).update(updates, optax.EmptyState(), params)
  np.testing.assert_array_equal(out['head'], updates['head'])
  expected = updates['towers']['bias'] + jax.grad(penalty)(params['towers']['bias'], 0.1)
  np.testing.assert_allclose(out['towers']['bias'], expected, rtol=1e-5, atol=1e-6)


def test_callable_mask_and_zero_strength():
  params = make_params()
  updates = random_updates(params)
  mask_fn = lambda p: jax.tree.map(lambda x: x.ndim == 3, p)
  tx = soft_sharing(2.0, mask=mask_fn)
  out, _ = tx.update(updates, tx.init(params), params)
  np.testing.assert_array_equal(out['towers']['bias'], updates['towers']['bias'])
  expected = updates['towers']['kernel'] + jax.grad(penalty)(params['towers']['kernel'], 2.0)
  np.testing.assert_allclose(out['towers']['kernel'], expected, rtol=1e-5, atol=1e-5)
  out, _ = soft_sharing(0.0).update(updates, optax.EmptyState(), params)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(updates)):
    np.testing.assert_array_equal(a, b)


def test_equal_towers_get_no_penalty_and_bf16():
  tower = jnp.arange(6.0, dtype=jnp.bfloat16).reshape(2, 3)
  params = {'t': jnp.stack([tower, tower, tower])}
  updates = {'t': jnp.ones((3, 2, 3), jnp.bfloat16)}
  out, _ = soft_sharing(1.0).update(updates, optax.EmptyState(), params)
  assert out['t'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out['t'], np.float32), 1.0)


def test_in_a_chain_after_a_method_with_losses():
  params = make_params()
  task_grads = jax.tree.map(lambda p: jnp.stack([jnp.ones_like(p), 2 * jnp.ones_like(p)]), params)
  strength = 0.05
  chain = optax.chain(ew(), soft_sharing(strength, mask={'towers': True, 'head': False,
                                                          'scale': False}), optax.sgd(1.0))
  state = chain.init(params)
  step = jax.jit(lambda g, s, p, l: chain.update(g, s, p, losses=l))
  updates, state = step(task_grads, state, params, jnp.array([1.0, 2.0]))
  expected = 3.0 + jax.grad(penalty)(params['towers']['kernel'], strength)
  np.testing.assert_allclose(-updates['towers']['kernel'], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(-updates['head'], 3.0)
  updates, state = step(task_grads, state, random_updates(params), jnp.array([0.5, 0.1]))
  assert step._cache_size() == 1


def test_errors():
  params = make_params()
  with pytest.raises(UserError, match='parameters'):
    soft_sharing(1.0).update(random_updates(params), optax.EmptyState())
  with pytest.raises(UserError):
    soft_sharing(-1.0)
  with pytest.raises(UserError):
    soft_sharing('strong')
  with pytest.raises(UserError):
    soft_sharing(1.0, num_tasks=0)
