"""hierarchical: task k's head reads layer d_k of the shared encoder (Søgaard & Goldberg 2016)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.models import hierarchical
from mtl_jax.tasks import Task
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
TWO = TASKS[:2]  # the jitted-step checks compile one program per case: two tasks keep it fast


def _model(tasks=TASKS, hidden=(8, 6), encoder='mlp', encoder_kwargs=None, **arch_kwargs):
  return models.build('hierarchical', tasks, models.inputs.Identity(), encoder,
                      encoder_kwargs or {'hidden_sizes': hidden}, **arch_kwargs)


def _task_grads(model, variables, example, k, tasks=TASKS):
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(tasks, outputs, example)[k]
  return jax.grad(loss)(variables['params'])


def _nonzero(tree):
  return [bool(np.any(np.asarray(g) != 0)) for g in jax.tree.leaves(tree)]


def test_contract_with_tasks_at_different_depths():
  model = _model(task_depths={'bin': 1, 'reg': 1})
  example = helpers.batch()
  variables = helpers.init(model, example)
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert set(variables['params']['shared']) == {'blocks_0', 'blocks_1'}
  assert not model.has_shared_representation
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  with pytest.raises(UserError, match='shared representation'):
    model.encode(variables, example['inputs'])
  arch_checks.check_train_steps(_model(TWO, task_depths={'bin': 1}), TWO,
                                helpers.batch(tasks=TWO))


def test_equal_depths_give_one_representation_and_rep_mode():
  model = _model(TWO, task_depths={'bin': 1, 'cls': 1})
  example = helpers.batch(tasks=TWO)
  variables = helpers.init(model, example)
  assert model.has_shared_representation
  # Blocks above the deepest task are not built: they would never get a gradient.
  assert set(variables['params']['shared']) == {'blocks_0'}
  z = model.encode(variables, example['inputs'])
  assert z.shape == (16, 8)
  direct = model.apply(variables, example['inputs'])
  composed = model.decode(variables, z)
  only_cls = model.decode(variables, z, task_names=['cls'])
  assert set(only_cls) == {'cls'}
  for name in direct:
    np.testing.assert_array_equal(direct[name], composed[name])
  arch_checks.check_train_steps(model, TWO, example, cases=(('mgda', 'rep'),))


@pytest.mark.parametrize('encoder, encoder_kwargs, images', [
    ('mlp', {'hidden_sizes': (8, 6, 4)}, False),
    ('cnn', {'channels': (4, 3), 'hidden_sizes': (8, 6)}, True),
])
def test_all_at_top_is_hard_sharing_with_the_same_weights(encoder, encoder_kwargs, images):
  example = helpers.batch()
  x = (jax.random.normal(jax.random.PRNGKey(2), (16, 8, 8, 1)) if images
       else jnp.asarray(example['inputs']))
  hard = models.build('hard', TASKS, models.inputs.Identity(), encoder, encoder_kwargs)
  hier = models.build('hierarchical', TASKS, models.inputs.Identity(), encoder, encoder_kwargs)
  hard_vars = hard.init(jax.random.PRNGKey(0), x)
  layers = hard_vars['params']['shared']['encoder']
  convs = sorted(k for k in layers if k.startswith('Conv'))
  denses = sorted(k for k in layers if k.startswith('Dense'))
  shared = {}
  for index, name in enumerate(convs):
    shared[f'blocks_{index}'] = {'encoder': {'Conv_0': layers[name]}}
  for index, name in enumerate(denses, start=len(convs)):
    shared[f'blocks_{index}'] = {'Dense_0': layers[name]}
  hier_vars = {'params': {'shared': shared, 'tasks': hard_vars['params']['tasks']}}
  # The same structure as the hierarchical model's own initialisation.
  own = hier.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(own) == jax.tree.structure(hier_vars)
  assert jax.tree.map(jnp.shape, own) == jax.tree.map(jnp.shape, hier_vars)
  assert hier.has_shared_representation
  expected = hard.apply(hard_vars, x)
  got = hier.apply(hier_vars, x)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(hier.encode(hier_vars, x), hard.encode(hard_vars, x),
                             rtol=1e-6, atol=1e-6)


def test_low_task_gets_zero_gradient_from_layers_above():
  model = _model(hidden=(8, 6, 4), task_depths={'bin': 1, 'cls': 2})
  example = helpers.batch()
  variables = helpers.init(model, example)
  bin_grads = _task_grads(model, variables, example, 0)['shared']
  assert all(_nonzero(bin_grads['blocks_0']))
  assert not any(_nonzero(bin_grads['blocks_1'])) and not any(_nonzero(bin_grads['blocks_2']))
  cls_grads = _task_grads(model, variables, example, 1)['shared']
  assert all(_nonzero(cls_grads['blocks_0'])) and all(_nonzero(cls_grads['blocks_1']))
  assert not any(_nonzero(cls_grads['blocks_2']))
  reg_grads = _task_grads(model, variables, example, 3)['shared']  # at the top, L = 3
  assert all(_nonzero(reg_grads))


def test_cnn_task_reads_a_conv_stage_flattened():
  tasks = TASKS[:2]
  model = _model(tasks, encoder='cnn',
                 encoder_kwargs={'channels': (4, 3), 'hidden_sizes': (8,)},
                 task_depths={'bin': 1, 'cls': 3})
  x = jnp.ones((2, 8, 8))
  variables = model.init(jax.random.PRNGKey(0), x)
  # Stage 1: 4 channels at 4x4 after pooling, read flattened.
  assert variables['params']['tasks']['bin']['Dense_0']['kernel'].shape == (4 * 4 * 4, 1)
  assert variables['params']['tasks']['cls']['Dense_0']['kernel'].shape == (8, 3)
  outputs = model.apply(variables, x)
  assert outputs['bin'].shape == (2,) and outputs['cls'].shape == (2, 3)


def test_blocks_given_as_a_list():
  # Any modules called as block(x, train=...), like encoders.
  blocks = [models.MLP(hidden_sizes=(7,)), models.MLP(hidden_sizes=(5,), activation='tanh')]
  model = models.build('hierarchical', TWO, models.inputs.Identity(), blocks,
                       task_depths={'bin': 1})
  variables = helpers.init(model, helpers.batch(tasks=TWO))
  assert variables['params']['tasks']['bin']['Dense_0']['kernel'].shape == (7, 1)
  assert variables['params']['tasks']['cls']['Dense_0']['kernel'].shape == (5, 3)


class _Deep(nn.Module):
  """An encoder the splitter has never heard of, with an integer `num_layers`."""

  num_layers: int = 3

  @nn.compact
  def __call__(self, x, *, train=False):
    for _ in range(self.num_layers):
      x = jnp.tanh(nn.Dense(4)(x))
    return x


def test_any_encoder_with_num_layers_is_cut_into_single_layer_copies():
  blocks = hierarchical.layer_blocks(_Deep())
  assert [type(b) for b in blocks] == [_Deep] * 3 and [b.num_layers for b in blocks] == [1] * 3
  model = models.build('hierarchical', TWO, models.inputs.Identity(), _Deep(),
                       task_depths={'bin': 1})
  x = jnp.asarray(helpers.batch()['inputs'])
  encoder_vars = _Deep().init(jax.random.PRNGKey(0), x)
  shared = {f'blocks_{i}': {'Dense_0': encoder_vars['params'][f'Dense_{i}']} for i in range(3)}
  top = model.stack.apply({'params': shared}, x)[-1]
  np.testing.assert_allclose(top, _Deep().apply(encoder_vars, x), rtol=1e-6, atol=1e-6)


class _LinenEncoder(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(4)(x)


@pytest.mark.parametrize('arch_kwargs, match', [
    ({'task_depths': {'nope': 1}}, 'unknown task.*nope.*bin, cls'),
    ({'task_depths': {'bin': 0}}, r"task_depths\['bin'\] = 0.*1\.\.2"),
    ({'task_depths': {'bin': 3}}, r'has 2 layer\(s\).*1\.\.2'),
    ({'task_depths': {'bin': 1.5}}, 'an integer in 1..2'),
    ({'task_depths': {'bin': True}}, 'an integer in 1..2'),
    ({'task_depths': [1, 2]}, 'must be a dict'),
    ({'depths': {'bin': 1}}, 'its options .*task_depths'),
])
def test_bad_task_depths(arch_kwargs, match):
  with pytest.raises(UserError, match=match):
    _model(TWO, **arch_kwargs)


def test_unsplittable_encoder_says_how_to_fix():
  with pytest.raises(UserError, match='LAYER_SPLITS.register'):
    models.build('hierarchical', TWO, models.inputs.Identity(), _LinenEncoder())
  with pytest.raises(UserError, match='no layers'):
    _model(TWO, hidden=())


def test_config_dict_task_depths():
  import ml_collections  # pylint: disable=import-outside-toplevel
  depths = ml_collections.ConfigDict({'bin': 1})
  assert _model(TWO, task_depths=depths).task_depths == {'bin': 1, 'cls': 2}


# Sequence encoders (models/recurrent.py, models/transformer.py): the stack of single-layer
# blocks equals the encoder, and the padding mask travels between blocks.


class _Passthrough(nn.Module):
  """An input layer that hands {'features', 'mask'} on as it is."""

  def __call__(self, inputs, *, train=False):
    return inputs


def _sequence_batch():
  features = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 3))
  mask = jnp.arange(6)[None, :] < jnp.array([6, 4, 1, 3])[:, None]
  return {'features': jnp.where(mask[..., None], features, 0), 'mask': mask}


def _needs(name):
  return pytest.mark.skipif(name not in models.ENCODERS, reason=f'no {name!r} encoder')


def _bilstm_mapping(params):
  return {'blocks_0': {k: params[k] for k in ('forward_0', 'backward_0')},
          'blocks_1': {'block': {'forward_0': params['forward_1'],
                                 'backward_0': params['backward_1']}}}


def _transformer_mapping(params):
  return {'blocks_0': {k: params[k] for k in ('input_projection', 'position_embedding',
                                              'block_0')},
          'blocks_1': {'block_0': params['block_1'], 'final_norm': params['final_norm']}}


@pytest.mark.parametrize('name, kwargs, mapping', [
    pytest.param('bilstm', {'num_layers': 2, 'hidden_size': 4, 'dropout': 0.3}, _bilstm_mapping,
                 marks=_needs('bilstm')),
    pytest.param('transformer', {'num_layers': 2, 'model_dim': 8, 'num_heads': 2,
                                 'dropout': 0.1}, _transformer_mapping,
                 marks=_needs('transformer')),
])
def test_upos_below_xpos_on_a_sequence_encoder(name, kwargs, mapping):
  """The UD setting: UPOS read at layer 1, XPOS at the top of a 2-layer sequence encoder."""
  tasks = (Task('upos', 'multiclass', 17), Task('xpos', 'multiclass', 49))
  model = models.build('hierarchical', tasks, _Passthrough(), name, kwargs,
                       task_depths={'upos': 1})
  x = _sequence_batch()
  encoder = models.make_encoder(name, kwargs)
  enc_vars = encoder.init(jax.random.PRNGKey(0), x)
  own = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  # The stack of single-layer copies holds exactly the encoder's parameters.
  shared = mapping(enc_vars['params'])
  assert jax.tree.map(jnp.shape, own['params']['shared']) == jax.tree.map(jnp.shape, shared)
  params = {'shared': shared, 'tasks': jax.tree.map(
      lambda s: jax.random.normal(jax.random.PRNGKey(4), s.shape), own['params']['tasks'])}

  @jax.jit  # one program: an eager nn.RNN compiles its scan at every call
  def run(params, x):
    blocks = model.stack.apply({'params': shared}, x)
    outputs = model.apply({'params': params}, x)
    trained = model.apply({'params': params}, x, train=True,
                          rngs={'dropout': jax.random.PRNGKey(3)})
    grads = jax.grad(lambda p: model.apply({'params': p}, x)['upos'].sum())(params)
    return blocks, outputs, trained, grads

  blocks, outputs, trained, grads = run(params, x)
  assert outputs['upos'].shape == (4, 6, 17) and outputs['xpos'].shape == (4, 6, 49)
  # The mask travels between blocks; the top equals the encoder itself (in evaluation).
  assert isinstance(blocks[0], dict)
  np.testing.assert_array_equal(blocks[0]['mask'], x['mask'])
  top = encoder.apply(enc_vars, x)
  np.testing.assert_allclose(blocks[-1], top, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      outputs['xpos'], model.heads['xpos'].apply({'params': params['tasks']['xpos']}, top),
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      outputs['upos'],
      model.heads['upos'].apply({'params': params['tasks']['upos']}, blocks[0]['features']),
      rtol=1e-5, atol=1e-5)
  # Dropout acts in training (between the blocks too: the top block's input is dropped).
  assert not np.allclose(trained['xpos'], outputs['xpos'])
  assert all(_nonzero(grads['shared']['blocks_0']))
  assert not any(_nonzero(grads['shared']['blocks_1']))
  assert not any(_nonzero(grads['tasks']['xpos']))


class _BatchNormBlock(nn.Module):
  """Dense, batch norm, ReLU: a block with batch statistics."""

  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(self.width)(x))
    return nn.relu(x)


def test_batch_statistics_update_under_mutable():
  blocks = [_BatchNormBlock(6), _BatchNormBlock(4)]
  model = models.build('hierarchical', TWO, models.inputs.Identity(), blocks,
                       task_depths={'bin': 1})
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
