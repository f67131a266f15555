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


# The regime `nonlinear`: alpha, beta of standard deviation 1, c = 1, 300k/10k/20k examples.


def test_regimes_and_their_constants():
  paper, nonlinear = ms.get_regime('paper'), ms.get_regime('nonlinear')
  assert ms.DEFAULT_REGIME == 'paper'
  assert (paper.alpha_beta_variance, paper.c, dict(paper.split_sizes)) == (
      ms.ALPHA_BETA_VARIANCE, ms.C, ms.SPLIT_SIZES)
  assert (nonlinear.alpha_beta_variance, nonlinear.c) == (1.0, 1.0)
  assert nonlinear.split_sizes['train'] >= 200_000
  assert ms.get_regime(nonlinear) is nonlinear


def test_default_regime_is_the_old_behaviour():
  """Without a regime, and with regime='paper', the draws are the same arrays."""
  a = ms.generate(0.5, 200, data_seed=2)
  b = ms.generate(0.5, 200, data_seed=2, regime='paper')
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(ms.draw_parameters(2).alpha,
                                ms.draw_parameters(2, regime='paper').alpha)


def test_nonlinear_alpha_beta_distribution():
  """alpha_i, beta_i ~ N(0, 1): standard deviation 1 (not 0.1), over many data seeds."""
  draws = [ms.draw_parameters(seed, regime='nonlinear') for seed in range(300)]
  alpha = np.concatenate([d.alpha for d in draws])
  beta = np.concatenate([d.beta for d in draws])
  assert len(draws[0].alpha) == len(draws[0].beta) == 10
  for values in (alpha, beta):
    assert abs(values.mean()) < 0.1
    assert abs(values.std() - 1.0) < 0.05
  # Same streams as the regime `paper`: the same standard normal draws, scaled; same u1, u2.
  paper = ms.draw_parameters(4)
  nonlinear = ms.draw_parameters(4, regime='nonlinear')
  np.testing.assert_allclose(nonlinear.alpha, paper.alpha / np.sqrt(ms.ALPHA_BETA_VARIANCE))
  np.testing.assert_array_equal(nonlinear.u1, paper.u1)


def test_nonlinear_labels_follow_the_formula():
  p, seed = 0.9, 3
  out = ms.generate(p, N, data_seed=seed, regime='nonlinear')
  params = ms.draw_parameters(seed, regime='nonlinear')
  w1, w2 = ms.weight_vectors(params, p, 1.0)
  for y, w in ((out['y1'], w1), (out['y2'], w2)):
    z = out['x'] @ w
    clean = z + sum(np.sin(params.alpha[i] * z + params.beta[i]) for i in range(10))
    assert abs((y - clean).var() / ms.NOISE_VARIANCE - 1) < 0.05


def test_nonlinear_labels_are_not_nearly_linear():
  """Least squares leaves only the noise in `paper` (residual variance about 0.01) and a sizeable
  part of the labels in `nonlinear` (over 5% of their variance, far above the noise)."""
  for seed in (0, 1, 2):
    residual, fraction = {}, {}
    for regime in ('paper', 'nonlinear'):
      out = ms.generate(0.5, 5000, data_seed=seed, regime=regime)
      design = np.concatenate([out['x'], np.ones((5000, 1))], axis=1)
      coef, *_ = np.linalg.lstsq(design, out['y1'], rcond=None)
      residual[regime] = np.var(out['y1'] - design @ coef)
      fraction[regime] = residual[regime] / np.var(out['y1'])
    assert residual['paper'] < 1.2 * ms.NOISE_VARIANCE, (seed, residual)
    assert fraction['nonlinear'] > 0.05 and residual['nonlinear'] > 10 * ms.NOISE_VARIANCE, (
        seed, residual, fraction)


def test_nonlinear_pairing_across_p():
  """One data seed: the same x, y1 and noise at every p; y2 changes with p only through w2."""
  seed = 5
  by_p = {p: ms.generate(p, 400, data_seed=seed, regime='nonlinear') for p in (0.5, 0.9, 1.0)}
  params = ms.draw_parameters(seed, regime='nonlinear')
  noise = []
  for p, out in by_p.items():
    np.testing.assert_array_equal(out['x'], by_p[1.0]['x'])
    np.testing.assert_array_equal(out['y1'], by_p[1.0]['y1'])
    _, w2 = ms.weight_vectors(params, p, 1.0)
    noise.append(out['y2'] - ms.label(out['x'] @ w2, params))
  np.testing.assert_allclose(noise[0], noise[1], atol=1e-9)
  np.testing.assert_allclose(noise[0], noise[2], atol=1e-9)
  assert not np.allclose(by_p[0.5]['y2'], by_p[0.9]['y2'])
  # And the same x and noise as the regime `paper` at that seed (only alpha, beta differ).
  np.testing.assert_array_equal(ms.generate(0.5, 400, data_seed=seed)['x'], by_p[0.5]['x'])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nonlinear_label_correlation_decreases_with_p(seed):
  ps = [0.0, 0.5, 0.9, 1.0]
  corr = []
  for p in ps:
    out = ms.generate(p, N, data_seed=seed, regime='nonlinear')
    corr.append(np.corrcoef(out['y1'], out['y2'])[0, 1])
  assert np.all(np.diff(corr) > 0.05), dict(zip(ps, corr))
  assert corr[-1] > 0.99  # p = 1: the labels differ by the noise only, small next to them.
  assert abs(corr[0]) < 0.05


def test_nonlinear_names_and_registration():
  assert ms.config_name(0.5, regime='nonlinear') == 'p05_nl'
  assert ms.config_name(0.9, 3, regime='nonlinear') == 'p09_nl_d3'
  assert ms.dataset_name(1.0, regime='nonlinear') == 'mmoe_synthetic_p10_nl'
  for tag in ('p05_nl', 'p09_nl', 'p10_nl'):
    spec = data.get(f'mmoe_synthetic_{tag}')
    assert spec.input_kind == 'dense' and [t.name for t in spec.tasks] == ['y1', 'y2']
    config = spec.builder_cls.builder_configs[tag]
    assert config.regime == 'nonlinear' and config.data_seed == 0
    assert tag in ms.MmoeSynthetic.builder_configs  # So tfds.data_source('mmoe_synthetic/p05_nl').
  assert data.get('mmoe_synthetic_p05').builder_cls.builder_configs['p05'].regime == 'paper'
  name = ms.register(0.3, 2, regime='nonlinear')
  assert name == 'mmoe_synthetic_p03_nl_d2'
  assert data.get(name).builder_cls.builder_configs['p03_nl_d2'].p == 0.3
  assert ms.builder_class(0.3, 2, 'nonlinear') is data.get(name).builder_cls
  assert ms.builder_class(0.3, 2) is not ms.builder_class(0.3, 2, 'nonlinear')


def test_bad_regime_lists_the_valid_ones():
  for call in (lambda: ms.generate(0.5, 10, regime='linear'),
               lambda: ms.register(0.5, 0, regime='linear'),
               lambda: ms.get_regime('Nonlinear')):
    with pytest.raises(UserError, match="unknown regime .*valid regimes: paper, nonlinear"):
      call()


def test_nonlinear_builder_metadata_and_splits(tmp_path, monkeypatch):
  """The builder writes the regime's splits and parameters; with the split sizes made small
  (monkeypatched, so the test stays fast) its arrays are `generate`'s."""
  small = ms.Regime('nonlinear', '_nl', 1.0, 1.0, {'train': 300, 'validation': 50, 'test': 70})
  monkeypatch.setitem(ms.REGIMES, 'nonlinear', small)
  builder = data.prepare(ms.builder_class(0.9, 1, 'nonlinear'), str(tmp_path))
  assert builder.data_path.parts[-3:] == ('mmoe_synthetic', 'p09_nl_d1', '1.0.0')
  expected = ms.generate(0.9, 420, data_seed=1, regime='nonlinear')
  start = 0
  for split, size in small.split_sizes.items():
    columns = data.load_columns(builder, split)
    np.testing.assert_array_equal(columns['y2'],
                                  expected['y2'][start:start + size].astype(np.float32))
    start += size
  metadata = builder.info.metadata
  assert metadata['regime'] == 'nonlinear' and metadata['alpha_beta_variance'] == 1.0
  np.testing.assert_allclose(metadata['alpha'], ms.draw_parameters(1, regime='nonlinear').alpha)
