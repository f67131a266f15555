"""Census-Income as a mixture of two partially labelled halves (`census_income_split`).

The default experiment (`default.py`: hard-shared MLP 128-64, equal weighting, Adam with a cosine
schedule, best checkpoint by mean validation AUC) trained on the mixture registered in
`mtl_jax.data.mixtures`: the train split cut with a fixed seed into two disjoint halves, one
labelled only for `income`, the other only for `never_married`. Each example of a batch is drawn
from one half (rate below), so each task sees about half of every batch, and no example carries
both labels. Validation and test are the full census splits, each member's task scored on them.

    python launch.py --config=experiments/configs/census_mixture.py
    python launch.py --config=experiments/configs/census_mixture.py:balanced  # + class weights
    python launch.py --config=experiments/configs/census_mixture.py --config.mixture.rate=equal

With two halves of equal size, 'equal', 'proportional', 'temperature' and 'annealed' give the
same rate (1/2, 1/2); they differ for members of different sizes (docs/DATA_MIXTURES.md).
The single-task baselines train each task on its own half only (the other member is left out).
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = default.get_config()
  config.dataset = 'census_income_split'
  config.tasks = ('income', 'never_married')
  # Overrides of the registered mixture's defaults (all optional; see mtl_jax.train.loop).
  config.mixture = ml_collections.ConfigDict({
      'rate': 'proportional', 'rate_kwargs': ml_collections.ConfigDict(), 'per_batch': False})
  # {task: 'balanced' or [w_0, w_1]}: class-weighted loss (mtl_jax.tasks.with_class_weights).
  config.class_weights = ml_collections.ConfigDict()
  if arg == 'balanced':
    config.class_weights = ml_collections.ConfigDict({'income': 'balanced'})
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; valid: "" or "balanced"')
  return config
