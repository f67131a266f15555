"""Checks shared by the method tests: chaining, jit without retracing, state round trips."""

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax


def params_like(task_grads):
  """Parameters with the shape of one task's gradient (the task axis dropped)."""
  return jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), task_grads)


def random_problem(seed, num_tasks, shapes=((3, 2), (4,))):
  """Per-task gradients (a dict pytree with a leading task axis) and positive losses."""
  rng = np.random.default_rng(seed)
  grads = {f'w{i}': jnp.asarray(rng.normal(size=(num_tasks,) + s), jnp.float32)
           for i, s in enumerate(shapes)}
  losses = jnp.asarray(rng.uniform(0.2, 3.0, size=num_tasks), jnp.float32)
  return grads, losses


def flat(tree):
  return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


def jacobian_matrix(task_grads):
  """J (K x P), float64, from per-task gradients."""
  leaves = jax.tree.leaves(task_grads)
  k = leaves[0].shape[0]
  return np.concatenate([np.asarray(x, np.float64).reshape(k, -1) for x in leaves], axis=1)


def chain_update(tx, task_grads, losses, state=None):
  """One update of optax.chain(tx, sgd(1.0)); returns (combined gradient, chain state)."""
  chain = optax.chain(tx, optax.sgd(1.0))
  params = params_like(task_grads)
  if state is None:
    state = chain.init(params)
  step = jax.jit(lambda g, s, l: chain.update(g, s, params, losses=l))
  updates, state = step(task_grads, state, losses)
  return jax.tree.map(lambda u: -u, updates), state


def assert_chain_matches_weights(tx, task_grads, losses):
  """In a chain with sgd(1.0), the update is -sum_k w_k g_k for the weights the method reports."""
  params = params_like(task_grads)
  state = tx.init(params)
  if tx.loss_weights is not None:
    w = np.asarray(tx.loss_weights(state, losses), np.float64)
  else:
    from mtl_jax.optim.base import gramian
    w = np.asarray(tx.gramian_weights(gramian(task_grads), losses, state)[0], np.float64)
  combined, _ = chain_update(tx, task_grads, losses)
  expected = w @ jacobian_matrix(task_grads)
  np.testing.assert_allclose(flat(combined), expected, rtol=1e-5, atol=1e-6)
  return w


def assert_weighted_mode_consistent(tx, params, losses_fn, state=None):
  """Loss weighting: grad of sum_k w_k L_k (one backward) equals the transform's output on the
  Jacobian (the "weighted" and "jacobian" modes agree)."""
  state = tx.init(params) if state is None else state
  losses = losses_fn(params)
  w = tx.loss_weights(state, losses)
  one_backward = jax.grad(lambda p: jnp.dot(w, losses_fn(p)))(params)
  jac = jax.jacrev(losses_fn)(params)
  combined, _ = tx.update(jac, state, params, losses=losses)
  np.testing.assert_allclose(flat(combined), flat(one_backward), rtol=1e-5, atol=1e-6)


def assert_jit_traces_once(tx, problems, steps_per_problem=1):
  """Jitted updates over several inputs of the same shapes (new values, evolving state) trace
  and compile once."""
  traces = []
  params = params_like(problems[0][0])

  @jax.jit
  def step(task_grads, state, losses):
    traces.append(None)  # runs only while tracing
    return tx.update(task_grads, state, params, losses=losses)

  state = tx.init(params)
  for task_grads, losses in problems:
    for _ in range(steps_per_problem):
      out, state = step(task_grads, state, losses)
      assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(out))
  assert len(traces) == 1, f'traced {len(traces)} times'
  assert step._cache_size() == 1


def assert_state_roundtrips(tx, problems, num_before=2):
  """A state serialised (flax msgpack, as a checkpoint would) and restored into a fresh template
  continues exactly like the original."""
  params = params_like(problems[0][0])
  step = jax.jit(lambda g, s, l: tx.update(g, s, params, losses=l))
  state = tx.init(params)
  for task_grads, losses in problems[:num_before]:
    _, state = step(task_grads, state, losses)
  blob = flax.serialization.to_bytes(state)
  restored = flax.serialization.from_bytes(tx.init(params), blob)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert np.asarray(a).dtype == np.asarray(b).dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for task_grads, losses in problems[num_before:]:
    out_a, state = step(task_grads, state, losses)
    out_b, restored = step(task_grads, restored, losses)
    np.testing.assert_array_equal(flat(out_a), flat(out_b))


def toy_model(num_tasks, seed=0):
  """(params, losses_fn): K quadratic-plus-log losses of shared parameters, positive."""
  rng = np.random.default_rng(seed)
  params = {'a': jnp.asarray(rng.normal(size=3), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}
  centres = jnp.asarray(rng.normal(size=(num_tasks, 3)), jnp.float32)
  mats = jnp.asarray(rng.normal(size=(num_tasks, 2, 2)), jnp.float32)

  def losses_fn(p):
    quad = jnp.sum((p['a'][None] - centres) ** 2, axis=1)
    other = jnp.log1p(jnp.sum((p['b'][None] @ mats) ** 2, axis=(1, 2)))
    return quad + other + 0.1

  return params, losses_fn
