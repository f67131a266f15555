"""Universal Dependencies English-EWT: per-word UPOS, XPOS and dependency-relation tagging.

A BiLSTM tagger of the kind in Plank et al. 2016 ("Multilingual Part-of-Speech Tagging with
Bidirectional LSTM Models and Auxiliary Loss") and Ma & Hovy 2016 ("End-to-end Sequence Labeling
via Bi-directional LSTM-CNNs-CRF", without the CRF): a word embedding (word dropout for unknown
words) with hashed character n-grams (Bojanowski et al. 2017) and character-CNN word features, a
2-layer BiLSTM (128 units per direction), dropout 0.33, one softmax per task, Adam with a cosine
schedule, 6 epochs. Trained multi-task beside one single-task model per task with the same
trunk and budget (`experiment.run`).

    python launch.py --config=experiments/configs/ud_ewt.py:hard
    python launch.py --config=experiments/configs/ud_ewt.py:hierarchical
    python launch.py --config=experiments/configs/ud_ewt.py:smoke   # a tiny model, a few steps

Arguments: 'hard' (the default: one shared 2-layer BiLSTM, every head on top), 'hierarchical'
(Søgaard & Goldberg 2016, "Deep multi-task learning with low level tasks supervised at lower
layers": UPOS read from the first BiLSTM layer, XPOS and DEPREL from the second), 'smoke' (a tiny
hard-shared model for tests), 'transformer' (hard sharing over the `transformer` encoder with its
default options; not tuned).
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
  # 12,544 train sentences / 32 = 392 steps per epoch: about 6 epochs.
  config.num_train_steps = 2400
  config.batch_size = 32
  config.learning_rate = 3e-3
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

  # The input layer: a word embedding (`models.token_inputs.TokenEmbedding`; the vocabulary size
  # comes from the dataset) with the mean of hashed character 1- to 4-gram embeddings, next to
  # character-CNN word features (`models.inputs.CharCNN`). Word dropout teaches the model the
  # unknown-word id, which 9% of test words get.
  config.token_embedding = ml_collections.ConfigDict({
      'embed_dim': 100,
      'char_buckets': 32768,
      'char_embed_dim': 64,
      'char_ngrams': (1, 2, 3, 4),
      'word_dropout': 0.1,
      'dropout': 0.33,
  })
  config.char_cnn = ml_collections.ConfigDict(
      {'embed_dim': 32, 'filters': 64, 'width': 3, 'dropout': 0.33})
  config.encoder = 'bilstm'
  config.encoder_kwargs = ml_collections.ConfigDict({
      'hidden_size': 128, 'num_layers': 2, 'dropout': 0.33})
  config.head_hidden_sizes = ()
  config.soft_sharing_strength = 0.0

  config.lr_schedule = 'cosine'
  config.warmup_steps = 50
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
    config.encoder_kwargs = ml_collections.ConfigDict({
        'model_dim': 128, 'num_heads': 4, 'num_layers': 2, 'dropout': 0.2, 'max_len': 88})
    config.learning_rate = 1e-3
  elif arg == 'smoke':
    config.num_train_steps = 6
    config.batch_size = 8
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 3
    config.log_every_steps = 3
    config.warmup_steps = 1
    config.token_embedding = ml_collections.ConfigDict({
        'embed_dim': 8, 'char_buckets': 64, 'char_embed_dim': 4, 'char_ngrams': (1, 2)})
    config.char_cnn = ml_collections.ConfigDict({'embed_dim': 4, 'filters': 4})
    config.encoder_kwargs = ml_collections.ConfigDict({'hidden_size': 8, 'num_layers': 1})
    config.eval_batch_size = 256
    config.single_task_baselines = False
  return config
