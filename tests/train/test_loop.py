"""The loop end to end on the real census data: resume after SIGKILL, checkpoints kept, metrics
written, and errors raised before anything compiles."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtl_jax import train
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.train import checkpoint as checkpoint_lib
from mtl_jax.train import loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, 'experiments', 'configs', 'default.py')


def tiny_overrides(data_dir, steps=40, every=10):
  return {'num_train_steps': steps, 'batch_size': 64, 'eval_every_steps': every,
          'checkpoint_every_steps': every, 'log_every_steps': every,
          'single_task_baselines': False, 'data_dir': data_dir, 'eval_batch_size': 16384,
          'encoder_kwargs.hidden_sizes': (16,), 'warmup_steps': 0}


def tiny_config(data_dir, **extra):
  from experiments.configs import default
  config = default.get_config()
  for key, value in {**tiny_overrides(data_dir), **extra}.items():
    node = config
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return config


def launch_args(workdir, data_dir, steps, every, extra=()):
  flags = [f'--config.{k}={v}' for k, v in tiny_overrides(data_dir, steps, every).items()]
  return [sys.executable, os.path.join(REPO, 'launch.py'), f'--config={CONFIG}',
          f'--workdir={workdir}', *flags, *extra]


def final_state(workdir):
  """The train state of the latest checkpoint, as NumPy, read with plain orbax."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(directory, '*'))
                 if os.path.basename(p).isdigit())
  path = os.path.join(directory, str(steps[-1]), 'state')
  checkpointer = ocp.StandardCheckpointer()
  # Onto this process's first device, whatever topology wrote it (e.g. two processes).
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return steps[-1], checkpointer.restore(path, target)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_final_state_bitwise(tmp_path, census_builder,
                                                                census_dir):
  steps, every = 300, 50  # 6 synchronous checkpoints a run, not 15: they are most of its time
  env = dict(os.environ, PYTHONPATH=REPO)
  complete = tmp_path / 'complete'
  subprocess.run(launch_args(complete, census_dir, steps, every), check=True, env=env,
                 capture_output=True)

  interrupted = tmp_path / 'interrupted'
  process = subprocess.Popen(launch_args(interrupted, census_dir, steps, every), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = interrupted / 'checkpoints' / str(every)
  deadline = time.time() + 300
  while not (first / 'state').exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
  killed_at, _ = final_state(interrupted)
  assert killed_at < steps

  resumed = subprocess.run(launch_args(interrupted, census_dir, steps, every), check=True,
                           env=env, capture_output=True, text=True)
  assert f'Resumed from step {killed_at}' in resumed.stdout

  step_a, state_a = final_state(complete)
  step_b, state_b = final_state(interrupted)
  assert step_a == step_b == steps
  leaves_a, tree_a = jax.tree.flatten(state_a)
  leaves_b, tree_b = jax.tree.flatten(state_b)
  assert tree_a == tree_b
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)  # bitwise: same batches, same programs, same state

  # A finished run re-launched trains nothing more and reports the same numbers.
  again = subprocess.run(launch_args(complete, census_dir, steps, every), check=True, env=env,
                         capture_output=True, text=True)
  assert 'step ' not in again.stdout.split('Test auc')[0].replace('Resumed from step', '')
  with open(complete / 'final_metrics.json') as f:
    assert json.load(f)['test/income/auc'] > 0.8


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 'val/avg/auc', higher_is_better=True,
                                     keep_best=2)
  from mtl_jax import data
  iterator = data.train_iterator({'x': np.arange(10)}, 2, 0)
  for step, metric in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.4]):
    ckpt.save(step, {'w': np.full(3, step, np.float32)}, iterator, {'a': 1},
              {'val/avg/auc': metric})
  assert sorted(ckpt.all_steps()) == [2, 4, 5]  # the best two, and the latest (the worst)
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 5
  lower = checkpoint_lib.Checkpointer(str(tmp_path / 'lower'), 'val/avg/loss',
                                      higher_is_better=False, keep_best=1)
  for step, metric in zip(range(1, 5), [0.5, 0.1, 0.6, 0.7]):
    lower.save(step, {'w': np.zeros(1)}, iterator, {}, {'val/avg/loss': metric})
  assert sorted(lower.all_steps()) == [2, 4]
  ckpt.close()
  lower.close()


@pytest.mark.slow
def test_train_and_evaluate_writes_metrics_and_resumes_in_process(tmp_path, census_builder,
                                                                  census_dir):
  config = tiny_config(census_dir)
  final = train.train_and_evaluate(config, str(tmp_path))
  for key in ('val/income/auc', 'test/never_married/auc', 'val/avg/auc', 'best_step'):
    assert key in final
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  keys = set().union(*records)
  for key in ('train/income/loss', 'train/never_married/loss', 'train/weights/income',
              'train/skipped_steps', 'val/income/auc', 'val/never_married/accuracy',
              'final/test/income/auc'):
    assert key in keys, key
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  # Longer run in the same workdir resumes from step 40 rather than starting over.
  config.num_train_steps = 60
  train.train_and_evaluate(config, str(tmp_path))
  steps = [r['step'] for r in map(json.loads, open(tmp_path / 'metrics.jsonl'))
           if 'train/income/loss' in r]
  assert steps == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize('method,mode', [('mgda', 'jacobian'), ('mgda', 'rep'), ('uw', 'auto')])
def test_methods_run_in_the_loop(tmp_path, census_builder, census_dir, method, mode):
  config = tiny_config(census_dir, method=method, mode=mode, num_train_steps=60)
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['skipped_steps'] == 0
  assert final['test/avg/auc'] > 0.8  # untrained: ~0.5


def test_soft_sharing_runs_and_checkpoints(tmp_path, census_builder, census_dir):
  config = tiny_config(census_dir, arch='soft', soft_sharing_strength=1e-2, num_train_steps=20)
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['test/never_married/auc'] > 0.7


@pytest.mark.parametrize('override,message', [
    ({'method': 'nope'}, "unknown method 'nope'; valid method names: .*mgda"),
    ({'arch': 'nope'}, "unknown arch 'nope'; valid arch names: .*hard"),
    ({'tasks': ('income', 'nope')}, "unknown task 'nope' .*valid tasks: income, never_married"),
    ({'dataset': 'nope'}, "unknown dataset 'nope'; valid dataset names: .*census_income.*; valid mixture names: census_income_split"),
    ({'batch_size': 100}, 'not divisible by the 8 devices'),
    ({'best_metric': 'val/avg/rmse'}, 'best_metric'),
    ({'arch': 'soft', 'method': 'mgda'}, 'no shared parameters'),
])
def test_bad_config_is_a_user_error_before_compiling(census_builder, census_dir, override,
                                                     message):
  with pytest.raises(UserError, match=message):
    loop.setup(tiny_config(census_dir, **override))


def test_label_out_of_range_is_a_user_error(census_builder, census_dir, monkeypatch):
  builder, columns = loop._load_split('census_income', census_dir, 'train')
  bad = jax.tree.map(np.copy, columns)
  bad['income'][7] = 3
  original = loop._load_split
  monkeypatch.setattr(loop, '_load_split', lambda d, dd, split: (
      (builder, bad) if split == 'train' else original(d, dd, split)))
  with pytest.raises(UserError, match="task 'income': label 3 out of range in split 'train'"):
    loop.setup(tiny_config(census_dir))


@pytest.mark.parametrize('flags,message', [
    (['--config.method=nope'], 'valid method names'),
    (['--config.batch_size=100'], 'not divisible by the 8 devices'),
])
def test_launch_prints_one_clear_line_and_exits_nonzero(tmp_path, census_builder, census_dir,
                                                        flags, message):
  result = subprocess.run(launch_args(tmp_path, census_dir, 10, 10, flags), capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
