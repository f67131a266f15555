import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.train import step as step_lib
from tests import helpers


def _task_grads(model, variables, example, task_index):
  """Gradient of task k's loss alone with respect to every parameter."""
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(helpers.TASKS, outputs, example)[task_index]
  return jax.grad(loss)(variables['params'])


@pytest.mark.parametrize('arch', ['hard', 'soft'])
def test_params_partition_into_shared_and_tasks(arch):
  model = helpers.model(arch)
  variables = helpers.init(model, helpers.batch())
  assert set(variables['params']) == set(model.param_groups)
  assert set(variables['params']['tasks']) == {t.name for t in helpers.TASKS}


@pytest.mark.parametrize('arch', ['hard', 'soft'])
def test_task_loss_gives_zero_gradient_to_other_tasks(arch):
  model = helpers.model(arch)
  example = helpers.batch()
  variables = helpers.init(model, example)
  for k, task in enumerate(helpers.TASKS):
    grads = _task_grads(model, variables, example, k)
    for other in helpers.TASKS:
      norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads['tasks'][other.name]))
      assert (norm == 0.0) == (other.name != task.name), (task.name, other.name, norm)
    if arch == 'soft':
      # Stacked towers: only row k moves.
      for leaf in jax.tree.leaves(grads['towers']):
        rows = np.abs(np.asarray(leaf)).reshape(leaf.shape[0], -1).sum(1)
        assert rows[k] > 0 and np.all(np.delete(rows, k) == 0), rows


def test_soft_towers_are_stacked_and_vmapped():
  model = helpers.model('soft')
  example = helpers.batch()
  variables = helpers.init(model, example)
  for leaf in jax.tree.leaves(variables['params']['towers']):
    assert leaf.shape[0] == len(helpers.TASKS)
  # One vmapped tower, not a Python loop: the jaxpr has a single dot_general per dense layer
  # with the task axis as a batch dimension.
  jaxpr = jax.make_jaxpr(lambda v: model.towers(v, example['inputs'])[0])(variables)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 1, len(dots)
  features = model.towers(variables, example['inputs'])[0]
  assert features.shape[:2] == (len(helpers.TASKS), example['inputs'].shape[0])


def test_hard_encode_decode_equals_apply():
  model = helpers.model('hard')
  example = helpers.batch()
  variables = helpers.init(model, example)
  direct = model.apply(variables, example['inputs'])
  composed = model.decode(variables, model.encode(variables, example['inputs']))
  for name in direct:
    np.testing.assert_allclose(direct[name], composed[name], rtol=1e-6)


def test_soft_refuses_rep():
  model = helpers.model('soft')
  with pytest.raises(Exception, match='shared representation'):
    model.encode({}, None)


def test_cnn_trunk_on_images():
  tasks = helpers.TASKS[:2]
  model = models.build('hard', tasks, models.inputs.Identity(), 'cnn',
                       {'channels': (4,), 'hidden_sizes': (8,)})
  images = jnp.ones((3, 8, 8, 1))
  variables = model.init(jax.random.PRNGKey(0), images)
  outputs = model.apply(variables, images)
  assert outputs['bin'].shape == (3,) and outputs['cls'].shape == (3, 3)


def test_dropout_differs_between_train_and_eval():
  model = helpers.model('hard', dropout=0.5)
  example = helpers.batch()
  variables = helpers.init(model, example)
  eval_out = model.apply(variables, example['inputs'])
  again = model.apply(variables, example['inputs'])
  train_out = model.apply(variables, example['inputs'], train=True,
                          rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(eval_out['reg'], again['reg'])
  assert not np.allclose(eval_out['reg'], train_out['reg'])


def test_unknown_arch_and_encoder_list_valid_names():
  with pytest.raises(KeyError, match='valid arch names: .*hard.*soft'):
    models.build('nope', helpers.TASKS, models.inputs.Identity())
  with pytest.raises(KeyError, match='valid encoder names: .*cnn.*mlp'):
    models.build('hard', helpers.TASKS, models.inputs.Identity(), 'nope')
