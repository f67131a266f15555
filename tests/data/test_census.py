"""The real census_income dataset: sizes, label rates, split hygiene, encoding, reproducibility."""

import csv
import gzip
import os
import re
import shutil
import time

import numpy as np
import pytest

from mtl_jax import data
from mtl_jax.data import census
from mtl_jax.errors import UnknownNameError, UserError

N = 99_762
SPLITS = ('train', 'validation', 'test')


@pytest.fixture(scope='module')
def raw_rows():
  """The raw file parsed independently of the builder: list of 42 stripped strings per row."""
  with gzip.open(census.RAW_PATH, 'rt', encoding='ascii') as f:
    return [[field.strip() for field in row] for row in csv.reader(f)]


def test_split_sizes(census_builder, census_columns):
  sizes = {split: census_builder.info.splits[split].num_examples for split in SPLITS}
  assert sum(sizes.values()) == N
  for split, fraction in zip(SPLITS, (0.70, 0.15, 0.15)):
    assert abs(sizes[split] - fraction * N) <= 1, (split, sizes)
    assert data.num_rows(census_columns[split]) == sizes[split]
  assert census_builder.info.metadata['split_sizes'] == sizes


def test_positive_rates(census_columns):
  income = np.concatenate([census_columns[s]['income'] for s in SPLITS])
  never_married = np.concatenate([census_columns[s]['never_married'] for s in SPLITS])
  assert len(income) == N
  assert abs(income.mean() - 0.062) < 0.001, income.mean()
  assert abs(never_married.mean() - 0.432) < 0.001, never_married.mean()
  # The splits are random, so each split's rate is close to the overall one.
  for split in SPLITS:
    assert abs(census_columns[split]['income'].mean() - income.mean()) < 0.006
    assert abs(census_columns[split]['never_married'].mean() - never_married.mean()) < 0.015


def test_splits_are_disjoint_and_cover_the_file(census_columns):
  ids = [census_columns[s]['row_id'] for s in SPLITS]
  for a in range(3):
    for b in range(a + 1, 3):
      assert not np.intersect1d(ids[a], ids[b]).size, (SPLITS[a], SPLITS[b])
  assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(N))
  # Not the first 70% of the file: the split is a random permutation.
  assert ids[0].max() > 0.9 * N and ids[2].min() < 0.1 * N


def test_columns_and_metadata(census_builder, census_columns):
  metadata = census_builder.info.metadata
  categorical = metadata['categorical_columns']
  numeric = metadata['numeric_columns']
  assert len(categorical) == 32 and len(numeric) == 7
  assert len(metadata['vocab_sizes']) == 32
  used = set(categorical) | set(numeric)
  assert len(used) == 39
  assert used | {'instance weight', 'income', 'marital stat'} == set(census.COLUMNS)
  for split in SPLITS:
    columns = census_columns[split]
    assert columns['categorical'].dtype == np.int32 and columns['categorical'].shape[1] == 32
    assert columns['numeric'].dtype == np.float32 and columns['numeric'].shape[1] == 7
    assert np.all(columns['categorical'] >= 0)
    assert np.all(columns['categorical'] < np.array(metadata['vocab_sizes']))
    assert np.all(np.isfinite(columns['numeric']))
    assert set(np.unique(columns['income'])) == {0, 1}
    assert set(np.unique(columns['never_married'])) == {0, 1}
  # Vocabularies come from train: every train value is known (index 0 is for unseen values).
  assert np.all(census_columns['train']['categorical'] > 0)
  # Standardised with train statistics.
  train_numeric = census_columns['train']['numeric'].astype(np.float64)
  np.testing.assert_allclose(train_numeric.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(train_numeric.std(0), 1, atol=1e-4)


def test_encoding_matches_raw_file(census_builder, census_columns, raw_rows):
  metadata = census_builder.info.metadata
  mean, std = np.array(metadata['numeric_mean']), np.array(metadata['numeric_std'])
  file_index = {name: j for j, name in enumerate(census.COLUMNS)}
  rng = np.random.default_rng(0)
  for split in SPLITS:
    columns = census_columns[split]
    for i in rng.choice(len(columns['row_id']), 500, replace=False):
      raw = raw_rows[columns['row_id'][i]]
      assert columns['income'][i] == (raw[41] == '50000+.')
      assert columns['never_married'][i] == (raw[7] == 'Never married')
      values = columns['numeric'][i] * std + mean
      for k, name in enumerate(metadata['numeric_columns']):
        value = values[k]
        if name in metadata['log1p_columns']:
          value = np.expm1(value)
        np.testing.assert_allclose(value, float(raw[file_index[name]]), rtol=1e-4, atol=1e-2)
      for k, name in enumerate(metadata['categorical_columns']):
        vocabulary = metadata['vocabularies'][k]
        code = columns['categorical'][i, k]
        if code:
          assert vocabulary[code - 1] == raw[file_index[name]], (split, name)
        else:
          assert raw[file_index[name]] not in vocabulary, (split, name)


def test_vocabularies_come_from_train_only(census_builder, census_columns, raw_rows):
  metadata = census_builder.info.metadata
  file_index = {name: j for j, name in enumerate(census.COLUMNS)}
  train_rows = [raw_rows[i] for i in census_columns['train']['row_id']]
  unseen = 0
  for k, name in enumerate(metadata['categorical_columns']):
    values = sorted({row[file_index[name]] for row in train_rows})
    assert metadata['vocabularies'][k] == values, name
    assert metadata['vocab_sizes'][k] == len(values) + 1
    unseen += int((census_columns['test']['categorical'][:, k] == 0).sum())
  assert unseen > 0  # Some rare values appear only outside train and map to index 0.


def test_prepare_reuses_a_finished_build(census_dir, census_builder):
  info = os.path.join(os.fspath(census_builder.data_path), 'dataset_info.json')
  mtime = os.path.getmtime(info)
  start = time.perf_counter()
  builder = data.prepare(census.CensusIncome, census_dir)
  assert time.perf_counter() - start < 5
  assert os.path.getmtime(info) == mtime
  assert builder.info.metadata['vocab_sizes'] == census_builder.info.metadata['vocab_sizes']


def test_rebuild_after_a_half_written_attempt_is_identical(census_builder, tmp_path):
  """Copies the finished build, breaks it like an interrupted run would, and rebuilds."""
  first = census_builder.data_path
  broken = tmp_path / 'census_income' / '1.0.0'
  shutil.copytree(first, broken)
  os.remove(broken / 'census_income-validation.array_record-00000-of-00001')
  os.makedirs(tmp_path / 'census_income' / 'incomplete.ABC123_1.0.0')
  start = time.perf_counter()
  builder = data.prepare(census.CensusIncome, str(tmp_path))
  print(f'\nsecond census_income build: {time.perf_counter() - start:.1f} s')
  assert not (tmp_path / 'census_income' / 'incomplete.ABC123_1.0.0').exists()
  names = sorted(f for f in os.listdir(first) if 'array_record' in f) + ['metadata.json',
                                                                         'features.json']
  assert len(names) == 5
  for name in names:
    with open(first / name, 'rb') as a, open(os.path.join(builder.data_path, name), 'rb') as b:
      assert a.read() == b.read(), name


@pytest.mark.parametrize('content', ['missing', 'not gzip', 'truncated', 'wrong columns'])
def test_bad_raw_file_raises_user_error_naming_it(content, tmp_path, monkeypatch):
  path = tmp_path / 'census-income.test.gz'
  if content == 'not gzip':
    path.write_bytes(b'this is not a gzip file')
  elif content == 'truncated':
    with open(census.RAW_PATH, 'rb') as f:
      path.write_bytes(f.read(100_000))
  elif content == 'wrong columns':
    with gzip.open(path, 'wt') as f:
      f.write('1, 2, 3\n')
  monkeypatch.setattr(census.CensusIncome, 'RAW_PATH', str(path))
  data_dir = tmp_path / 'tfds'
  with pytest.raises(UserError, match=re.escape(str(path))):
    data.prepare(census.CensusIncome, str(data_dir))
  assert not (data_dir / 'census_income' / '1.0.0').exists()  # Nothing passes for a build.


def test_registry():
  spec = data.get('census_income')
  assert spec.builder_cls is census.CensusIncome
  assert [t.name for t in spec.tasks] == ['income', 'never_married']
  assert all(t.kind == 'binary' for t in spec.tasks)
  assert 'census_income' in data.DATASETS
  with pytest.raises(UnknownNameError, match='census_income'):
    data.get('census')


def test_input_info(census_builder):
  info = data.get('census_income').input_info(census_builder)
  assert info['vocab_sizes'] == census_builder.info.metadata['vocab_sizes']
  assert info['num_categorical'] == 32 and info['num_numeric'] == 7
