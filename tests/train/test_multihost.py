"""Two processes (4 CPU devices each, joined by jax.distributed) train like one process with 8."""

import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from tests.train.test_loop import REPO, final_state, launch_args


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, census_builder, census_dir):
  steps, every = 30, 10
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  subprocess.run(launch_args(tmp_path / 'one', census_dir, steps, every), check=True, env=env,
                 capture_output=True)

  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  port = _free_port()
  processes = [subprocess.Popen(
      launch_args(tmp_path / 'two', census_dir, steps, every,
                  [f'--coordinator_address=localhost:{port}', '--num_processes=2',
                   f'--process_id={i}']),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert 'Test auc' in outputs[0]  # process 0 reports

  step_one, one = final_state(tmp_path / 'one')
  step_two, two = final_state(tmp_path / 'two')
  assert step_one == step_two == steps
  # Same global batches, same programs; only the order of cross-process sums may differ.
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(two['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Each process saved its own data-iterator position.
  data_dir = tmp_path / 'two' / 'checkpoints' / str(steps) / 'data'
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))
