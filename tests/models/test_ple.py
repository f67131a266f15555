"""PLE: L extraction levels of CGC with a shared gate below the last (Tang et al., RecSys 2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks
from tests.models import test_mmoe as moe

TASKS = moe.CONTRACT_TASKS  # bin, cls


def _model(levels=2, shared=2, task=1, input_layer=None, encoder='mlp', tasks=TASKS):
  return models.build('ple', tasks, input_layer or models.inputs.Identity(), encoder,
                      {'hidden_sizes': (8,)}, num_shared_experts=shared, num_task_experts=task,
                      num_levels=levels)


@pytest.fixture(scope='module')
def setup():
  # Dense inputs rather than moe.contract_setup's embeddings: PLE's input layer is CGC's (tested
  # there), and two levels already make the heaviest of these models to compile.
  model = models.build('ple', TASKS, models.inputs.Identity(), 'mlp',
                       moe.CONTRACT_ENCODER_KWARGS, num_shared_experts=2, num_task_experts=1,
                       num_levels=2)
  example = helpers.batch(tasks=TASKS)
  return model, example, helpers.init(model, example)


def test_contract(setup):
  model, example, variables = setup
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  params = variables['params']
  assert set(params['shared']) == {'experts', 'level_0'}
  assert set(params['shared']['level_0']) == {'experts', 'gate', 'task_experts'}
  assert set(params['tasks']['bin']) == {'experts', 'gate', 'head', 'lower_gate'}
  assert not model.has_shared_representation
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  # "rep" is refused with a clear error (checked inside).
  arch_checks.check_train_steps(model, TASKS, example)
  with pytest.raises(UserError, match='shared representation'):
    model.encode(variables, example['inputs'])


def test_batch_stats_and_dropout():
  model, example, variables = moe.batch_norm_setup('ple', num_shared_experts=2,
                                                   num_task_experts=1, num_levels=2)
  stats = variables['batch_stats']
  assert set(stats['shared']) == {'experts', 'level_0'}
  assert set(stats['shared']['level_0']) == {'experts', 'task_experts'}
  assert set(stats['tasks']['bin']) == {'experts'}
  moe.check_batch_stats_and_dropout(model, variables, example, 'cls')


def _task_grads(model, variables, example):
  """∇ of each task's loss, [task] -> params tree (one compiled program)."""
  def loss(params, k):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(TASKS, outputs, example)[k]
  return jax.jit(lambda p: [jax.grad(loss)(p, k) for k in range(len(TASKS))])(
      variables['params'])


def test_three_levels_partition_by_the_gradient():
  """Below the last level the shared gate mixes every task's experts, so another task's loss
  reaches them: they are shared parameters. What sits under tasks/<k> is reached by task k's loss
  alone (the isolation arch_checks checks, here on one compiled gradient per task)."""
  model = _model(levels=3)
  example = helpers.batch(tasks=TASKS)
  variables = helpers.init(model, example)
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  shared = variables['params']['shared']
  assert set(shared) == {'experts', 'level_0', 'level_1'}
  assert set(shared['level_0']) == {'experts', 'gate', 'task_experts', 'task_gates'}
  assert set(shared['level_1']) == {'experts', 'gate', 'task_experts'}
  bin_grads, cls_grads = _task_grads(model, variables, example)
  for own, other, grads in (('bin', 'cls', bin_grads), ('cls', 'bin', cls_grads)):
    assert moe.nonzero(grads['tasks'][own]) and moe.nonzero(grads['shared'])
    assert moe.all_zero(grads['tasks'][other])
  # 'cls' reaches 'bin''s experts below the last level, and 'bin''s level-0 gate (whose output
  # feeds those experts at level 1) ...
  assert moe.nonzero(cls_grads['shared']['level_0']['task_experts']['bin'])
  assert moe.nonzero(cls_grads['shared']['level_1']['task_experts']['bin'])
  assert moe.nonzero(cls_grads['shared']['level_0']['task_gates']['bin'])
  # ... and never the last level's, nor the gate at level L-2 (read by bin's last level only).
  assert moe.all_zero(cls_grads['tasks']['bin'])


def _reference(params, x, names, levels):
  """The paper's equations written out directly, reading the documented parameter paths."""
  def experts(stack, inp):
    dense = stack['Dense_0']
    return jnp.stack([jax.nn.relu(inp @ dense['kernel'][e] + dense['bias'][e])
                      for e in range(dense['kernel'].shape[0])], axis=1)

  def gate(g, inp):
    return jax.nn.softmax(inp @ g['dense']['kernel'], axis=-1)

  def mix(w, e):
    return jnp.einsum('be,bed->bd', w, e)

  shared, tasks = params['shared'], params['tasks']
  branch, shared_in = {k: x for k in names}, x
  for j in range(levels - 1):
    level = shared[f'level_{j}']
    shared_experts = experts(level['experts'], shared_in)
    own = {k: experts(level['task_experts'][k], branch[k]) for k in names}
    gates = {k: tasks[k]['lower_gate'] if j == levels - 2 else level['task_gates'][k]
             for k in names}
    next_branch = {k: mix(gate(gates[k], branch[k]),
                          jnp.concatenate([own[k], shared_experts], 1)) for k in names}
    shared_in = mix(gate(level['gate'], shared_in),
                    jnp.concatenate([own[k] for k in names] + [shared_experts], 1))
    branch = next_branch
  shared_experts = experts(shared['experts'], shared_in)
  out = {}
  for k in names:
    mixed = mix(gate(tasks[k]['gate'], branch[k]),
                jnp.concatenate([experts(tasks[k]['experts'], branch[k]), shared_experts], 1))
    head = tasks[k]['head']['Dense_0']
    out[k] = mixed @ head['kernel'] + head['bias']
  return out


@pytest.mark.parametrize('levels', [2, 3])
def test_matches_the_papers_equations(levels):
  model = _model(levels=levels, shared=2, task=1)
  example = helpers.batch(tasks=TASKS)
  variables = helpers.init(model, example)
  x = jnp.asarray(example['inputs'])
  expected = _reference(variables['params'], x, [t.name for t in TASKS], levels)
  got = model.apply(variables, x)
  np.testing.assert_allclose(got['bin'], expected['bin'][:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got['cls'], expected['cls'], rtol=1e-5, atol=1e-6)
  # Level 0's shared and task experts (2 + 2·1) run as one program: one dot with their kernels.
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
  shapes = [tuple(e.invars[1].aval.shape) for e in jaxpr.jaxpr.eqns
            if e.primitive.name == 'dot_general']
  assert shapes.count((4, 5, 8)) == 1, shapes


def test_one_level_is_cgc():
  example = helpers.batch(tasks=TASKS)
  reference = models.build('cgc', TASKS, models.inputs.Identity(), 'mlp', {'hidden_sizes': (8,)},
                           num_shared_experts=2, num_task_experts=1)
  variables = helpers.init(reference, example)
  model = _model(levels=1)
  assert model.has_shared_representation
  # The same parameter layout: CGC's variables are PLE's with one level.
  assert jax.tree.structure(helpers.init(model, example)) == jax.tree.structure(variables)
  expected = reference.apply(variables, example['inputs'])
  for got in (model.apply(variables, example['inputs']),
              model.decode(variables, model.encode(variables, example['inputs']))):
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_one_level_supports_rep():
  model = _model(levels=1)
  example = helpers.batch(tasks=TASKS)
  moe.check_encode_decode(model, TASKS, helpers.init(model, example), example)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_levels': 0}, 'num_levels'),
    ({'num_shared_experts': 0}, 'num_shared_experts'),
    ({'num_task_experts': -1}, 'num_task_experts'),
])
def test_bad_arch_kwargs(kwargs, match):
  with pytest.raises(UserError, match=match):
    models.build('ple', TASKS, models.inputs.Identity(), 'mlp', {}, **kwargs)


def test_cnn_experts_need_one_level():
  with pytest.raises(UserError, match='num_levels=1'):
    models.build('ple', TASKS, models.inputs.Identity(), 'cnn', {}, num_levels=2)
  models.build('ple', TASKS, models.inputs.Identity(), 'cnn', {}, num_levels=1)
