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
