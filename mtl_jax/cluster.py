"""Multi-process start-up: when to call `jax.distributed.initialize`, and with what.

`launch.py` calls `initialize(...)` before anything touches a device. The decision is a pure
function of the flags and the environment (`plan`), so it is tested without a cluster:

* explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) win;
* `JAX_COORDINATOR_ADDRESS` (with `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), which
  `jax.distributed.initialize` reads itself;
* a SLURM job step with more than one task (`srun` under `sbatch --ntasks>1`): JAX's own SLURM
  detection derives the coordinator (first node of `SLURM_STEP_NODELIST`, a port from the job id),
  the process count (`SLURM_NTASKS`) and id (`SLURM_PROCID`);
* `--distributed=on` forces the call with no arguments, so JAX's cluster detection runs (Cloud
  TPU VMs and pods, GKE, Open MPI); `--distributed=off` never calls it.

A single SLURM task, or no cluster at all, runs as one process. CPU processes need a
collectives backend to exchange data, so the plan also switches CPU collectives to gloo (GPUs
and TPUs ignore the setting).
"""

import dataclasses
import os
from typing import Mapping

from mtl_jax.errors import UserError

MODES = ('auto', 'on', 'off')
_SLURM_STEP = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID')


@dataclasses.dataclass(frozen=True)
class Plan:
  """Whether to start `jax.distributed`, the arguments to pass, and why (for the log line)."""

  initialize: bool
  kwargs: dict
  source: str


def plan(mode: str = 'auto', coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         environ: Mapping[str, str] | None = None) -> Plan:
  """What `initialize` will do for these flags in this environment (see the module docstring)."""
  environ = os.environ if environ is None else environ
  if mode not in MODES:
    raise UserError(f'--distributed={mode!r} is not one of {", ".join(MODES)}')
  explicit = {k: v for k, v in (('coordinator_address', coordinator_address),
                                ('num_processes', num_processes),
                                ('process_id', process_id)) if v is not None}
  if mode == 'off':
    if explicit:
      raise UserError('--distributed=off contradicts --coordinator_address/--num_processes/'
                      '--process_id; drop one or the other')
    return Plan(False, {}, 'off')
  if explicit:
    if 'coordinator_address' not in explicit and 'JAX_COORDINATOR_ADDRESS' not in environ:
      raise UserError('--num_processes/--process_id need --coordinator_address=host:port '
                      '(or JAX_COORDINATOR_ADDRESS)')
    return Plan(True, explicit, 'flags')
  if environ.get('JAX_COORDINATOR_ADDRESS'):
    return Plan(True, {}, 'JAX_COORDINATOR_ADDRESS')
  if all(environ.get(v) for v in _SLURM_STEP):
    tasks = _int(environ, 'SLURM_NTASKS')
    if tasks > 1:
      return Plan(True, {}, f'SLURM job {environ["SLURM_JOB_ID"]}: {tasks} tasks, this is task '
                            f'{_int(environ, "SLURM_PROCID")}')
  if mode == 'on':
    return Plan(True, {}, 'forced (--distributed=on): JAX detects the cluster')
  return Plan(False, {}, 'single process')


def _int(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError:
    raise UserError(f'environment variable {name}={environ[name]!r} is not an integer') from None


def initialize(the_plan: Plan) -> None:
  """Carries out `the_plan` (call before any JAX computation)."""
  if not the_plan.initialize:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**the_plan.kwargs)
