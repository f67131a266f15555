"""Small problems the meta-learning tests share: compiling a meta-gradient (second order, vmapped,
scanned) dominates these tests' time, so the models are as small as the checks allow."""

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax import models
from mtl_jax.tasks import Task
from tests import helpers

TASKS = (Task('reg', 'regression'), Task('bin', 'binary'))


def mlp_problem(num_tasks=3, support_size=5, query_size=7, dtype=jnp.float32, seed=0):
  """A 2-4-1 tanh network (a plain params dict) and regression tasks y = sin(a·x) with a random
  per task: (params, loss_fn, support, query), tasks on the leading axis."""
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = {'w1': jax.random.normal(k1, (2, 4), dtype), 'b1': jnp.zeros(4, dtype),
            'w2': jax.random.normal(k2, (4,), dtype) * 0.5, 'b2': jnp.zeros((), dtype)}

  def loss_fn(p, batch):
    pred = jnp.tanh(batch['x'] @ p['w1'] + p['b1']) @ p['w2'] + p['b2']
    return jnp.mean((pred - batch['y']) ** 2)

  def tasks(key, n):
    kx, kc = jax.random.split(key)
    x = jax.random.normal(kx, (num_tasks, n, 2), dtype)
    coef = jax.random.normal(kc, (num_tasks, 1, 2), dtype)
    return {'x': x, 'y': jnp.sin((x * coef).sum(-1))}

  return params, loss_fn, tasks(k3, support_size), tasks(k4, query_size)


def model(arch='hard'):
  """A registry architecture on 3 features and TASKS, as small as it comes."""
  kwargs = {'num_experts': 2} if arch == 'mmoe' else {}
  return models.build(arch, TASKS, models.inputs.Identity(), 'mlp', {'hidden_sizes': (4,)},
                      **kwargs)


def init(model_):
  return model_.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))['params']


def meta_batch(num_tasks, seed=0, num_examples=8):
  """num_tasks of the helpers' batches (each its own data), stacked on a leading task axis."""
  batches = [helpers.batch(num_examples=num_examples, num_features=3, seed=seed * 1000 + t,
                           tasks=TASKS) for t in range(num_tasks)]
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def task(tree, t):
  return jax.tree.map(lambda x: x[t], tree)


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)
