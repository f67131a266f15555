"""Entry point: `python launch.py [--config=experiments/configs/NAME.py[:arg]] [--workdir=DIR]
[--config.key=value ...]`.

Re-running with the same --workdir resumes from its latest checkpoint. Sweeps
(`--sweep=experiments/sweeps/NAME.py`, one trial per workdir under --workdir): docs/SWEEPS.md.
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
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file (experiments/sweeps/NAME.py): runs every '
                             'trial in <workdir>/<trial name> (default workdir: '
                             'runs/<config name>-<sweep name>).')
_SWEEP_INDEX = flags.DEFINE_integer('sweep_index', None, 'Run only trial I of --sweep (0-based; '
                                    'e.g. $SLURM_ARRAY_TASK_ID).')
_SWEEP_PARALLEL = flags.DEFINE_integer('sweep_parallel', 1, 'Trials of --sweep run at once, one '
                                       'process each.')
_SWEEP_LIST = flags.DEFINE_bool('sweep_list', False, 'Print the trials of --sweep and exit.')


def _init():
  """JAX, tfds and (multi-host) distributed setup, once per process."""
  if getattr(_init, 'done', False):
    return
  _init.done = True
  import jax  # After flag parsing, so --help is fast.
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  if _COORDINATOR.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    # CPU processes need a collectives backend to talk to each other; GPUs and TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds log every save and read at INFO
  config_file, _, config_arg = config_flags.get_config_filename(flags.FLAGS['config']).partition(':')
  config_name = os.path.splitext(os.path.basename(config_file))[0] + (f'-{config_arg}' if config_arg else '')
  if _SWEEP.value and not _WORKDIR.value:
    config_name += '-' + os.path.splitext(os.path.basename(_SWEEP.value))[0]
  workdir = _WORKDIR.value or os.path.join('runs', config_name)
  try:
    if _SWEEP.value:
      from mtl_jax import sweep
      sys.exit(sweep.launch(_CONFIG.value, workdir, _SWEEP.value, index=_SWEEP_INDEX.value,
                            parallel=_SWEEP_PARALLEL.value, list_only=_SWEEP_LIST.value,
                            argv=sys.argv, init=_init))
    elif _SWEEP_INDEX.value is not None or _SWEEP_LIST.value or _SWEEP_PARALLEL.value != 1:
      raise UserError('--sweep_index, --sweep_list and --sweep_parallel need --sweep=FILE')
    _init()
    from mtl_jax import train
    train.run(_CONFIG.value, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
