"""Sweeps: the DSL, trial names, overrides with --config semantics, and the runner (in process with a
stand-in trainer, and end to end through launch.py on tiny census runs)."""

import json
import os
import re
import subprocess
import sys

import pytest

from experiments.configs import default
from mtl_jax import sweep
from mtl_jax.errors import UserError
from tests.train.test_loop import CONFIG, REPO, tiny_overrides

h = sweep.hyper


# --- The DSL. -------------------------------------------------------------------------------

def test_product_varies_the_first_factor_slowest():
  trials = h.product([h.sweep('config.method', ['ew', 'mgda']), h.sweep('config.seed', [0, 1, 2])])
  assert trials == [{'method': m, 'seed': s} for m in ('ew', 'mgda') for s in (0, 1, 2)]
  assert len(h.product([h.sweep('a', [1, 2]), h.sweep('b', [1, 2, 3]), h.sweep('c', [0] * 4)])) == 24


def test_zip_pairs_element_by_element_and_nests_in_product():
  zipped = h.zip([h.sweep('config.learning_rate', [1e-3, 3e-4]),
                  h.sweep('config.batch_size', [256, 64])])
  assert zipped == [{'learning_rate': 1e-3, 'batch_size': 256},
                    {'learning_rate': 3e-4, 'batch_size': 64}]
  trials = h.product([h.sweep('config.seed', [0, 1]), zipped, h.fixed('config.mode', 'rep')])
  assert [(t['seed'], t['batch_size'], t['mode']) for t in trials] == [
      (0, 256, 'rep'), (0, 64, 'rep'), (1, 256, 'rep'), (1, 64, 'rep')]
  assert h.chain([h.sweep('seed', [0]), h.sweep('method', ['uw'])]) == [{'seed': 0},
                                                                         {'method': 'uw'}]
  assert h.zipit is h.zip and h.chainit is h.chain  # big_vision's names


def test_dsl_errors():
  with pytest.raises(UserError, match='equal length.*\\[2, 3\\]'):
    h.zip([h.sweep('a', [1, 2]), h.sweep('b', [1, 2, 3])])
  with pytest.raises(UserError, match='config.seed set by more than one factor'):
    h.product([h.sweep('config.seed', [0]), h.sweep('seed', [1])])
  with pytest.raises(UserError, match='no values'):
    h.sweep('config.seed', [])


# --- Names. ---------------------------------------------------------------------------------

def test_trial_names_are_short_safe_and_stable():
  assert sweep.trial_name({'method': 'mgda', 'seed': 1}) == 'method=mgda,seed=1'
  assert sweep.trial_name({'learning_rate': 3e-4, 'encoder_kwargs.hidden_sizes': (128, 64),
                           'method_kwargs.normalization': 'loss+'}) == (
                               'learning_rate=0.0003,hidden_sizes=128+64,normalization=loss+')
  # Two keys with the same last part keep their whole path; unsafe characters become '_'.
  assert sweep.trial_name({'encoder_kwargs.dropout': 0.1, 'arch_kwargs.dropout': 0.2}) == (
      'encoder_kwargs.dropout=0.1,arch_kwargs.dropout=0.2')
  assert sweep.trial_name({'data_dir': '/a b/c'}) == 'data_dir=_a_b_c'
  long = {'tasks': tuple(f'task_number_{i}' for i in range(20))}
  name = sweep.trial_name(long)
  assert len(name) <= sweep.MAX_NAME_LENGTH and name == sweep.trial_name(dict(long))
  other = {'tasks': long['tasks'][:-1] + ('task_number_x',)}
  assert sweep.trial_name(other) != name  # the hash tells apart names cut to the same prefix


def test_load_a_sweep_file(tmp_path):
  trials = sweep.load(os.path.join(REPO, 'experiments', 'sweeps', 'census_methods.py'))
  assert len(trials) == 12 and trials[0] == {'method': 'ew', 'seed': 0}
  assert [sweep.trial_name(t) for t in trials[:2]] == ['method=ew,seed=0', 'method=ew,seed=1']
  bad = tmp_path / 'dup.py'
  bad.write_text('def get_hyper(hyper):\n  return hyper.sweep("config.seed", [1, 1])\n')
  with pytest.raises(UserError, match='same overrides.*seed=1'):
    sweep.load(str(bad))
  (tmp_path / 'none.py').write_text('X = 1\n')
  with pytest.raises(UserError, match='defines no get_hyper'):
    sweep.load(str(tmp_path / 'none.py'))
  with pytest.raises(UserError, match='does not exist'):
    sweep.load(str(tmp_path / 'missing.py'))


# --- Overrides. -----------------------------------------------------------------------------

def locked_config():
  config = default.get_config()
  config.lock()
  return config


def test_overrides_set_nested_keys_with_the_field_types():
  config = locked_config()
  new = sweep.apply_overrides(config, {
      'method': 'mgda', 'learning_rate': 1, 'encoder_kwargs.hidden_sizes': '(32, 16)',
      'tasks': ['income'], 'single_task_baselines': 'false', 'method_kwargs.normalization': 'l2'})
  assert new.method == 'mgda' and new.learning_rate == 1.0 and isinstance(new.learning_rate, float)
  assert new.encoder_kwargs.hidden_sizes == (32, 16) and new.tasks == ('income',)
  assert new.single_task_baselines is False
  assert dict(new.method_kwargs) == {'normalization': 'l2'}  # an open option dict takes new keys
  assert config.method == 'ew' and dict(config.method_kwargs) == {}  # the original is untouched
  with pytest.raises(AttributeError):
    new.not_a_key = 1  # still locked
  # A whole option dict at once (e.g. zipped with the method it belongs to).
  new = sweep.apply_overrides(config, {'method': 'cagrad', 'method_kwargs': {'c': 0.4}})
  assert new.method_kwargs.c == 0.4 and new.method_kwargs.is_locked
  assert sweep.trial_name({'method': 'cagrad', 'method_kwargs': {'c': 0.4}}) == (
      'method=cagrad,method_kwargs=c-0.4')


@pytest.mark.parametrize('overrides,message', [
    ({'methd': 'ew'}, r'unknown config key config.methd; did you mean config.method\b'),
    ({'encoder_kwargs.hiden_sizes': (8,)},
     r'config.encoder_kwargs.hiden_sizes; did you mean config.encoder_kwargs.hidden_sizes'),
    ({'encoderkwargs.hidden_sizes': (8,)}, r'did you mean config.encoder_kwargs'),
    ({'seed': 0.5}, r'config.seed=0.5: the field holds a int'),
    ({'seed': True}, r'not a bool'),
    ({'method': 3}, r'config.method=3: the field holds a str'),
    ({'batch_size': 'many'}, r"config.batch_size='many': cannot read it as a int"),
    ({'seed.x': 1}, r'config.seed is a int, not a nested config'),
])
def test_override_errors_are_clear(overrides, message):
  with pytest.raises(UserError, match=message):
    sweep.apply_overrides(locked_config(), overrides)


# --- The runner in process, with a stand-in trainer. -----------------------------------------

def write_sweep(tmp_path, body):
  path = tmp_path / 'my_sweep.py'
  path.write_text(f'def get_hyper(hyper):\n  return {body}\n')
  return str(path)


def fake_trainer(calls, fail=()):
  def run_fn(config, workdir):
    calls.append((config.method, config.seed, workdir))
    if config.method in fail:
      raise RuntimeError('boom')
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump({'test/income/auc': 0.9}, f)
  return run_fn


def test_runner_runs_every_trial_in_order_and_skips_finished_ones(tmp_path, capsys):
  config = locked_config()
  with config.unlocked():
    config.single_task_baselines = False
    config.data_dir = '/nonexistent'  # only train.setup would read it: not called for one trial
  path = write_sweep(tmp_path, "hyper.product([hyper.sweep('config.method', ['ew', 'mgda']), "
                               "hyper.sweep('config.seed', [0, 1])])")
  workdir = str(tmp_path / 'sweep')
  calls = []
  assert sweep.launch(config, workdir, path, index=2, run_fn=fake_trainer(calls)) == 0
  assert calls == [('mgda', 0, os.path.join(workdir, 'method=mgda,seed=0'))]
  assert sorted(os.listdir(workdir)) == ['method=mgda,seed=0', 'sweep.json']
  record = json.load(open(os.path.join(workdir, 'method=mgda,seed=0', 'sweep_trial.json')))
  assert record['finished'] and record['overrides'] == {'method': 'mgda', 'seed': 0}
  assert record['config']['method'] == 'mgda' and record['config']['seed'] == 0
  # Again: skipped. The listing says which trials are finished.
  assert sweep.launch(config, workdir, path, index=2, run_fn=fake_trainer(calls)) == 0
  assert len(calls) == 1 and 'finished already' in capsys.readouterr().out
  sweep.launch(config, workdir, path, list_only=True)
  listing = capsys.readouterr().out
  assert '4 trials' in listing and '2  method=mgda,seed=0  finished' in listing
  # Scripts count the trials by the lines that start with an index (the header does not).
  assert len(re.findall(r'^\s*[0-9]', listing, flags=re.M)) == 4
  assert '0  method=ew,seed=0    not started' in listing
  # A changed config (here more steps) re-runs the trial (the loop would resume it).
  with config.unlocked():
    config.num_train_steps += 1
  sweep.launch(config, workdir, path, index=2, run_fn=fake_trainer(calls))
  assert len(calls) == 2


def test_runner_counts_a_trial_unfinished_until_its_baselines_are_done(tmp_path):
  config = locked_config()
  trial_dir = str(tmp_path / 't')
  os.makedirs(trial_dir)
  sweep._write_json(os.path.join(trial_dir, sweep.TRIAL_RECORD),
                    {'config': sweep._config_json(config), 'finished': True})
  open(os.path.join(trial_dir, 'final_metrics.json'), 'w').write('{}')
  assert config.single_task_baselines and not sweep.is_finished(config, trial_dir)
  for task in config.tasks:
    os.makedirs(os.path.join(trial_dir, 'single_task', task))
    open(os.path.join(trial_dir, 'single_task', task, 'final_metrics.json'), 'w').write('{}')
  assert sweep.is_finished(config, trial_dir)


def test_runner_errors_before_anything_runs(tmp_path):
  config = locked_config()
  calls = []
  path = write_sweep(tmp_path, "hyper.sweep('config.seed', [0, 1])")
  with pytest.raises(UserError, match=r'--sweep_index=2 is out of range: .* has 2 trials \(0..1'):
    sweep.launch(config, str(tmp_path / 'w'), path, index=2, run_fn=fake_trainer(calls))
  bad = write_sweep(tmp_path, "hyper.product([hyper.sweep('config.seed', [0, 1]), "
                              "hyper.sweep('config.lerning_rate', [0.1])])")
  with pytest.raises(UserError, match='trial 0 .*did you mean config.learning_rate'):
    sweep.launch(config, str(tmp_path / 'w'), bad, run_fn=fake_trainer(calls))
  assert calls == [] and not os.path.exists(tmp_path / 'w')


def test_runner_goes_on_after_a_failed_trial_and_reports_it(tmp_path, monkeypatch):
  from mtl_jax import train
  monkeypatch.setattr(train, 'setup', lambda config: None)  # no data needed here
  config = locked_config()
  with config.unlocked():
    config.single_task_baselines = False  # the stand-in trainer writes no baselines
  path = write_sweep(tmp_path, "hyper.sweep('config.method', ['ew', 'uw', 'mgda'])")
  calls = []
  code = sweep.launch(config, str(tmp_path / 'w'), path, run_fn=fake_trainer(calls, fail={'uw'}))
  assert code == 1 and [c[0] for c in calls] == ['ew', 'uw', 'mgda']
  assert not sweep.is_finished(sweep.apply_overrides(config, {'method': 'uw'}),
                               str(tmp_path / 'w' / 'method=uw'))
  # Re-launched: only the unfinished trial runs again.
  assert sweep.launch(config, str(tmp_path / 'w'), path, run_fn=fake_trainer(calls)) == 0
  assert [c[0] for c in calls] == ['ew', 'uw', 'mgda', 'uw']


# --- End to end through launch.py on tiny census runs. ---------------------------------------

def launch(tmp_path, census_dir, sweep_path, *extra):
  flags = [f'--config.{k}={v}' for k, v in tiny_overrides(census_dir, steps=20, every=10).items()]
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={CONFIG}',
       f'--workdir={tmp_path / "sweep"}', f'--sweep={sweep_path}', *flags, *extra],
      env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, cwd=str(tmp_path))


@pytest.mark.slow
def test_launch_one_trial_by_index_then_the_rest_in_parallel(tmp_path, census_builder, census_dir):
  path = write_sweep(tmp_path, "hyper.sweep('config.method', ['ew', 'mgda'])")
  workdir = tmp_path / 'sweep'
  listed = launch(tmp_path, census_dir, path, '--sweep_list')
  assert listed.returncode == 0, listed.stderr
  assert '0  method=ew    not started' in listed.stdout and '1  method=mgda' in listed.stdout

  wrong = launch(tmp_path, census_dir, path, '--sweep_index=5')
  assert wrong.returncode == 2 and 'out of range' in wrong.stderr and '2 trials' in wrong.stderr

  one = launch(tmp_path, census_dir, path, '--sweep_index=1')
  assert one.returncode == 0, one.stderr[-3000:]
  assert (workdir / 'method=mgda' / 'final_metrics.json').exists()
  assert not (workdir / 'method=ew').exists()  # exactly one trial ran
  lines = (workdir / 'method=mgda' / 'metrics.jsonl').read_text().splitlines()

  both = launch(tmp_path, census_dir, path, '--sweep_parallel=2')
  assert both.returncode == 0, both.stdout + both.stderr[-3000:]
  assert 'method=mgda] finished already; skipped' in both.stdout
  assert (workdir / 'method=ew' / 'final_metrics.json').exists()
  assert 'Test auc' in (workdir / 'method=ew' / 'launch.log').read_text()
  # The skipped trial trained nothing more and wrote no new metrics.
  assert (workdir / 'method=mgda' / 'metrics.jsonl').read_text().splitlines() == lines
  record = json.loads((workdir / 'method=ew' / 'sweep_trial.json').read_text())
  assert record['finished'] and record['config']['num_train_steps'] == 20

  # The report on the real runs (no baselines: single_task_baselines is off in tiny runs).
  from mtl_jax import report
  out = tmp_path / 'report'
  assert report.main([str(workdir), '--out', str(out)]) == 0
  rows = (out / 'report.csv').read_text().splitlines()
  assert len(rows) == 3 and rows[0].startswith('run,path,method,test/income/auc')
  finals = {m: json.loads((workdir / f'method={m}' / 'final_metrics.json').read_text())
            for m in ('ew', 'mgda')}
  for line in rows[1:]:
    method = line.split(',')[0].split('=')[1]
    assert f',{finals[method]["test/income/auc"]!r},' in line
  for name in ('learning_curves.png', 'task_weights.png', 'pareto.png'):
    assert (out / name).stat().st_size > 20_000, name
