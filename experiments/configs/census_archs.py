"""Census-Income (KDD) with the mixture-of-experts architectures: hard, mmoe, cgc, ple.

The default experiment (`default.py`: data, tasks, 3,000 steps of Adam at batch 512, cosine
schedule, best checkpoint by mean validation AUC) with the architecture changed and sized after
the MMoE paper (Ma et al., KDD 2018, §5.3) as far as we recall it: 8 experts, each a single
hidden layer, and task towers of 8 units. The paper's expert width for census we do not
remember; we use 16 units, so that the 8 experts together are 128 units wide, the width of the
default trunk's first layer.

    python launch.py --config=experiments/configs/census_archs.py:mmoe
    python -m experiments.census.compare_archs --out runs/census_archs   # all four, one table

The input layer is the default's (32 categorical columns embedded in 8 dimensions, 7 numeric
columns: d = 263 features), shared by every architecture. Then:
  * `mmoe`: 8 experts of 16 ReLU units (dropout 0.1, as the default trunk), a softmax gate per
    task, towers 8 ReLU units -> 1 logit (38,290 parameters above the input layer).
  * `hard` (shared-bottom): one shared ReLU layer of 137 units (dropout 0.1), the width whose
    parameter count is closest to mmoe's (38,394 above the input layer), the same towers.
  * `cgc` (Tang et al., RecSys 2020): 4 shared + 2 per task experts of 16 units (8 in all;
    37,238 parameters above the input layer).
  * `ple`: 2 levels of CGC with the same experts (its second level's experts read 16 features;
    41,710 parameters above the input layer).
The embedding table adds 4,200 parameters to every model.
This is not the default experiment's hard model (two shared layers 128-64, linear heads; in
docs/RESULTS.md): the shared-bottom here has the MoE models' shape and budget.
"""

import ml_collections

from experiments.configs import default
from experiments.configs import mmoe_synthetic
from mtl_jax.data import census

ARCHS = ('hard', 'mmoe', 'cgc', 'ple')
NUM_EXPERTS = 8
EXPERT_UNITS = 16
TOWER_UNITS = 8
DROPOUT = 0.1


def input_features(embed_dim: int) -> int:
  """The width of the tabular input layer's output: embeddings, then the numeric columns."""
  return len(census.CATEGORICAL_COLUMNS) * embed_dim + len(census.NUMERIC_COLUMNS)


def get_config(arg: str = 'mmoe') -> ml_collections.ConfigDict:
  arch = arg or 'mmoe'
  if arch not in ARCHS:
    raise ValueError(f'unknown config argument {arg!r}; valid: {", ".join(ARCHS)}')
  config = default.get_config()
  config.arch = arch
  config.single_task_baselines = False
  config.head_hidden_sizes = (TOWER_UNITS,)
  d = input_features(config.embed_dim)
  if arch == 'hard':
    width = mmoe_synthetic.shared_bottom_units(d, NUM_EXPERTS, EXPERT_UNITS, TOWER_UNITS,
                                               len(config.tasks))
  else:
    width = EXPERT_UNITS
  config.encoder_kwargs = ml_collections.ConfigDict({'hidden_sizes': (width,),
                                                     'dropout': DROPOUT})
  config.arch_kwargs = ml_collections.ConfigDict()
  if arch == 'mmoe':
    config.arch_kwargs.num_experts = NUM_EXPERTS
  elif arch in ('cgc', 'ple'):
    config.arch_kwargs.num_shared_experts = NUM_EXPERTS // 2
    config.arch_kwargs.num_task_experts = NUM_EXPERTS // (2 * len(config.tasks))
    if arch == 'ple':
      config.arch_kwargs.num_levels = 2
  return config
