"""The inner loop: SGD steps as a Python loop would take them, masks, the adaptation curve,
and `model_loss` over registry architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import meta
from mtl_jax.tasks import Task
from mtl_jax.train.step import task_losses
from tests import meta as problems


def _sgd_loop(loss_fn, params, batches, lr, adapts):
  """The definition: φ_{i+1} = φ_i − lr ∇L(φ_i; batch_i) on the leaves `adapts` says."""
  grad = jax.jit(jax.value_and_grad(loss_fn))
  losses = []
  for batch in batches:
    loss, grads = grad(params, batch)
    losses.append(float(loss))
    params = jax.tree.map(lambda p, g, a: p - lr * g if a else p, params, grads, adapts)
  return params, losses


def test_model_loss_is_the_sum_of_the_train_steps_task_losses():
  model = problems.model('hard')
  params, batch = problems.init(model), problems.task(problems.meta_batch(1), 0)
  outputs = model.apply({'params': params}, batch['inputs'])
  expected = task_losses(problems.TASKS, outputs, batch)
  np.testing.assert_allclose(meta.model_loss(model, problems.TASKS)(params, batch),
                             expected.sum(), rtol=1e-6)
  weighted = meta.model_loss(model, problems.TASKS[::-1], weights=[2.0, 0.5])
  np.testing.assert_allclose(weighted(params, batch), 2 * expected[1] + 0.5 * expected[0],
                             rtol=1e-6)
  with pytest.raises(ValueError, match='not among'):
    meta.model_loss(model, [Task('other', 'regression')])


def test_inner_loop_is_k_sgd_steps_and_reports_each_steps_loss():
  params, loss_fn, support, _ = problems.mlp_problem()
  batch = problems.task(support, 0)
  result = jax.jit(lambda p: meta.inner_loop(loss_fn, p, batch, 0.3, 3))(params)
  expected, losses = _sgd_loop(loss_fn, params, [batch] * 3, 0.3,
                               jax.tree.map(lambda _: True, params))
  problems.assert_close(result.params, expected)
  np.testing.assert_allclose(result.support_losses, losses, rtol=1e-5)
  assert losses[2] < losses[0]
  problems.assert_close(meta.adapt(loss_fn, params, batch, 0.3, 0), params, rtol=0, atol=0)


def test_per_step_batches_feed_one_batch_to_each_step():
  params, loss_fn, support, _ = problems.mlp_problem()  # the 3 "tasks" serve as 3 batches
  got = jax.jit(lambda p: meta.inner_loop(loss_fn, p, support, 0.3, 3,
                                          per_step_batches=True))(params)
  expected, losses = _sgd_loop(loss_fn, params, [problems.task(support, i) for i in range(3)],
                               0.3, jax.tree.map(lambda _: True, params))
  problems.assert_close(got.params, expected)
  np.testing.assert_allclose(got.support_losses, losses, rtol=1e-5)


def test_masks_freeze_what_they_leave_out():
  params, loss_fn, support, _ = problems.mlp_problem()
  batch = problems.task(support, 0)
  last_layer = {'w1': False, 'b1': False, 'w2': True, 'b2': True}
  expected, _ = _sgd_loop(loss_fn, params, [batch] * 2, 0.3, last_layer)
  for mask in (last_layer, lambda p: last_layer):
    got = jax.jit(lambda p, mask=mask: meta.adapt(loss_fn, p, batch, 0.3, 2, mask=mask))(params)
    problems.assert_close(got, expected)
    for key in ('w1', 'b1'):
      np.testing.assert_array_equal(got[key], params[key])
    assert np.any(np.asarray(got['w2']) != np.asarray(params['w2']))
  with pytest.raises(ValueError, match='selects no parameter'):
    meta.adapt(loss_fn, params, batch, 0.1, 1, mask=jax.tree.map(lambda _: False, params))


@pytest.mark.parametrize('arch', ['hard', 'mmoe'])
def test_task_specific_mask_adapts_heads_and_gates_and_broadcasts_as_a_prefix(arch):
  """ANIL's mask of a model: every leaf under the task-specific groups, none of the shared."""
  model = problems.model(arch)
  params = problems.init(model)
  flags = meta.mask_leaves(meta.task_specific(model), params)
  expected = [path[0].key == 'tasks' for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert flags == expected and any(flags) and not all(flags)
  assert meta.mask_leaves({'shared': False, 'tasks': True}, params) == expected
  if arch == 'mmoe':  # the gates are task-specific parameters too
    assert 'gate' in params['tasks']['reg']


def test_adaptation_curve_is_the_query_loss_after_each_step_count():
  params, loss_fn, support, query = problems.mlp_problem()
  s, q = problems.task(support, 0), problems.task(query, 0)
  curve = jax.jit(lambda p: meta.adaptation_curve(loss_fn, p, s, q, 0.3, 4))(params)
  assert curve.shape == (5,)
  adapted, _ = _sgd_loop(loss_fn, params, [], 0.3, None)
  for steps in range(5):
    np.testing.assert_allclose(curve[steps], loss_fn(adapted, q), rtol=1e-5)
    adapted, _ = _sgd_loop(loss_fn, adapted, [s], 0.3, jax.tree.map(lambda _: True, params))


def test_first_order_makes_the_adapted_params_move_one_for_one_with_theta():
  """With stopped inner gradients, dφ_k/dθ = I (FOMAML); without, I − α A on a quadratic."""
  a = jnp.array([[2.0, 0.5], [0.5, 1.0]])
  loss_fn = lambda p, b: 0.5 * (p - b) @ a @ (p - b)
  theta, target, lr = jnp.array([1.0, -1.0]), jnp.array([0.3, 0.2]), 0.1
  first = jax.jacobian(lambda t: meta.adapt(loss_fn, t, target, lr, 1, first_order=True))(theta)
  second = jax.jacobian(lambda t: meta.adapt(loss_fn, t, target, lr, 1))(theta)
  np.testing.assert_allclose(first, np.eye(2), atol=1e-7)
  np.testing.assert_allclose(second, np.eye(2) - lr * a, rtol=1e-6)
