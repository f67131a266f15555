"""Universal Dependencies English-EWT: per-word UPOS, XPOS and dependency-relation tagging.

A BiLSTM tagger in the style of Plank et al. 2016 ("Multilingual Part-of-Speech Tagging with
Bidirectional LSTM Models and Auxiliary Loss"): word embeddings (word dropout for unknown words)
plus sub-word features (here hashed character n-grams, Bojanowski et al. 2017), a 2-layer BiLSTM,
one softmax per task, Adam. Trained multi-task beside one single-task model per task with the same
trunk and budget (`experiment.run`).

    python launch.py --config=experiments/configs/ud_ewt.py:hard
    python launch.py --config=experiments/configs/ud_ewt.py:hierarchical
    python launch.py --config=experiments/configs/ud_ewt.py:smoke   # a tiny model, a few steps

Arguments: 'hard' (the default: one shared 2-layer BiLSTM, every head on top), 'hierarchical'
(Søgaard & Goldberg 2016, "Deep multi-task learning with low level tasks supervised at lower
layers": UPOS read from the first BiLSTM layer, XPOS and DEPREL from the second), 'smoke' (a tiny
hard-shared model for tests), 'transformer' (hard sharing over a small Transformer encoder).
"""

import ml_collections

TASKS = ('upos', 'xpos', 'deprel')
ARGS = ('hard', 'hierarchical', 'smoke', 'transformer')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  arg = arg or 'hard'
  if arg not in ARGS:
    raise ValueError(f'unknown config argument {arg!r}; valid: {", ".join(ARGS)}')
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 12,544 train sentences / 32 = 392 steps per epoch.
  config.num_train_steps = 2400
  config.batch_size = 32
  config.learning_rate = 2e-3
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.method = 'ew'
  config.arch = 'hard'
  config.arch_kwargs = ml_collections.ConfigDict()

  config.method_kwargs = ml_collections.ConfigDict()
  config.mode = 'auto'
  config.jacobian_chunk_size = 0
  config.per_task_gradients = 'auto'

  config.dataset = 'ud_english_ewt'
  config.tasks = TASKS
  config.data_dir = ''

  # The input layer (`models.token_inputs.TokenEmbedding`; the vocabulary size comes from the
  # dataset). Word dropout teaches the model the unknown-word id, which 9% of test words get.
  config.token_embedding = ml_collections.ConfigDict({
      'embed_dim': 100,
      'char_buckets': 16384,
      'char_embed_dim': 64,
      'char_ngrams': (1, 2, 3, 4),
      'word_dropout': 0.1,
      'dropout': 0.25,
  })
  config.encoder = 'bilstm'
  config.encoder_kwargs = ml_collections.ConfigDict({
      'hidden_size': 128, 'num_layers': 2, 'dropout': 0.25})
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 100
  config.weight_decay = 0.0
  config.grad_clip_norm = 5.0

  config.log_every_steps = 100
  config.eval_batch_size = 512
  config.best_metric = 'val/avg/accuracy'
  config.keep_best = 1
  config.early_stopping_patience = 0
  config.single_task_baselines = True

  if arg == 'hierarchical':
    config.arch = 'hierarchical'
    config.arch_kwargs = ml_collections.ConfigDict(
        {'task_depths': ml_collections.ConfigDict({'upos': 1, 'xpos': 2, 'deprel': 2})})
  elif arg == 'transformer':
    config.encoder = 'transformer'
    config.encoder_kwargs = ml_collections.ConfigDict()
  elif arg == 'smoke':
    config.num_train_steps = 6
    config.batch_size = 8
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 3
    config.warmup_steps = 1
    config.token_embedding = ml_collections.ConfigDict({
        'embed_dim': 8, 'char_buckets': 64, 'char_embed_dim': 4, 'char_ngrams': (1, 2)})
    config.encoder_kwargs = ml_collections.ConfigDict({'hidden_size': 8, 'num_layers': 1})
    config.eval_batch_size = 256
    config.single_task_baselines = False
  return config
