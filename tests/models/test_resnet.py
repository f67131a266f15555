"""`resnet` encoder (models/resnet.py): shapes and options, batch norm in training and evaluation,
batch statistics of the global batch under data parallelism, and a hard-sharing model with a
ResNet trunk trained by the real jitted step on the 8-device mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

OPTIONS = {'stage_sizes': (1, 1), 'num_filters': 4}
TASKS = (Task('brighter_left', 'binary'), Task('spot', 'multiclass', 4))


def _images(num=16, seed=0):
  """Tiny 8x8 RGB images with two labels: is the left half brighter than the right, and which
  quadrant holds a bright 2x2 spot."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(num, 8, 8, 3)).astype(np.float32)
  shift = rng.choice([-1.0, 1.0], num).astype(np.float32)
  images[:, :, :4] += shift[:, None, None, None] * 0.5
  spot = rng.integers(0, 4, num)
  for i, q in enumerate(spot):
    row, col = 4 * (q // 2) + 1, 4 * (q % 2) + 1
    images[i, row:row + 2, col:col + 2] += 3.0
  return {'inputs': images,
          'labels': {'brighter_left': (shift > 0).astype(np.int32), 'spot': spot.astype(np.int32)},
          'label_mask': {t.name: np.ones(num, bool) for t in TASKS}}


def _encoder(**kwargs):
  return models.make_encoder('resnet', {**OPTIONS, **kwargs})


@functools.cache
def _variables(**kwargs):
  return jax.jit(_encoder(**kwargs).init)(jax.random.PRNGKey(0), _images()['inputs'])


@functools.cache
def _apply(train, **kwargs):
  """Jitted apply, in training with the batch statistics mutable."""
  encoder = _encoder(**kwargs)
  return jax.jit(lambda variables, x: encoder.apply(variables, x, train=train,
                                                    mutable=['batch_stats']))


def test_shapes_and_options():
  x = _images()['inputs']
  variables = _variables()
  assert set(variables) == {'params', 'batch_stats'}
  features, _ = _apply(False)(variables, x)
  assert features.shape == (16, 8) and features.dtype == jnp.float32  # 2 stages: 4, then 8
  # Strides: the second stage halves the map; its first block projects the shortcut.
  assert 'shortcut_conv' in variables['params']['stage1_block0']
  assert 'shortcut_conv' not in variables['params']['stage0_block0']
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(_encoder(stage_sizes=(2, 1, 1), num_filters=2).init, key, x)
  assert set(shapes['params']) == {'stem_conv', 'stem_norm', 'stage0_block0', 'stage0_block1',
                                   'stage1_block0', 'stage2_block0'}
  assert jax.eval_shape(_encoder(stage_sizes=(2, 1, 1), num_filters=2).apply, shapes,
                        x).shape == (16, 8)
  imagenet = _encoder(stem='imagenet')
  shapes = jax.eval_shape(imagenet.init, key, x)
  assert shapes['params']['stem_conv']['kernel'].shape == (7, 7, 3, 4)
  assert jax.eval_shape(imagenet.apply, shapes, x).shape == (16, 8)
  gray = x[..., 0]  # [B, H, W]: one channel
  shapes = jax.eval_shape(_encoder().init, key, gray)
  assert shapes['params']['stem_conv']['kernel'].shape == (3, 3, 1, 4)
  assert jax.eval_shape(_encoder().apply, shapes, gray).shape == (16, 8)
  for norm in ('group', 'layer'):
    shapes = jax.eval_shape(_encoder(norm=norm, num_groups=2).init, key, x)
    assert set(shapes) == {'params'}, norm  # no running statistics
    assert jax.eval_shape(_encoder(norm=norm, num_groups=2).apply, shapes, x).shape == (16, 8)
  with pytest.raises(UserError, match='one stride per stage'):
    _encoder(strides=(1, 2, 2)).init(key, x)
  with pytest.raises(UserError, match='unknown norm'):
    _encoder(norm='instance').init(key, x)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_statistics():
  x = _images()['inputs']
  variables = _variables(dtype='bfloat16')
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  jaxpr = jax.make_jaxpr(lambda v: _encoder(dtype='bfloat16').apply(v, x))(variables)
  convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  assert convs and all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
  features, updates = _apply(True, dtype='bfloat16')(variables, x)
  assert features.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(updates))
  reference, _ = _apply(True)(_variables(), x)  # same params (same init key), float32
  np.testing.assert_allclose(features, reference, rtol=0.1, atol=0.05)


def _stem_statistics(params, x):
  """Mean and (biased) variance over batch and positions of the stem convolution's output."""
  y = jax.lax.conv_general_dilated(x, params['stem_conv']['kernel'], (1, 1), 'SAME',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return np.asarray(y.mean((0, 1, 2))), np.asarray(y.var((0, 1, 2)))


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
  x = _images()['inputs']
  variables = _variables()
  stats = variables['batch_stats']
  # Training: each example is normalised with its batch, so its features depend on the others;
  # the running averages move by (1 - momentum) toward the batch's statistics.
  train_out, updates = _apply(True)(variables, x)
  other_batch = np.concatenate([x[:1], _images(seed=1)['inputs'][1:]])
  assert not np.allclose(_apply(True)(variables, other_batch)[0][0], train_out[0])
  mean, var = _stem_statistics(variables['params'], x)
  new = updates['batch_stats']['stem_norm']
  np.testing.assert_allclose(new['mean'], 0.9 * stats['stem_norm']['mean'] + 0.1 * mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.9 * stats['stem_norm']['var'] + 0.1 * var, rtol=1e-4)
  # Evaluation: the running averages, unchanged, and an example's features are its own.
  eval_out, eval_updates = _apply(False)(variables, x)
  jax.tree.map(np.testing.assert_array_equal, eval_updates['batch_stats'], stats)
  np.testing.assert_allclose(_apply(False)(variables, other_batch)[0][0], eval_out[0], rtol=1e-5)
  assert not np.allclose(eval_out, train_out, atol=1e-3)
  # ...and they are read: evaluating with the updated averages changes the features.
  moved, _ = _apply(False)({**variables, **updates}, x)
  assert not np.allclose(moved, eval_out, atol=1e-4)


def _model():
  return models.build('hard', TASKS, models.inputs.Identity(), 'resnet', OPTIONS)


@functools.cache
def _stepper(num_devices):
  """(jitted step, initial state) on a mesh of `num_devices`; the step counts its traces."""
  model, mesh = _model(), sharding.make_mesh(jax.devices()[:num_devices])
  method, tx = optim.get('ew', num_tasks=len(TASKS)), optax.adam(1e-2)
  step = step_lib.make_train_step(model, TASKS, method, tx, 'weighted')
  traces = []

  def counted(state, batch):
    traces.append(None)
    return step(state, batch)

  state = jax.jit(lambda rng: step_lib.create_state(model, method, tx, rng, _images()['inputs']),
                  out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
  return sharding.jit_train_step(counted, mesh), state, mesh, traces


def _first_step(num_devices):
  train_step, state, mesh, _ = _stepper(num_devices)
  # The step donates its state: keep the cached initial state alive with a copy.
  state = jax.tree.map(jnp.copy, state)
  new_state, _ = train_step(state, sharding.put_batch(_images(), mesh))
  return jax.tree.map(np.asarray, new_state)


@pytest.mark.slow
def test_batch_statistics_are_the_global_batch_s_on_8_devices():
  images = _images()['inputs']
  on_8, on_1 = _first_step(8), _first_step(1)
  assert len(jax.devices()) == 8
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
               on_8.collections, on_1.collections)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6),
               on_8.params, on_1.params)
  # Both are the statistics of all 16 images, not of any device's 2 ...
  _, initial, _, _ = _stepper(1)
  params = jax.tree.map(np.asarray, initial.params['shared']['encoder'])
  mean, var = _stem_statistics(params, images)
  stem = on_8.collections['batch_stats']['shared']['encoder']['stem_norm']
  np.testing.assert_allclose(stem['mean'], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stem['var'], 0.9 + 0.1 * var, rtol=1e-4)
  # ... which would differ: the mean of per-device variances is not the global variance.
  per_device = np.mean([_stem_statistics(params, shard)[1] for shard in np.split(images, 8)], 0)
  assert not np.allclose(0.9 + 0.1 * per_device, stem['var'], rtol=1e-3)


def test_hard_sharing_with_a_resnet_trunk_trains_and_evaluates_with_running_statistics():
  batch = _images()
  train_step, state, mesh, traces = _stepper(8)
  state = jax.tree.map(jnp.copy, state)
  initial_stats = jax.tree.map(np.asarray, state.collections)
  device_batch = sharding.put_batch(batch, mesh)
  losses = []
  for _ in range(40):
    state, metrics = train_step(state, device_batch)
    losses.append(np.asarray(metrics['losses']))
  assert len(traces) == 1, 'the jitted step was traced again'
  assert int(state.skipped_steps) == 0
  assert np.all(losses[-1] < 0.3 * losses[0]), (losses[0], losses[-1])
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.collections, initial_stats)
  assert all(jax.tree.leaves(moved))  # every batch-norm layer's running statistics
  # Evaluation (running averages, no update) on the training images classifies them.
  model = _model()
  outputs = jax.jit(model.apply)(state.variables, batch['inputs'])
  assert np.mean((np.asarray(outputs['brighter_left']) > 0) == batch['labels']['brighter_left'])\
      > 0.9
  assert np.mean(np.asarray(outputs['spot']).argmax(-1) == batch['labels']['spot']) > 0.9
