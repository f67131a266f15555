"""GradNorm's toy problem (`mtl_jax/data/gradnorm_toy.py`): T regression tasks of very different
output scales on one trunk (Chen et al., ICML 2018, §4: a 4-layer fully connected ReLU trunk of
100 units, one linear head of 100 outputs per task, squared loss).

    python launch.py --config=experiments/configs/gradnorm_toy.py                 # T=2, sigma 1, 100
    python launch.py --config=experiments/configs/gradnorm_toy.py:t10 --config.method=gradnorm
    python launch.py --config=experiments/configs/gradnorm_toy.py --config.method=imtl

Argument: '' or 't2' (sigma = 1, 100), 't10' (sigma_i = i, i = 1..10).
"""

import ml_collections

from mtl_jax.data import gradnorm_toy


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 't2', 't10'):
    raise ValueError(f'unknown config argument {arg!r}; valid: "", "t2", "t10"')
  sigmas = gradnorm_toy.CONFIGS[arg or 't2']
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train_steps = 5000
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.method = 'ew'
  config.arch = 'hard'
  config.arch_kwargs = ml_collections.ConfigDict()

  config.method_kwargs = ml_collections.ConfigDict()
  config.mode = 'auto'
  config.jacobian_chunk_size = 0
  config.per_task_gradients = 'auto'

  config.dataset = gradnorm_toy.register(sigmas)
  config.tasks = tuple(t.name for t in gradnorm_toy.tasks(len(sigmas)))
  config.data_dir = ''

  config.encoder = 'mlp'
  config.encoder_kwargs = ml_collections.ConfigDict(
      {'hidden_sizes': (100, 100, 100, 100), 'dropout': 0.0})
  config.embed_dim = 8  # Unused (dense inputs); kept because every config has it.
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 100
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0

  config.log_every_steps = 250
  config.eval_batch_size = 1000
  # The sum of every task's RMSE would be the largest-scale task's; each task relative to its
  # scale is what the toy problem is about: report them all, select on the smallest task.
  config.best_metric = 'val/t0/rmse'
  config.keep_best = 2
  config.early_stopping_patience = 0
  config.single_task_baselines = False
  return config
