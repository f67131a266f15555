"""The report on synthetic workdirs: Δm%, ranks, Pareto front and seed means against numbers worked
out by hand; baselines found in the run or given with --baseline; the files written.
(The end-to-end report on real tiny runs is in tests/test_sweep.py.)"""

import csv
import json
import os

import numpy as np
import pytest

from mtl_jax import metrics as metrics_lib
from mtl_jax import report
from mtl_jax.errors import UserError

STL = {'a': 0.8, 'b': 1.0}  # single-task test auc of task a, rmse of task b


def write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f)


def final_metrics(a_auc, b_rmse, prefix='test'):
  return {f'{prefix}/a/auc': a_auc, f'{prefix}/a/loss': 0.5, f'{prefix}/b/rmse': b_rmse,
          f'{prefix}/b/mae': b_rmse / 2, f'{prefix}/b/loss': b_rmse ** 2, 'best_step': 30}


def write_run(path, a_auc, b_rmse, overrides=None, baselines=True, steps=(10, 20, 30), weight=1.0):
  """A finished run as the loop and the sweep runner leave it."""
  config = {'tasks': ['a', 'b'], 'best_metric': 'val/avg/auc', 'method': 'x'}
  write_json(os.path.join(path, 'final_metrics.json'), final_metrics(a_auc, b_rmse))
  if overrides is not None:
    write_json(os.path.join(path, 'sweep_trial.json'),
               {'overrides': overrides, 'config': config, 'finished': True})
  else:  # a plain launch.py run: the config is in its checkpoint
    write_json(os.path.join(path, 'checkpoints', '30', 'config', 'metadata'), config)
  if baselines:
    write_json(os.path.join(path, 'single_task', 'a', 'final_metrics.json'),
               {'test/a/auc': STL['a'], 'test/a/loss': 0.4})
    write_json(os.path.join(path, 'single_task', 'b', 'final_metrics.json'),
               {'test/b/rmse': STL['b'], 'test/b/mae': 0.4, 'test/b/loss': 1.0})
  with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
    for i, step in enumerate(steps):
      f.write(json.dumps({'step': step, 'time': 0, 'train/a/loss': 1.0 / (i + 1),
                          'train/b/loss': 2.0 / (i + 1), 'train/weights/a': weight * (i + 1),
                          'train/weights/b': 2 - weight, 'train/grad_norm': 1.0}) + '\n')
      f.write(json.dumps({'step': step, 'time': 0, 'val/a/auc': 0.5 + 0.1 * i,
                          'val/b/rmse': 2.0 - 0.3 * i, 'val/avg/loss': 1.0}) + '\n')
    f.write(json.dumps({'step': steps[-1], 'time': 0,
                        **{f'final/{k}': v for k, v in final_metrics(0, 0).items()}}) + '\n')


@pytest.fixture
def sweep_dir(tmp_path):
  root = tmp_path / 'sweep'
  for method, a, b in [('ew', 0.80, 1.00), ('mgda', 0.85, 1.10), ('uw', 0.70, 0.90),
                       ('pcgrad', 0.80, 0.95)]:
    write_run(str(root / f'method={method},seed=0'), a, b, {'method': method, 'seed': 0},
              weight={'ew': 1.0, 'mgda': 0.5, 'uw': 0.8, 'pcgrad': 1.2}[method])
  return str(root)


def test_delta_m_ranks_and_order_against_hand_computed_numbers(sweep_dir):
  result = report.collate(report.find_runs([sweep_dir]))
  assert result['tasks'] == ['a', 'b'] and result['metrics'] == {'a': 'auc', 'b': 'rmse'}
  rows = {r['overrides']['method']: r for r in result['rows']}
  # Δm% = mean(+(a - 0.8) / 0.8, -(b - 1.0) / 1.0) * 100
  assert rows['ew']['delta_m'] == pytest.approx(0.0)
  assert rows['mgda']['delta_m'] == pytest.approx((0.05 / 0.8 - 0.10) / 2 * 100)  # -1.875
  assert rows['uw']['delta_m'] == pytest.approx((-0.10 / 0.8 + 0.10) / 2 * 100)  # -1.25
  assert rows['pcgrad']['delta_m'] == pytest.approx(2.5)
  # a (higher better): mgda 1, ew = pcgrad 2.5, uw 4; b (lower better): uw 1, pcgrad 2, ew 3, mgda 4
  assert {m: r['ranks'] for m, r in rows.items()} == {
      'mgda': {'a': 1, 'b': 4}, 'ew': {'a': 2.5, 'b': 3}, 'pcgrad': {'a': 2.5, 'b': 2},
      'uw': {'a': 4, 'b': 1}}
  assert [(r['overrides']['method'], r['mean_rank']) for r in result['rows']] == [
      ('pcgrad', 2.25), ('mgda', 2.5), ('uw', 2.5), ('ew', 2.75)]
  assert result['override_keys'] == ['method', 'seed'] and result['groups'] == []


def test_files_written_and_readable(sweep_dir, tmp_path, capsys):
  out = tmp_path / 'out'
  assert report.main([sweep_dir, '--out', str(out)]) == 0
  assert 'Wrote report.md, report.csv, learning_curves.png, task_weights.png, pareto.png' in (
      capsys.readouterr().out)
  with open(out / 'report.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['method'] for r in rows] == ['pcgrad', 'mgda', 'uw', 'ew']
  assert float(rows[1]['delta_m_percent']) == pytest.approx(-1.875)
  assert float(rows[1]['test/a/auc']) == 0.85 and float(rows[1]['single_task/b/rmse']) == 1.0
  assert float(rows[0]['mean_rank']) == 2.25 and float(rows[2]['rank/b']) == 1
  markdown = (out / 'report.md').read_text()
  assert '| `method=pcgrad,seed=0` | pcgrad | 0 | 0.8000 | 0.9500 | +2.500 | 2.25 |' in markdown
  assert ('* a auc 0.8000, b rmse 1.0000: the single_task/ runs of `method=pcgrad,seed=0`, '
          '`method=mgda,seed=0`') in markdown  # one line for the shared baseline numbers
  import matplotlib.image
  for name in ('learning_curves.png', 'task_weights.png', 'pareto.png'):
    image = matplotlib.image.imread(out / name)
    assert image.shape[0] > 400 and image.shape[1] > 600, name
    assert (out / name).stat().st_size > 20_000 and image[..., :3].std() > 0.05, name


def test_default_out_dir_and_errors(sweep_dir, tmp_path, capsys):
  assert report.main([sweep_dir]) == 0
  assert os.path.exists(os.path.join(sweep_dir, 'report', 'pareto.png'))
  assert report.main([sweep_dir]) == 0  # the report directory is not taken for a run
  assert report.main([str(tmp_path / 'nothing')]) == 2
  os.makedirs(tmp_path / 'empty')
  assert report.main([str(tmp_path / 'empty')]) == 2
  assert 'no finished runs' in capsys.readouterr().err
  assert report.main([sweep_dir, '--metric', 'f1']) == 2
  assert "--metric f1: not a test metric of task 'a'" in capsys.readouterr().err
  assert report.main([sweep_dir, '--metric', 'loss', '--out', str(tmp_path / 'l')]) == 0
  with open(tmp_path / 'l' / 'report.csv') as f:
    assert 'test/a/loss' in f.readline()


def test_baselines_from_the_run_or_from_baseline_and_the_config_from_a_checkpoint(tmp_path):
  # Two plain workdirs without baselines (their config only in the checkpoint), one with.
  write_run(str(tmp_path / 'runs' / 'one'), 0.88, 0.80, baselines=False)
  write_run(str(tmp_path / 'runs' / 'two'), 0.80, 1.20, baselines=False)
  write_run(str(tmp_path / 'base'), 0.5, 0.5, baselines=True)
  runs = report.find_runs([str(tmp_path / 'runs')])
  assert sorted(r.label for r in runs) == ['one', 'two']
  without = {r['run']: r['delta_m'] for r in report.collate(runs)['rows']}
  assert without == {'one': None, 'two': None}
  result = report.collate(report.find_runs([str(tmp_path / 'runs')]),
                          baseline_dir=str(tmp_path / 'base'))
  rows = {r['run']: r for r in result['rows']}
  assert rows['one']['delta_m'] == pytest.approx((0.08 / 0.8 + 0.2) / 2 * 100)
  assert rows['two']['delta_m'] == pytest.approx((0.0 - 0.2) / 2 * 100)
  assert rows['one']['baseline_source'] == str(tmp_path / 'base' / 'single_task')
  assert result['metrics'] == {'a': 'auc', 'b': 'rmse'}
  # Single-task runs are baselines, never rows of their own; a run given directly is found too.
  labelled = report.find_runs([str(tmp_path / 'base'), str(tmp_path / 'runs' / 'one')])
  assert [r.label for r in labelled] == ['base', 'one']


def test_seed_means(tmp_path):
  root = tmp_path / 'sweep'
  for method, seed, a, b in [('ew', 0, 0.80, 1.0), ('ew', 1, 0.84, 0.9), ('mgda', 0, 0.88, 0.8),
                             ('mgda', 1, 0.88, 0.8)]:
    write_run(str(root / f'{method}{seed}'), a, b, {'method': method, 'seed': seed})
  groups = {g['overrides']['method']: g for g in report.collate(report.find_runs([str(root)]))['groups']}
  assert groups['ew']['count'] == 2
  assert groups['ew']['stats']['a'] == pytest.approx((0.82, 0.02))
  assert groups['ew']['stats']['b'] == pytest.approx((0.95, 0.05))
  assert groups['ew']['stats']['delta_m'] == pytest.approx(
      (np.mean([0.0, (0.04 / 0.8 + 0.1) / 2 * 100]), np.std([0.0, (0.04 / 0.8 + 0.1) / 2 * 100])))
  assert groups['mgda']['stats']['mean_rank'] == pytest.approx((1.5, 0.0))
  assert 'Mean ± std over seeds' in report.to_markdown(
      report.collate(report.find_runs([str(root)])), [str(root)])


def test_pareto_front_and_ranks():
  points = [(0.8, 1.0), (0.85, 1.1), (0.8, 0.95), (0.7, 0.9)]
  assert report.pareto_front(points, (True, False)) == [3, 2, 1]  # (0.8, 1.0) is dominated
  assert report.pareto_front(points, (True, True)) == [1]
  assert report.pareto_front([(1, 1), (1, 1)], (True, True)) == [0, 1]  # equal points both stay
  assert report.ranks([3.0, 1.0, 3.0, float('nan')], higher=True) == [1.5, 3, 1.5, 4]
  assert report.ranks([3.0, 1.0, None], higher=False) == [2, 1, 3]


def test_metrics_jsonl_resumed_steps_keep_the_last_value(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('\n'.join(json.dumps(r) for r in [
      {'step': 10, 'time': 0, 'train/a/loss': 1.0}, {'step': 20, 'time': 0, 'train/a/loss': 0.9},
      {'step': 20, 'time': 1, 'train/a/loss': 0.8}, {'step': 30, 'time': 0, 'train/a/loss': 'nan'},
      {'step': 30, 'time': 0, 'final/test/a/auc': 0.9}]) + '\n{"step": 40, "trunc')
  series = report.read_metrics_jsonl(str(path))
  steps, values = series['train/a/loss']
  assert steps.tolist() == [10, 20, 30] and values[:2].tolist() == [1.0, 0.8]
  assert np.isnan(values[2]) and not any(k.startswith('final/') for k in series)


def test_directions_match_the_metrics_module():
  assert report.HIGHER_IS_BETTER == metrics_lib.HIGHER_IS_BETTER
  with pytest.raises(UserError, match='no known direction'):
    report.higher_is_better('bleu')
