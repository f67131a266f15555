"""Cluster start-up: the distributed plan from flags and environment, and the recipes in
experiments/cluster/ run against stand-in `srun`/`gcloud` commands (and, once, a real 2-process
training started the way SLURM starts it)."""

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from mtl_jax import cluster
from mtl_jax.errors import UserError
from tests.train.test_loop import REPO, final_state, tiny_overrides

RECIPES = os.path.join(REPO, 'experiments', 'cluster')
SLURM_STEP = {'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'gpu[003-004]', 'SLURM_NTASKS': '2',
              'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}


def test_single_process_without_a_cluster():
  p = cluster.plan(environ={})
  assert not p.initialize and p.kwargs == {}


def test_explicit_flags_win_over_the_environment():
  p = cluster.plan(coordinator_address='h:1234', num_processes=2, process_id=1,
                   environ=SLURM_STEP)
  assert p.initialize and p.source == 'flags'
  assert p.kwargs == {'coordinator_address': 'h:1234', 'num_processes': 2, 'process_id': 1}


def test_jax_coordinator_environment_is_left_to_jax():
  p = cluster.plan(environ={'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2'})
  assert p.initialize and p.kwargs == {}


def test_a_slurm_step_of_several_tasks_starts_jax_distributed():
  p = cluster.plan(environ=SLURM_STEP)
  assert p.initialize and p.kwargs == {} and 'SLURM job 4242' in p.source
  # One task (e.g. an sbatch shell, or one array task) is one process.
  assert not cluster.plan(environ=dict(SLURM_STEP, SLURM_NTASKS='1')).initialize
  # An allocation without a job step (no srun) is not a multi-process run either.
  no_step = {k: v for k, v in SLURM_STEP.items() if k != 'SLURM_STEP_NODELIST'}
  assert not cluster.plan(environ=no_step).initialize


def test_on_forces_and_off_refuses():
  assert cluster.plan('on', environ={}).initialize
  assert not cluster.plan('off', environ=SLURM_STEP).initialize
  with pytest.raises(UserError, match='contradicts'):
    cluster.plan('off', coordinator_address='h:1')
  with pytest.raises(UserError, match='auto, on, off'):
    cluster.plan('sometimes', environ={})
  with pytest.raises(UserError, match='coordinator_address'):
    cluster.plan(num_processes=2, process_id=0, environ={})
  with pytest.raises(UserError, match='SLURM_NTASKS'):
    cluster.plan(environ=dict(SLURM_STEP, SLURM_NTASKS='two'))


def _stand_in(directory, name, body):
  path = os.path.join(directory, name)
  with open(path, 'w') as f:
    f.write('#!/usr/bin/env bash\n' + body)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
  return path


def _recording_stand_in(directory, name):
  """A command that writes its arguments and the SLURM variables it sees, as JSON, and exits."""
  record = os.path.join(directory, f'{name}.json')
  _stand_in(directory, name, f'''exec {sys.executable} -c '
import json, os, sys
json.dump({{"argv": sys.argv[1:], "array_task": os.environ.get("SLURM_ARRAY_TASK_ID")}},
          open("{record}", "w"))' "$@"
''')
  return record


@pytest.mark.parametrize('script', sorted(os.listdir(RECIPES)))
def test_recipes_are_valid_bash(script):
  subprocess.run(['bash', '-n', os.path.join(RECIPES, script)], check=True)


def test_slurm_multinode_runs_launch_under_srun(tmp_path):
  record = _recording_stand_in(tmp_path, 'srun')
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', MTL_JAX_REPO=REPO)
  subprocess.run(['bash', os.path.join(RECIPES, 'slurm_multinode.sbatch'),
                  '--config=experiments/configs/default.py', '--config.method=mgda'],
                 check=True, env=env)
  argv = json.load(open(record))['argv']
  assert argv[:2] == ['--ntasks-per-node=1', '--kill-on-bad-exit=1']
  assert argv[2].endswith('.venv/bin/python') and argv[3] == 'launch.py'
  assert argv[4:] == ['--distributed=auto', '--config=experiments/configs/default.py',
                      '--config.method=mgda']


def test_slurm_sweep_array_passes_its_task_id(tmp_path):
  record = _recording_stand_in(tmp_path, 'srun')
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', MTL_JAX_REPO=REPO)
  env.pop('SLURM_ARRAY_TASK_ID', None)
  script = os.path.join(RECIPES, 'slurm_sweep_array.sbatch')
  refused = subprocess.run(['bash', script, '--sweep=s.py'], env=env, capture_output=True,
                           text=True)
  assert refused.returncode == 2 and '--array' in refused.stderr
  subprocess.run(['bash', script, '--sweep=s.py', '--workdir=w'], check=True,
                 env=dict(env, SLURM_ARRAY_TASK_ID='3'))
  argv = json.load(open(record))['argv']
  assert argv[-4:] == ['--distributed=off', '--sweep=s.py', '--workdir=w', '--sweep_index=3']


def test_tpu_vm_runs_the_same_command_on_every_worker(tmp_path):
  record = _recording_stand_in(tmp_path, 'gcloud')
  script = os.path.join(RECIPES, 'tpu_vm.sh')
  env = dict(os.environ, GCLOUD=os.path.join(tmp_path, 'gcloud'))
  missing = subprocess.run(['bash', script], env=env, capture_output=True, text=True)
  assert missing.returncode != 0 and 'TPU_NAME' in missing.stderr
  subprocess.run(['bash', script, '--config=experiments/configs/default.py',
                  "--config.method_kwargs.c=0.4 and 'quotes'"], check=True,
                 env=dict(env, TPU_NAME='pod', ZONE='z1'))
  argv = json.load(open(record))['argv']
  assert argv[:6] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'pod', '--zone=z1']
  assert '--worker=all' in argv
  command = next(a for a in argv if a.startswith('--command='))[len('--command='):]
  assert command.startswith('cd mtl_jax && .venv/bin/python launch.py --distributed=on ')
  # The remote shell sees the arguments as they were given.
  words = subprocess.run(['bash', '-c', f'printf "%s\\n" {command.split("--distributed=on ")[1]}'],
                         check=True, capture_output=True, text=True).stdout.splitlines()
  assert words == ['--config=experiments/configs/default.py',
                   "--config.method_kwargs.c=0.4 and 'quotes'"]


def _free_slurm_port():
  """A job id whose port (JAX: 61440 + id % 4096) is free here."""
  for port in range(61440 + os.getpid() % 2000, 65536):
    with socket.socket() as s:
      try:
        s.bind(('localhost', port))
      except OSError:
        continue
    return port - 61440
  pytest.skip('no free port in 61440-65535')


@pytest.mark.slow
def test_slurm_recipe_starts_two_processes_that_train_together(tmp_path, census_builder,
                                                                census_dir):
  """srun's stand-in starts the tasks as SLURM would (SLURM_* per task); launch.py finds the
  job step, and JAX's SLURM detection joins them: one run, two processes, 4 CPU devices each."""
  _stand_in(tmp_path, 'srun', f'''
while [[ "$1" == -* ]]; do shift; done
for i in 0 1; do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" > {tmp_path}/task$i.log 2>&1 &
done
status=0
for job in $(jobs -p); do wait $job || status=1; done
exit $status
''')
  steps = 20
  env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', MTL_JAX_REPO=REPO,
             MTL_JAX_PYTHON=sys.executable, PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             SLURM_JOB_ID=str(_free_slurm_port()), SLURM_STEP_NODELIST='localhost',
             SLURM_NTASKS='2', SLURM_SUBMIT_DIR=REPO)
  flags = [f'--config.{k}={v}' for k, v in tiny_overrides(census_dir, steps, 10).items()]
  result = subprocess.run(
      ['bash', os.path.join(RECIPES, 'slurm_multinode.sbatch'),
       f'--workdir={tmp_path / "run"}', *flags], env=env, timeout=600)
  logs = [open(tmp_path / f'task{i}.log').read() for i in range(2)]
  assert result.returncode == 0, '\n----\n'.join(log[-2000:] for log in logs)
  assert 'Test auc' in logs[0]
  step, _ = final_state(tmp_path / 'run')
  assert step == steps
  data_dir = tmp_path / 'run' / 'checkpoints' / str(steps) / 'data'
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))
