"""MultiMNIST-style digit pairs (`mtl_jax/data/multi_mnist.py`): classify the top-left and the
bottom-right digit of a 36x36 image (the setting of Sener & Koltun 2018's MultiMNIST experiment,
built here from the 10k MNIST test digits; see docs/DATA.md).

A small hard-shared CNN (two conv 3x3 + max-pool blocks of 16 and 32 channels, one dense layer of
64) with one linear head per task, equal weighting.

    python launch.py --config=experiments/configs/multi_mnist.py
    python launch.py --config=experiments/configs/multi_mnist.py --config.method=mgda
    python launch.py --config=experiments/configs/multi_mnist.py:small   # 2k pairs, for a smoke run

Argument: '' (the registered `multi_mnist` dataset: 30k/5k/5k pairs) or 'small' (2,000 / 500 /
500 pairs, registered here, and 200 steps).
"""

import ml_collections

from mtl_jax.data import multi_mnist  # Registers the multi_mnist datasets.


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train_steps = 1500
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 250
  config.method = 'ew'
  config.arch = 'hard'
  config.arch_kwargs = ml_collections.ConfigDict()

  config.method_kwargs = ml_collections.ConfigDict()
  config.mode = 'auto'
  config.jacobian_chunk_size = 0
  config.per_task_gradients = 'auto'

  config.dataset = 'multi_mnist'
  config.tasks = ('left', 'right')
  config.data_dir = ''

  config.encoder = 'cnn'
  config.encoder_kwargs = ml_collections.ConfigDict(
      {'channels': (16, 32), 'kernel_size': 3, 'hidden_sizes': (64,), 'dropout': 0.0})
  config.embed_dim = 8  # Unused (no categorical inputs); kept because every config has it.
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 50
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0

  config.log_every_steps = 100
  config.eval_batch_size = 1000
  config.best_metric = 'val/avg/accuracy'
  config.keep_best = 2
  config.early_stopping_patience = 0
  # Single-task baselines triple the cost on CPU; turn them on with
  # --config.single_task_baselines=True.
  config.single_task_baselines = False

  if arg == 'small':
    config.dataset = multi_mnist.register(2000, 500, 500)
    config.num_train_steps = 200
    config.eval_every_steps = config.checkpoint_every_steps = 100
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; valid: "" or "small"')
  return config
