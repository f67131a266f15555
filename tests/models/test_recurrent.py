"""`lstm` / `bilstm` encoders and the `TokenEmbedding` input layer (models/recurrent.py,
models/token_inputs.py): shapes, padding invariance in both directions, stacking, pooling, and a
token-level multi-task tagger trained with the real jitted step on the 8-device mesh."""

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
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from tests.models import arch_checks

B, T, D, H = 4, 7, 5, 6
LENGTHS = np.array([3, 7, 1, 5])


def _inputs(length=T, seed=0, pad_seed=1, pad_value=None):
  """Features [B, length >= T, D]: the real tokens (the first LENGTHS[b] of row b) come from
  `seed` alone; the padding from `pad_seed`, or is `pad_value` everywhere."""
  real = np.zeros((B, length, D), np.float32)
  real[:, :T] = np.random.default_rng(seed).normal(size=(B, T, D))
  pad = np.random.default_rng(pad_seed).normal(size=(B, length, D)).astype(np.float32) * 3
  if pad_value is not None:
    pad[:] = pad_value
  mask = np.arange(length)[None] < LENGTHS[:, None]
  return {'features': jnp.asarray(np.where(mask[..., None], real, pad)),
          'mask': jnp.asarray(mask)}


def _real(features):
  """Rows' real-token features, concatenated: [sum(LENGTHS), H]."""
  return np.concatenate([np.asarray(features)[b, :n] for b, n in enumerate(LENGTHS)])


def _encoder(name, **kwargs):
  return models.make_encoder(name, {'hidden_size': H, **kwargs})


@functools.cache
def _jitted(name, num_layers=2, pools=('none',), **kwargs):
  """One jitted program for the encoder under each pool (eager Linen RNNs recompile their scan
  at every call)."""
  encoders = {pool: _encoder(name, num_layers=num_layers, pool=pool, **kwargs) for pool in pools}
  return jax.jit(lambda variables, inputs: {pool: encoder.apply(variables, inputs)
                                            for pool, encoder in encoders.items()})


@functools.cache
def _variables(name):
  """A two-layer encoder's variables; one init per encoder, as Linen's LSTM init is the slowest
  thing to compile here."""
  return jax.jit(_encoder(name, num_layers=2).init)(jax.random.PRNGKey(0), _inputs())


def _first_layer(variables):
  """A two-layer encoder's first layer: the variables of the one-layer encoder."""
  return {'params': {k: v for k, v in variables['params'].items() if k.endswith('_0')}}


POOLS = ('none', 'mean', 'max', 'last')


@pytest.mark.parametrize('name,width', [('lstm', H), ('bilstm', 2 * H)])
def test_shapes_pools_and_zero_padding(name, width):
  inputs = _inputs()
  variables = _variables(name)
  out = _jitted(name, pools=POOLS)(variables, inputs)
  features = np.asarray(out['none'])
  assert features.shape == (B, T, width)
  assert np.all(features[~np.asarray(inputs['mask'])] == 0)
  assert np.all(np.abs(_real(features)).sum(-1) > 0)
  for pool in POOLS[1:]:
    assert out[pool].shape == (B, width), pool
  np.testing.assert_allclose(out['mean'], features.sum(1) / LENGTHS[:, None], rtol=1e-5)
  masked = np.where(np.asarray(inputs['mask'])[..., None], features, -np.inf)
  np.testing.assert_allclose(out['max'], masked.max(1), rtol=1e-6)
  # A plain array is a batch without padding: row 1 has none.
  plain = _jitted(name)(variables, inputs['features'])['none']
  np.testing.assert_allclose(plain[1], features[1], rtol=1e-6, atol=1e-6)
  # return_mask gives back the form the encoder takes.
  both = _jitted(name, return_mask=True)(variables, inputs)['none']
  assert set(both) == {'features', 'mask'}
  np.testing.assert_array_equal(both['features'], features)
  np.testing.assert_array_equal(both['mask'], inputs['mask'])


@pytest.mark.parametrize('name', ['lstm', 'bilstm'])
def test_padding_content_and_length_do_not_change_real_tokens(name):
  reference = _inputs()
  variables = _variables(name)
  run = _jitted(name, pools=POOLS)
  expected = run(variables, reference)
  # Two padded lengths (two compiles), each with two padding contents.
  for other in (_inputs(pad_seed=2), _inputs(pad_value=1e3), _inputs(length=T + 6),
                _inputs(length=T + 6, pad_value=-50.0)):
    got = run(variables, other)
    np.testing.assert_allclose(_real(got['none']), _real(expected['none']), rtol=1e-6,
                               atol=1e-6)
    for pool in POOLS[1:]:
      np.testing.assert_allclose(got[pool], expected[pool], rtol=1e-6, atol=1e-6, err_msg=pool)


def test_directions_see_the_right_context():
  """Forward features at t depend on tokens <= t only; the backward half on tokens >= t.
  (One layer: a second bilstm layer's forward direction reads the first layer's backward states.)
  """
  inputs = _inputs()
  changed = dict(inputs, features=inputs['features'].at[1, 4].add(1.0))  # row 1, token 4
  for name in ('lstm', 'bilstm'):
    variables = _first_layer(_variables(name))
    a = np.asarray(_jitted(name, num_layers=1)(variables, inputs)['none'])[1]
    b = np.asarray(_jitted(name, num_layers=1)(variables, changed)['none'])[1]
    np.testing.assert_array_equal(a[:4, :H], b[:4, :H])  # forward, before the change
    assert np.all(np.abs(a[4:, :H] - b[4:, :H]).max(-1) > 0)  # forward, from it on
    if name == 'bilstm':
      assert np.all(np.abs(a[:5, H:] - b[:5, H:]).max(-1) > 0)  # backward, up to it
      np.testing.assert_array_equal(a[5:, H:], b[5:, H:])  # backward, after it


def test_bilstm_last_pool_is_both_directions_final_states():
  inputs = _inputs()
  variables = _variables('bilstm')
  out = _jitted('bilstm', pools=POOLS)(variables, inputs)
  features, last = np.asarray(out['none']), np.asarray(out['last'])
  np.testing.assert_allclose(last[:, :H], features[np.arange(B), LENGTHS - 1, :H], rtol=1e-6)
  np.testing.assert_allclose(last[:, H:], features[:, 0, H:], rtol=1e-6)


@pytest.mark.parametrize('name', ['lstm', 'bilstm'])
def test_stacked_one_layer_blocks_equal_a_two_layer_encoder(name):
  """The hierarchical architectures' building block: num_layers=1 blocks that take and return
  {'features', 'mask'} compose into the deeper encoder."""
  inputs = _inputs()
  variables = _variables(name)['params']
  block = _jitted(name, num_layers=1, return_mask=True)
  directions = ('forward', 'backward') if name == 'bilstm' else ('forward',)
  out = inputs
  for layer in range(2):
    params = {f'{d}_0': variables[f'{d}_{layer}'] for d in directions}
    out = block({'params': params}, out)['none']
  np.testing.assert_allclose(out['features'], _jitted(name)({'params': variables}, inputs)['none'],
                             rtol=1e-6, atol=1e-6)


def test_dropout_between_layers_only_in_training():
  inputs = _inputs()
  variables = _variables('bilstm')
  encoder = _encoder('bilstm', num_layers=2, dropout=0.5)
  eval_out = _jitted('bilstm', dropout=0.5)(variables, inputs)['none']
  np.testing.assert_array_equal(eval_out, _jitted('bilstm')(variables, inputs)['none'])
  train_out = jax.jit(functools.partial(encoder.apply, train=True))(
      variables, inputs, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(_real(train_out), _real(eval_out))
  np.testing.assert_array_equal(np.asarray(train_out)[~np.asarray(inputs['mask'])], 0)


def test_bad_options_are_user_errors():
  inputs = _inputs()
  with pytest.raises(UserError, match='unknown pool'):
    _encoder('lstm', pool='sum').init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(UserError, match='pool="none"'):
    _encoder('lstm', pool='mean', return_mask=True).init(jax.random.PRNGKey(0), inputs)
  with pytest.raises(UserError, match=r'\[batch, time, dim\]'):
    _encoder('lstm').init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
  with pytest.raises(UserError, match='its options are'):
    models.make_encoder('bilstm', {'bidirectional': False})


def test_char_ngrams_share_affixes_and_ignore_padding():
  chars = token_inputs.char_codes(['walking', 'talking', 'walked', 'Walk', ''], max_chars=8)
  ids, valid = (np.asarray(a) for a in token_inputs.char_ngram_ids(chars, (3, 4), 1 << 20))
  grams = [set(ids[i][valid[i]].tolist()) for i in range(len(chars))]
  # '<walking>': 7 trigram and 6 four-gram windows inside the word wrapped in markers.
  assert valid[0].sum() == 7 + 6
  shared = grams[0] & grams[1]  # 'alk', 'lki', 'kin', 'ing', 'ng>', 'alki', 'lkin', 'king', 'ing>'
  assert len(shared) == 9, len(shared)
  assert len(grams[0] & grams[2]) == 5  # '<wa', 'wal', 'alk', '<wal', 'walk'
  assert len(grams[0] & grams[3]) == 1  # only 'alk': case matters ('<Wa', 'Wal', 'Walk')
  assert valid[4].sum() == 0  # an empty word ('<>') has no 3- or 4-gram
  # Truncation keeps both ends of a long word.
  long = token_inputs.char_codes(['internationalization'], max_chars=8)[0]
  assert ''.join(map(chr, long)) == 'intetion'


def test_token_embedding_output_and_word_dropout():
  tokens = np.array([[2, 3, 4, 0], [5, 6, 0, 0]])
  mask = tokens > 0
  chars = np.stack([token_inputs.char_codes(['a', 'bb', 'ccc', ''], 4)] * 2)
  layer = token_inputs.TokenEmbedding(vocab_size=10, embed_dim=3, char_buckets=64,
                                      char_embed_dim=2, word_dropout=0.5)
  inputs = {'tokens': tokens, 'mask': mask, 'chars': chars}
  variables = jax.jit(layer.init)(jax.random.PRNGKey(0), inputs)
  apply = jax.jit(layer.apply, static_argnames='train')
  out = apply(variables, inputs)
  assert out['features'].shape == (2, 4, 5)
  np.testing.assert_array_equal(out['mask'], mask)
  assert np.all(np.asarray(out['features'])[~mask] == 0)
  # Training drops words to unk_id (1): some real tokens become exactly the unk embedding.
  dropped = apply(variables, inputs, train=True, rngs={'dropout': jax.random.key(3)})
  unk = np.asarray(variables['params']['words']['embedding'][1])
  is_unk = np.all(np.asarray(dropped['features'])[..., :3] == unk, -1)
  assert is_unk[mask].any() and not is_unk[~mask].any()
  with pytest.raises(UserError, match='chars'):
    layer.apply(variables, {'tokens': tokens, 'mask': mask})


# A toy tagging problem with two token-level tasks. Words are stem + suffix; 'suffix' tags a word
# by its own suffix (characters suffice), 'next' by the following word's suffix (needs the
# backward direction). Evaluation sentences use only unseen stems: their words are all unk_id, so
# only the character n-grams can tag them.
SUFFIXES = ('ing', 'ed', 'ly', 's')
TAG_TASKS = (Task('suffix', 'multiclass', len(SUFFIXES)),
             Task('next', 'multiclass', len(SUFFIXES) + 1))
MAX_LEN, MAX_CHARS = 8, 10


def _stems(rng, count):
  letters = np.array(list('bcdfghjkmnprstvwz'))
  vowels = np.array(list('aeiou'))
  return sorted({''.join([rng.choice(letters), rng.choice(vowels), rng.choice(letters)])
                 for _ in range(count)})


def _tagging_batch(rng, stems, vocab, size):
  tokens = np.zeros((size, MAX_LEN), np.int32)
  chars = np.zeros((size, MAX_LEN, MAX_CHARS), np.int32)
  labels = {t.name: np.zeros((size, MAX_LEN), np.int32) for t in TAG_TASKS}
  mask = np.zeros((size, MAX_LEN), bool)
  for i in range(size):
    n = rng.integers(3, MAX_LEN + 1)
    suffix = rng.integers(0, len(SUFFIXES), n)
    words = [stems[rng.integers(len(stems))] + SUFFIXES[s] for s in suffix]
    tokens[i, :n] = [vocab.get(w, 1) for w in words]
    chars[i, :n] = token_inputs.char_codes(words, MAX_CHARS)
    labels['suffix'][i, :n] = suffix
    labels['next'][i, :n] = np.append(suffix[1:], len(SUFFIXES))
    # Garbage labels under the mask: the loss must ignore them.
    labels['suffix'][i, n:] = 99
    mask[i, :n] = True
  return {'inputs': {'tokens': tokens, 'mask': mask, 'chars': chars}, 'labels': labels,
          'label_mask': {t.name: mask for t in TAG_TASKS}}


def _tagging_data():
  rng = np.random.default_rng(0)
  stems = _stems(rng, 60)
  train_stems, test_stems = stems[:len(stems) * 3 // 4], stems[len(stems) * 3 // 4:]
  vocab = {s + x: i + 2 for i, (s, x) in enumerate((s, x) for s in train_stems for x in SUFFIXES)}
  return (_tagging_batch(rng, train_stems, vocab, 128),
          _tagging_batch(rng, test_stems, vocab, 64), len(vocab) + 2)


def _tagger(vocab_size, char_buckets):
  layer = token_inputs.TokenEmbedding(vocab_size, embed_dim=16, char_buckets=char_buckets,
                                      char_embed_dim=16, char_ngrams=(2, 3, 4), word_dropout=0.5)
  return models.build('hard', TAG_TASKS, layer, 'bilstm', {'hidden_size': 16})


def _train(model, tasks, batch, steps, lr=3e-2, method='ew', mode='weighted'):
  """The real step, jitted on the 8-device mesh; asserts it is traced once for all the steps."""
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  method, tx = optim.get(method, num_tasks=len(tasks)), optax.adam(lr)
  step = step_lib.make_train_step(model, tasks, method, tx, mode)
  traces = []

  def counted(state, batch):
    traces.append(None)
    return step(state, batch)

  train_step = sharding.jit_train_step(counted, mesh)
  # Jitted as in the training loop: eagerly, each Linen RNN call compiles its scan anew.
  state = jax.jit(lambda rng: step_lib.create_state(model, method, tx, rng, batch['inputs']),
                  out_shardings=sharding.replicated(mesh))(jax.random.PRNGKey(0))
  device_batch = sharding.put_batch(batch, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, device_batch)
    losses.append(np.asarray(metrics['losses']))
  assert len(traces) == 1, 'the jitted step was traced again'
  return state, np.array(losses)


def _accuracy(outputs, batch, name):
  logits, mask = np.asarray(outputs[name]), batch['label_mask'][name]
  return float(np.mean(logits.argmax(-1)[mask] == batch['labels'][name][mask]))


def test_tagger_trains_with_token_level_labels_and_tags_unseen_words():
  train, test, vocab_size = _tagging_data()
  model = _tagger(vocab_size, char_buckets=4096)
  state, losses = _train(model, TAG_TASKS, train, steps=60)
  assert np.all(np.isfinite(losses)) and int(state.skipped_steps) == 0
  assert np.all(losses[-1] < 0.1 * losses[0]), (losses[0], losses[-1])
  predict = jax.jit(model.apply)
  outputs = predict(state.variables, test['inputs'])
  assert outputs['suffix'].shape == (64, MAX_LEN, len(SUFFIXES))  # Head on per-token features
  assert np.all(test['inputs']['tokens'][test['inputs']['mask']] == 1)  # every word unseen
  assert _accuracy(outputs, test, 'suffix') > 0.95
  assert _accuracy(outputs, test, 'next') > 0.9
  # The characters are what tags them: without, every unseen word is the same vector.
  no_chars = dict(test['inputs'], chars=np.zeros_like(test['inputs']['chars']))
  blind = predict(state.variables, no_chars)
  assert _accuracy(blind, test, 'suffix') < 0.5


def test_tagger_trains_in_rep_mode_at_the_per_token_representation():
  """"rep" differentiates each task's loss at z = the trunk's [B, T, 2H] output."""
  train, _, vocab_size = _tagging_data()
  model = _tagger(vocab_size, char_buckets=256)
  state, losses = _train(model, TAG_TASKS, train, steps=20, method='mgda', mode='rep')
  arch_checks.check_partition(model, state.variables, [t.name for t in TAG_TASKS])
  assert np.all(np.isfinite(losses)) and int(state.skipped_steps) == 0
  assert np.all(losses[-1] < 0.5 * losses[0]), (losses[0], losses[-1])


def test_jitted_apply_is_traced_once():
  inputs = _inputs()
  encoder = _encoder('bilstm', num_layers=2)
  variables = _variables('bilstm')
  traces = []

  def apply(variables, inputs):
    traces.append(None)
    return encoder.apply(variables, inputs)

  apply = jax.jit(apply)
  first = apply(variables, inputs)
  second = apply(variables, _inputs(seed=1))
  assert len(traces) == 1
  assert not np.allclose(first, second)
