"""Entry point: `python launch.py [--config=experiments/configs/NAME.py[:arg]] [--workdir=DIR]
[--config.key=value ...]`.

Re-running with the same --workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax.errors import UserError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               'experiments', 'configs', 'default.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and metrics go (default: runs/<config name>).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-host runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds log every save and read at INFO
  import jax  # After flag parsing, so --help is fast.
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  if _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    # CPU processes need a collectives backend to talk to each other; GPUs and TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  from mtl_jax import train
  config_file, _, config_arg = config_flags.get_config_filename(flags.FLAGS['config']).partition(':')
  config_name = os.path.splitext(os.path.basename(config_file))[0] + (f'-{config_arg}' if config_arg else '')
  workdir = _WORKDIR.value or os.path.join('runs', config_name)
  try:
    train.run(_CONFIG.value, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
