"""Oxford-IIIT Pet (tfds catalog, `mtl_jax/data/catalog.py`): breed (37 classes), species and the
trimap segmentation (foreground / background / boundary per pixel) from one shared U-Net trunk,
the classic mix of per-image and dense tasks (as NYUv2 / Cityscapes mix per-pixel ones).

The `fcn` encoder keeps one feature vector per pixel of a 32 x 32 grid (the 128 x 128 image at
output stride 4, the adapter's label grid); segmentation is a per-token task over those pixels,
and breed and species heads average the same features over the image. Preparing the dataset
needs TensorFlow and internet once (see docs/DATA_CATALOG.md).

    python -m mtl_jax.data.catalog prepare oxford_iiit_pet --data_dir ~/tensorflow_datasets
    python launch.py --config=experiments/configs/oxford_pet.py
    python launch.py --config=experiments/configs/oxford_pet.py --config.method=nash_mtl
"""

import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f'unknown config argument {arg!r}; valid: ""')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_train_steps = 6000
  config.batch_size = 32
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

  config.dataset = 'oxford_iiit_pet'
  config.tasks = ('label', 'species', 'segmentation')
  config.data_dir = ''

  config.encoder = 'fcn'
  config.encoder_kwargs = ml_collections.ConfigDict(
      {'channels': (32, 64, 128, 256), 'output_stride': 4, 'norm': 'group', 'dropout': 0.0})
  config.embed_dim = 8  # Unused (no categorical inputs); kept because every config has it.
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 200
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0

  config.log_every_steps = 100
  config.eval_batch_size = 256
  config.best_metric = 'val/avg/accuracy'
  config.keep_best = 2
  config.early_stopping_patience = 0
  config.single_task_baselines = False
  return config
