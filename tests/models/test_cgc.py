"""CGC: task k's gate mixes its own T experts and the S shared ones (Tang et al., RecSys 2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from tests import helpers
from tests.models import arch_checks
from tests.models import test_mmoe as moe

TASKS = helpers.TASKS


def _model(shared=2, task=2, input_layer=None, encoder='mlp', tasks=TASKS):
  return models.build('cgc', tasks, input_layer or models.inputs.Identity(), encoder,
                      {'hidden_sizes': (8,)}, num_shared_experts=shared, num_task_experts=task)


@pytest.fixture(scope='module')
def setup():
  return moe.contract_setup('cgc', num_shared_experts=2, num_task_experts=2)


def test_contract(setup):
  model, example, variables = setup
  tasks = moe.CONTRACT_TASKS
  arch_checks.check_partition(model, variables, [t.name for t in tasks])
  assert set(variables['params']['shared']) == {'input', 'experts'}
  assert set(variables['params']['tasks']['bin']) == {'experts', 'gate', 'head'}
  # Task k's experts are task parameters: isolation covers them too.
  arch_checks.check_task_isolation(model, tasks, variables, example)
  moe.check_decode_alone_in_training(model, variables, example)
  arch_checks.check_train_steps(model, tasks, example)


def test_batch_stats_and_dropout():
  model, example, variables = moe.batch_norm_setup('cgc', num_shared_experts=2,
                                                   num_task_experts=2)
  assert set(variables['batch_stats']['shared']) == {'experts'}
  assert set(variables['batch_stats']['tasks']['bin']) == {'experts'}
  moe.check_batch_stats_and_dropout(model, variables, example, 'cls')
  # Task experts' statistics come from decode: per task the same as all at once.
  moe.check_decode_alone_in_training(model, variables, example)


def test_encode_decode_split(setup):
  moe.check_encode_decode(setup[0], moe.CONTRACT_TASKS, setup[2], setup[1])


def test_zero_task_experts_is_mmoe():
  example = helpers.batch()
  reference = moe._model(num_experts=3)
  variables = helpers.init(reference, example)
  model = _model(shared=3, task=0)
  # The same parameter layout: MMoE's variables are CGC's.
  assert jax.tree.structure(helpers.init(model, example)) == jax.tree.structure(variables)
  expected = reference.apply(variables, example['inputs'])
  got = model.apply(variables, example['inputs'])
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_gate_mixes_own_experts_then_shared():
  model = _model(shared=2, task=3)
  example = helpers.batch()
  variables = helpers.init(model, example)
  x = jnp.asarray(example['inputs'])
  features = model.encode(variables, x)
  weights = model.gate_weights(variables, features)
  for w in weights.values():
    assert w.shape == (16, 5) and np.all(np.asarray(w) > 0)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)

  def experts(stack, num):
    dense = stack['Dense_0']
    return [jax.nn.relu(x @ dense['kernel'][e] + dense['bias'][e]) for e in range(num)]

  params = variables['params']
  own = experts(params['tasks']['reg']['experts'], 3)
  shared = experts(params['shared']['experts'], 2)
  gate = weights['reg']
  mixed = sum(gate[:, e:e + 1] * f for e, f in enumerate(own + shared))
  head = params['tasks']['reg']['head']['Dense_0']
  expected = (mixed @ head['kernel'] + head['bias'])[:, 0]
  np.testing.assert_allclose(model.apply(variables, x)['reg'], expected, rtol=1e-5, atol=1e-6)


def test_task_experts_of_all_tasks_run_as_one_program():
  model = _model(shared=2, task=3)
  example = helpers.batch()
  variables = helpers.init(model, example)
  features = model.encode(variables, example['inputs'])
  jaxpr = jax.make_jaxpr(lambda v: model.decode(v, features))(variables)
  shapes = [tuple(e.invars[1].aval.shape) for e in jaxpr.jaxpr.eqns
            if e.primitive.name == 'dot_general']
  # One dot for the K·T task experts (kernel [12, 5, 8]), then per task its gate, its mixture and
  # its head: no per-task expert dots.
  assert shapes.count((len(TASKS) * 3, 5, 8)) == 1, shapes
  assert len(shapes) == 1 + 3 * len(TASKS), shapes


@pytest.mark.parametrize('kwargs, match', [
    ({'num_shared_experts': 0}, 'num_shared_experts'),
    ({'num_task_experts': -1}, 'num_task_experts'),
    ({'num_task_experts': 1.5}, 'num_task_experts'),
    ({'num_experts': 4}, 'num_shared_experts'),
])
def test_bad_arch_kwargs(kwargs, match):
  with pytest.raises(UserError, match=match):
    models.build('cgc', TASKS, models.inputs.Identity(), 'mlp', {}, **kwargs)
