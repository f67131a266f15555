"""Entry point: `python launch.py [--config=experiments/configs/NAME.py[:arg]] [--workdir=DIR]
[--config.key=value ...]`.

Re-running with the same --workdir resumes from its latest checkpoint. Sweeps
(`--sweep=experiments/sweeps/NAME.py`, one trial per workdir under --workdir): docs/SWEEPS.md.
"""

import ast
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax.errors import UserError

# `--config.<...>_kwargs.<key>=value`: the option dicts of methods, architectures and encoders
# start empty, and ml_collections' flags cannot add a key to a locked config; these flags are
# taken out before absl parses the rest and applied after, new keys included.
_OPTION_FLAG = re.compile(r'^--config\.((?:[A-Za-z0-9_]+\.)*[A-Za-z0-9_]+_kwargs\.[A-Za-z0-9_]+)=(.*)$',
                          re.DOTALL)


def _split_option_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  rest, options = [], {}
  for arg in argv:
    match = _OPTION_FLAG.match(arg)
    if match:
      options[match.group(1)] = match.group(2)
    else:
      rest.append(arg)
  return rest, options


def _with_options(config, options: dict[str, str]):
  """`config` with the option flags set: an existing key is read as its field's type, a new key
  as a Python literal (or else a string)."""
  from mtl_jax import sweep
  values = {}
  for key, text in options.items():
    holder = config
    for part in key.split('.')[:-1]:
      holder = holder.get(part) if hasattr(holder, 'get') else None
    if holder is not None and key.split('.')[-1] in holder:
      values[key] = text
    else:
      try:
        values[key] = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        values[key] = text
  return sweep.apply_overrides(config, values)


_ARGV, _OPTIONS = _split_option_flags(sys.argv)

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               'experiments', 'configs', 'default.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Experiment config file.',
                                          lock_config=True, sys_argv=_ARGV)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and metrics go (default: runs/<config name>).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-host runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process in a multi-host run.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'auto: start jax.distributed when the flags above, JAX_COORDINATOR_ADDRESS or a SLURM job '
    'step of several tasks say so; on: always (JAX detects the cluster: Cloud TPU, GKE, MPI); '
    'off: never (mtl_jax/cluster.py).')
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
  from mtl_jax import cluster
  plan = cluster.plan(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                      _PROCESS_ID.value)
  cluster.initialize(plan)
  if plan.initialize:
    logging.warning('jax.distributed (%s): process %d of %d', plan.source, jax.process_index(),
                    jax.process_count())


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and tfds log every save and read at INFO
  config_file, _, config_arg = config_flags.get_config_filename(flags.FLAGS['config']).partition(':')
  config_name = os.path.splitext(os.path.basename(config_file))[0] + (f'-{config_arg}' if config_arg else '')
  if _SWEEP.value and not _WORKDIR.value:
    config_name += '-' + os.path.splitext(os.path.basename(_SWEEP.value))[0]
  workdir = _WORKDIR.value or os.path.join('runs', config_name)
  try:
    config = _with_options(_CONFIG.value, _OPTIONS)
    if _SWEEP.value:
      from mtl_jax import sweep
      sys.exit(sweep.launch(config, workdir, _SWEEP.value, index=_SWEEP_INDEX.value,
                            parallel=_SWEEP_PARALLEL.value, list_only=_SWEEP_LIST.value,
                            argv=sys.argv, init=_init))
    elif _SWEEP_INDEX.value is not None or _SWEEP_LIST.value or _SWEEP_PARALLEL.value != 1:
      raise UserError('--sweep_index, --sweep_list and --sweep_parallel need --sweep=FILE')
    _init()
    from mtl_jax import train
    train.run(config, workdir)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, argv=_ARGV)
