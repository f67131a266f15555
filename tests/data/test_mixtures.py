"""Mixtures: rate formulas, empirical sampling rates, label masks, determinism, exact resume,
per-process slices, input checks, carved splits, class weights, and a mixture in the trainer."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import data
from tests.helpers import assert_same_batches, take
from mtl_jax import tasks as tasks_lib
from mtl_jax.data import mixtures as mx
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.tasks import Task

TASK_A = Task('a', 'binary')
TASK_B = Task('b', 'regression')
TASK_C = Task('c', 'multiclass', num_outputs=3)
SPEC = data.DatasetSpec(name='toy', builder_cls=None, tasks=(TASK_A, TASK_B, TASK_C),
                        input_keys=('x', 'ids', 'src'))


def member_columns(n, src, seed, x_dim=3, x_dtype=np.float32):
  """A member's columns: inputs x, ids (the row), src (the member); every task's label column
  (-1 / NaN where the member does not label it, so that only the member's tasks appear)."""
  rng = np.random.default_rng(seed)
  return {
      'x': rng.normal(size=(n, x_dim)).astype(x_dtype),
      'ids': np.arange(n, dtype=np.int64),
      'src': np.full(n, src, np.int32),
      'a': rng.integers(0, 2, n), 'b': rng.normal(size=n), 'c': rng.integers(0, 3, n),
  }


def members(sizes=(300, 700, 2000)):
  """Member 0 labels a; member 1 labels b; member 2 labels a and c."""
  own = [(TASK_A,), (TASK_B,), (TASK_A, TASK_C)]
  return [mx.LoadedMember(f'm{k}', SPEC, own[k], member_columns(n, k, seed=k))
          for k, n in enumerate(sizes)]


ALL_TASKS = (TASK_A, TASK_B, TASK_C)


def iterator(loaded, rate, batch_size=64, seed=0, **kwargs):
  return mx.train_iterator(loaded, ALL_TASKS, batch_size, seed, rate, **kwargs)


def within_binomial(count, trials, p, sigmas=4.0):
  """|count - n p| <= 4 sqrt(n p (1 - p)): a false alarm has probability ~6e-5 per check."""
  return abs(count - trials * p) <= sigmas * np.sqrt(trials * p * (1 - p))


# ---------------------------------------------------------------------------------------------
# Rate formulas.


def test_equal_and_proportional_rates():
  np.testing.assert_allclose(mx.make_rate('equal', [5, 10, 85])(7), [1 / 3] * 3)
  np.testing.assert_allclose(mx.make_rate('proportional', [5, 10, 85])(7), [0.05, 0.10, 0.85])


def test_temperature_rate_formula_with_scale_and_cap():
  sizes = [10, 1000, 100_000]
  rate = mx.make_rate('temperature', sizes, temperature=2.0, scale=3.0, cap=6000)
  expected = np.sqrt([30.0, 3000.0, 6000.0])
  np.testing.assert_allclose(rate(0), expected / expected.sum(), rtol=1e-12)


def test_temperature_one_is_proportional_and_large_t_is_equal():
  sizes = [10, 1000, 100_000]
  np.testing.assert_allclose(mx.make_rate('temperature', sizes, temperature=1.0)(0),
                             mx.make_rate('proportional', sizes)(0), rtol=1e-12)
  # r_k ∝ N_k^(1/T): at T = 1e6 the ratio of largest to smallest is 1e4^(1e-6) - 1 ~ 9.2e-6.
  flat = mx.make_rate('temperature', sizes, temperature=1e6)(0)
  np.testing.assert_allclose(flat, [1 / 3] * 3, rtol=2e-5)
  assert flat[0] < flat[1] < flat[2]  # still ordered: not equal by construction


def test_annealed_rate_at_start_middle_and_end_matches_the_formula():
  sizes = np.array([100.0, 900.0, 9000.0])
  num_steps, epochs = 100, 5  # Epoch e covers batches 20 (e - 1) .. 20 e - 1.
  rate = mx.make_rate('annealed', sizes, num_steps, num_epochs=epochs)

  def formula(epoch):
    alpha = 1 - 0.8 * (epoch - 1) / (epochs - 1)
    weights = sizes ** alpha
    return weights / weights.sum()

  for step, epoch in [(0, 1), (19, 1), (20, 2), (50, 3), (79, 4), (80, 5), (99, 5), (150, 5)]:
    np.testing.assert_allclose(rate(step), formula(epoch), rtol=1e-12, err_msg=str(step))
  np.testing.assert_allclose(rate(0), sizes / sizes.sum(), rtol=1e-12)  # α = 1: proportional
  np.testing.assert_allclose(rate(99), sizes ** 0.2 / (sizes ** 0.2).sum(), rtol=1e-12)
  np.testing.assert_allclose(mx.make_rate('annealed', sizes, 10, num_epochs=1)(9),
                             sizes / sizes.sum(), rtol=1e-12)


@pytest.mark.parametrize('name,kwargs,message', [
    ('nope', {}, "unknown mixture rate 'nope'; valid mixture rate names: annealed, equal, "
                 "proportional, temperature"),
    ('temperature', {'temperature': 0.0}, 'temperature > 0'),
    ('temperature', {'tau': 2.0}, "bad options.*options are: temperature, scale, cap"),
    ('annealed', {}, 'num_epochs'),
    ('proportional', {}, None),
])
def test_rate_errors_are_clear(name, kwargs, message):
  if message is None:
    with pytest.raises(UserError, match='at least one training example'):
      mx.make_rate(name, [10, 0])
    return
  with pytest.raises(UserError, match=message):
    mx.make_rate(name, [10, 20], 100, **kwargs)


# ---------------------------------------------------------------------------------------------
# Sampling.


@pytest.mark.parametrize('rate_name', ['equal', 'proportional'])
def test_empirical_member_rates_match_the_requested_ones(rate_name):
  loaded = members()
  sizes = [data.num_rows(m.columns) for m in loaded]
  rate = mx.make_rate(rate_name, sizes)
  batches, batch_size = 400, 64
  counts = np.zeros(3, np.int64)
  for batch in take(iterator(loaded, rate, batch_size), batches):
    counts += np.bincount(batch['inputs']['src'], minlength=3)
  for k in range(3):
    assert within_binomial(counts[k], batches * batch_size, rate(0)[k]), (counts, rate(0))


def test_empirical_rates_per_batch_mode():
  loaded = members()
  rate = mx.make_rate('temperature', [300, 700, 2000], temperature=2.0)
  batches = 1500
  counts = np.zeros(3, np.int64)
  for batch in take(iterator(loaded, rate, 16, per_batch=True), batches):
    src = batch['inputs']['src']
    assert np.all(src == src[0])  # one member fills the whole batch
    counts[src[0]] += 1
  for k in range(3):
    assert within_binomial(counts[k], batches, rate(0)[k]), (counts, rate(0))


def test_empirical_annealed_rates_follow_the_epochs():
  sizes = [300, 700, 2000]
  num_steps, epochs, batch_size = 300, 3, 64
  rate = mx.make_rate('annealed', sizes, num_steps, num_epochs=epochs)
  batches = take(iterator(members(sizes), rate, batch_size), num_steps)
  per_epoch = num_steps // epochs
  for e in range(epochs):
    src = np.concatenate([b['inputs']['src'] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
    expected = rate(e * per_epoch)
    for k in range(3):
      assert within_binomial((src == k).sum(), len(src), expected[k]), (e, k, expected)
  # The epochs differ by far more than the tolerance: the test can tell them apart.
  assert abs(rate(0)[0] - rate(num_steps - 1)[0]) > 0.1


def test_label_masks_mark_exactly_the_sampled_members_tasks():
  loaded = members()
  rate = mx.make_rate('equal', [300, 700, 2000])
  for batch in take(iterator(loaded, rate, 64), 20):
    src, ids = batch['inputs']['src'], batch['inputs']['ids']
    mask = batch['label_mask']
    np.testing.assert_array_equal(mask['a'], (src == 0) | (src == 2))
    np.testing.assert_array_equal(mask['b'], src == 1)
    np.testing.assert_array_equal(mask['c'], src == 2)
    for k, m in enumerate(loaded):  # every label and input comes from the sampled member's row
      rows = ids[src == k]
      np.testing.assert_array_equal(batch['inputs']['x'][src == k], m.columns['x'][rows])
      for task in m.tasks:
        np.testing.assert_array_equal(batch['labels'][task.name][src == k],
                                      m.columns[task.name][rows].astype(
                                          batch['labels'][task.name].dtype))
    # Unlabelled slots are zeros.
    assert np.all(batch['labels']['b'][src != 1] == 0)
    assert batch['labels']['a'].dtype == np.int32 and batch['labels']['b'].dtype == np.float32


def test_each_member_is_read_once_per_member_epoch():
  ds = mx.MixtureIndexBatches([30, 70], 8, mx.make_rate('equal', [30, 70]), seed=3)
  rows = {0: [], 1: []}
  for i in range(60):
    element = ds[i]
    for k in (0, 1):
      rows[k].extend(element['row'][element['member'] == k])
  for k, n in ((0, 30), (1, 70)):
    assert len(rows[k]) >= 2 * n
    for epoch in range(2):  # consecutive blocks of N_k draws are permutations of the rows
      assert sorted(rows[k][epoch * n:(epoch + 1) * n]) == list(range(n))


def test_same_seed_same_batches_other_seed_other_batches():
  rate = mx.make_rate('proportional', [300, 700, 2000])
  assert_same_batches(take(iterator(members(), rate, seed=5), 10),
                      take(iterator(members(), rate, seed=5), 10))
  a = take(iterator(members(), rate, seed=5), 3)
  b = take(iterator(members(), rate, seed=6), 3)
  assert not np.array_equal(a[0]['inputs']['src'], b[0]['inputs']['src'])


@pytest.mark.parametrize('rate_name,kwargs,stop', [
    ('proportional', {}, 7),
    ('annealed', {'num_epochs': 4}, 9),  # epochs of 5 batches: resumes across two boundaries
    ('annealed', {'num_epochs': 4}, 10),  # exactly at a boundary
])
def test_get_state_set_state_resumes_exactly(rate_name, kwargs, stop):
  rate = mx.make_rate(rate_name, [300, 700, 2000], 20, **kwargs)
  whole = take(iterator(members(), rate), 20)
  it = iterator(members(), rate)
  take(it, stop)
  state = it.get_state()
  take(it, 3)  # moving on does not change what the saved state resumes to
  resumed = iterator(members(), rate)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 20 - stop), whole[stop:])


def test_resume_far_away_replays_the_counts():
  """A fresh iterator set to batch 1500 (past a cached block of running counts) gives what an
  uninterrupted one gives there; and going back to an earlier position works too."""
  rate = mx.make_rate('proportional', [30, 70, 200])
  small = members((30, 70, 200))
  it = iterator(small, rate, batch_size=8)
  whole = take(it, 1510)
  state = it.get_state()
  state_1500 = dict(state, next_index=1500) if 'next_index' in state else None
  assert state_1500 is not None, state
  fresh = iterator(members((30, 70, 200)), rate, batch_size=8)
  fresh.set_state(state_1500)
  assert_same_batches(take(fresh, 10), whole[1500:])
  fresh.set_state(dict(state, next_index=1200))  # back: from the cached counts at 1024
  assert_same_batches(take(fresh, 3), whole[1200:1203])
  fresh.set_state(dict(state, next_index=3))
  assert_same_batches(take(fresh, 2), whole[3:5])


def test_threaded_reading_gives_the_same_batches():
  import grain
  rate = mx.make_rate('proportional', [300, 700, 2000])
  threaded = iterator(members(), rate, read_options=grain.ReadOptions(num_threads=4,
                                                                       prefetch_buffer_size=8))
  assert_same_batches(take(threaded, 30), take(iterator(members(), rate), 30))


@pytest.mark.parametrize('per_batch', [False, True])
def test_two_process_slices_concatenate_to_the_one_process_batch(per_batch):
  rate = mx.make_rate('temperature', [300, 700, 2000], temperature=3.0)
  one = take(iterator(members(), rate, per_batch=per_batch), 12)
  parts = [take(iterator(members(), rate, process_index=i, process_count=2,
                         per_batch=per_batch), 12) for i in range(2)]
  joined = [jax.tree.map(lambda x, y: np.concatenate([x, y]), p0, p1)
            for p0, p1 in zip(*parts)]
  assert_same_batches(joined, one)
  assert len(parts[0][0]['inputs']['src']) == 32


def test_orbax_checkpoint_of_the_mixture_iterator_resumes(tmp_path):
  from mtl_jax.train import checkpoint as checkpoint_lib
  rate = mx.make_rate('annealed', [300, 700, 2000], 12, num_epochs=3)
  whole = take(iterator(members(), rate), 12)
  it = iterator(members(), rate)
  take(it, 5)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 'm', True)
  ckpt.save(5, {'w': np.zeros(1, np.float32)}, it, {}, {'m': 1.0})
  fresh = iterator(members(), rate)
  _, restored, _ = ckpt.restore(5, {'w': jax.ShapeDtypeStruct((1,), np.float32)}, fresh)
  assert_same_batches(take(restored, 7), whole[5:])
  ckpt.close()


@pytest.mark.parametrize('change,message', [
    (dict(x_dim=4), "member 'm1': input feature 'x' is float32 with per-example shape \\[4\\], "
                    "member 'm0' has float32 \\[3\\]"),
    (dict(x_dtype=np.int32), "member 'm1': input feature 'x' is int32"),
    ('drop_src', "member 'm1' has no input feature 'src'"),
])
def test_mismatching_members_give_a_clear_error(change, message):
  loaded = members((300, 700))
  if change == 'drop_src':
    spec = data.DatasetSpec(name='toy2', builder_cls=None, tasks=SPEC.tasks,
                            input_keys=('x', 'ids'))
    loaded[1] = mx.LoadedMember('m1', spec, (TASK_B,), loaded[1].columns)
  else:
    loaded[1] = mx.LoadedMember('m1', SPEC, (TASK_B,), member_columns(700, 1, 1, **change))
  with pytest.raises(UserError, match=message):
    iterator(loaded, mx.make_rate('equal', [300, 700]))


def test_registering_a_bad_mixture_is_a_clear_error():
  with pytest.raises(UnknownNameError, match="member 'x': dataset 'census_income' has no task "
                                             "'nope'"):
    mx.register('bad_mix', [mx.Member('x', 'census_income', ('nope',))])
  with pytest.raises(UnknownNameError, match='valid dataset names'):
    mx.register('bad_mix', [mx.Member('x', 'no_such_dataset', ('a',))])
  with pytest.raises(UserError, match="no 'test' split"):
    mx.register('bad_mix', [mx.Member('x', 'census_income', ('income',),
                                      {'train': 'train', 'validation': 'validation'})])
  with pytest.raises(UnknownNameError, match="valid mixture names: census_income_split"):
    mx.get('bad_mix')


# ---------------------------------------------------------------------------------------------
# Carved splits.


def test_carve_is_deterministic_disjoint_and_sized_by_rounding():
  parts = mx.carve_indices(1001, {'train': 0.8, 'validation': 0.1, 'test': 0.1}, seed=7)
  assert [len(parts[k]) for k in ('train', 'validation', 'test')] == [801, 100, 100]
  joined = np.concatenate(list(parts.values()))
  assert sorted(joined.tolist()) == list(range(1001))
  again = mx.carve_indices(1001, {'train': 0.8, 'validation': 0.1, 'test': 0.1}, seed=7)
  for key in parts:
    np.testing.assert_array_equal(parts[key], again[key])
    assert np.all(np.diff(parts[key]) > 0)  # stored order kept
  other = mx.carve_indices(1001, {'train': 0.8, 'validation': 0.1, 'test': 0.1}, seed=8)
  assert not np.array_equal(parts['test'], other['test'])
  # The first part of a cut does not depend on how the rest is cut.
  head = mx.carve_indices(1001, [('train', 0.8), ('rest', 0.2)], seed=7)
  np.testing.assert_array_equal(head['train'], parts['train'])
  columns = {'v': np.arange(1001) * 10}
  np.testing.assert_array_equal(mx.carve(columns, {'a': 0.5, 'b': 0.5}, 7)['a']['v'],
                                mx.carve_indices(1001, {'a': 0.5, 'b': 0.5}, 7)['a'] * 10)
  with pytest.raises(UserError, match='sum to 1.2'):
    mx.carve_indices(10, {'a': 0.6, 'b': 0.6}, 0)


# ---------------------------------------------------------------------------------------------
# Class weights.


def test_class_weighted_binary_loss_is_the_hand_computed_weighted_mean():
  task = Task('y', 'binary', class_weights=(1.0, 3.0))
  logits = np.array([0.5, -1.0, 2.0, 0.0, 1.5], np.float32)
  labels = np.array([1, 0, 1, 0, 1], np.int32)
  mask = np.array([True, True, True, True, False])
  # Hand: l_i = -log sigmoid(z) for y = 1, -log(1 - sigmoid(z)) for y = 0; weights 3, 1, 3, 1.
  z = logits.astype(np.float64)
  per = np.where(labels == 1, np.log1p(np.exp(-z)), np.log1p(np.exp(z)))
  w = np.array([3.0, 1.0, 3.0, 1.0, 0.0])
  expected = (w * per).sum() / w.sum()
  got = float(task.loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  unweighted = float(Task('y', 'binary').loss(jnp.asarray(logits), jnp.asarray(labels),
                                              jnp.asarray(mask)))
  np.testing.assert_allclose(unweighted, per[:4].mean(), rtol=1e-6)
  assert abs(got - unweighted) > 1e-3


def test_class_weighted_multiclass_loss_and_balanced_weights():
  labels = np.array([0, 0, 0, 1, 2, 2, -1])
  (task,) = tasks_lib.with_class_weights([Task('y', 'multiclass', num_outputs=3)],
                                         {'y': 'balanced'}, {'y': [labels[:4], labels[4:]]})
  # n = 6 labelled, C = 3, counts 3, 1, 2: w_c = 6 / (3 n_c).
  np.testing.assert_allclose(task.class_weights, [6 / 9, 6 / 3, 6 / 6])
  logits = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  y = labels[:6]
  log_p = logits - np.log(np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
  per = -log_p[np.arange(6), y]
  w = np.array(task.class_weights)[y]
  got = float(task.loss(jnp.asarray(logits), jnp.asarray(y), None))
  np.testing.assert_allclose(got, (w * per).sum() / w.sum(), rtol=1e-6)


def test_class_weight_errors():
  with pytest.raises(UserError, match='2 positive numbers'):
    Task('y', 'binary', class_weights=(1.0,))
  with pytest.raises(UserError, match='binary or multiclass'):
    Task('y', 'regression', class_weights=(1.0, 2.0))
  with pytest.raises(UnknownNameError, match="unknown task 'z'"):
    tasks_lib.with_class_weights([Task('y', 'binary')], {'z': 'balanced'}, {})
  with pytest.raises(UserError, match='class 1 never occurs'):
    tasks_lib.with_class_weights([Task('y', 'binary')], {'y': 'balanced'}, {'y': [np.zeros(5)]})
  with pytest.raises(UserError, match="use 'balanced'"):
    tasks_lib.with_class_weights([Task('y', 'binary')], {'y': 'auto'}, {'y': [np.zeros(5)]})
  with pytest.raises(UserError, match="use 'balanced'"):
    tasks_lib.with_class_weights([Task('y', 'binary')], {'y': 2.0}, {'y': [np.zeros(5)]})
  (explicit,) = tasks_lib.with_class_weights([Task('y', 'binary')], {'y': [1, 4]}, {})
  assert explicit.class_weights == (1.0, 4.0)


# ---------------------------------------------------------------------------------------------
# The registered census mixture, and a mixture in the trainer.


def test_census_income_split_halves_are_disjoint_and_partially_labelled(census_builder,
                                                                        census_columns):
  mixture = mx.get('census_income_split')
  loader = lambda dataset, split: (census_builder, census_columns[split])
  loaded = [mx.load_member(m, 'train', loader)[1] for m in mixture.members]
  ids = [set(m.columns['row_id'].tolist()) for m in loaded]
  assert not ids[0] & ids[1]
  assert ids[0] | ids[1] == set(census_columns['train']['row_id'].tolist())
  assert [t.name for t in loaded[0].tasks] == ['income']
  assert [t.name for t in loaded[1].tasks] == ['never_married']
  rate = mx.make_rate(mixture.rate, [data.num_rows(m.columns) for m in loaded])
  batch = next(mx.train_iterator(loaded, mixture.tasks(), 256, 0, rate))
  # Each example has exactly one of the two labels (neither task has missing labels).
  np.testing.assert_array_equal(batch['label_mask']['income'],
                                ~batch['label_mask']['never_married'])
  assert within_binomial(batch['label_mask']['income'].sum(), 256, 0.5)


def _tiny_mixture_config(census_dir, **extra):
  from tests.train.test_loop import tiny_config
  return tiny_config(census_dir, **{'dataset': 'census_income_split', 'num_train_steps': 30,
                                    'keep_best': 5, **extra})


@pytest.mark.slow
def test_mixture_trains_evaluates_and_resumes_bitwise(tmp_path, census_builder, census_dir):
  from mtl_jax import train
  from tests.train.test_loop import final_state
  config = _tiny_mixture_config(census_dir, class_weights={'income': 'balanced'})
  config.mixture = {'rate': 'annealed', 'rate_kwargs': {'num_epochs': 3}}
  complete = tmp_path / 'complete'
  final = train.train_and_evaluate(config, str(complete))
  for key in ('val/income/auc', 'val/never_married/auc', 'test/income/auc',
              'test/never_married/auc', 'test/avg/auc'):
    assert key in final, key
  assert final['test/never_married/auc'] > 0.7  # untrained: ~0.5
  # Interrupted after step 10 (the checkpoints after it removed): resumes and ends bitwise equal.
  interrupted = tmp_path / 'interrupted'
  shutil.copytree(complete, interrupted)
  for step in ('20', '30'):
    shutil.rmtree(interrupted / 'checkpoints' / step)
  os.remove(interrupted / 'final_metrics.json')
  train.train_and_evaluate(config, str(interrupted))
  step_a, state_a = final_state(complete)
  step_b, state_b = final_state(interrupted)
  assert step_a == step_b == 30
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  with open(interrupted / 'final_metrics.json') as f:
    resumed = json.load(f)
  assert resumed['test/income/auc'] == final['test/income/auc']


def test_mixture_config_errors(census_builder, census_dir):
  from mtl_jax.train import loop
  with pytest.raises(UserError, match='config.mixture has unknown option'):
    config = _tiny_mixture_config(census_dir)
    config.mixture = {'rates': 'equal'}
    loop.setup(config)
  with pytest.raises(UnknownNameError, match='valid mixture names: census_income_split'):
    loop.setup(_tiny_mixture_config(census_dir, dataset='nope'))
  config = _tiny_mixture_config(census_dir, tasks=('never_married',))
  s = loop.setup(config)  # the income half labels no selected task: left out
  assert [m.name for m in s.members['train']] == ['never_married_half']
