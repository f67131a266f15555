"""attention_mix: θ_k = a_k Θ_s + (1 − a_k) Θ_k, a_k = sigmoid(ρ_k), penalty λ Σ_k a_k²."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.train import loop
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
# The jitted-step checks compile one program per case: two tasks keep the file fast.
TWO = TASKS[:2]


def _model(tasks=TASKS, **arch_kwargs):
  return models.build('attention_mix', tasks, models.inputs.Identity(), 'mlp',
                      {'hidden_sizes': (8, 6)}, **arch_kwargs)


def _setup(**arch_kwargs):
  model = _model(**arch_kwargs)
  example = helpers.batch()
  return model, example, helpers.init(model, example)


def _with_mix(variables, logits):
  params = jax.tree.map(lambda x: x, variables['params'])
  for name, logit in zip((t.name for t in TASKS), logits):
    params['tasks'][name]['mix'] = jnp.asarray(logit, jnp.float32)
  return {**variables, 'params': params}


def test_contract():
  model, example, variables = _setup()
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert set(variables['params']['tasks']['bin']) == {'trunk', 'head', 'mix'}
  assert not model.has_shared_representation and model.has_shared_parameters
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  arch_checks.check_train_steps(_model(TWO), TWO, helpers.batch(tasks=TWO))


def test_task_loss_reaches_shared_own_trunk_and_own_mix():
  model, example, variables = _setup()
  # Θ_k starts equal to Θ_s, where ∂L_k/∂a_k = <∇L_k, Θ_s − Θ_k> = 0; part them first.
  params = variables['params']
  noise = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), params['tasks']['cls']['trunk'])
  params['tasks']['cls']['trunk'] = jax.tree.map(jnp.add, params['tasks']['cls']['trunk'], noise)
  grads = jax.grad(lambda p: step_lib.task_losses(
      TASKS, model.apply({'params': p}, example['inputs']), example)[1])(params)
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads['shared']))
  own = grads['tasks']['cls']
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(own['trunk']))
  assert float(own['mix']) != 0.0


def test_mix_one_runs_exactly_shared_and_zero_exactly_own():
  model, example, variables = _setup()
  key = jax.random.PRNGKey(1)
  params = variables['params']
  for name in ('bin', 'cls'):
    key, sub = jax.random.split(key)
    leaves, tree = jax.tree.flatten(params['tasks'][name]['trunk'])
    keys = jax.random.split(sub, len(leaves))
    params['tasks'][name]['trunk'] = jax.tree.unflatten(
        tree, [x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  # sigmoid(+inf) = 1 and sigmoid(-inf) = 0 exactly.
  variables = _with_mix(variables, [jnp.inf, -jnp.inf, 0.0, 0.0])
  features, _ = model.trunks(variables, example['inputs'])
  shared_only = model.trunk.apply({'params': params['shared']}, example['inputs'])
  own_only = model.trunk.apply({'params': params['tasks']['cls']['trunk']}, example['inputs'])
  np.testing.assert_array_equal(features[0], shared_only)
  np.testing.assert_array_equal(features[1], own_only)
  assert not np.allclose(shared_only, own_only)
  mixed = model.trunk.apply({'params': jax.tree.map(
      lambda s, t: 0.5 * s + 0.5 * t, params['shared'], params['tasks']['multi']['trunk'])},
      example['inputs'])
  np.testing.assert_allclose(features[2], mixed, rtol=1e-6, atol=1e-6)
  outputs = model.apply(variables, example['inputs'])
  np.testing.assert_array_equal(
      outputs['bin'],
      model.heads['bin'].apply({'params': params['tasks']['bin']['head']}, shared_only))


def test_penalty_is_lambda_sum_of_squared_mix():
  model, _, variables = _setup(penalty_strength=0.3)
  logits = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
  params = _with_mix(variables, logits)['params']
  a = 1 / (1 + np.exp(-logits.astype(np.float64)))
  np.testing.assert_allclose(float(model.penalty(params)), 0.3 * np.sum(a ** 2), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(model.mix_weights(params)), a, rtol=1e-6)
  grads = jax.grad(model.penalty)(params)
  for k, name in enumerate(t.name for t in TASKS):
    # d/dρ λ a² = 2 λ a · a (1 − a).
    np.testing.assert_allclose(float(grads['tasks'][name]['mix']),
                               0.3 * 2 * a[k] ** 2 * (1 - a[k]), rtol=1e-5)
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads['tasks'][name]['trunk']))
  assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads['shared']))


def _train_mix(penalty_strength, steps, learning_rate=0.05):
  """a after `steps` real train steps with the launch optimizer (penalty included)."""
  model = _model(TWO, penalty_strength=penalty_strength)
  example = helpers.batch(tasks=TWO)
  config = ml_collections.ConfigDict({'arch': 'attention_mix', 'learning_rate': learning_rate,
                                      'num_train_steps': steps})
  tx = loop.make_optimizer(config, model)
  method = optim.get('ew', num_tasks=len(TWO))
  mesh = sharding.make_mesh()
  train_step = sharding.jit_train_step(
      step_lib.make_train_step(model, TWO, method, tx, 'weighted'), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  state = sharding.put_replicated(state, mesh)
  for _ in range(steps):
    state, metrics = train_step(state, sharding.put_batch(example, mesh))
    assert bool(metrics['finite'])
  return np.asarray(model.mix_weights(jax.device_get(state.params)))


def test_penalty_lowers_mix_in_training():
  steps, learning_rate = 15, 0.05
  free = _train_mix(0.0, steps, learning_rate)
  penalised = _train_mix(1.0, steps, learning_rate)
  assert np.all(penalised < free), (penalised, free)
  # Adam moves ρ by at most ~lr a step; with the penalty it moves down at nearly that speed
  # every step (from init_mix = 0.5, ρ = 0).
  assert np.all(penalised < 1 / (1 + np.exp(0.9 * learning_rate * steps))), penalised


@pytest.mark.parametrize('kwargs, match', [
    ({'penalty_strength': -1.0}, 'penalty_strength'),
    ({'init_mix': 1.0}, 'init_mix'),
    ({'init_mix': 0.0}, 'init_mix'),
    ({'init_mix': 'half'}, 'must be numbers'),
    ({'mix': 0.5}, 'its options .*penalty_strength, init_mix'),
])
def test_bad_arch_kwargs(kwargs, match):
  with pytest.raises(UserError, match=match):
    _model(**kwargs)


class _BatchNormBlock(nn.Module):
  """Dense, batch norm, ReLU: a block with batch statistics."""

  width: int

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Dense(self.width)(x))
    return nn.relu(x)


def test_batch_statistics_update_under_mutable():
  model = models.build('attention_mix', TWO, models.inputs.Identity(), _BatchNormBlock(6))
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
