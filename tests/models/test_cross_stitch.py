"""cross_stitch: K columns mixed by learned K×K units after every layer (Misra et al. 2016)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.models import cross_stitch
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
TWO = TASKS[:2]  # the jitted-step checks compile one program per case: two tasks keep it fast
K = len(TASKS)


def _model(tasks=TASKS, hidden=(8, 6), encoder='mlp', encoder_kwargs=None, **arch_kwargs):
  return models.build('cross_stitch', tasks, models.inputs.Identity(), encoder,
                      encoder_kwargs or {'hidden_sizes': hidden}, **arch_kwargs)


def _setup(**arch_kwargs):
  model = _model(**arch_kwargs)
  example = helpers.batch()
  return model, example, helpers.init(model, example)


def _task_grads(model, variables, example, k):
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(TASKS, outputs, example)[k]
  return jax.grad(loss)(variables['params'])


def _row_norms(leaf):
  """|gradient| summed per column (leading axis)."""
  return np.abs(np.asarray(leaf)).reshape(leaf.shape[0], -1).sum(1)


def test_contract():
  model, example, variables = _setup()
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert model.param_groups['columns'] == 'shared' and model.param_groups['stitch'] == 'shared'
  assert not model.has_shared_representation and model.has_shared_parameters
  # The heads are the task-owned parameters: task k's loss never moves another head.
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  arch_checks.check_train_steps(_model(TWO), TWO, helpers.batch(tasks=TWO))


def test_columns_are_stacked_and_vmapped():
  model, example, variables = _setup()
  assert set(variables['params']['columns']) == {'layer_0', 'layer_1'}
  for leaf in jax.tree.leaves(variables['params']['columns']):
    assert leaf.shape[0] == K
  jaxpr = jax.make_jaxpr(lambda v: model.columns(v, example['inputs'])[0])(variables)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  # One batched matmul per layer for the K columns, one contraction per stitch unit.
  assert len(dots) == 4, [str(e) for e in dots]


def test_stitch_units_start_as_in_the_paper():
  _, _, variables = _setup()
  for alpha in variables['params']['stitch'].values():
    alpha = np.asarray(alpha)
    np.testing.assert_allclose(np.diag(alpha), 0.9)
    np.testing.assert_allclose(alpha[~np.eye(K, dtype=bool)], 0.1 / (K - 1), rtol=1e-6)
    np.testing.assert_allclose(alpha.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(cross_stitch.stitch_init(1, 0.9), [[1.0]])


def test_identity_units_equal_independent_columns():
  model, example, variables = _setup(init_same=1.0)
  params = variables['params']
  for alpha in params['stitch'].values():
    np.testing.assert_array_equal(alpha, np.eye(K))
  outputs = model.apply(variables, example['inputs'])
  for k, name in enumerate(model.task_names):
    h = jnp.asarray(example['inputs'])
    for index, block in enumerate(model.blocks):
      column = jax.tree.map(lambda a: a[k], params['columns'][f'layer_{index}'])
      h = block.apply({'params': column}, h)
    expected = model.heads[name].apply({'params': params['tasks'][name]}, h)
    np.testing.assert_array_equal(outputs[name], expected)


def test_gradient_reach_with_identity_and_with_paper_units():
  # Identity units: task k moves column k and row k of every unit, nothing else.
  model, example, variables = _setup(init_same=1.0)
  for k in range(K):
    grads = _task_grads(model, variables, example, k)
    for leaf in jax.tree.leaves(grads['columns']):
      rows = _row_norms(leaf)
      assert rows[k] > 0 and np.all(np.delete(rows, k) == 0), (k, rows)
    for alpha in grads['stitch'].values():
      rows = _row_norms(alpha)
      assert rows[k] > 0 and np.all(np.delete(rows, k) == 0), (k, rows)
      assert np.all(np.asarray(alpha)[k] != 0)  # it can learn to read every other column
  # The paper's units: task k's loss reaches every column through them.
  model, example, variables = _setup()
  for k in range(K):
    grads = _task_grads(model, variables, example, k)
    for leaf in jax.tree.leaves(grads['columns']):
      assert np.all(_row_norms(leaf) > 0), (k, _row_norms(leaf))
    assert np.all(_row_norms(grads['stitch']['layer_0']) > 0)  # below the top: every row
    assert np.all(_row_norms(grads['stitch']['layer_1']) == np.eye(K)[k] * _row_norms(
        grads['stitch']['layer_1'])[k])  # the top unit: row k only


def test_columns_on_images():
  tasks = TASKS[:2]
  model = _model(tasks, encoder='cnn', encoder_kwargs={'channels': (3,), 'hidden_sizes': (5,)})
  x = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), x)
  # A conv stage, stitched as a feature map, then a dense layer.
  assert variables['params']['columns']['layer_0']['encoder']['Conv_0']['kernel'].shape == (
      2, 3, 3, 1, 3)
  outputs = model.apply(variables, x)
  assert outputs['bin'].shape == (2,) and outputs['cls'].shape == (2, 3)


def test_dropout_in_training():
  model = _model(encoder_kwargs={'hidden_sizes': (8, 6), 'dropout': 0.5})
  example = helpers.batch()
  variables = helpers.init(model, example)
  eval_out = model.apply(variables, example['inputs'])
  train_out, updates = model.apply(variables, example['inputs'], train=True, mutable=True,
                                   rngs={'dropout': jax.random.PRNGKey(1)})
  assert updates == {}
  assert not np.allclose(eval_out['reg'], train_out['reg'])


@pytest.mark.parametrize('kwargs, match', [
    ({'init_same': 1.5}, r'in \[0, 1\]'),
    ({'init_same': 'high'}, 'must be a number'),
    ({'alpha': 0.9}, 'its options .*init_same'),
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
  blocks = [_BatchNormBlock(6), _BatchNormBlock(4)]
  model = models.build('cross_stitch', TWO, models.inputs.Identity(), blocks)
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


class _TokenBlock(nn.Module):
  """A per-token block in the padding-mask convention of models/token_inputs.py."""

  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    features = jnp.tanh(nn.Dense(self.width)(x['features']))
    return {'features': jnp.where(x['mask'][..., None], features, 0), 'mask': x['mask']}


class _Passthrough(nn.Module):
  def __call__(self, inputs, *, train=False):
    return inputs


def test_per_token_columns_keep_the_mask():
  model = models.build('cross_stitch', TWO, _Passthrough(), [_TokenBlock(4), _TokenBlock(3)])
  mask = jnp.arange(5)[None, :] < jnp.array([5, 2])[:, None]
  x = {'features': jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6)), 'mask': mask}
  variables = model.init(jax.random.PRNGKey(0), x)
  h, _ = model.columns(variables, x)
  assert h['features'].shape == (2, 2, 5, 3)  # [K, B, T, D]
  np.testing.assert_array_equal(h['mask'], jnp.broadcast_to(mask, (2, 2, 5)))
  assert np.all(np.asarray(h['features'])[:, ~np.asarray(mask)] == 0)
  outputs = model.apply(variables, x)
  assert outputs['bin'].shape == (2, 5) and outputs['cls'].shape == (2, 5, 3)
