"""The MMoE synthetic sweep: end to end in a tiny setting, its parameter budgets, and its table.

One real training run only (each run compiles its programs, ~10-20 s on a loaded 2-core CPU);
the table's arithmetic and the plot are checked on hand-made records.
"""

import json
import os

import numpy as np
import pytest

from experiments.configs import mmoe_synthetic as config_lib
from experiments.mmoe_synthetic import run
from mtl_jax import data
from mtl_jax import models
from mtl_jax.data import mmoe_synthetic
from mtl_jax.errors import UserError

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tfds'))
  data.prepare(mmoe_synthetic.builder_class(0.5), path)
  return path


def test_config_arguments():
  config = config_lib.get_config('hard,p=0.9,data_seed=2')
  assert config.arch == 'hard' and config.dataset == 'mmoe_synthetic_p09_d2'
  assert tuple(config.encoder_kwargs.hidden_sizes) == (config_lib.shared_bottom_units(),)
  config = config_lib.get_config('mmoe,p=0.5')
  assert config.dataset == 'mmoe_synthetic_p05' and config.arch_kwargs.num_experts == 8
  assert tuple(config.head_hidden_sizes) == (8,)
  with pytest.raises(ValueError, match='unknown arch'):
    config_lib.get_config('soft')
  with pytest.raises(ValueError, match='unknown config argument'):
    config_lib.get_config('mmoe,q=1')


def test_parameter_budgets(data_dir):
  """mmoe's count is the formula's; shared-bottom's within 1% of it, cgc's within 3%; ple's
  second level (8 experts 16 -> 16 and its gates) adds about a fifth."""
  counts = {}
  for arch in config_lib.ARCHS:
    if arch not in models.ARCHS:
      continue  # An architecture that has not landed yet.
    config = config_lib.get_config(f'{arch},p=0.5')
    config.data_dir = data_dir
    counts[arch], correlation = run.describe(config)
    assert 0.4 < correlation < 0.6
  assert counts['mmoe'] == config_lib.mmoe_parameters()
  tolerance = {'hard': 0.01, 'cgc': 0.03, 'ple': 0.2}
  for arch, count in counts.items():
    assert abs(count / counts['mmoe'] - 1) <= tolerance.get(arch, 0.0), counts


def test_sweep_end_to_end(tmp_path, data_dir):
  out = str(tmp_path / 'out')
  argv = ['--out', out, '--archs', 'hard', '--p', '0.5', '--seeds', '1', '--steps', '20',
          '--data_dir', data_dir]
  result = run.main(argv)
  (record,) = result['runs']
  assert (record['arch'], record['p'], record['seed']) == ('hard', 0.5, 0)
  assert record['config']['num_train_steps'] == 20
  assert record['config']['dataset'] == 'mmoe_synthetic_p05'
  for task in ('y1', 'y2'):
    assert np.isfinite(record['final'][f'test/{task}/loss'])
  assert record['curves']['val_step'][-1] == record['curves']['train_step'][-1] == 20
  assert os.path.exists(os.path.join(out, 'p05', 'seed0', 'hard', 'final_metrics.json'))
  with open(os.path.join(out, 'results.md')) as f:
    table = f.read()
  final = record['final']
  assert (f'| 0.5 | {record["label_correlation"]:.3f} | shared-bottom | {record["params"]:,} | '
          f'{final["test/y1/loss"]:.5f} ± 0.00000 |') in table
  with open(os.path.join(out, 'results.json')) as f:
    assert json.load(f)['settings']['steps'] == 20
  # Least squares on the same (regenerated) data is near the noise floor: the labels are nearly
  # linear in x.
  ols = result['least_squares'][0.5]
  assert 0.009 < ols['avg'][0] < 0.0115
  np.testing.assert_allclose(ols['y1'][0], run.least_squares(0.5, 0)['y1'])
  with open(os.path.join(out, 'mmoe_synthetic.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC

  # A second call finds the run done and reuses it.
  again = run.main(argv)
  assert again['runs'][0]['final'] == final and again['runs'][0]['seconds'] == record['seconds']


def _record(arch, p, seed, y1, y2):
  steps = [10, 20]
  return {'arch': arch, 'p': p, 'seed': seed, 'seconds': 1.0, 'params': 100,
          'label_correlation': p, 'config': {'num_train_steps': 20},
          'final': {'test/y1/loss': y1, 'test/y2/loss': y2, 'test/avg/loss': (y1 + y2) / 2},
          'curves': {'val_step': steps, 'val_loss': [2 * y1, y1], 'train_step': steps,
                     'train_loss': [2 * y2, y2]}}


def test_table_and_plot_from_records(tmp_path):
  records = [
      _record('hard', 0.5, 0, 0.030, 0.050), _record('mmoe', 0.5, 0, 0.020, 0.020),
      _record('hard', 0.5, 1, 0.040, 0.040), _record('mmoe', 0.5, 1, 0.050, 0.050),
      _record('hard', 1.0, 0, 0.020, 0.020), _record('mmoe', 1.0, 0, 0.020, 0.010),
      _record('hard', 1.0, 1, 0.030, 0.030), _record('mmoe', 1.0, 1, 0.020, 0.020),
  ]
  adv = run.advantage(records, [0.5, 1.0])
  # p = 0.5: hard - mmoe = 0.04 - 0.02 = +0.02 and 0.04 - 0.05 = -0.01.
  assert adv[0.5]['n'] == 2 and adv[0.5]['wins'] == 1
  np.testing.assert_allclose(adv[0.5]['mean'], 0.005)
  np.testing.assert_allclose(adv[0.5]['std'], np.std([0.02, -0.01], ddof=1))
  np.testing.assert_allclose(adv[1.0]['mean'], (0.005 + 0.01) / 2)
  assert adv[1.0]['wins'] == 2
  # Advantage at p = 0.5 minus at p = 1.0, per seed: 0.02 - 0.005 and -0.01 - 0.01.
  change = run.trend(records, [0.5, 1.0])
  assert (change['from_p'], change['to_p'], change['n'], change['grows']) == (1.0, 0.5, 2, 1)
  np.testing.assert_allclose(change['mean'], (0.015 - 0.02) / 2)
  np.testing.assert_allclose(change['std'], np.std([0.015, -0.02], ddof=1))
  assert run.trend(records, [0.5]) is None

  ols = {0.5: {'y1': (0.011, 0.001), 'y2': (0.012, 0.002), 'avg': (0.0115, 0.0015)}}
  table = run.markdown(records, ['hard', 'mmoe'], [0.5, 1.0], {'steps': 20}, ols)
  assert ('| 0.5 | 0.500 | shared-bottom | 100 | 0.03500 ± 0.00707 | 0.04500 ± 0.00707 | '
          '0.04000 ± 0.00000 | 0.04500 ± 0.00707 | 1.0 |') in table  # train MSE: the y2 values
  assert ('| 0.5 | 0.500 | least squares per task (reference) | 202 | 0.01100 ± 0.00100 | '
          '0.01200 ± 0.00200 | 0.01150 ± 0.00150 | - | - |') in table
  assert table.count('least squares') == 1  # p = 1.0 has no reference here.
  assert f'| 0.5 | +0.00500 | {np.std([0.02, -0.01], ddof=1):.5f} | 1/2 |' in table
  assert '| 1.0 | +0.00750 |' in table and '| 2/2 |' in table
  assert (f'from p = 1.0 to p = 0.5, paired by replicate: -0.00250 ± '
          f'{np.std([0.015, -0.02], ddof=1):.5f} (std); it grows in 1/2.') in table

  path = str(tmp_path / 'plot.png')
  assert run.plot(records, ['hard', 'mmoe'], [0.5, 1.0], path, ols)
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_MAGIC


def test_config_regime_argument():
  nonlinear = config_lib.get_config('mmoe,p=0.5,regime=nonlinear')
  assert nonlinear.dataset == 'mmoe_synthetic_p05_nl'
  assert config_lib.get_config('hard,p=0.9,data_seed=2,regime=nonlinear').dataset == (
      'mmoe_synthetic_p09_nl_d2')
  # The default is the regime `paper`, the old datasets; the models and training are the same.
  default = config_lib.get_config('mmoe,p=0.5').to_dict()
  assert default == config_lib.get_config('mmoe,p=0.5,regime=paper').to_dict()
  assert default['dataset'] == 'mmoe_synthetic_p05'
  # The regime `nonlinear` trains longer, with a decaying learning rate; the rest is the same.
  differ = {'dataset', 'num_train_steps', 'checkpoint_every_steps', 'lr_schedule'}
  assert {k: v for k, v in default.items() if k not in differ} == {
      k: v for k, v in nonlinear.to_dict().items() if k not in differ}
  assert (default['num_train_steps'], default['lr_schedule']) == (3000, 'constant')
  assert (nonlinear.num_train_steps, nonlinear.checkpoint_every_steps,
          nonlinear.lr_schedule, nonlinear.learning_rate) == (10_000, 10_000, 'cosine', 1e-3)
  assert config_lib.parse_arg('cgc,regime=nonlinear') == ('cgc', 1.0, 0, 'nonlinear')


def test_bad_regime_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='unknown regime .*valid regimes: paper, nonlinear'):
    config_lib.get_config('mmoe,p=0.5,regime=linear')
  out = str(tmp_path / 'out')
  with pytest.raises(UserError, match='valid regimes: paper, nonlinear'):
    run.main(['--out', out, '--regime', 'linear', '--seeds', '1'])
  assert not os.path.exists(os.path.join(out, 'results.md'))


def test_sweep_nonlinear_regime_end_to_end(tmp_path, monkeypatch):
  """The sweep with --regime nonlinear, on the regime's data made small (monkeypatched split
  sizes, so that no 300k-example dataset is built): its datasets, folders and table."""
  small = mmoe_synthetic.Regime('nonlinear', '_nl', 1.0, 1.0,
                                {'train': 2000, 'validation': 300, 'test': 500})
  monkeypatch.setitem(mmoe_synthetic.REGIMES, 'nonlinear', small)
  out, data_dir = str(tmp_path / 'out'), str(tmp_path / 'tfds')
  result = run.main(['--out', out, '--archs', 'mmoe', '--p', '0.5', '--seeds', '1',
                     '--steps', '20', '--data_dir', data_dir, '--regime', 'nonlinear',
                     '--learning_rate', '0.002'])
  (record,) = result['runs']
  assert record['regime'] == 'nonlinear' and record['config']['learning_rate'] == 0.002
  assert record['config']['dataset'] == 'mmoe_synthetic_p05_nl'
  assert os.path.exists(os.path.join(data_dir, 'mmoe_synthetic', 'p05_nl', '1.0.0'))
  assert os.path.exists(os.path.join(out, 'p05_nl', 'seed0', 'mmoe', 'final_metrics.json'))
  assert 0.1 < record['label_correlation'] < 0.6  # Nonlinear labels at p = 0.5 (paper: ~0.5).
  assert result['settings']['regime'] == 'nonlinear'
  # Least squares is far from the noise floor on these labels (unlike the regime `paper`) and
  # is fitted on the regime's (small) splits.
  ols = result['least_squares'][0.5]
  assert ols['avg'][0] > 10 * mmoe_synthetic.NOISE_VARIANCE
  np.testing.assert_allclose(ols['y1'][0], run.least_squares(0.5, 0, 'nonlinear')['y1'])
  assert run.least_squares(0.5, 0, 'nonlinear')['y1'] != run.least_squares(0.5, 0)['y1']
  with open(os.path.join(out, 'results.md')) as f:
    assert f.read().startswith('Data regime `nonlinear`.')
  with open(os.path.join(out, 'mmoe_synthetic.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC
