"""The QM9 subset: split, featurisation, train-only standardisation, errors."""

import zlib

import numpy as np
import pytest

from mtl_jax import data
from mtl_jax.data import qm9
from mtl_jax.errors import UserError

FEATURE = {name: k for k, name in enumerate(qm9.COUNT_FEATURES)}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  builder = data.prepare(qm9.Qm9Subset, str(tmp_path_factory.mktemp('tfds_qm9')))
  return builder, {s: data.load_columns(builder, s) for s in ('train', 'validation', 'test')}


@pytest.fixture(scope='module')
def raw():
  return qm9.read_raw()


def counts(smiles):
  f = qm9.featurize(smiles)
  return {name: f[k] for name, k in FEATURE.items() if f[k]}


@pytest.mark.parametrize('smiles,expected', [
    ('C', {'C': 1, 'heavy_atoms': 1}),
    ('CC(=O)O', {'C': 2, 'O': 2, 'double_bond': 1, 'branch': 1, 'heavy_atoms': 4}),
    ('c1ccccc1', {'c': 6, 'ring_closure': 1, 'heavy_atoms': 6}),
    ('[NH4+]', {'N': 1, 'bracket_atom': 1, 'bracket_H': 4, 'charge': 1, 'heavy_atoms': 1}),
    ('ClC#N', {'other_atom': 1, 'C': 1, 'N': 1, 'triple_bond': 1, 'heavy_atoms': 3}),
    ('C1CC2CC1O2', {'C': 5, 'O': 1, 'ring_closure': 2, 'heavy_atoms': 6}),
    ('[13CH3]F', {'C': 1, 'F': 1, 'bracket_atom': 1, 'bracket_H': 3, 'heavy_atoms': 2}),
])
def test_count_features(smiles, expected):
  assert counts(smiles) == expected


def test_hashed_ngrams():
  smiles = 'CC(=O)N'
  hashed = qm9.featurize(smiles)[len(qm9.COUNT_FEATURES):]
  assert hashed.shape == (qm9.HASH_BUCKETS,)
  n = len(smiles)
  assert hashed.sum() == n + (n - 1) + (n - 2)  # Every 1-, 2- and 3-gram counted once.
  expected = np.zeros(qm9.HASH_BUCKETS)
  for gram in ['C', 'C', '(', '=', 'O', ')', 'N', 'CC', 'C(', '(=', '=O', 'O)', ')N',
               'CC(', 'C(=', '(=O', '=O)', 'O)N']:
    expected[zlib.crc32(gram.encode()) % qm9.HASH_BUCKETS] += 1
  np.testing.assert_array_equal(hashed, expected)
  assert qm9.featurize('CCO').shape == (qm9.NUM_FEATURES,)
  assert not np.array_equal(qm9.featurize('CCO'), qm9.featurize('OCC')[::-1])


def test_split_sizes_disjoint_and_fixed(built):
  builder, columns = built
  rows = {s: c['row'] for s, c in columns.items()}
  assert {s: len(r) for s, r in rows.items()} == {'train': 399, 'validation': 50, 'test': 50}
  everything = np.concatenate(list(rows.values()))
  assert len(np.unique(everything)) == 499
  for s, idx in qm9.split_indices().items():
    np.testing.assert_array_equal(rows[s], idx)
  assert builder.info.metadata['split_sizes'] == {'train': 399, 'validation': 50, 'test': 50}


def test_targets_standardised_with_train_statistics_only(built, raw):
  builder, columns = built
  smiles, targets = raw
  train = qm9.split_indices()['train']
  meta = builder.info.metadata
  for k, name in enumerate(qm9.TARGETS):
    assert meta['target_mean'][name] == pytest.approx(targets[train, k].mean(), rel=1e-9)
    assert meta['target_std'][name] == pytest.approx(targets[train, k].std(), rel=1e-9)
    y = columns['train'][name]
    assert abs(y.mean()) < 1e-5 and abs(y.std() - 1) < 1e-5
    for split in ('train', 'test'):
      c = columns[split]
      np.testing.assert_allclose(qm9.destandardize(name, c[name], meta), targets[c['row'], k],
                                 rtol=1e-5, atol=1e-5 * meta['target_std'][name])
  # Changing validation and test targets leaves the statistics (and the train rows) unchanged.
  changed = targets.copy()
  held_out = np.setdiff1d(np.arange(len(smiles)), train)
  changed[held_out] *= 10
  a, meta_a = qm9.encode(smiles, targets, qm9.split_indices())
  b, meta_b = qm9.encode(smiles, changed, qm9.split_indices())
  assert meta_a['target_mean'] == meta_b['target_mean']
  assert meta_a['target_std'] == meta_b['target_std']
  np.testing.assert_array_equal(a['mu'][train], b['mu'][train])
  assert not np.array_equal(a['mu'][held_out], b['mu'][held_out])


def test_features_standardised_with_train_statistics(built, raw):
  builder, columns = built
  smiles, _ = raw
  meta = builder.info.metadata
  x = columns['test']['x']
  raw_x = np.stack([qm9.featurize(smiles[r]) for r in columns['test']['row']])
  np.testing.assert_allclose(x * np.array(meta['feature_std']) + np.array(meta['feature_mean']),
                             raw_x, atol=1e-4)
  assert np.abs(columns['train']['x'].mean(0)).max() < 1e-4


def test_spec_and_batch(built):
  _, columns = built
  spec = data.get('qm9_subset')
  assert [t.name for t in spec.tasks] == list(qm9.TARGETS)
  assert all(t.kind == 'regression' for t in spec.tasks)
  batch = spec.to_batch(data.first_rows(columns['train'], 5))
  assert batch['inputs'].shape == (5, qm9.NUM_FEATURES)
  assert set(batch['labels']) == set(qm9.TARGETS)
  data.check_columns(columns['validation'], spec.tasks, 'validation')


def test_raw_file_errors(tmp_path):
  with pytest.raises(UserError, match='missing.*git checkout'):
    qm9.read_raw(str(tmp_path / 'none.csv'))
  bad = tmp_path / 'bad.csv'
  bad.write_text('smiles,mu\nC,1\n')
  with pytest.raises(UserError, match='bad.csv has header'):
    qm9.read_raw(str(bad))
  short = tmp_path / 'short.csv'
  short.write_text(','.join(['smiles', *qm9.TARGETS]) + '\nC,' + ','.join(['1'] * 12) + '\n')
  with pytest.raises(UserError, match='1 molecules, expected 499'):
    qm9.read_raw(str(short))


def test_dense_batch_equals_the_generic_batch_with_missing_targets_and_a_task_subset():
  """The stacked fast path gives exactly what `pipeline.to_batch` gives, task by task."""
  from mtl_jax.data import pipeline
  spec = qm9.QM9_SUBSET
  rng = np.random.default_rng(0)
  rows = {'x': rng.normal(size=(5, qm9.NUM_FEATURES))}
  for task in spec.tasks:
    y = rng.normal(size=5)
    y[rng.random(5) < 0.3] = np.nan
    rows[task.name] = y
  for tasks in (spec.tasks, spec.tasks[3:7][::-1]):
    fast = qm9.dense_batch(rows, spec, tasks)
    slow = pipeline.to_batch(rows, spec, tasks)
    np.testing.assert_array_equal(fast['inputs'], slow['inputs']['x'])
    assert list(fast['labels']) == [t.name for t in tasks] == list(slow['labels'])
    for name in fast['labels']:
      assert fast['labels'][name].dtype == slow['labels'][name].dtype == np.float32
      np.testing.assert_array_equal(fast['labels'][name], slow['labels'][name])
      np.testing.assert_array_equal(fast['label_mask'][name], slow['label_mask'][name])
    assert any(not m.all() for m in fast['label_mask'].values())
