"""DSelect-k: gates built from smooth-step binary selectors (Hazimeh et al., NeurIPS 2021)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.models import dselect_k
from tests import helpers
from tests.models import arch_checks
from tests.models import test_mmoe as moe

TASKS = moe.CONTRACT_TASKS  # bin, cls


def _model(num_experts=4, k=2, input_layer=None, encoder='mlp', tasks=TASKS, **kwargs):
  return models.build('dselect_k', tasks, input_layer or models.inputs.Identity(), encoder,
                      {'hidden_sizes': (8,)}, num_experts=num_experts, k=k, **kwargs)


@pytest.fixture(scope='module')
def setup():
  return moe.contract_setup('dselect_k', num_experts=4, k=2, entropy_reg=1e-3)


def test_contract(setup):
  model, example, variables = setup
  arch_checks.check_partition(model, variables, [t.name for t in TASKS])
  assert set(variables['params']['tasks']['bin']['gate']) == {'z', 'w'}
  assert variables['params']['tasks']['bin']['gate']['z'].shape == (2, 2)  # k=2, m=log2(4)
  arch_checks.check_task_isolation(model, TASKS, variables, example)
  moe.check_decode_alone_in_training(model, variables, example)
  arch_checks.check_train_steps(model, TASKS, example)


def test_batch_stats_and_dropout():
  model, example, variables = moe.batch_norm_setup('dselect_k', num_experts=4, k=2)
  moe.check_batch_stats_and_dropout(model, variables, example, 'cls')
  moe.check_decode_alone_in_training(model, variables, example)


def test_encode_decode_split(setup):
  moe.check_encode_decode(setup[0], TASKS, setup[2], setup[1])


def test_encode_decode_split_with_per_example_gates():
  # The gates read the input features: the representation must carry them to the embeddings.
  model = _model(input_layer=moe.tabular(), gating='per_example')
  example = moe.tabular_batch(tasks=TASKS)
  moe.check_encode_decode(model, TASKS, moe.init(model, example), example)


@pytest.mark.parametrize('gamma', [0.5, 1.0, 3.0])
def test_smooth_step(gamma):
  s = lambda t: dselect_k.smooth_step(jnp.float32(t), gamma)
  assert float(s(0.0)) == 0.5
  np.testing.assert_allclose(float(s(gamma / 2)), 1.0, atol=1e-6)
  np.testing.assert_allclose(float(s(-gamma / 2)), 0.0, atol=1e-6)
  assert float(s(gamma)) == 1.0 and float(s(-gamma)) == 0.0
  assert float(s(gamma / 4)) + float(s(-gamma / 4)) == pytest.approx(1.0, abs=1e-6)  # symmetry
  # Continuously differentiable: the cubic's slope is 0 where it meets the constants, 3/(2γ) at 0.
  slope = jax.grad(lambda t: dselect_k.smooth_step(t, gamma))
  np.testing.assert_allclose(float(slope(jnp.float32(gamma / 2 * (1 - 1e-6)))), 0.0, atol=1e-4)
  np.testing.assert_allclose(float(slope(jnp.float32(-gamma / 2 * (1 - 1e-6)))), 0.0, atol=1e-4)
  np.testing.assert_allclose(float(slope(jnp.float32(0.0))), 1.5 / gamma, rtol=1e-6)
  grid = dselect_k.smooth_step(jnp.linspace(-gamma, gamma, 101), gamma)
  assert np.all(np.diff(np.asarray(grid)) >= 0)


def test_binary_selector_is_one_hot_on_its_code():
  gamma = 1.0
  for n in (2, 4, 5, 8):
    m = dselect_k.num_binary(n)
    for bits in itertools.product((0, 1), repeat=m):
      index = int(''.join(map(str, bits)), 2)  # most significant bit first
      # |z_t| = γ/2: exactly at the boundary the selector is already binary.
      z = jnp.array([gamma / 2 if b else -gamma / 2 for b in bits], jnp.float32)
      r = np.asarray(dselect_k.selector_outputs(z, gamma, n))
      expected = np.zeros(n)
      if index < n:
        expected[index] = 1.0
      np.testing.assert_allclose(r, expected, atol=1e-6)


def test_weights_sum_to_one_and_select_at_most_k_once_binary():
  rng = np.random.default_rng(0)
  gamma, n, k = 1.0, 8, 3
  for _ in range(5):
    z = jnp.asarray(rng.normal(scale=0.3, size=(k, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=k), jnp.float32)
    q = np.asarray(dselect_k.expert_weights(z, w, gamma, n))
    assert np.all(q >= 0)
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)
    assert np.count_nonzero(q > 1e-6) > k  # not converged: every expert has some weight
    binary = jnp.sign(z) * gamma  # every |z_t| >= γ/2: converged
    q = np.asarray(dselect_k.expert_weights(binary, w, gamma, n))
    np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-6)
    assert 1 <= np.count_nonzero(q) <= k


def test_converged_gate_mixes_the_selected_experts():
  model = _model(num_experts=8, k=2, tasks=TASKS[1:])  # cls
  example = helpers.batch()
  x = jnp.asarray(example['inputs'])
  variables = helpers.init(model, example)
  gate = variables['params']['tasks']['cls']['gate']
  # Selector 0 on expert 5 (101), selector 1 on expert 2 (010).
  gate['z'] = jnp.array([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], jnp.float32)
  gate['w'] = jnp.array([0.3, -0.4], jnp.float32)
  features = model.encode(variables, x)
  q = np.asarray(model.gate_weights(variables, features)['cls'])
  alpha = np.asarray(jax.nn.softmax(gate['w']))
  expected_q = np.zeros(8)
  expected_q[[5, 2]] = alpha
  np.testing.assert_allclose(q, np.broadcast_to(expected_q, (16, 8)), atol=1e-6)
  experts = np.asarray(features['experts'])
  mixed = alpha[0] * experts[:, 5] + alpha[1] * experts[:, 2]
  head = variables['params']['tasks']['cls']['head']['Dense_0']
  np.testing.assert_allclose(model.apply(variables, x)['cls'],
                             mixed @ head['kernel'] + head['bias'], rtol=1e-5, atol=1e-6)


def test_per_example_gates_differ_by_example_and_sum_to_one():
  model = _model(num_experts=4, gating='per_example')
  example = helpers.batch(tasks=TASKS)
  variables = helpers.init(model, example)
  assert set(variables['params']['tasks']['bin']['gate']) == {'z', 'w'}
  q = np.asarray(model.gate_weights(variables, model.encode(variables, example['inputs']))['bin'])
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
  assert not np.allclose(q[0], q[1])
  assert float(model.penalty(variables['params'])) == 0.0


def test_penalty_entropy_and_reachability():
  example = helpers.batch(tasks=TASKS)
  model = _model(num_experts=4, k=2, entropy_reg=0.5)
  params = helpers.init(model, example)['params']
  assert float(model.penalty(params)) > 0  # selectors start near 1/2: high entropy
  binary = jax.tree.map(lambda p: p, params)
  for name in binary['tasks']:
    binary['tasks'][name]['gate']['z'] = jnp.array([[1.0, -1.0], [-1.0, -1.0]], jnp.float32)
  # Binary selectors: entropy 0 (up to the ε inside the log).
  assert float(model.penalty(binary)) < 1e-5
  grads = jax.grad(model.penalty)(params)
  for name in grads['tasks']:
    assert moe.nonzero(grads['tasks'][name]['gate']['z'])
    assert moe.all_zero({k: v for k, v in grads['tasks'][name].items() if k != 'gate'})
    assert moe.all_zero(grads['tasks'][name]['gate']['w'])
  assert moe.all_zero(grads['shared'])

  # n = 5 of 8 codes: 1/Σ_l r_l per selector, 1 when binary on an expert, more when mass leaks.
  model = _model(num_experts=5, k=2)  # entropy_reg 0: the reachability term alone
  params = helpers.init(model, example)['params']
  leak = float(model.penalty(params))
  assert leak > 2 * len(TASKS)
  for name in params['tasks']:
    params['tasks'][name]['gate']['z'] = jnp.array([[1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]])
  np.testing.assert_allclose(float(model.penalty(params)), 2 * len(TASKS), rtol=1e-6)


def test_entropy_penalty_drives_the_selectors_to_binary():
  """Through optim.penalty, as the trainer applies the model's penalty: λ h alone pulls every z_t
  out of (−γ/2, γ/2)."""
  model = _model(num_experts=4, k=2, entropy_reg=1.0)
  example = helpers.batch(tasks=TASKS)
  params = helpers.init(model, example)['params']
  tx = optax.chain(optim.penalty(model.penalty), optax.sgd(0.05))
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit
  def run(params):
    def one(carry, _):
      params, state = carry
      updates, state = tx.update(zeros, state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, _), _ = jax.lax.scan(one, (params, tx.init(params)), None, length=300)
    return params

  start = float(model.penalty(params))
  trained = run(params)
  assert float(model.penalty(trained)) < 1e-3 * start
  for name in trained['tasks']:
    assert np.all(np.abs(np.asarray(trained['tasks'][name]['gate']['z'])) >= 0.5 - 1e-3)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_experts': 1}, 'nothing to select'),
    ({'num_experts': 0}, 'num_experts'),
    ({'k': 0}, 'k must'),
    ({'k': 5}, 'k <= 4'),
    ({'gamma': 0.0}, 'gamma'),
    ({'gamma': -1.0}, 'gamma'),
    ({'gating': 'topk'}, 'gating'),
    ({'entropy_reg': -1e-3}, 'entropy_reg'),
    ({'gating': 'per_example', 'entropy_reg': 1e-3}, 'entropy_reg needs'),
    ({'gating': 'per_example', 'num_experts': 6, 'k': 2}, 'power of 2'),
])
def test_bad_arch_kwargs(kwargs, match):
  kwargs = {'num_experts': 4, **kwargs}
  with pytest.raises(UserError, match=match):
    models.build('dselect_k', TASKS, models.inputs.Identity(), 'mlp', {}, **kwargs)
