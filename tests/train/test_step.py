"""The train step's three gradient modes against gradients written out by hand."""

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from mtl_jax import optim
from mtl_jax.optim import base as optim_base
from mtl_jax.errors import UserError
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from tests import helpers

TASKS = helpers.TASKS
K = len(TASKS)


def _setup(method, arch='hard', mode='auto', seed=0):
  model = helpers.model(arch)
  example = helpers.batch(seed=seed)
  tx = optax.sgd(1.0)  # new params = params - gradient: the step's gradient is readable
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  return model, example, state, step_lib.make_train_step(model, TASKS, method, tx, mode)


def _gradient(state, new_state):
  return jax.tree.map(lambda a, b: a - b, state.params, new_state.params)


def _min_norm_weights(gram):
  """Brute force: min w^T G w over the simplex with SLSQP."""
  k = gram.shape[0]
  res = optimize.minimize(lambda w: w @ gram @ w, np.full(k, 1 / k), jac=lambda w: 2 * gram @ w,
                          bounds=[(0, 1)] * k, method='SLSQP', options={'ftol': 1e-14},
                          constraints={'type': 'eq', 'fun': lambda w: w.sum() - 1})
  return res.x


def _losses_fn(model, example):
  def losses(params):
    return step_lib.task_losses(TASKS, model.apply({'params': params}, example['inputs']), example)
  return losses


@pytest.mark.parametrize('method_name', ['ew', 'uw', 'dwa'])
def test_loss_weighting_gives_the_same_step_in_every_mode(method_name):
  results = []
  for mode in ('weighted', 'jacobian', 'rep'):
    method = optim.get(method_name, num_tasks=K)
    _, example, state, train_step = _setup(method, mode=mode)
    new_state, metrics = train_step(state, example)
    results.append(_gradient(state, new_state))
  for other in results[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 results[0], other)


def test_ew_weighted_mode_is_the_gradient_of_the_summed_loss():
  model, example, state, train_step = _setup(optim.ew(), mode='weighted')
  expected = jax.grad(lambda p: _losses_fn(model, example)(p).sum())(state.params)
  got = _gradient(state, train_step(state, example)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, expected)


def test_mgda_jacobian_mode_is_the_min_norm_combination_of_shared_gradients():
  model, example, state, train_step = _setup(optim.mgda(), mode='jacobian')
  jac = jax.jacrev(_losses_fn(model, example))(state.params)
  flat = np.concatenate([np.asarray(x).reshape(K, -1) for x in jax.tree.leaves(jac['shared'])], 1)
  w = _min_norm_weights(flat @ flat.T)
  got = _gradient(state, train_step(state, example)[0])
  expected_shared = jax.tree.map(lambda j: jnp.tensordot(w, j, axes=1), jac['shared'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5),
               got['shared'], expected_shared)
  # Task heads get their own task's plain gradient (the weights arbitrate shared params only).
  expected_tasks = jax.tree.map(lambda j: j.sum(0), jac['tasks'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               got['tasks'], expected_tasks)


def test_mgda_rep_mode_uses_the_representation_gramian():
  model, example, state, train_step = _setup(optim.mgda(), mode='rep')
  params = state.params
  features = model.encode({'params': params}, example['inputs'])

  def losses_of_features(z):
    return step_lib.task_losses(TASKS, model.decode({'params': params}, z), example)

  rep = jax.jacrev(losses_of_features)(features)  # [K, B, D]
  flat = np.asarray(rep).reshape(K, -1)
  w = _min_norm_weights(flat @ flat.T)
  _, encode_vjp = jax.vjp(lambda s: model.encode({'params': {**params, 'shared': s}},
                                                 example['inputs']), params['shared'])
  (expected_shared,) = encode_vjp(jnp.tensordot(w, rep, axes=1))
  got = _gradient(state, train_step(state, example)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5),
               got['shared'], expected_shared)


def test_non_finite_step_is_skipped_and_counted():
  _, example, state, train_step = _setup(optim.uw(num_tasks=K), mode='weighted')
  bad = dict(example, inputs=example['inputs'].copy())
  bad['inputs'][3, 0] = np.nan
  before = jax.device_get(state)
  new_state, metrics = train_step(state, bad)
  assert not bool(metrics['finite'])
  assert int(new_state.skipped_steps) == 1 and int(new_state.step) == 1
  for old, new in zip(jax.tree.leaves((before.params, before.opt_state, before.mtl_state)),
                      jax.tree.leaves((new_state.params, new_state.opt_state,
                                       new_state.mtl_state))):
    np.testing.assert_array_equal(old, new)
  # The next good step proceeds normally.
  newer, metrics = train_step(new_state, example)
  assert bool(metrics['finite']) and int(newer.skipped_steps) == 1


def test_masked_labels_contribute_nothing():
  _, example, state, train_step = _setup(optim.ew(), mode='jacobian')
  masked = jax.tree.map(np.copy, example)
  masked['label_mask']['reg'][:5] = False
  garbage = jax.tree.map(np.copy, masked)
  garbage['labels']['reg'][:5] = np.nan
  garbage['labels']['cls'][:0] = 0
  a = _gradient(state, train_step(state, masked)[0])
  b = _gradient(state, train_step(state, garbage)[0])
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(b))
  # A task with no labels at all in the batch contributes exactly 0.
  none = jax.tree.map(np.copy, example)
  none['label_mask']['reg'][:] = False
  _, metrics = train_step(state, none)
  assert float(metrics['losses'][3]) == 0.0


def test_sharded_step_equals_single_device_step_and_does_not_recompile():
  assert len(jax.devices()) == 8, 'tests/conftest.py asks for 8 fake CPU devices'
  method = optim.mgda()
  model, example, state, train_step = _setup(method, mode='rep')
  example = helpers.batch(num_examples=32)
  single = sharding.jit_train_step(train_step, sharding.make_mesh(jax.devices()[:1]))
  mesh = sharding.make_mesh()
  sharded = sharding.jit_train_step(train_step, mesh)
  state_copy = jax.tree.map(jnp.copy, state)
  one, _ = single(state, sharding.put_batch(example, sharding.make_mesh(jax.devices()[:1])))
  eight, _ = sharded(sharding.put_replicated(state_copy, mesh), sharding.put_batch(example, mesh))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(one.params), jax.device_get(eight.params))
  again, _ = sharded(eight, sharding.put_batch(helpers.batch(num_examples=32, seed=1), mesh))
  jax.block_until_ready(again)
  assert sharded._cache_size() == 1


def test_modes_are_checked_before_compiling():
  with pytest.raises(UserError, match='no single shared representation'):
    _setup(optim.mgda(), arch='soft', mode='rep')
  with pytest.raises(UserError, match="cannot run in 'weighted' mode"):
    _setup(optim.mgda(), mode='weighted')
  with pytest.raises(UserError, match='no shared parameters'):
    _setup(optim.mgda(), arch='soft', mode='jacobian')
  with pytest.raises(UserError, match='unknown gradient mode'):
    _setup(optim.ew(), mode='bogus')


def test_batch_size_not_divisible_by_devices_is_a_clear_error():
  with pytest.raises(UserError, match='not divisible by the 8 devices'):
    sharding.check_batch_size(100, sharding.make_mesh())


def test_elementwise_methods_run_on_representation_gradients_in_rep_mode():
  """An elementwise method that sums the task gradients must give EW's step in both modes."""
  summed = optim_base.elementwise(
      'sum', lambda params: optim_base.EmptyState(),
      lambda grads, state, params=None, *, losses: (jax.tree.map(lambda g: g.sum(0), grads),
                                                    state))
  for mode in ('jacobian', 'rep'):
    _, example, state, train_step = _setup(summed, mode=mode)
    _, _, _, ew_step = _setup(optim.ew(), mode='weighted')
    got = _gradient(state, train_step(state, example)[0])
    expected = _gradient(state, ew_step(state, example)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
                 got, expected)


def test_jacobian_in_task_chunks_equals_all_at_once(mode='jacobian'):
  model = helpers.model('hard')
  example = helpers.batch()
  tx = optax.sgd(1.0)
  method = optim.mgda()
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  whole = step_lib.make_train_step(model, TASKS, method, tx, mode)(state, example)[0]
  chunked_step = step_lib.make_train_step(model, TASKS, method, tx, mode, jacobian_chunk_size=3)
  jaxpr = str(jax.make_jaxpr(chunked_step)(state, example))
  assert 'scan' in jaxpr  # really computed chunk by chunk
  chunked = chunked_step(state, example)[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               whole.params, chunked.params)


def test_method_task_weights_reach_the_task_parameters():
  """A method's own `task_weights` (IMTL's exp(s), DB-MTL's 1/L) scale the task heads' gradients."""
  method = optim.dbmtl(num_tasks=K, beta=0.0)
  model, example, state, train_step = _setup(method, mode='jacobian')
  losses = _losses_fn(model, example)(state.params)
  jac = jax.jacrev(_losses_fn(model, example))(state.params)
  expected = jax.tree.map(lambda j: jnp.tensordot(1.0 / (losses + 1e-8), j, axes=1), jac['tasks'])
  got = _gradient(state, train_step(state, example)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               got['tasks'], expected)


def test_unrolled_and_vmapped_per_task_gradients_agree(mode='jacobian'):
  model = helpers.model('hard')
  example = helpers.batch()
  tx = optax.sgd(1.0)
  method = optim.mgda()
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  results = [step_lib.make_train_step(model, TASKS, method, tx, mode,
                                      per_task_gradients=how)(state, example)[0]
             for how in ('vmap', 'unrolled')]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               results[0].params, results[1].params)
  with pytest.raises(UserError, match='unknown per_task_gradients'):
    step_lib.make_train_step(model, TASKS, method, tx, mode, per_task_gradients='loop')


def test_rep_mode_sends_each_task_through_its_own_head_only():
  """K heads cost K head backward passes, not K² (one VJP of all K losses per basis vector sends
  zeros through every other head): the step's matrix products grow linearly with K."""
  from mtl_jax.tasks import Task  # pylint: disable=import-outside-toplevel

  def count(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      total += eqn.primitive.name == 'dot_general'
      for sub in jax_core.jaxprs_in_params(eqn.params):
        total += count(sub)
    return total

  counts = []
  for num_tasks in (4, 8, 16):  # (K = 2 would take MGDA's closed form)
    tasks = tuple(Task(f't{k}', 'binary') for k in range(num_tasks))
    model = helpers.model('hard', tasks=tasks)
    example = helpers.batch(tasks=())
    example['labels'] = {t.name: np.zeros(16, np.int32) for t in tasks}
    example['label_mask'] = {t.name: np.ones(16, bool) for t in tasks}
    method = optim.mgda()
    tx = optax.sgd(1.0)
    state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
    step = step_lib.make_train_step(model, tasks, method, tx, 'rep')
    counts.append(count(jax.make_jaxpr(step)(state, example).jaxpr))
  assert counts[2] - counts[1] == 2 * (counts[1] - counts[0]), counts


def test_create_state_never_holds_one_buffer_twice():
  """The step donates its state: one array in two places would be donated twice."""
  shared = jnp.ones(3)
  state = step_lib.distinct_buffers({'a': shared, 'b': shared, 'c': jnp.zeros(2)})
  assert state['a'] is shared and state['b'] is not shared
  np.testing.assert_array_equal(state['b'], shared)
  model = helpers.model('hard')
  example = helpers.batch()
  full = step_lib.create_state(model, optim.ew(), optax.adam(1e-3), jax.random.PRNGKey(0),
                               example['inputs'])
  leaves = [x for x in jax.tree.leaves(full) if isinstance(x, jax.Array)]
  assert len({id(x) for x in leaves}) == len(leaves)
