"""`transformer` encoder (models/transformer.py): shapes, padding invariance, positions, stacking
of one-layer blocks, and a token-level multi-task model trained with the real jitted step on the
8-device mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.models import token_inputs
from mtl_jax.models import transformer
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

B, T, D, M = 4, 7, 5, 8
LENGTHS = np.array([3, 7, 1, 5])
POOLS = ('none', 'mean', 'max', 'last')


def _inputs(length=T, seed=0, pad_seed=1, pad_value=None, dim=D):
  """Features [B, length >= T, dim]: the real tokens (the first LENGTHS[b] of row b) come from
  `seed` alone; the padding from `pad_seed`, or is `pad_value` everywhere."""
  real = np.zeros((B, length, dim), np.float32)
  real[:, :T] = np.random.default_rng(seed).normal(size=(B, T, dim))
  pad = np.random.default_rng(pad_seed).normal(size=(B, length, dim)).astype(np.float32) * 3
  if pad_value is not None:
    pad[:] = pad_value
  mask = np.arange(length)[None] < LENGTHS[:, None]
  return {'features': jnp.asarray(np.where(mask[..., None], real, pad)),
          'mask': jnp.asarray(mask)}


def _real(features):
  return np.concatenate([np.asarray(features)[b, :n] for b, n in enumerate(LENGTHS)])


def _encoder(**kwargs):
  options = {'model_dim': M, 'num_heads': 2, 'num_layers': 2, 'dropout': 0.0, 'max_len': 16}
  return models.make_encoder('transformer', {**options, **kwargs})


@functools.cache
def _jitted(pools=('none',), **kwargs):
  """One jitted program for the encoder under each pool."""
  encoders = {pool: _encoder(pool=pool, **kwargs) for pool in pools}
  return jax.jit(lambda variables, inputs: {pool: encoder.apply(variables, inputs)
                                            for pool, encoder in encoders.items()})


@functools.cache
def _variables(positions='learned'):
  return jax.jit(_encoder(positions=positions).init)(jax.random.PRNGKey(0), _inputs())


def test_shapes_pools_and_zero_padding():
  inputs = _inputs()
  variables = _variables()
  assert 'input_projection' in variables['params']  # D = 5 != model_dim = 8
  out = _jitted(POOLS)(variables, inputs)
  features = np.asarray(out['none'])
  assert features.shape == (B, T, M)
  assert np.all(features[~np.asarray(inputs['mask'])] == 0)
  assert np.all(np.abs(_real(features)).sum(-1) > 0)
  for pool in POOLS[1:]:
    assert out[pool].shape == (B, M), pool
  np.testing.assert_allclose(out['mean'], features.sum(1) / LENGTHS[:, None], rtol=1e-5)
  masked = np.where(np.asarray(inputs['mask'])[..., None], features, -np.inf)
  np.testing.assert_allclose(out['max'], masked.max(1), rtol=1e-6)
  np.testing.assert_allclose(out['last'], features[np.arange(B), LENGTHS - 1], rtol=1e-6)
  both = _jitted(return_mask=True)(variables, inputs)['none']
  np.testing.assert_array_equal(both['features'], features)
  np.testing.assert_array_equal(both['mask'], inputs['mask'])
  # Inputs already model_dim wide are not projected: one layer is exactly one block.
  wide = jax.eval_shape(_encoder().init, jax.random.PRNGKey(0), jnp.ones((2, 3, M)))
  assert 'input_projection' not in wide['params']


@pytest.mark.parametrize('positions', ['learned', 'sinusoidal'])
def test_padding_content_and_length_do_not_change_real_tokens(positions):
  variables = _variables(positions)
  run = _jitted(POOLS, positions=positions)
  expected = run(variables, _inputs())
  for other in (_inputs(pad_seed=2), _inputs(pad_value=1e3), _inputs(length=T + 6),
                _inputs(length=T + 6, pad_value=-50.0)):
    got = run(variables, other)
    # A longer padded length changes the shapes of the attention products, hence the tolerance.
    np.testing.assert_allclose(_real(got['none']), _real(expected['none']), rtol=1e-5,
                               atol=1e-6)
    for pool in POOLS[1:]:
      np.testing.assert_allclose(got[pool], expected[pool], rtol=1e-5, atol=1e-6, err_msg=pool)


def test_attention_mixes_real_tokens_and_positions_break_symmetry():
  variables = _variables()
  run = _jitted()
  inputs = _inputs()
  base = np.asarray(run(variables, inputs)['none'])[1]
  changed = np.asarray(run(variables, dict(inputs, features=inputs['features'].at[1, 4].add(1.)))
                       ['none'])[1]
  # Every token of the row attends to the changed one (the padding-invariance test above is not
  # passed by a model that looks at each token alone).
  assert np.all(np.abs(changed - base).max(-1) > 1e-4)
  # Swapping two tokens of a full row: without positions the outputs swap; with them they differ.
  swapped = dict(inputs, features=inputs['features'].at[1, jnp.array([0, 6])].set(
      inputs['features'][1, jnp.array([6, 0])]))
  for positions, equivariant in (('none', True), ('learned', False)):
    encoder_vars = _variables() if positions == 'learned' else {
        'params': {k: v for k, v in variables['params'].items() if k != 'position_embedding'}}
    a = np.asarray(_jitted(positions=positions)(encoder_vars, inputs)['none'])[1]
    b = np.asarray(_jitted(positions=positions)(encoder_vars, swapped)['none'])[1]
    assert np.allclose(a[[6, 1, 2, 3, 4, 5, 0]], b, atol=1e-5) == equivariant, positions


def test_sinusoidal_table():
  table = transformer.sinusoidal(50, 6)
  np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1], atol=1e-7)
  np.testing.assert_allclose(table[7, 0], np.sin(7.0), rtol=1e-6)
  np.testing.assert_allclose(table[7, 3], np.cos(7.0 / 10000 ** (2 / 6)), rtol=1e-6)
  assert transformer.sinusoidal(4, 5).shape == (4, 5)  # odd widths too


def test_stacked_one_layer_blocks_equal_a_two_layer_encoder():
  """The hierarchical architectures' building block: the first block (with positions, without
  the final norm) returns {'features', 'mask'}, the next takes it (positions='none')."""
  inputs = _inputs()
  params = _variables()['params']
  first = {k: v for k, v in params.items() if k not in ('block_1', 'final_norm')}
  second = {'block_0': params['block_1'], 'final_norm': params['final_norm']}
  hidden = _jitted(num_layers=1, final_norm=False, return_mask=True)({'params': first}, inputs)
  top = _jitted(num_layers=1, positions='none')({'params': second}, hidden['none'])
  expected = _jitted()({'params': params}, inputs)['none']
  np.testing.assert_allclose(top['none'], expected, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training():
  inputs = _inputs()
  variables = _variables()
  encoder = _encoder(dropout=0.3, attention_dropout=0.3)
  eval_out = _jitted(dropout=0.3, attention_dropout=0.3)(variables, inputs)['none']
  np.testing.assert_array_equal(eval_out, _jitted()(variables, inputs)['none'])
  train_out = jax.jit(functools.partial(encoder.apply, train=True))(
      variables, inputs, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(_real(train_out), _real(eval_out))
  np.testing.assert_array_equal(np.asarray(train_out)[~np.asarray(inputs['mask'])], 0)


def test_bad_options_are_user_errors():
  inputs = _inputs()
  with pytest.raises(UserError, match='max_len'):
    _encoder(max_len=4).init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(UserError, match='must divide'):
    _encoder(num_heads=3).init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(UserError, match='unknown positions'):
    _encoder(positions='rotary').init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(UserError, match='unknown pool'):
    _encoder(pool='first').init(jax.random.PRNGKey(0), inputs)


# Two token-level tasks on random token sequences: a token's class (id mod 4), and the previous
# token's class (4 for the first token), which only attention with positions can answer.
TASKS = (Task('own', 'multiclass', 4), Task('previous', 'multiclass', 5))
VOCAB, MAX_LEN, SENTENCES = 20, 8, 64


def _sequence_batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, VOCAB, (SENTENCES, MAX_LEN)).astype(np.int32)
  mask = np.arange(MAX_LEN)[None] < rng.integers(2, MAX_LEN + 1, (SENTENCES, 1))
  tokens = np.where(mask, tokens, 0)
  own = tokens % 4
  previous = np.concatenate([np.full((SENTENCES, 1), 4), own[:, :-1]], 1)
  return {'inputs': {'tokens': tokens, 'mask': mask},
          'labels': {'own': own, 'previous': previous},
          'label_mask': {'own': mask, 'previous': mask}}


def _train(model, tasks, batch, steps, lr=1e-2):
  """The real step, jitted on the 8-device mesh; asserts it is traced once for all the steps."""
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  method, tx = optim.get('ew', num_tasks=len(tasks)), optax.adam(lr)
  step = step_lib.make_train_step(model, tasks, method, tx, 'weighted')
  traces = []

  def counted(state, batch):
    traces.append(None)
    return step(state, batch)

  train_step = sharding.jit_train_step(counted, mesh)
  state = jax.jit(lambda rng: step_lib.create_state(model, method, tx, rng, batch['inputs']),
                  out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
  device_batch = sharding.put_batch(batch, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, device_batch)
    losses.append(np.asarray(metrics['losses']))
  assert len(traces) == 1, 'the jitted step was traced again'
  return state, np.array(losses)


def test_hard_sharing_with_a_transformer_trunk_trains_on_token_labels():
  batch = _sequence_batch()
  model = models.build('hard', TASKS, token_inputs.TokenEmbedding(VOCAB, embed_dim=16),
                       'transformer', {'model_dim': 16, 'num_heads': 2, 'num_layers': 1,
                                       'dropout': 0.0, 'max_len': MAX_LEN})
  state, losses = _train(model, TASKS, batch, steps=80)
  assert np.all(np.isfinite(losses)) and int(state.skipped_steps) == 0
  assert np.all(losses[-1] < 0.2 * losses[0]), (losses[0], losses[-1])
  outputs = jax.jit(model.apply)(state.variables, batch['inputs'])
  assert outputs['previous'].shape == (SENTENCES, MAX_LEN, 5)
  mask = batch['inputs']['mask']
  for task in TASKS:
    predicted = np.asarray(outputs[task.name]).argmax(-1)
    accuracy = np.mean(predicted[mask] == batch['labels'][task.name][mask])
    assert accuracy > 0.95, (task.name, accuracy)
