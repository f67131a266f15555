"""ham: per-task extractors, attention across the K tasks' features, residual combination."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.models import ham
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
TWO = TASKS[:2]  # the jitted-step checks compile one program per case: two tasks keep it fast
K = len(TASKS)


def _model(tasks=TASKS, **arch_kwargs):
  arch_kwargs = {'extractor_sizes': (6,), 'num_heads': 2, **arch_kwargs}
  return models.build('ham', tasks, models.inputs.Identity(), 'mlp', {'hidden_sizes': (8,)},
                      **arch_kwargs)


def _setup(**arch_kwargs):
  model = _model(**arch_kwargs)
  example = helpers.batch()
  return model, example, helpers.init(model, example)


def _zero_interaction(variables):
  out = variables['params']['shared']['interaction']['out']
  out['kernel'] = jnp.zeros_like(out['kernel'])
  out['bias'] = jnp.zeros_like(out['bias'])


def _task_grads(model, variables, example, k):
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(TASKS, outputs, example)[k]
  return jax.grad(loss)(variables['params'])


def _row_norms(leaf):
  return np.abs(np.asarray(leaf)).reshape(leaf.shape[0], -1).sum(1)


def test_contract():
  model, example, variables = _setup()
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert set(variables['params']['shared']) == {'trunk', 'interaction'}
  assert model.param_groups['extractors'] == 'shared'
  assert not model.has_shared_representation and model.has_shared_parameters
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  arch_checks.check_train_steps(_model(TWO), TWO, helpers.batch(tasks=TWO))


def test_extractors_are_stacked_per_task():
  _, _, variables = _setup()
  for leaf in jax.tree.leaves(variables['params']['extractors']):
    assert leaf.shape[0] == K


def test_attention_rows_are_distributions_over_tasks():
  model, example, variables = _setup()
  weights = np.asarray(model.attention(variables, example['inputs']))
  assert weights.shape == (16, 2, K, K)
  assert np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  assert weights.std() > 0  # rows differ: tasks attend differently
  # Per-token features: the attention is over the task axis at every token.
  interaction = ham.TaskInteraction(num_heads=1)
  f = jax.random.normal(jax.random.PRNGKey(1), (2, 5, K, 4))
  combined, weights = interaction.apply(interaction.init(jax.random.PRNGKey(0), f), f)
  assert combined.shape == f.shape and weights.shape == (2, 5, 1, K, K)
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)


def test_zeroed_interaction_is_per_task_extractors():
  model, example, variables = _setup()
  _zero_interaction(variables)
  params = variables['params']
  outputs = model.apply(variables, example['inputs'])
  z = model.trunk.apply({'params': params['shared']['trunk']}, example['inputs'])
  for k, name in enumerate(model.task_names):
    extractor = jax.tree.map(lambda a: a[k], params['extractors'])
    f_k = model.extractor.apply({'params': extractor}, z)
    expected = model.heads[name].apply({'params': params['tasks'][name]}, f_k)
    np.testing.assert_allclose(outputs[name], expected, rtol=1e-6, atol=1e-6)


def test_gradient_reach_of_the_interaction():
  # Zeroed interaction: task k moves extractor k only, and nothing of the attention but W_o.
  model, example, variables = _setup()
  _zero_interaction(variables)
  for k in range(K):
    grads = _task_grads(model, variables, example, k)
    for leaf in jax.tree.leaves(grads['extractors']):
      rows = _row_norms(leaf)
      assert rows[k] > 0 and np.all(np.delete(rows, k) == 0), (k, rows)
    interaction = grads['shared']['interaction']
    for part in ('query', 'key', 'value'):
      assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(interaction[part]))
    assert np.any(np.asarray(interaction['out']['kernel']))
  # Working attention: task k's loss reaches every task's extractor.
  model, example, variables = _setup()
  for k in range(K):
    grads = _task_grads(model, variables, example, k)
    for leaf in jax.tree.leaves(grads['extractors']):
      assert np.all(_row_norms(leaf) > 0), (k, _row_norms(leaf))


def test_dropout_in_the_trunk_under_mutable():
  model = models.build('ham', TWO, models.inputs.Identity(), 'mlp',
                       {'hidden_sizes': (8,), 'dropout': 0.5}, extractor_sizes=(4,))
  example = helpers.batch(tasks=TWO)
  variables = helpers.init(model, example)
  eval_out = model.apply(variables, example['inputs'])
  train_out, updates = model.apply(variables, example['inputs'], train=True, mutable=True,
                                   rngs={'dropout': jax.random.PRNGKey(1)})
  assert updates == {}
  assert not np.allclose(eval_out['cls'], train_out['cls'])


@pytest.mark.parametrize('kwargs, match', [
    ({'extractor_sizes': ()}, 'extractor_sizes must be a non-empty'),
    ({'extractor_sizes': (4, -1)}, 'extractor_sizes must be'),
    ({'num_heads': 4}, 'dividing the feature width 6'),
    ({'num_heads': 0}, 'num_heads must be a positive integer'),
    ({'heads': 2}, 'its options .*extractor_sizes, num_heads'),
])
def test_bad_arch_kwargs(kwargs, match):
  with pytest.raises(UserError, match=match):
    _model(TWO, **kwargs)


class _BatchNormBlock(nn.Module):
  """Dense, batch norm, ReLU: a block with batch statistics."""

  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(self.width)(x))
    return nn.relu(x)


def test_batch_statistics_update_under_mutable():
  model = models.build('ham', TWO, models.inputs.Identity(), _BatchNormBlock(6),
                       extractor_sizes=(4,))
  example = helpers.batch(tasks=TWO)
  variables = helpers.init(model, example)
  stats = variables['batch_stats']
  outputs, updates = model.apply(variables, example['inputs'], train=True, mutable=True,
                                 rngs={'dropout': jax.random.PRNGKey(1)})
  assert set(outputs) == {'bin', 'cls'}
  # The updated statistics sit where the model keeps them, and they moved.
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(stats)
  assert all(np.any(np.asarray(a) != np.asarray(b))
             for a, b in zip(jax.tree.leaves(updates['batch_stats']), jax.tree.leaves(stats)))
  variables = {**variables, **updates}
  evaluated = model.apply(variables, example['inputs'])  # running averages, nothing mutable
  assert all(np.all(np.isfinite(np.asarray(v))) for v in evaluated.values())


class _TokenEncoder(nn.Module):
  """A per-token encoder returning {'features', 'mask'} (models/token_inputs.py)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    return {'features': jnp.tanh(nn.Dense(4)(x)), 'mask': jnp.ones(x.shape[:2], bool)}


def test_per_token_features_attend_over_tasks_at_every_token():
  model = models.build('ham', TWO, models.inputs.Identity(), _TokenEncoder(),
                       extractor_sizes=(4,))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  weights = model.attention(variables, x)
  assert weights.shape == (2, 5, 1, 2, 2)  # [B, T, heads, K, K]
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-5)
  outputs = model.apply(variables, x)
  assert outputs['bin'].shape == (2, 5) and outputs['cls'].shape == (2, 5, 3)
