"""The default experiment: Census-Income (KDD), the MMoE paper's two tasks.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, §5.2: income > 50k and never-married, predicted from the other columns. A hard-shared MLP
with equal weighting, beside one single-task model per task with the same trunk and budget.

    python launch.py                                    # this config
    python launch.py --config.method=mgda --config.mode=rep
    python launch.py --config=experiments/configs/default.py:soft
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Kept keys (every experiment has them).
  config.seed = 0
  config.num_train_steps = 3000
  config.batch_size = 512
  config.learning_rate = 1e-3
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.method = 'ew'
  config.arch = 'hard'
  config.arch_kwargs = ml_collections.ConfigDict()  # the architecture's own options

  config.method_kwargs = ml_collections.ConfigDict()
  config.mode = 'auto'  # 'weighted' | 'jacobian' | 'rep'; auto: the method's preferred mode
  config.jacobian_chunk_size = 0  # >0: per-task gradients that many tasks at a time (memory)
  config.per_task_gradients = 'auto'  # 'vmap' | 'unrolled'; auto: unrolled on CPU (K<=16)

  config.dataset = 'census_income'
  config.tasks = ('income', 'never_married')
  config.data_dir = ''  # '' = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)

  config.encoder = 'mlp'
  config.encoder_kwargs = ml_collections.ConfigDict({'hidden_sizes': (128, 64), 'dropout': 0.1})
  config.embed_dim = 8
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 100
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0

  config.log_every_steps = 250
  config.eval_batch_size = 8192
  config.best_metric = 'val/avg/auc'
  config.keep_best = 2
  config.early_stopping_patience = 0
  config.single_task_baselines = True

  # Few labels and transfer (mtl_jax/meta/transfer.py): 0 / '' / 'train' change nothing.
  config.train_examples = 0  # >0: train on that many rows of the train split, drawn with seed
  config.transfer = ml_collections.ConfigDict({
      'init_from': '',  # a pretraining run's checkpoints/: its shared params initialise these
      'step': 0,  # the checkpoint step to read; 0: its best by its own best_metric
      'trunk': 'train',  # 'train' | 'frozen'
      'trunk_lr_scale': 1.0,  # the trunk's learning rate, as a fraction of learning_rate
      'unfreeze_after_steps': 0,  # >0: the trunk is frozen for that many steps, then trained
  })

  if arg == 'soft':
    config.arch = 'soft'
    config.soft_sharing_strength = 1e-3
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; valid: "" or "soft"')
  return config
