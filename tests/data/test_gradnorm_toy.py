"""GradNorm's toy regression tasks (`mtl_jax/data/gradnorm_toy.py`): the generated data has the
stated form f_i(x) = sigma_i tanh((B + eps_i) x) with the stated distributions, the builder reads
it back, and the trainer runs on it."""

import numpy as np
import pytest

from mtl_jax import data
from mtl_jax.data import gradnorm_toy
from mtl_jax.errors import UserError


def _recovered_matrices(columns, sigmas):
  """atanh(f_i / sigma_i) = x (B + eps_i)^T exactly: least squares recovers B + eps_i."""
  x = columns['x']
  mats = []
  for i, sigma in enumerate(sigmas):
    z = np.arctanh(np.clip(columns[f't{i}'] / sigma, -1 + 1e-15, 1 - 1e-15))
    w, residual, rank, _ = np.linalg.lstsq(x, z, rcond=None)
    assert rank == gradnorm_toy.INPUT_DIM
    mats.append(w.T)
  return mats


def test_targets_are_scaled_tanh_of_a_shared_plus_task_specific_linear_map():
  sigmas = (1.0, 100.0, 3.0)
  columns = gradnorm_toy.generate(sigmas, 600, data_seed=1)
  assert columns['x'].shape == (600, 250)
  assert np.std(columns['x']) == pytest.approx(gradnorm_toy.X_STD, rel=0.02)
  for i, sigma in enumerate(sigmas):
    y = columns[f't{i}']
    assert y.shape == (600, 100) and np.all(np.abs(y) < sigma)
  mats = _recovered_matrices(columns, sigmas)
  x = columns['x']
  for i, (sigma, mat) in enumerate(zip(sigmas, mats)):
    np.testing.assert_allclose(sigma * np.tanh(x @ mat.T), columns[f't{i}'], rtol=1e-6,
                               atol=1e-9 * sigma)
    # B + eps_i: elements of standard deviation sqrt(10^2 + 3.5^2).
    assert np.std(mat) == pytest.approx(np.hypot(10.0, 3.5), rel=0.03)
  # eps_i - eps_j: the shared B cancels, leaving sqrt(2) * 3.5; B itself is common to all tasks.
  assert np.std(mats[0] - mats[1]) == pytest.approx(np.sqrt(2) * 3.5, rel=0.03)
  assert np.corrcoef(mats[0].ravel(), mats[2].ravel())[0, 1] == pytest.approx(
      100 / (100 + 3.5**2), abs=0.03)


def test_the_seed_fixes_everything_and_sigma_only_scales():
  a = gradnorm_toy.generate((1.0, 100.0), 50, data_seed=0)
  b = gradnorm_toy.generate((1.0, 2.0, 3.0), 50, data_seed=0)
  np.testing.assert_array_equal(a['x'], b['x'])
  np.testing.assert_array_equal(a['t0'], b['t0'])
  np.testing.assert_allclose(a['t1'] / 100.0, b['t1'] / 2.0, rtol=1e-12)
  c = gradnorm_toy.generate((1.0, 100.0), 50, data_seed=1)
  assert not np.allclose(a['t0'], c['t0'])
  # A longer draw starts with the shorter one (equal up to the matrix product's rounding).
  np.testing.assert_allclose(gradnorm_toy.generate((1.0, 100.0), 80)['t1'][:50], a['t1'],
                             rtol=1e-12, atol=1e-12)


def test_bad_arguments_and_names():
  with pytest.raises(UserError, match='sigmas must be positive'):
    gradnorm_toy.generate((1.0, -2.0), 5)
  with pytest.raises(UserError, match='data_seed'):
    gradnorm_toy.generate((1.0,), 5, data_seed=-1)
  assert gradnorm_toy.config_name((1, 100)) == 't2'
  assert gradnorm_toy.config_name((1.0, 0.5), 3) == 's1p0_0p5_d3'
  assert {'gradnorm_toy_t2', 'gradnorm_toy_t10'} <= set(data.DATASETS)
  spec = data.get('gradnorm_toy_t10')
  assert [(t.name, t.kind, t.num_outputs) for t in spec.tasks] == [
      (f't{i}', 'regression', 100) for i in range(10)]


def test_builder_reads_back_the_generated_data_and_the_trainer_runs(tmp_path):
  from experiments.configs import gradnorm_toy as config_lib  # pylint: disable=g-import-not-at-top
  from mtl_jax.train import loop  # pylint: disable=g-import-not-at-top
  spec = data.get('gradnorm_toy_t2')
  builder = data.prepare(spec.builder_cls, str(tmp_path / 'data'))
  columns = {split: data.load_columns(builder, split) for split in ('train', 'validation', 'test')}
  assert {s: data.num_rows(c) for s, c in columns.items()} == gradnorm_toy.SPLIT_SIZES
  generated = gradnorm_toy.generate((1.0, 100.0), 10_000)
  for key in ('x', 't0', 't1'):
    np.testing.assert_array_equal(columns['train'][key], generated[key][:8000].astype(np.float32))
    np.testing.assert_array_equal(columns['test'][key], generated[key][9000:].astype(np.float32))
  config = config_lib.get_config()
  config.data_dir = str(tmp_path / 'data')
  config.num_train_steps = 20
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 20
  config.warmup_steps = 5
  final = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  # The tasks' test RMSE is on their own scales (targets' standard deviation ~0.8 sigma).
  assert 0 < final['test/t0/rmse'] < 2.0 and 0 < final['test/t1/rmse'] < 200.0
