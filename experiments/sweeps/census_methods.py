"""Four methods x three seeds on the default experiment (Census-Income, hard sharing): 12 trials,
each a multi-task run beside its own single-task baselines (about a minute each on 2 CPU cores).

    python launch.py --sweep=experiments/sweeps/census_methods.py --sweep_list
    python launch.py --sweep=experiments/sweeps/census_methods.py              # one at a time
    python launch.py --sweep=experiments/sweeps/census_methods.py --sweep_parallel=2
    python launch.py --sweep=experiments/sweeps/census_methods.py --sweep_index=$SLURM_ARRAY_TASK_ID
    python -m mtl_jax.report runs/default-census_methods

Trials run in runs/default-census_methods/<trial name> (e.g. `method=mgda,seed=1`); any other
`--config.key=value` on the command line applies to every trial.
"""


def get_hyper(hyper):
  return hyper.product([
      hyper.sweep('config.method', ['ew', 'uw', 'mgda', 'pcgrad']),
      hyper.sweep('config.seed', [0, 1, 2]),
  ])
