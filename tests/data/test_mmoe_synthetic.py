"""The MMoE paper's synthetic data (Ma et al., KDD 2018, §4.2): the generator and its builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mtl_jax import data
from mtl_jax.data import mmoe_synthetic as ms
from mtl_jax.errors import UserError

N = 20_000  # Enough for correlations and variances to within about 0.01.


def test_shapes_and_dtypes():
  out = ms.generate(0.5, 7, data_seed=0)
  assert set(out) == {'x', 'y1', 'y2'}
  assert out['x'].shape == (7, ms.D) == (7, 100)
  assert out['y1'].shape == out['y2'].shape == (7,)
  assert all(v.dtype == np.float64 for v in out.values())
  assert ms.generate(0.5, 0, data_seed=0)['x'].shape == (0, 100)


def test_seed_determinism_and_prefix():
  a = ms.generate(0.9, 500, data_seed=3)
  b = ms.generate(0.9, 500, data_seed=3)
  c = ms.generate(0.9, 500, data_seed=4)
  longer = ms.generate(0.9, 800, data_seed=3)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a[key], longer[key][:500])
    assert not np.allclose(a[key], c[key])


def test_p_only_changes_the_second_task():
  """One data seed fixes u1, u2, alpha, beta, x and the noise; w1 = c u1 does not depend on p."""
  low, high = ms.generate(0.5, 300, data_seed=1), ms.generate(1.0, 300, data_seed=1)
  np.testing.assert_array_equal(low['x'], high['x'])
  np.testing.assert_array_equal(low['y1'], high['y1'])
  assert not np.allclose(low['y2'], high['y2'])


@pytest.mark.parametrize('p', [-1.0, -0.3, 0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize('seed', [0, 7])
def test_weight_vectors_have_cosine_p(p, seed):
  params = ms.draw_parameters(seed)
  assert abs(params.u1 @ params.u2) < 1e-12
  np.testing.assert_allclose([np.linalg.norm(params.u1), np.linalg.norm(params.u2)], 1.0,
                             atol=1e-12)
  w1, w2 = ms.weight_vectors(params, p)
  np.testing.assert_allclose([np.linalg.norm(w1), np.linalg.norm(w2)], ms.C, atol=1e-12)
  assert abs(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)) - p) < 1e-12


def test_labels_follow_the_formula_with_the_stated_noise():
  """y_k - (w_k^T x + sum_i sin(alpha_i w_k^T x + beta_i)) is the noise: mean 0, variance 0.01,
  independent between the tasks. Written out with a loop over i, apart from `ms.label`."""
  p, seed = 0.7, 5
  out = ms.generate(p, N, data_seed=seed)
  params = ms.draw_parameters(seed)
  w1, w2 = ms.weight_vectors(params, p)
  noise = []
  for y, w in ((out['y1'], w1), (out['y2'], w2)):
    z = out['x'] @ w
    clean = z.copy()
    for i in range(ms.M):
      clean += np.sin(params.alpha[i] * z + params.beta[i])
    noise.append(y - clean)
  for eps in noise:
    assert abs(eps.mean()) < 4 * 0.1 / np.sqrt(N)
    assert abs(eps.var() / ms.NOISE_VARIANCE - 1) < 0.05
  assert abs(np.corrcoef(noise[0], noise[1])[0, 1]) < 4 / np.sqrt(N)
  assert abs(out['x'].mean()) < 0.01 and abs(out['x'].var() - 1) < 0.01


def test_alpha_beta_distribution():
  """alpha_i, beta_i ~ N(0, 0.01): standard deviation 0.1, over many data seeds."""
  draws = [ms.draw_parameters(seed) for seed in range(300)]
  alpha = np.concatenate([d.alpha for d in draws])
  beta = np.concatenate([d.beta for d in draws])
  assert len(draws[0].alpha) == len(draws[0].beta) == ms.M == 10
  for values in (alpha, beta):
    assert abs(values.mean()) < 0.01
    assert abs(values.std() / np.sqrt(ms.ALPHA_BETA_VARIANCE) - 1) < 0.05


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_label_correlation_decreases_with_p(seed):
  """The paper's check: the labels' Pearson correlation falls as p falls."""
  ps = [-1.0, -0.5, 0.0, 0.5, 0.9, 1.0]
  corr = []
  for p in ps:
    out = ms.generate(p, N, data_seed=seed)
    corr.append(np.corrcoef(out['y1'], out['y2'])[0, 1])
  assert np.all(np.diff(corr) > 0.02), dict(zip(ps, corr))
  assert corr[-1] > 0.95  # p = 1: the tasks differ by their independent noise only.
  assert abs(corr[2]) < 0.05  # p = 0: w1 ⟂ w2, and x is isotropic.


def test_bad_arguments():
  with pytest.raises(UserError, match='p must be in'):
    ms.generate(1.5, 10)
  with pytest.raises(UserError, match='data_seed'):
    ms.generate(0.5, 10, data_seed=-1)
  with pytest.raises(UserError, match='num_examples'):
    ms.generate(0.5, -1)


def test_names():
  assert [ms.p_tag(p) for p in (0.5, 0.9, 1.0, 0.25, -0.5, 0.0, 0.05)] == [
      '05', '09', '10', '025', 'm05', '00', '005']
  assert ms.dataset_name(0.5) == 'mmoe_synthetic_p05'
  assert ms.dataset_name(0.5, 3) == 'mmoe_synthetic_p05_d3'
  for name in ('mmoe_synthetic_p05', 'mmoe_synthetic_p09', 'mmoe_synthetic_p10'):
    spec = data.get(name)
    assert spec.input_kind == 'dense' and [t.name for t in spec.tasks] == ['y1', 'y2']
    assert all(t.kind == 'regression' for t in spec.tasks)
  assert ms.register(0.3, 2) == 'mmoe_synthetic_p03_d2' == ms.register(0.3, 2)
  assert data.get('mmoe_synthetic_p03_d2').builder_cls.builder_configs['p03_d2'].p == 0.3


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  builder = data.prepare(data.get('mmoe_synthetic_p09').builder_cls, data_dir)
  return data_dir, builder


def test_builder_reads_back_the_generated_arrays(built):
  data_dir, builder = built
  assert builder.data_path.parts[-3:] == ('mmoe_synthetic', 'p09', '1.0.0')
  sizes = ms.SPLIT_SIZES
  expected = ms.generate(0.9, sum(sizes.values()), data_seed=0)
  start = 0
  for split, size in sizes.items():
    columns = data.load_columns(builder, split)
    assert builder.info.splits[split].num_examples == size
    for key in ('x', 'y1', 'y2'):
      np.testing.assert_array_equal(
          columns[key], expected[key][start:start + size].astype(np.float32), err_msg=split)
    start += size
  # The same rows through tfds' own reader, by the registered config name.
  source = tfds.data_source('mmoe_synthetic/p09', data_dir=data_dir, split='validation')
  np.testing.assert_array_equal(source[5]['x'], expected['x'][sizes['train'] + 5]
                                .astype(np.float32))
  metadata = builder.info.metadata
  w1, w2 = np.array(metadata['w1']), np.array(metadata['w2'])
  assert metadata['p'] == 0.9 and metadata['data_seed'] == 0
  assert abs(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)) - 0.9) < 1e-12


def test_batches_are_dense(built):
  _, builder = built
  spec = data.get('mmoe_synthetic_p09')
  columns = data.load_columns(builder, 'train')
  data.check_columns(columns, spec.tasks, 'train')
  batch = next(data.train_iterator(columns, 32, seed=0, transform=spec.to_batch))
  assert isinstance(batch['inputs'], np.ndarray)
  assert batch['inputs'].shape == (32, 100) and batch['inputs'].dtype == np.float32
  for task in ('y1', 'y2'):
    assert batch['labels'][task].shape == (32,) and batch['labels'][task].dtype == np.float32
    assert batch['label_mask'][task].all()
