"""ESMM: pCTCVR = pCTR · pCVR over shared embeddings (Ma et al., SIGIR 2018)."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.models import esmm
from mtl_jax.tasks import Task
from mtl_jax.train import step as step_lib
from tests.models import arch_checks
from tests.models import test_mmoe as moe

TASKS = (Task('click', 'binary'), Task('buy', 'binary'))
EXTREMES = (-100.0, -30.0, -5.0, -0.5, 0.0, 0.5, 5.0, 30.0, 100.0)


def _batch(num_examples=16, seed=0):
  """Impressions: a click y, a conversion z only after a click; the CTCVR label is y AND z."""
  example = moe.tabular_batch(num_examples, seed=seed, tasks=())
  rng = np.random.default_rng(seed + 2)
  click = rng.random(num_examples) < 0.5
  click[:2] = [True, False]
  buy = click & (rng.random(num_examples) < 0.5)
  buy[0] = True
  labels = {'click': click.astype(np.int32), 'buy': buy.astype(np.int32)}
  return {'inputs': example['inputs'], 'labels': labels,
          'label_mask': {name: np.ones(num_examples, bool) for name in labels}}


def _model(input_layer=None, encoder='mlp', tasks=TASKS, **kwargs):
  return models.build('esmm', tasks, input_layer or moe.tabular(), encoder,
                      {'hidden_sizes': (8,)}, **kwargs)


@pytest.fixture(scope='module')
def setup():
  model = models.build('esmm', TASKS, moe.tabular(), 'mlp', moe.CONTRACT_ENCODER_KWARGS)
  example = _batch()
  return model, example, moe.init(model, example)


def _task_grads(model, variables, example, k):
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(TASKS, outputs, example)[k]
  return jax.grad(loss)(variables['params'])


def test_contract(setup):
  model, example, variables = setup
  arch_checks.check_partition(model, variables, ['click', 'buy'])
  assert set(variables['params']['shared']) == {'input'}
  assert set(variables['params']['tasks']['buy']) == {'tower', 'head'}
  assert model.ctr_task == 'click' and model.ctcvr_task == 'buy'
  # Isolation as ESMM defines it, instead of arch_checks.check_task_isolation (which would fail
  # by design): the click loss reaches the embeddings and the CTR tower, never the CVR tower ...
  ctr_grads = _task_grads(model, variables, example, 0)
  assert moe.nonzero(ctr_grads['shared']) and moe.nonzero(ctr_grads['tasks']['click'])
  assert moe.all_zero(ctr_grads['tasks']['buy'])
  # ... and the CTCVR loss reaches the CVR tower AND the CTR tower: pCTCVR = pCTR · pCVR.
  ctcvr_grads = _task_grads(model, variables, example, 1)
  assert moe.nonzero(ctcvr_grads['shared'])
  assert moe.nonzero(ctcvr_grads['tasks']['buy']) and moe.nonzero(ctcvr_grads['tasks']['click'])
  moe.check_decode_alone_in_training(model, variables, example)
  arch_checks.check_train_steps(model, TASKS, example)


def test_batch_stats_and_dropout():
  model = _model(encoder=moe.BatchNormMLP())
  example = _batch()
  variables = moe.init(model, example)
  assert set(variables['batch_stats']['tasks']['click']) == {'tower'}
  moe.check_batch_stats_and_dropout(model, variables, example, 'buy')
  # decode(['buy']) runs the CTR tower too: its statistics agree with decode(['click'])'s.
  moe.check_decode_alone_in_training(model, variables, example)


def test_encode_decode_split(setup):
  moe.check_encode_decode(setup[0], TASKS, setup[2], setup[1])


def test_outputs_are_ctr_and_ctcvr_logits(setup):
  model, example, variables = setup
  outputs = model.apply(variables, example['inputs'])
  ctr, cvr = outputs['click'], model.cvr(variables, example['inputs'])
  np.testing.assert_allclose(jax.nn.sigmoid(outputs['buy']),
                             jax.nn.sigmoid(ctr) * jax.nn.sigmoid(cvr), rtol=1e-6, atol=1e-7)
  assert not np.allclose(ctr, cvr)  # two towers


def _reference_logit(a, b):
  """logit(σ(a)σ(b)) in float64 another way: log p − log(−expm1(log p))."""
  log_p = -math.log1p(math.exp(-a)) if a > 0 else a - math.log1p(math.exp(a))
  log_p += -math.log1p(math.exp(-b)) if b > 0 else b - math.log1p(math.exp(b))
  return log_p - math.log(-math.expm1(log_p))


def test_ctcvr_logit_is_exact_at_extreme_logits():
  a, b = (jnp.array(v, jnp.float32) for v in zip(*itertools.product(EXTREMES, EXTREMES)))
  logit = esmm.ctcvr_logit(a, b)
  assert np.all(np.isfinite(logit))
  np.testing.assert_allclose(jax.nn.sigmoid(logit), jax.nn.sigmoid(a) * jax.nn.sigmoid(b),
                             rtol=1e-6, atol=1e-6)
  expected = [_reference_logit(x, y) for x, y in zip(np.asarray(a, float), np.asarray(b, float))]
  np.testing.assert_allclose(logit, expected, rtol=1e-5, atol=1e-5)


def _reference_loss(a, b, label):
  """The CTCVR binary cross-entropy of p = σ(a)σ(b), in float64."""
  logit = _reference_logit(a, b)
  return math.log1p(math.exp(-logit)) + (1 - label) * logit if logit > 0 else (
      math.log1p(math.exp(logit)) - label * logit)


@pytest.mark.parametrize('label', [0, 1])
def test_ctcvr_loss_gradients_are_finite_and_right(label):
  def loss(a, b):
    return optax.sigmoid_binary_cross_entropy(esmm.ctcvr_logit(a, b), jnp.float32(label))

  grad = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))
  a, b = (jnp.array(v, jnp.float32) for v in zip(*itertools.product(EXTREMES, EXTREMES)))
  da, db = grad(a, b)
  assert np.all(np.isfinite(da)) and np.all(np.isfinite(db))
  # Against central differences of the float64 loss where the loss is not flat.
  for x, y, gx, gy in zip(np.asarray(a, float), np.asarray(b, float), da, db):
    if max(abs(x), abs(y)) > 5:
      continue
    h = 1e-5
    fx = (_reference_loss(x + h, y, label) - _reference_loss(x - h, y, label)) / (2 * h)
    fy = (_reference_loss(x, y + h, label) - _reference_loss(x, y - h, label)) / (2 * h)
    np.testing.assert_allclose([gx, gy], [fx, fy], rtol=1e-4, atol=1e-5)
  # Far out, confidently wrong: the exact slopes, not 0 or NaN. Label 0 at a = b = 30:
  # ∂/∂a = σ(a)σ(−a)σ(b) / (1 − σ(a)σ(b)) → 1/2 (likewise ∂/∂b); label 1 at a = b = −30:
  # ∂/∂a = −σ(−a) → −1.
  big = np.asarray(grad(jnp.array([30.0, -30.0]), jnp.array([30.0, -30.0])))  # [a|b, point]
  assert np.all(np.isfinite(big))
  if label == 0:
    np.testing.assert_allclose(big[:, 0], 0.5, rtol=1e-4)
  else:
    np.testing.assert_allclose(big[:, 1], -1.0, rtol=1e-4)


@pytest.mark.parametrize('order', ['default', 'named'])
def test_task_roles_come_from_arch_kwargs(order):
  tasks = TASKS[::-1]  # buy, click
  kwargs = {'ctr_task': 'click', 'ctcvr_task': 'buy'} if order == 'named' else {}
  model = _model(tasks=tasks, **kwargs)
  expected = ('click', 'buy') if order == 'named' else ('buy', 'click')
  assert (model.ctr_task, model.ctcvr_task) == expected


def test_without_embeddings_nothing_is_shared():
  model = _model(input_layer=models.inputs.Identity())
  assert not model.has_shared_parameters
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((4, 3)))
  arch_checks.check_partition(model, variables, ['click', 'buy'])
  assert variables['params']['shared'] == {}
  with pytest.raises(UserError, match='no shared parameters'):
    step_lib.resolve_mode('jacobian', optim.get('mgda', num_tasks=2), model)


@pytest.mark.parametrize('tasks, kwargs, match', [
    (TASKS[:1], {}, 'exactly two binary tasks'),
    (TASKS + (Task('more', 'binary'),), {}, 'exactly two binary tasks'),
    ((Task('click', 'binary'), Task('price', 'regression')), {}, r'price \(regression\)'),
    (TASKS, {'ctr_task': 'clicks'}, 'ctr_task=.clicks. is not one of'),
    (TASKS, {'ctcvr_task': 'click'}, 'both'),
])
def test_bad_configurations(tasks, kwargs, match):
  with pytest.raises(UserError, match=match):
    _model(tasks=tasks, **kwargs)
