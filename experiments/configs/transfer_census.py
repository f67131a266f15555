"""Transfer on Census-Income: a trunk pretrained on `never_married`, a new `income` head trained
on few labels (`mtl_jax/meta/transfer.py`, results in docs/RESULTS.md, flags in docs/TRANSFER.md).

    python launch.py --config=experiments/configs/transfer_census.py:pretrain \
        --workdir=runs/transfer/pretrain
    python launch.py --config=experiments/configs/transfer_census.py:frozen \
        --workdir=runs/transfer/frozen --config.train_examples=200 \
        --config.transfer.init_from=runs/transfer/pretrain/checkpoints
    python -m experiments.transfer.run --out runs/transfer      # every variant, N and seed

The argument picks a variant; each differs from `scratch` in the `config.transfer` flags shown:
  * `pretrain`: the source model, `never_married` on the whole train split (the default run's
    trunk, schedule and budget, one task).
  * `scratch`: `income` alone on `train_examples` rows, a fresh trunk.
  * `scratch_slow`: the same at `learning_rate=1e-3` (the default run's rate), so that scratch
    gets the better of two rates.
  * `frozen`:   `transfer.init_from=...`, `transfer.trunk=frozen` (a linear probe of the trunk).
  * `finetune`: `transfer.init_from=...` (the whole model trained at one learning rate).
  * `scaled`:   `transfer.init_from=...`, `transfer.trunk_lr_scale=0.1`.
  * `unfreeze`: `transfer.init_from=...`, `transfer.unfreeze_after_steps=200`,
    `transfer.trunk_lr_scale=0.1` (the head first, then the trunk at a tenth of its rate).
The new task's runs use Adam at a constant 1e-2 (a head on a frozen trunk barely moves from its
random start at 1e-3 in this budget), batches of min(64, N) rows, 400 steps, and report the last
step's model: with 50 labels there is no honest validation set to select on.
"""

import ml_collections

from experiments.configs import default

PRETRAIN_DIR = 'runs/transfer/pretrain/checkpoints'
VARIANTS = ('scratch', 'scratch_slow', 'frozen', 'finetune', 'scaled', 'unfreeze')


def get_config(arg: str = 'scaled') -> ml_collections.ConfigDict:
  config = default.get_config()
  config.single_task_baselines = False
  if arg == 'pretrain':
    config.tasks = ('never_married',)
    config.best_metric = 'val/never_married/auc'
    return config
  if arg not in VARIANTS:
    raise ValueError(f'unknown config argument {arg!r}; valid: pretrain, {", ".join(VARIANTS)}')
  config.tasks = ('income',)
  config.best_metric = 'val/income/auc'
  config.train_examples = 200
  config.batch_size = 64
  config.learning_rate = 1e-2
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  config.num_train_steps = 400
  # One evaluation and one checkpoint, at the end: the reported model is the last step's.
  config.eval_every_steps = config.num_train_steps
  config.checkpoint_every_steps = config.num_train_steps
  config.log_every_steps = 100
  config.keep_best = 1
  if arg == 'scratch_slow':
    config.learning_rate = 1e-3
  elif arg != 'scratch':
    config.transfer.init_from = PRETRAIN_DIR
  if arg == 'frozen':
    config.transfer.trunk = 'frozen'
  elif arg == 'scaled':
    config.transfer.trunk_lr_scale = 0.1
  elif arg == 'unfreeze':
    config.transfer.unfreeze_after_steps = config.num_train_steps // 2
    config.transfer.trunk_lr_scale = 0.1
  return config
