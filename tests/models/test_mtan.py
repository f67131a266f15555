"""mtan: per-task attention masks over a shared network's blocks (Liu, Johns & Davison 2019)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.models import hierarchical
from mtl_jax.models import mtan
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
TWO = TASKS[:2]  # the jitted-step checks compile one program per case: two tasks keep it fast

MLP = ('mlp', {'hidden_sizes': (8, 6)})
CNN = ('cnn', {'channels': (4, 3), 'hidden_sizes': (6,)})


def _model(tasks=TASKS, encoder=MLP):
  return models.build('mtan', tasks, models.inputs.Identity(), encoder[0], encoder[1])


def _inputs(encoder, example):
  if encoder is CNN:
    return jax.random.normal(jax.random.PRNGKey(2), (16, 8, 8, 1))
  return jnp.asarray(example['inputs'])


def test_contract():
  model = _model()
  example = helpers.batch()
  variables = helpers.init(model, example)
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert set(variables['params']['tasks']['bin']) == {'attention', 'head'}
  assert set(variables['params']['tasks']['bin']['attention']) == {'unit_0', 'unit_1'}
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  # Every case, "rep" included: the blocks' features are the shared representation.
  arch_checks.check_train_steps(_model(TWO), TWO, helpers.batch(tasks=TWO))


@pytest.mark.parametrize('encoder', [MLP, CNN], ids=['mlp', 'cnn'])
def test_masks_in_unit_interval_with_the_blocks_shapes(encoder):
  model = _model(TWO, encoder)
  x = _inputs(encoder, helpers.batch())
  variables = model.init(jax.random.PRNGKey(0), x)
  shared = model.encode(variables, x)
  masks = model.attention_masks(variables, x)
  if encoder is CNN:  # two conv stages (feature maps), then a dense layer
    assert [s.shape for s in shared] == [(16, 4, 4, 4), (16, 2, 2, 3), (16, 6)]
  for name in ('bin', 'cls'):
    assert [m.shape for m in masks[name]] == [s.shape for s in shared]
    for mask in masks[name]:
      mask = np.asarray(mask)
      assert np.all((mask >= 0) & (mask <= 1))
      assert 0 < mask.mean() < 1 and mask.std() > 0  # soft, not saturated


@pytest.mark.parametrize('encoder', [MLP, CNN], ids=['mlp', 'cnn'])
def test_masks_at_one_give_the_shared_network(encoder):
  model = _model(TWO, encoder)
  x = _inputs(encoder, helpers.batch())
  variables = model.init(jax.random.PRNGKey(0), x)
  params = variables['params']
  for name in ('bin', 'cls'):
    for unit in params['tasks'][name]['attention'].values():
      # The last layer's logits = 0·x + 1e4: sigmoid is exactly 1 in float32.
      unit['Dense_1']['kernel'] = jnp.zeros_like(unit['Dense_1']['kernel'])
      unit['Dense_1']['bias'] = jnp.full_like(unit['Dense_1']['bias'], 1e4)
  for masks in model.attention_masks(variables, x).values():
    assert all(np.all(np.asarray(m) == 1) for m in masks)
  top = hierarchical.features(model.stack.apply({'params': params['shared']}, x)[-1])
  outputs = model.apply(variables, x)
  for name in ('bin', 'cls'):
    expected = model.heads[name].apply({'params': params['tasks'][name]['head']}, top)
    np.testing.assert_array_equal(outputs[name], expected)


def test_encode_decode_equals_apply_and_decode_reads_task_parameters_only():
  model = _model()
  example = helpers.batch()
  variables = helpers.init(model, example)
  direct = model.apply(variables, example['inputs'])
  z = model.encode(variables, example['inputs'])
  assert isinstance(z, tuple) and [a.shape for a in z] == [(16, 8), (16, 6)]
  tasks_only = {'params': {'tasks': variables['params']['tasks']}}
  composed = model.decode(tasks_only, z)
  for name in direct:
    np.testing.assert_array_equal(direct[name], composed[name])
  assert set(model.decode(tasks_only, z, task_names=['reg'])) == {'reg'}


def test_attention_reads_the_previous_attended_features():
  model = _model(TWO)
  example = helpers.batch(tasks=TWO)
  variables = helpers.init(model, example)
  shared = model.encode(variables, example['inputs'])
  # Unit 2 sees [s^2; â^1]: changing â^1 (through unit 1) changes the second mask.
  params = variables['params']
  before = model.attention_masks(variables, example['inputs'])['bin']
  unit = params['tasks']['bin']['attention']['unit_0']['Dense_1']
  unit['bias'] = unit['bias'] + 1.0
  after = model.attention_masks(variables, example['inputs'])['bin']
  assert not np.allclose(before[1], after[1])
  kernel = params['tasks']['bin']['attention']['unit_1']['Dense_0']['kernel']
  assert kernel.shape == (shared[1].shape[-1] + shared[0].shape[-1], shared[1].shape[-1])


def test_match_pools_and_flattens():
  maps = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  np.testing.assert_array_equal(mtan.match(maps, jnp.zeros((2, 2, 2, 5))),
                                nn.max_pool(maps, (2, 2), strides=(2, 2)))
  assert mtan.match(maps, jnp.zeros((2, 7))).shape == (2, 48)
  with pytest.raises(UserError, match='cannot attend across blocks'):
    mtan.match(jnp.zeros((2, 5)), jnp.zeros((3, 5)))


class _Opaque(nn.Module):
  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(4)(x)


def test_unsupported_encoder_is_a_clear_error():
  with pytest.raises(UserError, match='cannot be cut into layers'):
    models.build('mtan', TWO, models.inputs.Identity(), _Opaque())


@pytest.mark.skipif('bilstm' not in models.ENCODERS, reason="no 'bilstm' encoder")
def test_per_token_masks_on_a_bilstm():
  class Passthrough(nn.Module):
    def __call__(self, inputs, *, train=False):
      return inputs

  model = models.build('mtan', TWO, Passthrough(), 'bilstm', {'num_layers': 2, 'hidden_size': 3})
  features = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
  mask = jnp.arange(5)[None, :] < jnp.array([5, 2])[:, None]
  x = {'features': features, 'mask': mask}

  @jax.jit  # one program: an eager nn.RNN compiles its scan at every call
  def run(x):
    variables = model.init(jax.random.PRNGKey(0), x)
    shared = model.encode(variables, x)
    return shared, model.attention_masks(variables, x), model.apply(variables, x)

  shared, masks, outputs = run(x)
  assert [m.shape for m in masks['bin']] == [(2, 5, 6)] * 2
  attended = np.asarray(masks['bin'][1] * shared[1])
  assert np.all(attended[~np.asarray(mask)] == 0)  # padding stays zero
  assert outputs['cls'].shape == (2, 5, 3)


class _BatchNormBlock(nn.Module):
  """Dense, batch norm, ReLU: a block with batch statistics."""

  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(self.width)(x))
    return nn.relu(x)


def test_batch_statistics_update_under_mutable():
  blocks = [_BatchNormBlock(6), _BatchNormBlock(4)]
  model = models.build('mtan', TWO, models.inputs.Identity(), blocks)
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
