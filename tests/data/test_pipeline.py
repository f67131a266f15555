"""The generic pipeline: column checks, batch format, grain iterators (determinism, exact resume,
orbax checkpointing, per-process sharding), padded evaluation batches, reading tfds builders."""

import functools
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from mtl_jax import data
from tests.helpers import assert_same_batches, take
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.tasks import Task

TASKS = (Task('b', 'binary'), Task('c', 'multiclass', num_outputs=3),
         Task('m', 'multilabel', num_outputs=2), Task('r', 'regression'))
SPEC = data.DatasetSpec(name='toy', builder_cls=None, tasks=TASKS)


def make_columns(n=1000, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'ids': np.arange(n, dtype=np.int64),
      'x': rng.normal(size=(n, 3)).astype(np.float32),
      'nested': {'k': rng.integers(0, 5, n).astype(np.int32),
                 'f': rng.normal(size=n)},
      'b': rng.integers(0, 2, n),
      'c': rng.integers(0, 3, n),
      'm': rng.integers(0, 2, (n, 2)),
      'r': rng.normal(size=n),
  }


# ---------------------------------------------------------------------------------------------
# check_columns and to_batch.


def test_check_columns_accepts_valid_data_and_missing_labels():
  columns = make_columns()
  columns['b'][:10] = -1
  columns['c'][:10] = -1
  columns['m'][:10] = -1
  columns['r'][:10] = np.nan
  data.check_columns(columns, TASKS, 'train')


@pytest.mark.parametrize('task,value', [('b', 2), ('c', 3), ('c', -2), ('m', 7), ('r', np.inf)])
def test_check_columns_rejects_bad_labels_naming_task_and_split(task, value):
  columns = make_columns()
  columns[task][17] = value
  with pytest.raises(UserError, match=f"task '{task}'.*split 'validation'"):
    data.check_columns(columns, TASKS, 'validation')


def test_check_columns_rejects_partly_missing_multilabel_row():
  columns = make_columns()
  columns['m'][3] = [-1, 1]
  with pytest.raises(UserError, match="task 'm'"):
    data.check_columns(columns, TASKS, 'train')


@pytest.mark.parametrize('feature,path', [('x', 'x'), ('f', 'nested/f')])
def test_check_columns_rejects_nan_features_naming_feature_and_split(feature, path):
  columns = make_columns()
  if feature == 'x':
    columns['x'][5, 1] = np.nan
  else:
    columns['nested']['f'][9] = np.nan
  row = 5 if feature == 'x' else 9
  with pytest.raises(UserError, match=f"feature '{path}'.*split 'test'.*row {row}"):
    data.check_columns(columns, TASKS, 'test')


def test_check_columns_missing_label_column_and_ragged_columns():
  columns = make_columns()
  del columns['c']
  with pytest.raises(UserError, match="task 'c'.*split 'train'"):
    data.check_columns(columns, TASKS, 'train')
  columns = make_columns()
  columns['x'] = columns['x'][:-1]
  with pytest.raises(UserError, match='different numbers of rows'):
    data.check_columns(columns, TASKS, 'train')


def test_to_batch_format_and_missing_labels():
  rows = data.gather(make_columns(), np.arange(8))
  rows['b'][1] = -1
  rows['c'][2] = -1
  rows['m'][3] = -1
  rows['r'][4] = np.nan
  batch = SPEC.to_batch(rows)
  assert set(batch) == {'inputs', 'labels', 'label_mask'}
  assert set(batch['inputs']) == {'ids', 'x', 'nested'}
  assert batch['inputs']['ids'].dtype == np.int32  # 64-bit narrowed to what JAX uses.
  assert batch['inputs']['nested']['f'].dtype == np.float32
  assert batch['labels']['b'].dtype == np.int32 and batch['labels']['r'].dtype == np.float32
  assert batch['labels']['m'].shape == (8, 2)
  for name, row in (('b', 1), ('c', 2), ('m', 3), ('r', 4)):
    mask = batch['label_mask'][name]
    assert mask.dtype == bool and mask.shape == (8,)
    assert not mask[row] and mask.sum() == 7, name
    assert np.all(batch['labels'][name][row] == 0), name
  np.testing.assert_array_equal(batch['labels']['c'][[0, 1, 3]], rows['c'][[0, 1, 3]])
  # Only the requested tasks; explicit input keys.
  spec = data.DatasetSpec(name='toy', builder_cls=None, tasks=TASKS, input_keys=('x',))
  batch = spec.to_batch(rows, tasks=TASKS[:1])
  assert set(batch['inputs']) == {'x'} and set(batch['labels']) == {'b'}


# ---------------------------------------------------------------------------------------------
# train_iterator.


def test_train_iterator_yields_trainer_batches():
  it = data.train_iterator(make_columns(), 64, seed=0, transform=SPEC.to_batch)
  assert isinstance(it, grain.DatasetIterator)
  for batch in take(it, 20):  # Crosses an epoch boundary (1000 rows).
    assert batch['inputs']['x'].shape == (64, 3)
    assert batch['labels']['m'].shape == (64, 2)
    assert all(mask.shape == (64,) and mask.all() for mask in batch['label_mask'].values())


def test_train_iterator_determinism():
  columns = make_columns()
  a = take(data.train_iterator(columns, 100, seed=3), 25)
  b = take(data.train_iterator(columns, 100, seed=3), 25)
  c = take(data.train_iterator(columns, 100, seed=4), 25)
  assert_same_batches(a, b)
  assert not np.array_equal(a[0]['ids'], c[0]['ids'])
  # Rows stay rows: the gather takes every column at the same indices.
  np.testing.assert_array_equal(a[0]['x'], columns['x'][a[0]['ids']])
  np.testing.assert_array_equal(a[0]['nested']['k'], columns['nested']['k'][a[0]['ids']])


def test_train_iterator_epochs_are_reshuffled_permutations():
  ids = np.concatenate([b['ids'] for b in take(data.train_iterator(make_columns(), 100, 0), 20)])
  first, second = ids[:1000], ids[1000:]
  np.testing.assert_array_equal(np.sort(first), np.arange(1000))
  np.testing.assert_array_equal(np.sort(second), np.arange(1000))
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.arange(1000))


@pytest.mark.parametrize('skip', [0, 7, 13])
def test_train_iterator_resumes_exactly_from_state(skip):
  columns = make_columns()
  it = data.train_iterator(columns, 96, seed=11, transform=SPEC.to_batch)
  take(it, skip)
  state = it.get_state()
  expected = take(it, 9)  # 96 * (13 + 9) > 1000: crosses an epoch boundary.
  it2 = data.train_iterator(columns, 96, seed=11, transform=SPEC.to_batch)
  next(it2)  # Moved away first, so that set_state really has to rewind.
  it2.set_state(state)
  assert_same_batches(take(it2, 9), expected)


def test_train_iterator_orbax_checkpoint_roundtrip(tmp_path):
  columns = make_columns()
  it = data.train_iterator(columns, 50, seed=5, transform=SPEC.to_batch)
  take(it, 4)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = take(it, 30)

  it2 = data.train_iterator(columns, 50, seed=5, transform=SPEC.to_batch)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
    assert manager.latest_step() == 4
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  assert_same_batches(take(it2, 30), expected)


@pytest.mark.parametrize('n,batch_size,count', [(1000, 100, 2), (1000, 99, 3), (1001, 64, 4)])
def test_processes_see_disjoint_examples_forming_the_global_batch(n, batch_size, count):
  columns = make_columns(n)
  steps = n // batch_size  # Full global steps within the first epoch.
  global_batches = take(data.train_iterator(columns, batch_size, seed=2), steps)
  local = [take(data.train_iterator(columns, batch_size, 2, p, count), steps)
           for p in range(count)]
  seen = [np.concatenate([b['ids'] for b in batches]) for batches in local]
  for p in range(count):
    assert len(seen[p]) == steps * (batch_size // count)
    assert len(np.unique(seen[p])) == len(seen[p])
    for q in range(p + 1, count):
      assert not np.intersect1d(seen[p], seen[q]).size, (p, q)
  for step in range(steps):
    union = np.concatenate([local[p][step]['ids'] for p in range(count)])
    np.testing.assert_array_equal(np.sort(union), np.sort(global_batches[step]['ids']))


def test_train_iterator_argument_errors():
  columns = make_columns()
  with pytest.raises(UserError, match='multiple of the number of processes'):
    data.train_iterator(columns, 101, 0, 0, 2)
  with pytest.raises(UserError, match='process_index'):
    data.train_iterator(columns, 100, 0, 2, 2)
  with pytest.raises(UserError, match='seed'):
    data.train_iterator(columns, 100, -1)


# ---------------------------------------------------------------------------------------------
# eval_batches.


def test_eval_batches_cover_the_split_once_in_order_with_static_shapes():
  columns = make_columns(1000)
  batches = list(data.eval_batches(columns, 64))
  assert len(batches) == 16
  for rows, valid in batches:
    assert rows['x'].shape == (64, 3) and rows['nested']['k'].shape == (64,)
    assert valid.shape == (64,) and valid.dtype == bool
  valid = np.concatenate([v for _, v in batches])
  assert valid.sum() == 1000 and valid[:1000].all()
  ids = np.concatenate([rows['ids'][v] for rows, v in batches])
  np.testing.assert_array_equal(ids, np.arange(1000))
  # With the trainer's transform, padding rows are masked out of every task.
  last, valid = list(data.eval_batches(columns, 64, transform=SPEC.to_batch))[-1]
  assert last['inputs']['x'].shape == (64, 3)
  for mask in last['label_mask'].values():
    np.testing.assert_array_equal(mask, valid)
  assert valid.sum() == 1000 - 15 * 64
  first = data.first_rows(columns, 2)
  assert first['x'].shape == (2, 3) and first['nested']['k'].shape == (2,)


# ---------------------------------------------------------------------------------------------
# prepare / load_columns on a small nested builder.


class ToyNested(data.LocalBuilder):
  name = 'mtl_jax_test_toy_nested'
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'inputs': {'x': tfds.features.Tensor(shape=(2,), dtype=np.float32),
                   'k': tfds.features.Scalar(dtype=np.int64)},
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(40), 'test': self._generate_examples(7)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'inputs': {'x': np.array([i, -i], np.float32), 'k': i}, 'label': i % 3}


def test_load_columns_nested_and_split_errors(tmp_path, monkeypatch):
  monkeypatch.setattr(data.pipeline, '_READ_CHUNK', 16)  # Several chunks.
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  builder = data.prepare(ToyNested, None)  # No data_dir: $TFDS_DATA_DIR.
  assert str(builder.data_path).startswith(str(tmp_path))
  columns = data.load_columns(builder, 'train')
  assert set(columns) == {'inputs', 'label'} and set(columns['inputs']) == {'x', 'k'}
  assert columns['inputs']['x'].shape == (40, 2) and columns['inputs']['x'].dtype == np.float32
  order = np.argsort(columns['inputs']['k'])
  np.testing.assert_array_equal(columns['inputs']['k'][order], np.arange(40))
  np.testing.assert_array_equal(columns['inputs']['x'][order, 1], -np.arange(40))
  np.testing.assert_array_equal(columns['label'][order], np.arange(40) % 3)
  assert data.num_rows(data.load_columns(builder, 'train[:25%]')) == 10
  with pytest.raises(UserError, match="split 'train\\[5:5\\]' is empty"):
    data.load_columns(builder, 'train[5:5]')
  with pytest.raises(UnknownNameError, match='valid splits: train, test|valid splits: test, train'):
    data.load_columns(builder, 'validation')


# ---------------------------------------------------------------------------------------------
# The real dataset through the whole pipeline, and throughput.


def test_census_end_to_end_and_throughput(census_columns):
  spec = data.get('census_income')
  columns = census_columns['train']
  data.check_columns(columns, spec.tasks, 'train')
  bad = dict(columns, numeric=columns['numeric'].copy())
  bad['numeric'][123, 4] = np.nan
  with pytest.raises(UserError, match="feature 'numeric'.*split 'train'"):
    data.check_columns(bad, spec.tasks, 'train')
  bad = dict(columns, income=columns['income'].copy())
  bad['income'][7] = 2
  with pytest.raises(UserError, match="task 'income'.*split 'train'"):
    data.check_columns(bad, spec.tasks, 'train')

  batch_size, steps = 1024, 150
  for threads in (0, 2):
    it = data.train_iterator(columns, batch_size, seed=0, transform=spec.to_batch,
                             read_options=grain.ReadOptions(num_threads=threads,
                                                            prefetch_buffer_size=4 * threads))
    batch = next(it)
    start = time.perf_counter()
    take(it, steps)
    rate = steps * batch_size / (time.perf_counter() - start)
    print(f'\ncensus train iterator, batch {batch_size}, {threads} threads: {rate:,.0f} examples/s')
  assert set(batch['inputs']) == {'categorical', 'numeric'}
  assert batch['inputs']['categorical'].shape == (batch_size, 32)
  assert batch['inputs']['categorical'].dtype == np.int32
  assert batch['inputs']['numeric'].shape == (batch_size, 7)
  assert batch['inputs']['numeric'].dtype == np.float32
  assert set(batch['labels']) == {'income', 'never_married'}
  assert all(m.all() for m in batch['label_mask'].values())
  evaluated = sum(int(valid.sum()) for _, valid in data.eval_batches(
      census_columns['test'], 4096, transform=spec.to_batch))
  assert evaluated == len(census_columns['test']['row_id'])
