"""launch.py's own flags: method/architecture/encoder options given on the command line (new
keys in the empty option dicts included), and the --distributed choice."""

import os
import subprocess
import sys

from tests.train.test_loop import CONFIG, REPO

PROBE = '''
import json, sys
import launch
from experiments.configs import default
rest, options = launch._split_option_flags(sys.argv[1:])
config = launch._with_options(default.get_config().lock(), options)
print(json.dumps({"rest": rest, "method_kwargs": config.method_kwargs.to_dict(),
                  "encoder_kwargs": config.encoder_kwargs.to_dict(), "locked": config.is_locked}))
'''


def _probe(*args):
  result = subprocess.run([sys.executable, '-c', PROBE, *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  return result


def test_option_flags_add_typed_keys_and_keep_the_rest():
  import json
  result = _probe('--config.method=cagrad', '--config.method_kwargs.c=0.4',
                  '--config.method_kwargs.rescale=1', "--config.method_kwargs.mode='hybrid'",
                  '--config.method_kwargs.name=plain', '--config.encoder_kwargs.dropout=0.3',
                  '--config.encoder_kwargs.hidden_sizes=(32,16)', '--workdir=w')
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['rest'] == ['--config.method=cagrad', '--workdir=w']
  assert out['method_kwargs'] == {'c': 0.4, 'rescale': 1, 'mode': 'hybrid', 'name': 'plain'}
  # Existing keys keep their field's type.
  assert out['encoder_kwargs'] == {'hidden_sizes': [32, 16], 'dropout': 0.3}
  assert out['locked']


def test_a_typo_of_an_existing_option_is_refused():
  result = _probe('--config.encoder_kwargs.dropuot=0.3')
  assert result.returncode != 0 and 'dropuot' in result.stderr


def _launch(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'launch.py'), f'--config={CONFIG}',
                         *args], capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO))


def test_a_bad_method_option_and_a_contradictory_distributed_flag_exit_2(tmp_path):
  bad = _launch(f'--workdir={tmp_path / "a"}', '--config.method=cagrad',
                '--config.method_kwargs.cc=0.4')
  assert bad.returncode == 2 and 'cc' in bad.stderr and 'error:' in bad.stderr
  off = _launch(f'--workdir={tmp_path / "b"}', '--distributed=off',
                '--coordinator_address=localhost:1')
  assert off.returncode == 2 and 'contradicts' in off.stderr
