"""`fcn` encoder (models/fcn.py): shapes, options and errors; pooled per-image heads beside
per-pixel heads on one trunk; a hard-sharing model trained by the real jitted step learns a
per-pixel task and a per-image task at once.

The training test runs on a 1-device mesh: with the 8 fake CPU devices, the convolutions' thread
pool and the gradient all-reduce's rendezvous starve each other on a loaded 2-core machine (XLA
aborts after 40 s). Sharded steps equal single-device ones in tests/train/test_step.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import metrics
from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

SIZE = 16
TASKS = (Task('square', 'multiclass', 2, metrics=('accuracy', 'miou'), per_token=True),
         Task('left', 'binary'))


def _images(num=32, seed=0):
  """16x16 grey images with one bright 5x5 square at a random place: the per-pixel task is
  'inside the square', the per-image task 'is the square's centre in the left half'."""
  rng = np.random.default_rng(seed)
  images = rng.normal(scale=0.3, size=(num, SIZE, SIZE, 1)).astype(np.float32)
  inside = np.zeros((num, SIZE, SIZE), np.int32)
  rows, cols = rng.integers(0, SIZE - 5, num), rng.integers(0, SIZE - 5, num)
  for i, (r, c) in enumerate(zip(rows, cols)):
    images[i, r:r + 5, c:c + 5] += 2.0
    inside[i, r:r + 5, c:c + 5] = 1
  return {'inputs': images,
          'labels': {'square': inside.reshape(num, -1), 'left': (cols + 2 < SIZE / 2).astype(np.int32)},
          'label_mask': {'square': np.ones((num, SIZE * SIZE), bool), 'left': np.ones(num, bool)}}


def test_output_is_one_feature_vector_per_pixel_at_the_output_stride():
  x = _images(4)['inputs']
  # Compiling a U-Net costs seconds: two configurations cover the decoder stopping early (stride
  # 2 of 4) and a single level (no decoder).
  for stride, channels in ((2, (4, 8, 16)), (1, (4,))):
    encoder = models.make_encoder('fcn', {'channels': channels, 'output_stride': stride})
    variables = jax.jit(encoder.init)(jax.random.PRNGKey(0), x)
    out = jax.jit(encoder.apply)(variables, x)
    # The features at stride 2**i are those of the encoder's level i.
    assert out.shape == (4, (SIZE // stride)**2, channels[stride.bit_length() - 1]), (
        stride, channels)
  # [B, H, W] images get a channel axis.
  encoder = models.make_encoder('fcn', {'channels': (4,)})
  assert jax.eval_shape(lambda x: encoder.apply(encoder.init(jax.random.PRNGKey(0), x), x),
                        x[..., 0]).shape == (4, SIZE * SIZE, 4)


def test_each_output_pixel_sees_its_own_place():
  """Changing one input pixel changes the features near it and not far away: the features keep
  the image's layout (the flattening is row-major and nothing mixes positions globally)."""
  encoder = models.make_encoder('fcn', {'channels': (4, 8), 'norm': 'none'})
  x = np.random.default_rng(0).normal(size=(1, 32, 32, 1)).astype(np.float32)
  variables = encoder.init(jax.random.PRNGKey(0), x)
  y = x.copy()
  y[0, 2, 3, 0] += 5.0
  diff = np.abs(np.asarray(encoder.apply(variables, y) - encoder.apply(variables, x))).sum(-1)
  diff = diff.reshape(32, 32)
  assert diff[2, 3] > 0
  # Receptive field: 2 convs (2 px), a pool, 2 convs at half resolution (4 px), 2 convs: < 12 px.
  assert np.all(diff[16:, :] == 0) and np.all(diff[:, 16:] == 0)


def test_bad_options_are_clear_errors():
  x = _images(2)['inputs']
  with pytest.raises(UserError, match='output_stride must be a power of 2'):
    models.make_encoder('fcn', {'channels': (4, 8), 'output_stride': 4}).init(
        jax.random.PRNGKey(0), x)
  with pytest.raises(UserError, match='divisible by'):
    models.make_encoder('fcn', {'channels': (4, 8, 16, 32, 64)}).init(
        jax.random.PRNGKey(0), x[:, :12, :12])  # 12 is not divisible by 2**4
  with pytest.raises(UserError, match='unknown norm'):
    models.make_encoder('fcn', {'norm': 'batch'}).init(jax.random.PRNGKey(0), x)


def test_per_image_heads_pool_the_positions_and_per_pixel_heads_do_not():
  heads = models.make_heads(TASKS)
  assert not heads['square'].pool_positions and heads['left'].pool_positions
  # Without a per-token task, no head pools: heads apply position by position as before.
  assert not any(h.pool_positions for h in models.make_heads(TASKS[1:]).values())
  features = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 6))
  left = heads['left']
  variables = left.init(jax.random.PRNGKey(0), features)
  np.testing.assert_allclose(left.apply(variables, features),
                             left.apply(variables, features.mean(1)), rtol=1e-5, atol=1e-6)
  square = heads['square']
  assert square.apply(square.init(jax.random.PRNGKey(0), features), features).shape == (3, 10, 2)


@pytest.mark.slow
def test_hard_sharing_with_an_fcn_trunk_learns_a_per_pixel_and_a_per_image_task():
  model = models.build('hard', TASKS, models.inputs.Identity(), 'fcn',
                       {'channels': (8, 16), 'norm': 'group'})
  train_batch, test_batch = _images(64, seed=0), _images(64, seed=1)
  tx, method = optax.adam(1e-2), optim.ew()
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = jax.jit(lambda rng: step_lib.create_state(model, method, tx, rng, train_batch['inputs']),
                  out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
  train_step = sharding.jit_train_step(
      step_lib.make_train_step(model, TASKS, method, tx, 'weighted'), mesh)
  device_batch = sharding.put_batch(train_batch, mesh)
  for _ in range(150):
    state, step_metrics = train_step(state, device_batch)
  assert int(state.skipped_steps) == 0
  outputs = jax.device_get(jax.jit(lambda v, x: model.apply(v, x))(state.variables,
                                                                   test_batch['inputs']))
  assert outputs['square'].shape == (64, SIZE * SIZE, 2) and outputs['left'].shape == (64,)
  scores = TASKS[0].evaluate(outputs['square'], test_batch['labels']['square'],
                             test_batch['label_mask']['square'])
  # A constant 'outside' guess scores accuracy 1 - 25/256 = 0.90 and mIoU 0.45.
  assert scores['accuracy'] > 0.97 and scores['miou'] > 0.85, scores
  assert metrics.accuracy('binary', outputs['left'], test_batch['labels']['left']) > 0.8
