"""Multi-task datasets made from tfds catalog datasets, by name (see `docs/DATA_CATALOG.md`).

Importing this module registers, in `registry.DATASETS`:

  celeb_a_20k, celeb_a        40 binary face attributes from the 218x178 RGB image
  smallnorb                   category, instance, elevation, azimuth, lighting (stereo pair)
  smallnorb_heldout_instances the same without `instance`, tested on the unseen instances
  shapes3d, dsprites          their latent factors, each as a multiclass task
  conll2003                   POS, chunk and NER tags, per token
  movielens                   rating (regression) + the rater's gender, age group, occupation
  qm9                         12 regression targets from a Coulomb-matrix descriptor
  oxford_iiit_pet             breed (37 classes), species (binary), trimap segmentation (per
                              pixel, 32 x 32: a per-token task for the `fcn` encoder)

Each dataset is one `Adapter` row: the tfds builder (module, class, config), the rule that maps
the trainer's splits 'train'/'validation'/'test' to tfds split expressions, the tasks, the
input kind, and a per-example function that turns a decoded tfds example into fixed-shape
columns (labels as the Task expects them: class indices int32, binary 0/1 int32, regression
float32, -1 / NaN where missing). Most rows use the generic `fields` function; the datasets with
strings, variable lengths or a vocabulary have their own small functions below.

How the trainer reaches it: `DatasetSpec.builder_cls` is an `AdaptedBuilder` subclass bound to
the adapter; `pipeline.prepare` builds it like any builder (it wraps the tfds builder, whose
`download_and_prepare` writes ArrayRecord), and `pipeline.load_columns` hands the split to its
`read_split`, which reads the tfds split expression through `builder.as_data_source` (no
TensorFlow), applies the adapter's function and stacks the result.

Memory: a split is held in memory whole (the pipeline's design). `read_split` estimates a split's
size from its first example before reading it and refuses (UserError) above `max_split_bytes()`
(8 GiB, or $MTL_JAX_CATALOG_MAX_SPLIT_GB); full-size celeb_a (18.9 GB of train images) is
refused, `celeb_a_20k` (first 20,000 examples of each split) is registered for it, and
`register(base, max_examples=N)` registers `<base>_<N>` (`<base>_<N/1000>k`) for any dataset.

Vocabularies and statistics (conll2003's words and characters, movielens' user and movie ids,
qm9's standardisation) come from the adapter's train split only, and are cached per prepared
dataset in this process (`clear_cache()` drops them).

Run `python -m mtl_jax.data.catalog prepare NAME --data_dir DIR` to build a dataset's ArrayRecord
files (on a machine with internet, and TensorFlow for the builders that need it; see the docs).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import importlib.util
import os
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tensorflow_datasets.core.dataset_builders.conll import (
    conll_dataset_builder_utils as conll_lib)

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.data import ud_ewt
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.tasks import Task

SPLITS = ('train', 'validation', 'test')
# Splits carved from a dataset that only has 'train': a fixed 80/10/10 cut of the stored order
# (tfds stores examples in the order of a hash of their key, so the cut is a fixed pseudo-random
# partition, the same on every machine for one tfds version).
CARVED = {'train': 'train[:80%]', 'validation': 'train[80%:90%]', 'test': 'train[90%:]'}
DEFAULT_MAX_SPLIT_GB = 8.0
_READ_CHUNK = 4096


def max_split_bytes() -> int:
  """The largest split (in bytes of columns) `read_split` loads: $MTL_JAX_CATALOG_MAX_SPLIT_GB
  (GiB), default 8."""
  value = os.environ.get('MTL_JAX_CATALOG_MAX_SPLIT_GB', '')
  try:
    gb = float(value) if value else DEFAULT_MAX_SPLIT_GB
  except ValueError:
    raise UserError(f'MTL_JAX_CATALOG_MAX_SPLIT_GB={value!r} is not a number of GiB') from None
  return int(gb * 2**30)


# ---------------------------------------------------------------------------------------------
# The table.


@dataclasses.dataclass(frozen=True)
class Adapter:
  """One tfds catalog dataset as a multi-task dataset.

  Attributes:
    name: the registry name.
    tfds: the tfds builder's name (its data folder under data_dir).
    module, cls, config: the tfds builder: class `cls` of module `module` (imported when the
      dataset is first prepared), with builder config `config` (None: the default).
    splits: trainer split -> tfds split expression ('train[:80%]', 'train[:80%]+test[:80%]').
    tasks: the tasks, in order.
    input_kind: the `models.inputs` kind ('image', 'tokens', 'tabular', 'dense').
    input_keys: the input columns.
    example_fn: (adapter, decoded tfds example, context) -> {column: fixed-shape array}: the
      inputs and one label column per task.
    sources: for the generic `fields` example_fn: column -> (path of the tfds feature, dtype),
      the label columns named as their task; a path is a tuple of keys into the example.
    context_fn: (adapter, builder) -> dict computed from the train split (vocabularies,
      statistics), or None.
    finish_fn: (columns of a chunk, context) -> columns, vectorised work after stacking.
    input_info_fn: (context) -> facts models need (`DatasetSpec.input_info`).
    batch_fn: `DatasetSpec.batch_fn`.
    time_buckets: `DatasetSpec.time_buckets` (token datasets).
    max_examples: read at most this many examples of each split (None: all).
    base: for a capped variant (`register(base, max_examples)`), the adapter it caps.
    needs_tensorflow: whether the tfds builder uses TensorFlow in `download_and_prepare`.
    prepare_notes: anything else a user must know to prepare it (manual downloads, size).
  """

  name: str
  tfds: str
  module: str
  cls: str
  config: str | None
  splits: Mapping[str, str]
  tasks: tuple[Task, ...]
  input_kind: str
  input_keys: tuple[str, ...]
  example_fn: Callable[['Adapter', dict, Any], dict]
  sources: Mapping[str, tuple[tuple[str, ...], Any]] = dataclasses.field(default_factory=dict)
  context_fn: Callable[['Adapter', Any], dict] | None = None
  finish_fn: Callable[[dict, Any], dict] | None = None
  input_info_fn: Callable[[Any], dict] | None = None
  batch_fn: Callable[..., dict] | None = None
  time_buckets: tuple[int, ...] = ()
  max_examples: int | None = None
  base: str = ''
  needs_tensorflow: bool = False
  prepare_notes: str = ''

  @property
  def tfds_name(self) -> str:
    return self.tfds + (f'/{self.config}' if self.config else '')

  def builder_class(self) -> type:
    try:
      module = importlib.import_module(self.module)
    except ImportError as e:
      raise UserError(f'dataset {self.name!r}: cannot import the tfds builder module '
                      f'{self.module} ({e}); install what it names (tensorflow-datasets '
                      f'4.9.10 has it)') from None
    cls = getattr(module, self.cls)
    if cls.name != self.tfds:
      raise UserError(f'dataset {self.name!r}: {self.module}.{self.cls} is tfds dataset '
                      f'{cls.name!r}, not {self.tfds!r}; install tensorflow-datasets 4.9.10')
    return cls


def _get(example: Mapping, path: tuple[str, ...]) -> Any:
  for key in path:
    example = example[key]
  return example


def fields(adapter: Adapter, example: Mapping, context: Any) -> dict:
  """The generic example function: every column of `adapter.sources`, cast to its dtype."""
  del context
  return {column: np.asarray(_get(example, path)).astype(dtype)
          for column, (path, dtype) in adapter.sources.items()}


def image_batch(rows: dict, spec: registry.DatasetSpec, tasks=None) -> dict:
  """`pipeline.to_batch` with the inputs as the one uint8 image array [B, H, W, C] (the 'image'
  input layer, `models.inputs.ImageScale`, scales it to [0, 1])."""
  batch = pipeline.to_batch(rows, spec, tasks)
  batch['inputs'] = batch['inputs'][spec.input_keys[0]]
  return batch


def dense_batch(rows: dict, spec: registry.DatasetSpec, tasks=None) -> dict:
  """`pipeline.to_batch` with the inputs as the one float array `x` [B, D] ('dense' kind)."""
  batch = pipeline.to_batch(rows, spec, tasks)
  batch['inputs'] = batch['inputs']['x']
  return batch


# --- celeb_a ---------------------------------------------------------------------------------

CELEB_A_ATTRIBUTES = (
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs',
    'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair', 'Bushy_Eyebrows',
    'Chubby', 'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair', 'Heavy_Makeup',
    'High_Cheekbones', 'Male', 'Mouth_Slightly_Open', 'Mustache', 'Narrow_Eyes', 'No_Beard',
    'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline', 'Rosy_Cheeks', 'Sideburns',
    'Smiling', 'Straight_Hair', 'Wavy_Hair', 'Wearing_Earrings', 'Wearing_Hat',
    'Wearing_Lipstick', 'Wearing_Necklace', 'Wearing_Necktie', 'Young')

# --- smallnorb -------------------------------------------------------------------------------

SMALLNORB_FACTORS = {  # task -> (tfds feature, classes)
    'category': ('label_category', 5), 'instance': ('instance', 10),
    'elevation': ('label_elevation', 9), 'azimuth': ('label_azimuth', 18),
    'lighting': ('label_lighting', 6)}


def smallnorb_example(adapter: Adapter, example: Mapping, context: Any) -> dict:
  """The stereo pair as one [96, 96, 2] uint8 image; the factors' class indices (tfds stores
  azimuth 0, 2, ..., 34 as 0..17)."""
  out = fields(adapter, example, context)
  out['image'] = np.concatenate([np.asarray(example['image'], np.uint8),
                                 np.asarray(example['image2'], np.uint8)], axis=-1)
  return out


# --- shapes3d, dsprites ----------------------------------------------------------------------

# Latent factors: task -> classes. tfds gives each factor's class index (`label_<factor>`:
# shapes3d's continuous hues, scales and orientations are discretised by the builder into the
# index of their value among the factor's sorted distinct values) next to the value itself.
SHAPES3D_FACTORS = {'floor_hue': 10, 'wall_hue': 10, 'object_hue': 10, 'scale': 8, 'shape': 4,
                    'orientation': 15}
DSPRITES_FACTORS = {'shape': 3, 'scale': 6, 'orientation': 40, 'x_position': 32,
                    'y_position': 32}

# --- conll2003 -------------------------------------------------------------------------------

CONLL_MAX_LEN = 128  # CoNLL-2003 sentences are reported to have at most 124 tokens (unchecked).
CONLL_MAX_WORD_LEN = 16
CONLL_MIN_WORD_COUNT = 2
CONLL_MIN_CHAR_COUNT = 2
CONLL_TIME_BUCKETS = (32, 64)


# The tag sets as tfds' CoNLL-2003 builder declares them (its ClassLabel indices).
CONLL_LABELS = {'pos': tuple(conll_lib.POS_TAGS), 'chunk': tuple(conll_lib.CHUNK_TAGS),
                'ner': tuple(conll_lib.NER_TAGS)}
CONLL_FEATURES = {'pos': 'pos', 'chunk': 'chunks', 'ner': 'ner'}  # task -> tfds feature


def _words(example: Mapping) -> list[str]:
  return [w.decode('utf-8') if isinstance(w, bytes) else str(w)
          for w in np.asarray(example['tokens']).reshape(-1)]


def conll_context(adapter: Adapter, builder) -> dict:
  """Word and character vocabularies of the train split (as `ud_ewt`: lower-cased words seen
  `CONLL_MIN_WORD_COUNT`+ times, most frequent first, from index 2; characters seen
  `CONLL_MIN_CHAR_COUNT`+ times, sorted, from index 2; 1 = out of vocabulary, 0 = padding)."""
  word_counts, char_counts = collections.Counter(), collections.Counter()
  for example in _examples(adapter, builder, 'train'):
    for form in _words(example):
      word_counts[ud_ewt.normalize(form)] += 1
      char_counts.update(ud_ewt.clip_word(form, CONLL_MAX_WORD_LEN))
  words = sorted((w for w, n in word_counts.items() if n >= CONLL_MIN_WORD_COUNT),
                 key=lambda w: (-word_counts[w], w))
  chars = sorted(c for c, n in char_counts.items() if n >= CONLL_MIN_CHAR_COUNT)[:254]
  return {'word_index': {w: i + 2 for i, w in enumerate(words)},
          'char_index': {c: i + 2 for i, c in enumerate(chars)}}


def conll_example(adapter: Adapter, example: Mapping, context: dict) -> dict:
  """Tokens (word ids), chars (uint8 [T, 16]), mask and the three tag sequences (class indices),
  padded to `CONLL_MAX_LEN` (-1 labels on padding; longer sentences are truncated)."""
  del adapter
  n, width = CONLL_MAX_LEN, CONLL_MAX_WORD_LEN
  words = _words(example)[:n]
  out = {'tokens': np.zeros(n, np.int32), 'chars': np.zeros((n, width), np.uint8),
         'mask': np.zeros(n, bool)}
  out['mask'][:len(words)] = True
  for t, form in enumerate(words):
    out['tokens'][t] = context['word_index'].get(ud_ewt.normalize(form), ud_ewt.OOV)
    clipped = ud_ewt.clip_word(form, width)
    out['chars'][t, :len(clipped)] = [context['char_index'].get(c, ud_ewt.OOV) for c in clipped]
  for task, feature in CONLL_FEATURES.items():
    labels = np.full(n, -1, np.int32)
    # A tag sequence is as long as the sentence in the real data; if not, the words without a
    # tag have none (-1), and tags past the last word are dropped.
    values = np.asarray(example[feature], np.int64).reshape(-1)[:len(words)]
    labels[:len(values)] = values
    out[task] = labels
  return out


def conll_input_info(context: dict) -> dict:
  return {'vocab_size': len(context['word_index']) + 2,
          'char_vocab_size': len(context['char_index']) + 2,
          'max_len': CONLL_MAX_LEN, 'max_word_len': CONLL_MAX_WORD_LEN}


# --- movielens -------------------------------------------------------------------------------

MOVIELENS_GENRES = 21
# MovieLens' age groups, as tfds' `bucketized_user_age` holds them (the group's lower bound):
# 1 (under 18), 18, 25, 35, 45, 50, 56 -> classes 0..6.
MOVIELENS_AGE_BOUNDS = (18, 25, 35, 45, 50, 56)
MOVIELENS_OCCUPATIONS = 22


def movielens_age_class(bucketized_age) -> np.ndarray:
  """tfds' bucketized age (1, 18, 25, 35, 45, 50 or 56) -> its class index 0..6."""
  return np.digitize(np.asarray(bucketized_age, np.float64), MOVIELENS_AGE_BOUNDS).astype(np.int32)


def _text(value) -> str:
  value = np.asarray(value).item()
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def movielens_context(adapter: Adapter, builder) -> dict:
  """Index of every user id and movie id of the train split (from 1; 0 = not seen in train)."""
  users, movies = {}, {}
  for example in _examples(adapter, builder, 'train'):
    users.setdefault(_text(example['user_id']), len(users) + 1)
    movies.setdefault(_text(example['movie_id']), len(movies) + 1)
  return {'users': users, 'movies': movies}


def movielens_example(adapter: Adapter, example: Mapping, context: dict) -> dict:
  """categorical [user, movie] indices, numeric: the movie's genres as 21 0/1 values; labels:
  rating (float, 1..5), gender (1 = male), age group (0..6), occupation (0..21)."""
  del adapter
  genres = np.zeros(MOVIELENS_GENRES, np.float32)
  genres[np.asarray(example['movie_genres'], np.int64).reshape(-1)] = 1.0
  return {
      'categorical': np.array([context['users'].get(_text(example['user_id']), 0),
                               context['movies'].get(_text(example['movie_id']), 0)], np.int32),
      'numeric': genres,
      'rating': np.float32(example['user_rating']),
      'gender': np.int32(bool(example['user_gender'])),
      'age': movielens_age_class(example['bucketized_user_age']),
      'occupation': np.int32(example['user_occupation_label']),
  }


def movielens_input_info(context: dict) -> dict:
  return {'vocab_sizes': [len(context['users']) + 1, len(context['movies']) + 1],
          'categorical_columns': ['user_id', 'movie_id'],
          'numeric_columns': [f'genre_{i}' for i in range(MOVIELENS_GENRES)],
          'num_categorical': 2, 'num_numeric': MOVIELENS_GENRES}


# --- qm9 -------------------------------------------------------------------------------------

QM9_MAX_ATOMS = 29
QM9_ELEMENTS = (1, 6, 7, 8, 9)  # H, C, N, O, F
# The 12 targets of the usual QM9 benchmark (energies U0, U, H, G as atomization energies).
QM9_TARGETS = ('mu', 'alpha', 'homo', 'lumo', 'gap', 'r2', 'zpve', 'U0_atomization',
               'U_atomization', 'H_atomization', 'G_atomization', 'Cv')


def qm9_example(adapter: Adapter, example: Mapping, context: Any) -> dict:
  del adapter, context
  out = {'charges': np.asarray(example['charges'], np.int64).reshape(QM9_MAX_ATOMS),
         'positions': np.asarray(example['positions'], np.float64).reshape(QM9_MAX_ATOMS, 3)}
  for target in QM9_TARGETS:
    out[target] = np.float32(example[target])
  return out


def coulomb_features(charges: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """[N, 29 + 5]: the eigenvalues of each molecule's Coulomb matrix (Rupp et al. 2012: C_ii =
  Z_i^2.4 / 2, C_ij = Z_i Z_j / |R_i - R_j|), sorted by decreasing magnitude, zero on padding
  atoms (charge 0); then the number of H, C, N, O and F atoms. Invariant to rotation,
  translation and the order of the atoms."""
  z = charges.astype(np.float64)
  real = z > 0
  distance = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
  pair = real[:, :, None] & real[:, None]
  off = np.where(pair, z[:, :, None] * z[:, None] / np.where(pair, np.maximum(distance, 1e-6), 1),
                 0.0)
  eye = np.eye(z.shape[1], dtype=bool)
  matrix = np.where(eye, 0.5 * z[:, :, None] ** 2.4 * eye, off)
  eigenvalues = np.linalg.eigvalsh(matrix)
  order = np.argsort(-np.abs(eigenvalues), axis=1)
  eigenvalues = np.take_along_axis(eigenvalues, order, axis=1)
  counts = np.stack([(charges == e).sum(1) for e in QM9_ELEMENTS], axis=1)
  return np.concatenate([eigenvalues, counts], axis=1).astype(np.float32)


def qm9_finish(columns: dict, context: dict | None) -> dict:
  """Coulomb features as `x`; with a context, `x` and the targets standardised by the train
  split's mean and standard deviation."""
  out = {k: v for k, v in columns.items() if k not in ('charges', 'positions')}
  out['x'] = coulomb_features(columns['charges'], columns['positions'])
  if context is not None:
    out['x'] = ((out['x'] - context['x_mean']) / context['x_std']).astype(np.float32)
    for target in QM9_TARGETS:
      mean, std = context['target_mean'][target], context['target_std'][target]
      out[target] = ((out[target] - mean) / std).astype(np.float32)
  return out


def qm9_context(adapter: Adapter, builder) -> dict:
  """Means and standard deviations (train split) of the features and of every target."""
  columns = _read_columns(adapter, builder, 'train', context=None)
  std = lambda a: np.where(a.std(0) > 0, a.std(0), 1.0)
  return {'x_mean': columns['x'].mean(0), 'x_std': std(columns['x']),
          'target_mean': {t: float(columns[t].mean()) for t in QM9_TARGETS},
          'target_std': {t: float(std(columns[t])) for t in QM9_TARGETS}}


def qm9_input_info(context: dict) -> dict:
  return {'num_features': QM9_MAX_ATOMS + len(QM9_ELEMENTS),
          'target_mean': dict(context['target_mean']), 'target_std': dict(context['target_std'])}


# --- oxford_iiit_pet -------------------------------------------------------------------------

PET_IMAGE_SIZE = 128


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3], bilinear (aspect ratio not kept)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  resized = Image.fromarray(image[..., :3]).resize((size, size), Image.BILINEAR)
  return np.asarray(resized, np.uint8)


# The trimap's classes, in the order of tfds' pixel values 1, 2, 3.
PET_TRIMAP_CLASSES = ('foreground', 'background', 'boundary')
PET_MASK_SIZE = 32  # Label grid: the image's 128 x 128 at stride 4.


def pet_trimap_labels(mask: np.ndarray, size: int = PET_MASK_SIZE) -> np.ndarray:
  """tfds' `segmentation_mask` (uint8 [H, W, 1], pixel values 1, 2, 3) -> int32 [size * size]
  class indices 0, 1, 2 (the value - 1), row-major, resized by nearest neighbour (an
  interpolated class index means nothing); any other value is -1, unlabelled."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mask = np.asarray(mask, np.uint8)
  if mask.ndim == 3:
    mask = mask[..., 0]
  resized = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST)).astype(np.int32)
  labels = resized - 1
  labels[(resized < 1) | (resized > len(PET_TRIMAP_CLASSES))] = -1
  return labels.reshape(-1)


def pet_example(adapter: Adapter, example: Mapping, context: Any) -> dict:
  out = fields(adapter, example, context)
  out['image'] = resize_image(example['image'], PET_IMAGE_SIZE)
  out['segmentation'] = pet_trimap_labels(example['segmentation_mask'])
  return out


# --- the rows --------------------------------------------------------------------------------


def _classes(factors: Mapping[str, int], prefix: str = 'label_') -> tuple[dict, tuple]:
  sources = {task: ((prefix + task,), np.int32) for task in factors}
  tasks = tuple(Task(task, 'multiclass', n) for task, n in factors.items())
  return sources, tasks


_SHAPES3D_SOURCES, _SHAPES3D_TASKS = _classes(SHAPES3D_FACTORS)
_DSPRITES_SOURCES, _DSPRITES_TASKS = _classes(DSPRITES_FACTORS)
_SMALLNORB_TASKS = tuple(Task(t, 'multiclass', n) for t, (_, n) in SMALLNORB_FACTORS.items())
_SMALLNORB_SOURCES = {t: ((f,), np.int32) for t, (f, _) in SMALLNORB_FACTORS.items()}

ADAPTERS: dict[str, Adapter] = {}


def _add(adapter: Adapter) -> Adapter:
  ADAPTERS[adapter.name] = adapter
  return adapter


_add(Adapter(
    name='celeb_a', tfds='celeb_a',
    module='tensorflow_datasets.datasets.celeb_a.celeb_a_dataset_builder',
    cls='Builder', config=None,
    splits={s: s for s in SPLITS},
    tasks=tuple(Task(a, 'binary') for a in CELEB_A_ATTRIBUTES),
    input_kind='image', input_keys=('image',), example_fn=fields,
    sources={'image': (('image',), np.uint8),
             **{a: (('attributes', a), np.int32) for a in CELEB_A_ATTRIBUTES}},
    batch_fn=image_batch,
    prepare_notes='The files come from Google Drive, which often refuses automated downloads '
                  '(quota); retry later.'))
_add(Adapter(
    name='smallnorb', tfds='smallnorb',
    module='tensorflow_datasets.datasets.smallnorb.smallnorb_dataset_builder',
    cls='Builder', config=None,
    # The official test split holds the other 5 instances of each category, so an instance task
    # needs splits that share instances: 80/10/10 of train and of test, pooled.
    splits={'train': 'train[:80%]+test[:80%]', 'validation': 'train[80%:90%]+test[80%:90%]',
            'test': 'train[90%:]+test[90%:]'},
    tasks=_SMALLNORB_TASKS, input_kind='image', input_keys=('image',),
    example_fn=smallnorb_example, sources=_SMALLNORB_SOURCES, batch_fn=image_batch,
    needs_tensorflow=True))
_add(Adapter(
    name='smallnorb_heldout_instances', tfds='smallnorb',
    module='tensorflow_datasets.datasets.smallnorb.smallnorb_dataset_builder',
    cls='Builder', config=None,
    splits={'train': 'train[:90%]', 'validation': 'train[90%:]', 'test': 'test'},
    tasks=tuple(t for t in _SMALLNORB_TASKS if t.name != 'instance'),
    input_kind='image', input_keys=('image',), example_fn=smallnorb_example,
    sources={k: v for k, v in _SMALLNORB_SOURCES.items() if k != 'instance'},
    batch_fn=image_batch, needs_tensorflow=True))
_add(Adapter(
    name='shapes3d', tfds='shapes3d',
    module='tensorflow_datasets.datasets.shapes3d.shapes3d_dataset_builder',
    cls='Builder', config=None, splits=CARVED, tasks=_SHAPES3D_TASKS,
    input_kind='image', input_keys=('image',), example_fn=fields,
    sources={'image': (('image',), np.uint8), **_SHAPES3D_SOURCES}, batch_fn=image_batch,
    needs_tensorflow=True))
_add(Adapter(
    name='dsprites', tfds='dsprites',
    module='tensorflow_datasets.datasets.dsprites.dsprites_dataset_builder',
    cls='Builder', config=None, splits=CARVED, tasks=_DSPRITES_TASKS,
    input_kind='image', input_keys=('image',), example_fn=fields,
    sources={'image': (('image',), np.uint8), **_DSPRITES_SOURCES}, batch_fn=image_batch,
    needs_tensorflow=True))
_add(Adapter(
    name='conll2003', tfds='conll2003',
    module='tensorflow_datasets.text.conll2003.conll2003', cls='Conll2003',
    config=None, splits={'train': 'train', 'validation': 'dev', 'test': 'test'},
    tasks=tuple(Task(t, 'multiclass', len(labels), metrics=('accuracy', 'f1'), per_token=True)
                for t, labels in CONLL_LABELS.items()),
    input_kind='tokens', input_keys=('tokens', 'chars', 'mask'), example_fn=conll_example,
    context_fn=conll_context, input_info_fn=conll_input_info, batch_fn=registry.token_batch,
    time_buckets=CONLL_TIME_BUCKETS))
_add(Adapter(
    name='movielens', tfds='movielens',
    module='tensorflow_datasets.structured.movielens', cls='Movielens',
    config='100k-ratings', splits=CARVED,
    tasks=(Task('rating', 'regression'), Task('gender', 'binary'),
           Task('age', 'multiclass', len(MOVIELENS_AGE_BOUNDS) + 1),
           Task('occupation', 'multiclass', MOVIELENS_OCCUPATIONS)),
    input_kind='tabular', input_keys=('categorical', 'numeric'), example_fn=movielens_example,
    context_fn=movielens_context, input_info_fn=movielens_input_info, needs_tensorflow=True))
_add(Adapter(
    name='qm9', tfds='qm9',
    module='tensorflow_datasets.datasets.qm9.qm9_dataset_builder', cls='Builder',
    config='dimenet', splits={s: s for s in SPLITS},
    tasks=tuple(Task(t, 'regression') for t in QM9_TARGETS),
    input_kind='dense', input_keys=('x',), example_fn=qm9_example, finish_fn=qm9_finish,
    context_fn=qm9_context, input_info_fn=qm9_input_info, batch_fn=dense_batch))
_add(Adapter(
    name='oxford_iiit_pet', tfds='oxford_iiit_pet',
    module='tensorflow_datasets.datasets.oxford_iiit_pet.oxford_iiit_pet_dataset_builder',
    cls='Builder', config=None,
    splits={'train': 'train[:90%]', 'validation': 'train[90%:]', 'test': 'test'},
    tasks=(Task('label', 'multiclass', 37), Task('species', 'binary'),
           Task('segmentation', 'multiclass', len(PET_TRIMAP_CLASSES),
                metrics=('accuracy', 'miou'), per_token=True)),
    input_kind='image', input_keys=('image',), example_fn=pet_example,
    sources={'label': (('label',), np.int32), 'species': (('species',), np.int32)},
    batch_fn=image_batch, needs_tensorflow=True))


# ---------------------------------------------------------------------------------------------
# Reading.

_CONTEXTS: dict[tuple, Any] = {}


def clear_cache() -> None:
  """Forget the vocabularies and statistics computed from train splits."""
  _CONTEXTS.clear()


def _source(adapter: Adapter, builder, split: str):
  """The tfds data source of the trainer split `split`."""
  if split not in adapter.splits:
    raise UnknownNameError(f'dataset {adapter.name!r} has no split {split!r}; valid splits: '
                           f'{", ".join(adapter.splits)}')
  expression = adapter.splits[split]
  known = list(builder.info.splits)  # Empty under tfds.testing.mock_data(policy=USE_CODE).
  if known:
    for part in expression.split('+'):
      if part.split('[')[0] not in known:
        raise UserError(f'dataset {adapter.name!r}: split {split!r} reads tfds split {part!r}, '
                        f'but {adapter.tfds_name} in {builder.data_path} has only '
                        f'{", ".join(known)}; delete that folder to rebuild it')
  try:
    return builder.as_data_source(split=expression)
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f'dataset {adapter.name!r}: cannot read tfds split {expression!r} of '
                    f'{adapter.tfds_name} ({e})') from None


def _count(adapter: Adapter, source) -> int:
  n = len(source)
  return n if adapter.max_examples is None else min(n, adapter.max_examples)


def _examples(adapter: Adapter, builder, split: str) -> Iterable[dict]:
  """The decoded tfds examples of a trainer split (capped at `max_examples`)."""
  source = _source(adapter, builder, split)
  n = _count(adapter, source)
  for start in range(0, n, _READ_CHUNK):
    yield from source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))


def _nbytes(tree: Any) -> int:
  if isinstance(tree, Mapping):
    return sum(_nbytes(v) for v in tree.values())
  return np.asarray(tree).nbytes


def _read_columns(adapter: Adapter, builder, split: str, context: Any) -> dict:
  source = _source(adapter, builder, split)
  n = _count(adapter, source)
  if n == 0:
    raise UserError(f'dataset {adapter.name!r}: split {split!r} ({adapter.splits[split]!r}) is '
                    f'empty in {builder.data_path}; delete that folder to rebuild the dataset')
  # The size of the whole split, from its first example, before decoding the rest.
  estimate = _nbytes(adapter.example_fn(adapter, source[0], context)) * n
  if estimate > max_split_bytes():
    variants = _variants(adapter)
    raise UserError(
        f'dataset {adapter.name!r}: split {split!r} has {n} examples, about '
        f'{estimate / 2**30:.1f} GiB in memory, over the limit of '
        f'{max_split_bytes() / 2**30:.1f} GiB; '
        + (f'use a capped variant ({", ".join(variants)}), or ' if variants else '')
        + f'register one with mtl_jax.data.catalog.register({adapter.base or adapter.name!r}, '
        f'max_examples=N), or raise MTL_JAX_CATALOG_MAX_SPLIT_GB if the machine has the memory '
        f'for all three splits')
  chunks = []
  for start in range(0, n, _READ_CHUNK):
    examples = source.__getitems__(list(range(start, min(start + _READ_CHUNK, n))))
    rows = [adapter.example_fn(adapter, example, context) for example in examples]
    columns = pipeline._stack(rows)  # pylint: disable=protected-access
    if adapter.finish_fn is not None:
      columns = adapter.finish_fn(columns, context)
    chunks.append(columns)
  return pipeline._concat(chunks)  # pylint: disable=protected-access


def _variants(adapter: Adapter) -> list[str]:
  """The registered capped variants of `adapter`'s dataset."""
  base = adapter.base or adapter.name
  return sorted(name for name, a in ADAPTERS.items() if a.base == base)


def context(adapter: Adapter, builder) -> Any:
  """The adapter's train-split context (vocabularies, statistics), computed once per dataset."""
  if adapter.context_fn is None:
    return None
  source = _source(adapter, builder, 'train')
  key = (adapter.name, os.fspath(builder.data_path), _count(adapter, source))
  if key not in _CONTEXTS:
    _CONTEXTS[key] = adapter.context_fn(adapter, builder)
  return _CONTEXTS[key]


class AdaptedBuilder:
  """What `pipeline.prepare` makes of a catalog dataset: the tfds builder (every attribute not
  defined here is the tfds builder's), plus `read_split`, which `pipeline.load_columns` uses.

  Subclasses bind `adapter` (see `builder_class`); `name` is the tfds name, so the lock file and
  the data folder are those of `tfds build`.
  """

  adapter: Adapter
  name: str

  def __init__(self, data_dir: str | None = None, **kwargs):
    cls = self.adapter.builder_class()
    if self.adapter.config is not None:
      kwargs['config'] = self.adapter.config
    self.tfds_builder = cls(data_dir=data_dir, **kwargs)

  def __getattr__(self, name: str):
    if name == 'tfds_builder':  # Not set yet: avoid recursing.
      raise AttributeError(name)
    return getattr(self.tfds_builder, name)

  def download_and_prepare(self, *args, **kwargs):
    try:
      return self.tfds_builder.download_and_prepare(*args, **kwargs)
    except ImportError as e:
      if (e.name or '').split('.')[0] != 'tensorflow' and 'tensorflow' not in str(e).lower():
        raise
      raise UserError(
          f'preparing {self.adapter.tfds_name} needs TensorFlow ({e}); prepare it on a machine '
          f'with TensorFlow and internet (python -m mtl_jax.data.catalog prepare '
          f'{self.adapter.name} --data_dir DIR) and copy DIR here') from None

  def read_split(self, split: str) -> dict:
    """The trainer split `split` ('train', 'validation', 'test') as columns."""
    return _read_columns(self.adapter, self.tfds_builder, split,
                         context(self.adapter, self.tfds_builder))

  def input_info(self) -> dict:
    if self.adapter.input_info_fn is None:
      return {}
    return self.adapter.input_info_fn(context(self.adapter, self.tfds_builder))


def builder_class(adapter: Adapter) -> type:
  """An `AdaptedBuilder` subclass bound to `adapter` (what `DatasetSpec.builder_cls` holds)."""
  def body(namespace):
    namespace.update(adapter=adapter, name=adapter.tfds, __module__=__name__,
                     __doc__=f'`AdaptedBuilder` of dataset {adapter.name!r}.')

  return types.new_class(f'Adapted_{adapter.name}', (AdaptedBuilder,), {}, body)


# ---------------------------------------------------------------------------------------------
# Registration.


def spec(adapter: Adapter) -> registry.DatasetSpec:
  kwargs = {}
  if adapter.batch_fn is not None:
    kwargs['batch_fn'] = adapter.batch_fn
  return registry.DatasetSpec(
      name=adapter.name, builder_cls=builder_class(adapter), tasks=adapter.tasks,
      input_kind=adapter.input_kind, input_keys=adapter.input_keys,
      input_info_fn=lambda builder: builder.input_info(), time_buckets=adapter.time_buckets,
      **kwargs)


def variant_name(base: str, max_examples: int) -> str:
  return f'{base}_{max_examples // 1000}k' if max_examples % 1000 == 0 else f'{base}_{max_examples}'


def get_adapter(name: str) -> Adapter:
  """The adapter `name`; UnknownNameError listing the valid names otherwise."""
  if name not in ADAPTERS:
    raise UnknownNameError(f'unknown catalog dataset {name!r}; valid catalog datasets: '
                           f'{", ".join(sorted(ADAPTERS))}')
  return ADAPTERS[name]


def register(base: str, max_examples: int | None = None) -> str:
  """Registers `base` (a name of `ADAPTERS`), or with `max_examples` the variant reading at most
  that many examples of each split (name `variant_name(base, max_examples)`), unless it is
  registered; returns the registered name."""
  adapter = get_adapter(base)
  if max_examples is not None:
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples <= 0:
      raise UserError(f'max_examples must be a positive integer, got {max_examples!r}')
    name = variant_name(base, max_examples)
    adapter = ADAPTERS.get(name) or _add(dataclasses.replace(
        adapter, name=name, max_examples=max_examples, base=adapter.base or adapter.name))
  if adapter.name not in registry.DATASETS:
    registry.DATASETS.register(adapter.name, spec(adapter))
  return adapter.name


BASE_NAMES = tuple(ADAPTERS)
for _name in BASE_NAMES:
  register(_name)
# celeb_a's full train split (162,770 images, 18.9 GB) is over the default memory limit.
register('celeb_a', max_examples=20_000)


def _has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m mtl_jax.data.catalog',
      description='Build a catalog dataset as ArrayRecord (what the trainer reads).')
  sub = parser.add_subparsers(dest='command', required=True)
  prep = sub.add_parser('prepare', help='download and build the dataset\'s tfds builder')
  prep.add_argument('names', nargs='+', help=f'datasets: {", ".join(BASE_NAMES)}')
  prep.add_argument('--data_dir', default='', help='default: $TFDS_DATA_DIR or '
                    '~/tensorflow_datasets (pass the same as --config.data_dir)')
  args = parser.parse_args(argv)
  for name in args.names:
    adapter = get_adapter(name)
    if adapter.needs_tensorflow and not _has_tensorflow():
      raise UserError(f'{name}: the tfds builder {adapter.tfds_name} uses TensorFlow to prepare '
                      f'the data (see docs/DATA_CATALOG.md); pip install tensorflow, or prepare '
                      f'it on a machine that has it and copy the data folder')
    if adapter.prepare_notes:
      print(f'{name}: {adapter.prepare_notes}')
    builder = pipeline.prepare(registry.DATASETS.get(name).builder_cls, args.data_dir or None)
    print(f'{name}: {builder.data_path}: '
          f'{ {s: i.num_examples for s, i in builder.info.splits.items()} }')


if __name__ == '__main__':
  main()
