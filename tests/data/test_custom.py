"""Bring-your-own data: CSV, NPZ and CoNLL-U round trips, registration, every error path, and a
few training steps on a CSV."""

import csv
import gzip
import os

import ml_collections
import numpy as np
import pytest

from mtl_jax import data
from mtl_jax.data import custom
from mtl_jax.errors import UserError
from tests.data.test_multi_mnist import train_in_subprocess

N = 240


def write_csv(path, rows, header):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def table(seed=0, n=N):
  """Rows with learnable labels: sold = [area > 0], kind from rooms, price linear in area."""
  rng = np.random.default_rng(seed)
  area = rng.normal(100, 30, n)
  rooms = rng.integers(1, 6, n)
  city = rng.choice(['paris', 'lyon', 'nice'], n)
  rows = []
  for i in range(n):
    price = '' if i % 17 == 3 else f'{2.5 * area[i] + 10 * rooms[i]:.4f}'  # Some missing.
    sold = 'true' if area[i] > 100 else 'false'
    kind = ['flat', 'house', 'villa'][min(rooms[i] // 2, 2)]
    rows.append([f'{area[i]:.4f}', str(rooms[i]), city[i], price, sold, kind])
  return ['area', 'rooms', 'city', 'price', 'sold', 'kind'], rows


TASKS = {'price': 'regression', 'sold': 'binary', 'kind': 'multiclass'}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_custom'))


@pytest.fixture(scope='module')
def csv_path(tmp_path_factory):
  header, rows = table()
  return write_csv(tmp_path_factory.mktemp('csv') / 'houses.csv', rows, header)


@pytest.fixture(scope='module')
def csv_dataset(csv_path, tfds_dir):
  name = custom.register_csv('houses_test', csv_path, tasks=TASKS, numeric=['area', 'rooms'],
                             categorical=['city'], seed=3)
  spec = data.get(name)
  builder = data.prepare(spec.builder_cls, tfds_dir)
  return spec, builder, {s: data.load_columns(builder, s) for s in custom.SPLITS}


def test_csv_round_trip(csv_dataset, csv_path):
  spec, builder, columns = csv_dataset
  header, rows = table()
  meta = builder.info.metadata
  assert spec.input_kind == 'tabular'
  assert [(t.name, t.kind, t.num_outputs) for t in spec.tasks] == [
      ('price', 'regression', 1), ('sold', 'binary', 1), ('kind', 'multiclass', 3)]
  assert meta['classes'] == {'kind': ['flat', 'house', 'villa']}
  sizes = {s: len(c['row']) for s, c in columns.items()}
  assert sizes == {'train': 192, 'validation': 24, 'test': 24}
  all_rows = np.concatenate([c['row'] for c in columns.values()])
  assert sorted(all_rows.tolist()) == list(range(N))
  mean, std = np.array(meta['numeric_mean']), np.array(meta['numeric_std'])
  train_raw = np.array([[float(rows[r][0]), float(rows[r][1])] for r in columns['train']['row']])
  np.testing.assert_allclose(mean, train_raw.mean(0))  # Train statistics only.
  for c in columns.values():
    for j, r in enumerate(c['row']):
      row = rows[r]
      np.testing.assert_allclose(c['numeric'][j] * std + mean, [float(row[0]), float(row[1])],
                                 rtol=1e-5)
      code = c['categorical'][j, 0]
      assert code == 0 or meta['vocabularies'][0][code - 1] == row[2]
      if row[3]:
        assert c['price'][j] == pytest.approx(float(row[3]), rel=1e-6)
      else:
        assert np.isnan(c['price'][j])
      assert c['sold'][j] == (row[4] == 'true')
      assert meta['classes']['kind'][c['kind'][j]] == row[5]
  batch = spec.to_batch(data.first_rows(columns['train'], 64))
  assert set(batch['inputs']) == {'categorical', 'numeric'}
  missing = np.isnan(columns['train']['price'][:64])
  assert missing.any()
  np.testing.assert_array_equal(batch['label_mask']['price'], ~missing)
  assert not np.isnan(batch['labels']['price']).any()


def test_csv_split_column_and_only_categorical_inputs(tmp_path, tfds_dir):
  header, rows = table(1, 60)
  rows = [r + [['train', 'validation', 'test'][i % 3]] for i, r in enumerate(rows)]
  path = write_csv(tmp_path / 'split.csv', rows, header + ['part'])
  name = custom.register_csv('split_col_test', path, tasks={'sold': 'binary'},
                             categorical=['city', 'rooms'], split_column='part')
  spec = data.get(name)
  builder = data.prepare(spec.builder_cls, tfds_dir)
  columns = {s: data.load_columns(builder, s) for s in custom.SPLITS}
  for k, s in enumerate(custom.SPLITS):
    np.testing.assert_array_equal(columns[s]['row'], np.arange(k, 60, 3))
  batch = spec.to_batch(data.first_rows(columns['train'], 3))
  assert batch['inputs']['numeric'].shape == (3, 0)
  assert batch['inputs']['categorical'].shape == (3, 2)


def test_csv_regression_targets_standardised_with_train_statistics(csv_path):
  plain = custom.encode_csv(csv_path, tasks=TASKS, numeric=['area'], seed=3)
  scaled = custom.encode_csv(csv_path, tasks=TASKS, numeric=['area'], seed=3,
                             standardize_targets=True)
  assert plain.metadata['target_stats'] == {}
  stats = scaled.metadata['target_stats']['price']
  train = plain.columns['train']['price']
  assert stats['mean'] == pytest.approx(np.nanmean(train), rel=1e-6)
  assert stats['std'] == pytest.approx(np.nanstd(train), rel=1e-5)
  for split in custom.SPLITS:
    np.testing.assert_allclose(scaled.columns[split]['price'] * stats['std'] + stats['mean'],
                               plain.columns[split]['price'], rtol=1e-5)
  assert abs(np.nanmean(scaled.columns['train']['price'])) < 1e-5
  np.testing.assert_array_equal(scaled.columns['test']['sold'], plain.columns['test']['sold'])


def test_numeric_only_csv_is_dense(tmp_path):
  header, rows = table(2, 50)
  path = write_csv(tmp_path / 'dense.csv', rows, header)
  encoded = custom.encode_csv(path, tasks={'kind': 'multiclass'}, numeric=['area'])
  assert encoded.input_kind == 'dense' and encoded.input_keys == ('numeric',)


def test_registration_is_idempotent_and_names_are_unique(csv_path, tmp_path):
  kwargs = dict(tasks=TASKS, numeric=['area', 'rooms'], categorical=['city'], seed=3)
  assert custom.register_csv('houses_test', csv_path, **kwargs) == 'houses_test'
  with pytest.raises(UserError, match="'houses_test' is already registered with other"):
    custom.register_csv('houses_test', csv_path, **{**kwargs, 'seed': 4})
  with pytest.raises(UserError, match='taken by a built-in dataset'):
    custom.register_csv('census_income', csv_path, **kwargs)
  with pytest.raises(UserError, match='letters, digits and underscores'):
    custom.register_csv('my data', csv_path, **kwargs)


def test_changed_file_or_options_build_a_new_folder(tmp_path):
  header, rows = table(4, 40)
  path = write_csv(tmp_path / 'a.csv', rows, header)
  first = data.get(custom.register_csv('changing_a', path, tasks={'sold': 'binary'},
                                       numeric=['area']))
  rows[0][0] = '1.0'
  write_csv(tmp_path / 'a.csv', rows, header)
  second = data.get(custom.register_csv('changing_b', path, tasks={'sold': 'binary'},
                                        numeric=['area']))
  third = data.get(custom.register_csv('changing_c', path, tasks={'sold': 'binary'},
                                       numeric=['area'], seed=1))
  names = [s.builder_cls.BUILDER_CONFIGS[0].name.rsplit('_', 1)[1] for s in (first, second, third)]
  assert len(set(names)) == 3


def test_npz_round_trip(tmp_path, tfds_dir):
  rng = np.random.default_rng(0)
  n = 100
  arrays = {
      'features': rng.normal(size=(n, 3, 4)).astype(np.float32),
      'b': rng.integers(0, 2, n),
      'm': rng.integers(0, 5, n),
      'r': rng.normal(size=(n, 2)),
      'ml': rng.integers(0, 2, (n, 3)),
      'part': np.array(['train'] * 60 + ['validation'] * 20 + ['test'] * 20),
  }
  arrays['m'][7] = -1  # A missing label.
  path = tmp_path / 'arrays.npz'
  np.savez(path, **arrays)
  name = custom.register_npz(
      'npz_test', str(path), inputs='features', split_key='part',
      tasks={'b': 'binary', 'm': 'multiclass', 'reg': {'kind': 'regression', 'column': 'r'},
             'ml': 'multilabel'})
  spec = data.get(name)
  assert [(t.name, t.kind, t.num_outputs) for t in spec.tasks] == [
      ('b', 'binary', 1), ('m', 'multiclass', 5), ('reg', 'regression', 2),
      ('ml', 'multilabel', 3)]
  builder = data.prepare(spec.builder_cls, tfds_dir)
  columns = {s: data.load_columns(builder, s) for s in custom.SPLITS}
  assert {s: len(c['row']) for s, c in columns.items()} == {'train': 60, 'validation': 20,
                                                           'test': 20}
  for c in columns.values():
    r = c['row']
    np.testing.assert_array_equal(c['x'], arrays['features'][r])
    np.testing.assert_array_equal(c['b'], arrays['b'][r])
    np.testing.assert_array_equal(c['m'], arrays['m'][r])
    np.testing.assert_allclose(c['reg'], arrays['r'][r], rtol=1e-6)
    np.testing.assert_array_equal(c['ml'], arrays['ml'][r])
  batch = spec.to_batch(data.first_rows(columns['train'], 10))
  assert batch['inputs'].shape == (10, 3, 4)
  assert not batch['label_mask']['m'][7] and batch['label_mask']['m'][6]
  data.check_columns(columns['train'], spec.tasks, 'train')


CONLLU = """# sent_id = 1
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_

1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj:pass\t_\t_
3-4\tsleeps\t_\t_\t_\t_\t_\t_\t_\t_
3\tsleep\tsleep\tVERB\tVBZ\t_\t0\troot\t_\t_
4\ts\ts\tPART\tPOS\t_\t3\tcase\t_\t_

"""


def test_conllu_round_trip(tmp_path, tfds_dir):
  train = tmp_path / 'train.conllu'
  train.write_text(CONLLU)
  dev = tmp_path / 'dev.conllu.gz'
  with gzip.open(dev, 'wt') as f:
    f.write(CONLLU.replace('dog', 'fox').replace('PART', 'X'))
  name = custom.register_conllu('conllu_test', train=str(train), validation=str(dev),
                                test=str(train), tasks=('upos', 'deprel'), max_len=6,
                                min_word_count=1)
  spec = data.get(name)
  assert spec.input_kind == 'tokens'
  assert [(t.name, t.num_outputs, t.per_token) for t in spec.tasks] == [
      ('upos', 4, True), ('deprel', 4, True)]
  builder = data.prepare(spec.builder_cls, tfds_dir)
  meta = builder.info.metadata
  assert meta['classes']['upos'] == ['DET', 'NOUN', 'PART', 'VERB']
  assert meta['classes']['deprel'] == ['case', 'det', 'nsubj', 'root']  # Subtype removed.
  train_cols = data.load_columns(builder, 'train')
  np.testing.assert_array_equal(train_cols['upos'][1], [0, 1, 3, 2, -1, -1])
  np.testing.assert_array_equal(train_cols['mask'][0], [1, 1, 1, 0, 0, 0])
  dev_cols = data.load_columns(builder, 'validation')
  assert dev_cols['upos'][1, 3] == -1  # 'X' is unseen in train: missing.
  assert dev_cols['tokens'][0, 1] == 1  # 'fox' is out of vocabulary.
  assert meta['unseen_labels']['validation']['upos'] == 1
  batch = spec.to_batch(train_cols)
  assert batch['labels']['upos'].shape == batch['label_mask']['upos'].shape == (2, 6)
  assert data.get(name).input_info(builder)['vocab_size'] == meta['vocab_size']


# ---------------------------------------------------------------------------------------------
# Errors: each names the file, the column or task, and the fix.


@pytest.fixture
def small_csv(tmp_path):
  def make(rows, header=('a', 'b', 'y')):
    return write_csv(tmp_path / 'data.csv', rows, header)
  return make


def good_rows(n=30):
  return [[str(i), str(i % 3), str(i % 2)] for i in range(n)]


@pytest.mark.parametrize('rows,kwargs,pattern', [
    (good_rows(), dict(tasks={'y': 'binary'}, numeric=['nope']),
     r"data.csv has no column 'nope' \(listed as a numeric column\); its columns are: a, b, y"),
    (good_rows(), dict(tasks={'z': 'binary'}, numeric=['a']),
     r"has no column 'z' \(listed as a task column\)"),
    (good_rows(), dict(tasks={'y': 'binary'}), r'no input columns; list some'),
    (good_rows(), dict(tasks={'y': 'binary'}, numeric=['y']),
     r"column 'y' is listed as both numeric and task"),
    (good_rows(), dict(tasks={'y': 'ordinal'}, numeric=['a']),
     r"task 'y' has kind 'ordinal'; valid kinds for this format: binary, multiclass, regression"),
    (good_rows(), dict(tasks={'y': 'multilabel'}, numeric=['a']), r'valid kinds for this format'),
    (good_rows(), dict(tasks={}, numeric=['a']), r'`tasks` must be a non-empty dict'),
    (good_rows(), dict(tasks={'numeric': {'kind': 'binary', 'column': 'y'}}, numeric=['a']),
     r"task name 'numeric' must be an identifier"),
    ([[str(i), 'x', str(i % 3)] for i in range(30)], dict(tasks={'y': 'binary'}, numeric=['a']),
     r"binary task 'y' \(column 'y'\) holds '2' \(data row 3\).*use kind 'multiclass'"),
    ([[str(i), 'x', 'cat'] for i in range(30)], dict(tasks={'y': 'regression'}, numeric=['a']),
     r"regression task 'y' column 'y' holds 'cat' \(data row 1\), not a number; use kind "
     r"'multiclass'"),
    ([[str(i), 'x', f'{i / 7:.3f}'] for i in range(30)],
     dict(tasks={'y': 'multiclass'}, numeric=['a']),
     r"multiclass task 'y' \(column 'y'\) holds non-integer numbers.*use kind 'regression'"),
    ([[str(i), 'x', '4'] for i in range(30)], dict(tasks={'y': 'multiclass'}, numeric=['a']),
     r"multiclass task 'y' \(column 'y'\) has 1 class.*at least 2"),
    ([[str(i), 'x', ''] for i in range(30)], dict(tasks={'y': 'regression'}, numeric=['a']),
     r"task 'y' \(column 'y'\) has no labels at all"),
    ([[str(i) if i != 5 else '', 'x', '1'] for i in range(30)],
     dict(tasks={'y': 'binary'}, numeric=['a']),
     r"numeric input column 'a' has 1 empty, NaN or inf cells, the first in data row 6; fill "
     r"them"),
    ([[str(i) if i != 9 else 'nan', 'x', '1'] for i in range(30)],
     dict(tasks={'y': 'binary'}, numeric=['a']), r"numeric input column 'a' has 1 empty, NaN"),
    ([[str(i), 'x', '1'] for i in range(30)], dict(tasks={'y': 'binary'}, numeric=['b']),
     r"numeric input column 'b' holds 'x' \(data row 1\), not a number; list it as "
     r"categorical"),
    ([[str(i), 'train', '1'] for i in range(30)],
     dict(tasks={'y': 'binary'}, numeric=['a'], split_column='b'),
     r'the validation split is empty'),
    (good_rows(3), dict(tasks={'y': 'binary'}, numeric=['a']), r'the (validation|test) split is '
     r'empty \(3 rows in all\)'),
    (good_rows(), dict(tasks={'y': 'binary'}, numeric=['a'], split_fractions=(0.5, 0.5)),
     r'split_fractions must be three positive numbers'),
])
def test_csv_errors(small_csv, rows, kwargs, pattern):
  path = small_csv(rows)
  with pytest.raises(UserError, match=pattern) as info:
    custom.encode_csv(path, **kwargs)
  assert 'data.csv' in str(info.value)


def test_csv_split_column_bad_value_names_the_fix(small_csv):
  rows = [[str(i), ['train', 'dev', 'test'][i % 3], '1'] for i in range(30)]
  with pytest.raises(UserError, match=r"split column 'b' holds 'dev' at row 1; use train, "
                                      r'validation or test'):
    custom.encode_csv(small_csv(rows), tasks={'y': 'binary'}, numeric=['a'], split_column='b')


def test_csv_file_errors(tmp_path):
  with pytest.raises(UserError, match=r'CSV file .*missing.csv does not exist; check the path'):
    custom.register_csv('missing_file', str(tmp_path / 'missing.csv'), tasks={'y': 'binary'},
                        numeric=['a'])
  ragged = tmp_path / 'ragged.csv'
  ragged.write_text('a,y\n1,0\n2\n')
  with pytest.raises(UserError, match=r'ragged.csv, line 3: 1 fields, the header has 2'):
    custom.encode_csv(str(ragged), tasks={'y': 'binary'}, numeric=['a'])
  empty = tmp_path / 'empty.csv'
  empty.write_text('a,y\n')
  with pytest.raises(UserError, match='empty.csv has no data rows'):
    custom.encode_csv(str(empty), tasks={'y': 'binary'}, numeric=['a'])


def test_npz_errors(tmp_path):
  path = tmp_path / 'bad.npz'
  x = np.ones((10, 2))
  np.savez(path, x=x, y=np.arange(10) % 2, z=np.arange(9), f=np.linspace(0, 1, 10),
           three=np.arange(10) % 3)
  p = str(path)
  cases = [
      (dict(tasks={'y': 'binary'}, inputs='nope'),
       r"bad.npz has no array 'nope' \(the input array\); its arrays are: f, three, x, y, z"),
      (dict(tasks={'w': 'binary'}), r"has no array 'w' \(the task array\)"),
      (dict(tasks={'z': 'binary'}), r"task 'z' \(array 'z'\) has 9 rows, the input 'x' has 10"),
      (dict(tasks={'f': 'multiclass'}), r"task 'f' \(array 'f'\): multiclass labels must be "
                                        r"integers.*use kind 'regression'"),
      (dict(tasks={'three': 'binary'}), r"binary labels must be 0 or 1.*found 2; use kind "
                                        r"'multiclass'"),
      (dict(tasks={'y': 'multilabel'}), r'multilabel labels must be \[N, K\]'),
      (dict(tasks={'y': 'multiclass'}, inputs='y'), r"input array 'y' must be numbers of shape"),
      (dict(tasks={'y': 'binary'}, inputs=['x', 'f']), r'`inputs` names ONE array'),
      (dict(tasks={'three': {'kind': 'multiclass', 'num_classes': 2}}),
       r'multiclass labels must be integers in \[0, 2\)'),
  ]
  for kwargs, pattern in cases:
    with pytest.raises(UserError, match=pattern):
      custom.encode_npz(p, **kwargs)
  nan_path = tmp_path / 'nan.npz'
  x[4, 1] = np.nan
  np.savez(nan_path, x=x, y=np.arange(10) % 2)
  with pytest.raises(UserError, match=r"nan.npz: input array 'x' has NaN or inf in 1 rows, the "
                                      r'first row 4; fill or drop them'):
    custom.encode_npz(str(nan_path), tasks={'y': 'binary'})
  with pytest.raises(UserError, match='NPZ file .*none.npz does not exist'):
    custom.register_npz('npz_missing', str(tmp_path / 'none.npz'), tasks={'y': 'binary'})
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(b'not a zip')
  with pytest.raises(UserError, match='junk.npz cannot be read'):
    custom.encode_npz(str(junk), tasks={'y': 'binary'})


def test_conllu_errors(tmp_path):
  good = tmp_path / 'g.conllu'
  good.write_text(CONLLU)
  with pytest.raises(UserError, match=r'CoNLL-U \(validation\) file .*nope.conllu does not exist'):
    custom.encode_conllu(train=str(good), validation=str(tmp_path / 'nope.conllu'),
                         test=str(good))
  with pytest.raises(UserError, match=r"tasks must be distinct names among upos, xpos, deprel"):
    custom.encode_conllu(train=str(good), validation=str(good), test=str(good), tasks=('lemma',))
  bad = tmp_path / 'b.conllu'
  bad.write_text('1\tThe\tthe\tDET\n')
  with pytest.raises(UserError, match=r'b.conllu, line 1: expected 10 tab-separated'):
    custom.encode_conllu(train=str(bad), validation=str(good), test=str(good))


def test_register_from_a_config_dict(csv_path):
  config = ml_collections.ConfigDict({'dataset': 'houses_cfg', 'custom_data': {
      'format': 'csv', 'name': 'houses_cfg', 'path': csv_path,
      'tasks': {'sold': 'binary'}, 'numeric': ('area',)}})
  custom.register_from_config(config)
  assert [t.name for t in data.get('houses_cfg').tasks] == ['sold']
  custom.register_from_config(config)  # Again: a no-op.
  config.dataset = 'other'
  with pytest.raises(UserError, match=r"registers dataset 'houses_cfg' but config.dataset is "
                                      r"'other'; set --config.dataset=houses_cfg"):
    custom.register_from_config(config)
  with pytest.raises(UserError, match=r"custom_data.format is 'xls'; valid: csv, npz, conllu"):
    custom.register({'format': 'xls', 'name': 'x'})
  with pytest.raises(UserError, match=r"custom_data for format 'csv': .*unexpected keyword"):
    custom.register({'format': 'csv', 'name': 'x', 'path': csv_path, 'tasks': {'sold': 'binary'},
                     'columns': ['a']})
  custom.register_from_config(ml_collections.ConfigDict({'dataset': 'census_income'}))  # No-op.


@pytest.mark.slow
def test_a_few_training_steps_on_a_csv(csv_dataset, csv_path, tfds_dir, tmp_path):
  """In a fresh process on one CPU device (see `test_multi_mnist.train_in_subprocess`), through
  `config.custom_data` and `register_from_config`, on the folder built by `csv_dataset`."""
  del csv_dataset
  script = f"""
import json
from experiments.configs import default
from mtl_jax.data import custom
from mtl_jax import train
config = default.get_config()
config.custom_data = dict(format='csv', name='houses_test', path={csv_path!r}, tasks={TASKS!r},
                          numeric=['area', 'rooms'], categorical=['city'], seed=3)
config.dataset = 'houses_test'
custom.register_from_config(config)
config.tasks = ('price', 'sold', 'kind')
config.data_dir = {tfds_dir!r}
config.num_train_steps = 60
config.batch_size = 32
config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 30
config.warmup_steps = 0
config.learning_rate = 1e-2
config.eval_batch_size = 64
config.single_task_baselines = False
config.encoder_kwargs.hidden_sizes = (32,)
config.best_metric = 'val/sold/accuracy'
print('METRICS', json.dumps(train.train_and_evaluate(config, {str(tmp_path / 'run')!r})))
"""
  metrics = train_in_subprocess(script)
  assert np.isfinite(metrics['test/price/rmse'])
  # `sold` is area > 100, a threshold on one standardised input: easily learnt.
  assert metrics['test/sold/accuracy'] > 0.75, metrics
  assert 0.0 <= metrics['test/kind/accuracy'] <= 1.0
