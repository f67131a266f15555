"""Small synthetic multi-task problems for tests that should not depend on a dataset build."""

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import models
from mtl_jax.tasks import Task

TASKS = (Task('bin', 'binary'), Task('cls', 'multiclass', 3), Task('multi', 'multilabel', 2),
         Task('reg', 'regression'))


def batch(num_examples=16, num_features=5, seed=0, tasks=TASKS):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(num_examples, num_features)).astype(np.float32)
  labels = {
      'bin': (x[:, 0] > 0).astype(np.int32),
      'cls': rng.integers(0, 3, num_examples).astype(np.int32),
      'multi': (x[:, :2] > 0).astype(np.int32),
      'reg': x[:, 1].astype(np.float32),
  }
  return {'inputs': x,
          'labels': {t.name: labels[t.name] for t in tasks},
          'label_mask': {t.name: np.ones(num_examples, bool) for t in tasks}}


def model(arch='hard', tasks=TASKS, hidden=(8,), dropout=0.0, encoder='mlp'):
  return models.build(arch, tasks, models.inputs.Identity(), encoder,
                      {'hidden_sizes': hidden, 'dropout': dropout})


def init(model_, example):
  return model_.init(jax.random.PRNGKey(0), jnp.asarray(example['inputs']))


def take(it, count):
  """The next `count` elements of an iterator."""
  return [next(it) for _ in range(count)]


def assert_same_batches(xs, ys):
  """Two lists of (nested dict) batches are equal, array by array."""
  from mtl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    flat_x, flat_y = dict(pipeline._leaves(x)), dict(pipeline._leaves(y))  # pylint: disable=protected-access
    assert flat_x.keys() == flat_y.keys()
    for key in flat_x:
      np.testing.assert_array_equal(flat_x[key], flat_y[key], err_msg=key)
