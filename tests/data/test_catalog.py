"""tfds catalog datasets as multi-task datasets (`mtl_jax.data.catalog`).

The real datasets are not downloadable here, so every adapter is exercised on
`tfds.testing.mock_data(policy=MockPolicy.USE_CODE)`: random examples drawn from the builder's own
feature spec (shapes, dtypes, class counts), served through `builder.as_data_source` (what the
catalog reads; no TensorFlow), with `download_and_prepare` a no-op. Random examples say nothing
about the real label distributions, so the value mappings that matter (age groups, azimuth,
vocabularies, Coulomb features, split rules with the real split sizes) are also tested directly
on hand-made inputs.
"""

import contextlib
import os
import sys
import types
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.testing import mocking

from mtl_jax import data
from mtl_jax import models
from mtl_jax import tasks as tasks_lib
from mtl_jax.data import catalog
from mtl_jax.data import pipeline
from mtl_jax.errors import UnknownNameError, UserError

# What each dataset must offer: task -> (kind, num_outputs, per_token), written from the tfds
# builders' feature specs (not read back from the catalog), plus the stored input shape.
EXPECTED = {
    'celeb_a': ({a: ('binary', 1, False) for a in (
        '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs',
        'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair',
        'Bushy_Eyebrows', 'Chubby', 'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair',
        'Heavy_Makeup', 'High_Cheekbones', 'Male', 'Mouth_Slightly_Open', 'Mustache',
        'Narrow_Eyes', 'No_Beard', 'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline',
        'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair', 'Wavy_Hair', 'Wearing_Earrings',
        'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace', 'Wearing_Necktie', 'Young')},
                {'image': ((218, 178, 3), np.uint8)}),
    'smallnorb': ({'category': ('multiclass', 5, False), 'instance': ('multiclass', 10, False),
                   'elevation': ('multiclass', 9, False), 'azimuth': ('multiclass', 18, False),
                   'lighting': ('multiclass', 6, False)},
                  {'image': ((96, 96, 2), np.uint8)}),
    'smallnorb_heldout_instances': (
        {'category': ('multiclass', 5, False), 'elevation': ('multiclass', 9, False),
         'azimuth': ('multiclass', 18, False), 'lighting': ('multiclass', 6, False)},
        {'image': ((96, 96, 2), np.uint8)}),
    'shapes3d': ({'floor_hue': ('multiclass', 10, False), 'wall_hue': ('multiclass', 10, False),
                  'object_hue': ('multiclass', 10, False), 'scale': ('multiclass', 8, False),
                  'shape': ('multiclass', 4, False), 'orientation': ('multiclass', 15, False)},
                 {'image': ((64, 64, 3), np.uint8)}),
    'dsprites': ({'shape': ('multiclass', 3, False), 'scale': ('multiclass', 6, False),
                  'orientation': ('multiclass', 40, False),
                  'x_position': ('multiclass', 32, False),
                  'y_position': ('multiclass', 32, False)},
                 {'image': ((64, 64, 1), np.uint8)}),
    'conll2003': ({'pos': ('multiclass', 47, True), 'chunk': ('multiclass', 23, True),
                   'ner': ('multiclass', 9, True)},
                  {'tokens': ((128,), np.int32), 'chars': ((128, 16), np.uint8),
                   'mask': ((128,), np.bool_)}),
    'movielens': ({'rating': ('regression', 1, False), 'gender': ('binary', 1, False),
                   'age': ('multiclass', 7, False), 'occupation': ('multiclass', 22, False)},
                  {'categorical': ((2,), np.int32), 'numeric': ((21,), np.float32)}),
    'qm9': ({t: ('regression', 1, False) for t in (
        'mu', 'alpha', 'homo', 'lumo', 'gap', 'r2', 'zpve', 'U0_atomization', 'U_atomization',
        'H_atomization', 'G_atomization', 'Cv')}, {'x': ((34,), np.float32)}),
    'oxford_iiit_pet': ({'label': ('multiclass', 37, False), 'species': ('binary', 1, False),
                         'segmentation': ('multiclass', 3, True)},
                        {'image': ((128, 128, 3), np.uint8)}),
}
EXPECTED['celeb_a_20k'] = EXPECTED['celeb_a']


def _getitems(record_keys, generator, serialized=False):
  """tfds 4.9.10's mock sets `__getitems__` on a MagicMock as a partial that expects `self`,
  which MagicMock does not pass for that (non-standard) dunder; this is its body without it."""
  assert not serialized
  return [generator[int(k)] for k in record_keys]


def _import_qm9_builder():
  """qm9's builder module imports pandas when imported (it uses it only to generate); pandas is
  not a dependency of ours and nothing here generates, so import it once over a stand-in."""
  if 'pandas' in sys.modules or catalog.ADAPTERS['qm9'].module in sys.modules:
    return
  sys.modules['pandas'] = types.ModuleType('pandas')
  try:
    catalog.get_adapter('qm9').builder_class()
  finally:
    del sys.modules['pandas']


@contextlib.contextmanager
def mocked(num_examples):
  _import_qm9_builder()
  with mock.patch.object(mocking, '_getitems', _getitems), \
       tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE):
    catalog.clear_cache()
    try:
      yield
    finally:
      catalog.clear_cache()


def load(name, data_dir, num_examples=6):
  """(spec, builder, {split: columns}) under mock data, through `pipeline` like the trainer."""
  spec = data.get(name)
  with mocked(num_examples):
    builder = pipeline.prepare(spec.builder_cls, str(data_dir))
    columns = {split: pipeline.load_columns(builder, split) for split in catalog.SPLITS}
    raw = list(builder.tfds_builder.as_data_source(split='train')[i] for i in range(num_examples))
    info = spec.input_info(builder)
  return spec, builder, columns, raw, info


# ---------------------------------------------------------------------------------------------
# Registry, names, splits.


def test_every_dataset_is_registered_with_its_tasks():
  for name, (tasks, _) in EXPECTED.items():
    spec = data.get(name)
    assert [t.name for t in spec.tasks] == list(tasks), name
    for t in spec.tasks:
      assert (t.kind, t.num_outputs, t.per_token) == tasks[t.name], (name, t.name)


def test_unknown_names_raise_listing_the_valid_ones():
  with pytest.raises(UnknownNameError, match='valid dataset names: .*celeb_a.*qm9'):
    data.get('celeba')
  with pytest.raises(UnknownNameError, match='valid catalog datasets: .*movielens'):
    catalog.register('movielens_1m')
  spec = data.get('shapes3d')
  with pytest.raises(UnknownNameError, match='valid tasks: floor_hue, wall_hue'):
    tasks_lib.select(spec.tasks, ['hue'], 'shapes3d')


def test_an_unknown_split_raises_listing_the_valid_ones(tmp_path):
  with mocked(2):
    builder = pipeline.prepare(data.get('dsprites').builder_cls, str(tmp_path))
    with pytest.raises(UnknownNameError, match="no split 'dev'; valid splits: train, "
                                               "validation, test"):
      pipeline.load_columns(builder, 'dev')


def _split_dict(sizes):
  template = naming.ShardedFileTemplate(
      data_dir='/nonexistent', template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name='x', filetype_suffix='array_record')
  return splits_lib.SplitDict([
      splits_lib.SplitInfo(name=name, shard_lengths=[n], num_bytes=0, filename_template=template)
      for name, n in sizes.items()])


# The real split sizes of each tfds dataset (from the tfds catalog pages).
REAL_SIZES = {
    'celeb_a': {'train': 162770, 'validation': 19867, 'test': 19962},
    'smallnorb': {'train': 24300, 'test': 24300},
    'smallnorb_heldout_instances': {'train': 24300, 'test': 24300},
    'shapes3d': {'train': 480000},
    'dsprites': {'train': 737280},
    'conll2003': {'train': 14041, 'dev': 3250, 'test': 3453},  # About: only the names matter.
    'movielens': {'train': 100000},
    'qm9': {'train': 110000, 'validation': 10000, 'test': 10831},
    'oxford_iiit_pet': {'train': 3680, 'test': 3669},
}


@pytest.mark.parametrize('name', sorted(REAL_SIZES))
def test_split_rules_partition_the_real_splits(name):
  """Every trainer split is a valid tfds split expression; on the real split sizes the three
  never share an example and together cover the dataset (smallnorb_heldout_instances: all of it;
  the others: every example, since none is dropped)."""
  adapter = catalog.get_adapter(name)
  assert list(adapter.splits) == ['train', 'validation', 'test']
  split_dict = _split_dict(REAL_SIZES[name])
  taken = {s: np.zeros(n, int) for s, n in REAL_SIZES[name].items()}
  for expression in adapter.splits.values():
    sub = split_dict[expression]
    assert sub.num_examples > 0, expression
    for instruction in sub.file_instructions:
      source = instruction.filename.split('-')[1].split('.')[0]
      taken[source][instruction.skip:instruction.skip + instruction.take] += 1
  for source, counts in taken.items():
    assert counts.max() == 1 and counts.min() == 1, (name, source)


def test_carved_splits_are_80_10_10():
  split_dict = _split_dict({'train': 480000})
  assert [split_dict[catalog.CARVED[s]].num_examples for s in catalog.SPLITS] == [
      384000, 48000, 48000]


# ---------------------------------------------------------------------------------------------
# Every adapter on mock data.


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_adapter_columns_and_batches(name, tmp_path):
  tasks, inputs = EXPECTED[name]
  spec, builder, columns, raw, _ = load(name, tmp_path)
  assert isinstance(builder, catalog.AdaptedBuilder)
  for split, cols in columns.items():
    n = pipeline.num_rows(cols)
    assert n == 6
    data.check_columns(cols, spec.tasks, split)  # Raises on any label out of range.
    for key, (shape, dtype) in inputs.items():
      assert cols[key].shape == (n,) + shape and cols[key].dtype == dtype, key
    for task in spec.tasks:
      y = cols[task.name]
      tokens = 32 * 32 if name == 'oxford_iiit_pet' else 128  # pixels of the trimap grid
      assert y.shape == ((n, tokens) if task.per_token else (n,)), task.name
      if task.kind == 'regression':
        assert y.dtype == np.float32 and np.isfinite(y).all()
      else:
        assert y.dtype == np.int32
        valid = y[y != -1]
        assert valid.min() >= 0 and valid.max() < max(task.num_outputs, 2)
        if not task.per_token:
          assert (y != -1).all()
    batch = spec.to_batch(pipeline.first_rows(cols, 4))
    assert list(batch['labels']) == list(tasks)
    for task in spec.tasks:
      mask = batch['label_mask'][task.name]
      if task.per_token and name == 'oxford_iiit_pet':  # Pixels of a value outside the trimap.
        np.testing.assert_array_equal(mask, cols[task.name][:4] != -1)
      elif task.per_token:  # Mock tag sequences are not as long as the sentence: min of both.
        feature = catalog.CONLL_FEATURES[task.name]
        expected = [min(len(r[feature]), len(r['tokens']), 128) for r in raw[:4]]
        assert mask.sum(1).tolist() == expected
        assert not (mask & ~batch['inputs']['mask']).any()
        assert batch['labels'][task.name].shape == mask.shape
      else:
        assert mask.shape == (4,) and mask.all()
  # As the trainer evaluates: `eval_batches` pads with zero rows, which it drops by `valid`
  # (example-level tasks); per-token labels of those rows must be masked by the token mask.
  for rows, valid in data.eval_batches(columns['test'], 8):
    assert valid.sum() == 6
    batch = spec.to_batch(rows)
    for task in spec.tasks:
      assert batch['labels'][task.name].shape[0] == 8
      if task.per_token and name != 'oxford_iiit_pet':  # Pixels have no token mask input.
        assert not batch['label_mask'][task.name][~valid].any()
  # With the transform inside, `eval_batches` masks the padding rows itself, per pixel too.
  for batch, valid in data.eval_batches(columns['test'], 8, transform=spec.to_batch):
    for task in spec.tasks:
      mask = batch['label_mask'][task.name]
      assert not mask[~valid].any()
      assert mask[valid].any() or not task.per_token


@pytest.mark.parametrize('name', ['celeb_a', 'smallnorb', 'shapes3d', 'dsprites',
                                  'oxford_iiit_pet'])
def test_labels_are_the_tfds_features(name, tmp_path):
  """Each label column holds the tfds feature it is read from (bool -> 0/1, class index kept)."""
  spec, _, columns, raw, _ = load(name, tmp_path)
  adapter = catalog.get_adapter(name)
  for task in spec.tasks:
    if task.name == 'segmentation':  # Resized, not read as it is: checked below.
      continue
    path = adapter.sources[task.name][0]
    expected = [catalog._get(example, path) for example in raw]
    np.testing.assert_array_equal(columns['train'][task.name],
                                  np.asarray(expected).astype(np.int32))
  if name == 'smallnorb':  # The stereo pair, left then right.
    np.testing.assert_array_equal(columns['train']['image'][..., 0],
                                  np.stack([r['image'][..., 0] for r in raw]))
    np.testing.assert_array_equal(columns['train']['image'][..., 1],
                                  np.stack([r['image2'][..., 0] for r in raw]))
  elif name == 'oxford_iiit_pet':  # Variable-size images, resized.
    assert len({r['image'].shape for r in raw}) > 1
    np.testing.assert_array_equal(
        columns['train']['segmentation'],
        np.stack([catalog.pet_trimap_labels(r['segmentation_mask']) for r in raw]))
  else:
    np.testing.assert_array_equal(columns['train']['image'], np.stack([r['image'] for r in raw]))


# ---------------------------------------------------------------------------------------------
# Dataset-specific mappings.


def test_pet_trimap_labels_are_nearest_neighbour_classes_with_unknown_values_unlabelled():
  # A 64 x 64 trimap: left half foreground (1), right half background (2), one 2-pixel-wide
  # boundary (3) column at x = 30..31; a 4 x 4 corner of an out-of-range value (0).
  mask = np.full((64, 64, 1), 2, np.uint8)
  mask[:, :32] = 1
  mask[:, 30:32] = 3
  mask[:4, :4] = 0
  labels = catalog.pet_trimap_labels(mask, size=32).reshape(32, 32)
  assert labels.dtype == np.int32
  expected = np.full((32, 32), 1)
  expected[:, :16] = 0
  expected[:, 15] = 2  # Pixels 30-31 of 64 fall on pixel 15 of 32.
  expected[:2, :2] = -1
  np.testing.assert_array_equal(labels, expected)
  assert set(np.unique(labels)) == {-1, 0, 1, 2}  # Nearest neighbour never blends classes.
  # Non-square input of another size, no channel axis.
  assert catalog.pet_trimap_labels(np.full((50, 70), 3, np.uint8), size=8).tolist() == [2] * 64


def test_movielens_mappings(tmp_path):
  np.testing.assert_array_equal(catalog.movielens_age_class([1, 18, 25, 35, 45, 50, 56]),
                                np.arange(7))
  context = {'users': {'u1': 1, 'u2': 2}, 'movies': {'m1': 1}}
  example = {'user_id': b'u2', 'movie_id': b'm9', 'movie_genres': np.array([0, 7, 20]),
             'user_rating': np.float32(4.0), 'user_gender': np.bool_(False),
             'bucketized_user_age': np.float32(35.0), 'user_occupation_label': np.int64(21)}
  row = catalog.movielens_example(catalog.get_adapter('movielens'), example, context)
  np.testing.assert_array_equal(row['categorical'], [2, 0])  # m9 not seen in train: 0.
  assert np.flatnonzero(row['numeric']).tolist() == [0, 7, 20]
  assert (row['rating'], row['gender'], row['age'], row['occupation']) == (4.0, 0, 3, 21)
  # On mock data: the id vocabularies come from train and size the tabular input layer.
  _, builder, columns, raw, info = load('movielens', tmp_path)
  assert info['vocab_sizes'] == [len({r['user_id'] for r in raw}) + 1,
                                 len({r['movie_id'] for r in raw}) + 1]
  cats = columns['test']['categorical']
  assert cats.min() >= 1 and (cats < np.array(info['vocab_sizes'])).all()
  np.testing.assert_array_equal(columns['train']['rating'],
                                [r['user_rating'] for r in raw])


def test_conll_vocabulary_and_padding():
  adapter = catalog.get_adapter('conll2003')
  train = [{'tokens': np.array([b'The', b'cat', b'sat']), 'pos': np.array([1, 2, 3]),
            'chunks': np.array([4, 5, 6]), 'ner': np.array([0, 0, 1])},
           {'tokens': np.array([b'the', b'Dog']), 'pos': np.array([1, 2]),
            'chunks': np.array([4, 5]), 'ner': np.array([0, 1])}]
  with mock.patch.object(catalog, '_examples', lambda a, b, s: iter(train)):
    context = catalog.conll_context(adapter, None)
  assert context['word_index'] == {'the': 2}  # Lower-cased, seen twice; the rest once.
  assert catalog.conll_input_info(context)['vocab_size'] == 3
  row = catalog.conll_example(adapter, train[1], context)
  assert row['tokens'][:3].tolist() == [2, 1, 0]  # the, OOV, padding.
  assert row['mask'][:3].tolist() == [True, True, False] and row['mask'].sum() == 2
  assert row['pos'][:3].tolist() == [1, 2, -1] and row['chunk'][:2].tolist() == [4, 5]
  assert row['ner'][:2].tolist() == [0, 1] and (row['ner'][2:] == -1).all()
  # Characters of The, cat, sat, the, Dog seen twice or more (case kept): a, e, h, t.
  assert sorted(context['char_index']) == ['a', 'e', 'h', 't']
  long = {'tokens': np.array([b'w'] * 200), 'pos': np.zeros(200, int), 'chunks': np.zeros(200, int),
          'ner': np.zeros(200, int)}
  row = catalog.conll_example(adapter, long, context)
  assert row['mask'].all() and (row['pos'] == 0).all()  # Truncated to 128.


def test_conll_on_mock_data_has_per_token_labels_and_token_inputs(tmp_path):
  spec, _, columns, raw, info = load('conll2003', tmp_path)
  lengths = [len(r['tokens']) for r in raw]
  np.testing.assert_array_equal(columns['train']['mask'].sum(1), np.minimum(lengths, 128))
  for i, r in enumerate(raw):
    tagged = min(len(r['ner']), lengths[i])
    np.testing.assert_array_equal(columns['train']['ner'][i, :tagged], r['ner'][:tagged])
    assert (columns['train']['ner'][i, tagged:] == -1).all()
  assert info['vocab_size'] >= 2 and info['char_vocab_size'] >= 2
  assert columns['train']['tokens'].max() < info['vocab_size']
  assert columns['train']['chars'].max() < info['char_vocab_size']


def test_coulomb_features_are_invariant_to_rotation_and_atom_order():
  rng = np.random.default_rng(0)
  charges = np.zeros((1, 29), np.int64)
  charges[0, :5] = [6, 1, 1, 1, 8]
  positions = np.zeros((1, 29, 3))
  positions[0, :5] = rng.normal(size=(5, 3))
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  order = np.concatenate([rng.permutation(5), np.arange(5, 29)])
  moved = positions.copy()
  moved[0, :5] = positions[0, :5] @ q.T + 1.5
  a = catalog.coulomb_features(charges, positions)
  b = catalog.coulomb_features(charges[:, order], moved[:, order])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert a.shape == (1, 34)
  assert a[0, 29:].tolist() == [3, 1, 0, 1, 0]  # H, C, N, O, F
  assert (a[0, 5:29] == 0).all()  # Padding atoms add zero eigenvalues.
  # Diagonal term of a lone atom: Z^2.4 / 2.
  lone = np.zeros((1, 29), np.int64)
  lone[0, 0] = 8
  np.testing.assert_allclose(catalog.coulomb_features(lone, np.zeros((1, 29, 3)))[0, 0],
                             0.5 * 8 ** 2.4, rtol=1e-6)


def test_qm9_targets_are_standardised_by_the_train_split(tmp_path):
  _, _, columns, raw, info = load('qm9', tmp_path)
  for target in ('mu', 'gap', 'Cv'):
    values = np.array([r[target] for r in raw], np.float64)
    assert info['target_mean'][target] == pytest.approx(values.mean(), rel=1e-5)
    np.testing.assert_allclose(columns['train'][target],
                               (values - values.mean()) / values.std(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(columns['train']['x'].mean(0), 0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Memory.


def test_a_split_over_the_memory_limit_is_refused(tmp_path, monkeypatch):
  # 6 celeb_a images are 6 * 218 * 178 * 3 bytes = 0.65 MiB; dsprites' 6 * 64 * 64 are 24 KiB.
  monkeypatch.setenv('MTL_JAX_CATALOG_MAX_SPLIT_GB', str(0.5 / 1024))
  with pytest.raises(UserError, match=r"'celeb_a': split 'train' has 6 examples, about .* over "
                                      r"the limit .*celeb_a_20k.*MTL_JAX_CATALOG_MAX_SPLIT_GB"):
    load('celeb_a', tmp_path / 'a')
  load('dsprites', tmp_path / 'b')
  # The full-size estimate the docs quote: celeb_a's train images at the default limit.
  monkeypatch.delenv('MTL_JAX_CATALOG_MAX_SPLIT_GB')
  assert 162770 * 218 * 178 * 3 > catalog.max_split_bytes() > 20000 * 218 * 178 * 3
  monkeypatch.setenv('MTL_JAX_CATALOG_MAX_SPLIT_GB', 'lots')
  with pytest.raises(UserError, match='is not a number'):
    catalog.max_split_bytes()


def test_max_examples_caps_every_split(tmp_path):
  name = catalog.register('dsprites', max_examples=4)
  assert name == 'dsprites_4' and catalog.register('dsprites', max_examples=4) == name
  assert catalog.get_adapter('celeb_a_20k').max_examples == 20000
  assert 'celeb_a_20k' in catalog._variants(catalog.get_adapter('celeb_a'))
  spec, _, columns, raw, _ = load(name, tmp_path, num_examples=7)
  assert all(pipeline.num_rows(c) == 4 for c in columns.values())
  np.testing.assert_array_equal(columns['train']['shape'], [r['label_shape'] for r in raw[:4]])
  with pytest.raises(UserError, match='positive integer'):
    catalog.register('dsprites', max_examples=0)


# ---------------------------------------------------------------------------------------------
# Preparing.


def test_preparing_without_tensorflow_says_where_to_prepare(tmp_path):
  cls = data.get('smallnorb').builder_cls
  with mocked(1):
    builder = cls(data_dir=str(tmp_path))
    error = ModuleNotFoundError("No module named 'tensorflow'", name='tensorflow')
    with mock.patch.object(type(builder.tfds_builder), 'download_and_prepare',
                           side_effect=error):
      with pytest.raises(UserError, match='needs TensorFlow.*python -m mtl_jax.data.catalog '
                                          'prepare smallnorb'):
        builder.download_and_prepare()
    with mock.patch.object(type(builder.tfds_builder), 'download_and_prepare',
                           side_effect=ModuleNotFoundError("No module named 'h5py'",
                                                           name='h5py')):
      with pytest.raises(ModuleNotFoundError):  # Other missing modules are not hidden.
        builder.download_and_prepare()


def test_the_prepare_command_refuses_early_without_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(catalog, '_has_tensorflow', lambda: False)
  with pytest.raises(UserError, match='movielens: the tfds builder movielens/100k-ratings uses '
                                      'TensorFlow.*pip install tensorflow'):
    catalog.main(['prepare', 'movielens', '--data_dir', str(tmp_path)])
  with pytest.raises(UnknownNameError, match='valid catalog datasets'):
    catalog.main(['prepare', 'census_income', '--data_dir', str(tmp_path)])
  with mocked(2):  # conll2003 needs no TensorFlow: prepared (a no-op under the mock).
    catalog.main(['prepare', 'conll2003', '--data_dir', str(tmp_path)])
  assert os.path.exists(tmp_path / '.conll2003.prepare.lock')


def test_adapted_builder_is_the_tfds_builder_underneath(tmp_path):
  with mocked(1):
    builder = pipeline.prepare(data.get('movielens').builder_cls, str(tmp_path))
  assert builder.name == 'movielens' and builder.builder_config.name == '100k-ratings'
  assert builder.info.features is builder.tfds_builder.info.features
  assert builder.info.file_format.value == 'array_record'
  assert os.path.exists(tmp_path / '.movielens.prepare.lock')


# ---------------------------------------------------------------------------------------------
# Models and the trainer.


def test_image_input_layer_scales_to_unit_interval():
  layer = models.inputs.for_dataset(data.get('dsprites'), None, {})
  assert isinstance(layer, models.inputs.ImageScale)
  images = np.array([[[[0], [255]], [[51], [102]]]], np.uint8)
  out = layer.apply({}, images)
  assert out.dtype == np.float32
  np.testing.assert_allclose(np.asarray(out)[0, ..., 0], [[0.0, 1.0], [0.2, 0.4]])


def _tiny_config(dataset, tasks, data_dir, encoder, encoder_kwargs, best_metric):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from experiments.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.dataset, config.tasks, config.data_dir = dataset, tasks, str(data_dir)
  config.encoder = encoder
  config.encoder_kwargs = ml_collections.ConfigDict(encoder_kwargs)
  config.num_train_steps = 1
  config.batch_size = 8
  config.eval_batch_size = 16
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 1
  config.lr_schedule = 'constant'
  config.best_metric = best_metric
  config.keep_best = 1
  config.single_task_baselines = False
  return config


def test_trainer_runs_on_an_image_dataset(tmp_path):
  from mtl_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = _tiny_config('dsprites', ('shape', 'x_position'), tmp_path / 'data', 'cnn',
                        {'channels': (4,), 'hidden_sizes': (8,)}, 'val/avg/accuracy')
  with mocked(16):
    final = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  for split in ('val', 'test'):
    for task in ('shape', 'x_position'):
      assert 0.0 <= final[f'{split}/{task}/accuracy'] <= 1.0
      assert np.isfinite(final[f'{split}/{task}/loss'])


def test_trainer_runs_on_conll2003(tmp_path):
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = _tiny_config('conll2003', ('pos', 'chunk', 'ner'), tmp_path / 'data', 'bilstm',
                        {'hidden_size': 8, 'num_layers': 1}, 'val/avg/accuracy')
  config.token_embedding = ml_collections.ConfigDict({'embed_dim': 8})
  config.char_cnn = ml_collections.ConfigDict({'embed_dim': 4, 'filters': 4})
  with mocked(16):
    final = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  for task in ('pos', 'chunk', 'ner'):
    assert 0.0 <= final[f'test/{task}/accuracy'] <= 1.0
    assert np.isfinite(final[f'test/{task}/loss'])


@pytest.mark.slow
def test_trainer_runs_oxford_pet_with_segmentation(tmp_path):
  """The pet config's tasks (breed, species, per-pixel trimap) on one `fcn` trunk, shrunk."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from experiments.configs import oxford_pet  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = oxford_pet.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.encoder_kwargs = ml_collections.ConfigDict(
      {'channels': (4, 4, 8), 'output_stride': 4, 'norm': 'group'})
  config.num_train_steps = 1
  config.batch_size = 8
  config.eval_batch_size = 16
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 1
  config.keep_best = 1
  config.lr_schedule = 'constant'
  with mocked(16):
    final = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  for task in ('label', 'species', 'segmentation'):
    assert 0.0 <= final[f'test/{task}/accuracy'] <= 1.0
    assert np.isfinite(final[f'test/{task}/loss'])
  assert 0.0 <= final['test/segmentation/miou'] <= 1.0
