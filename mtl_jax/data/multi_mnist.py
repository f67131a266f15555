"""MultiMNIST-style overlaid digit pairs, built from the vendored MNIST test set (10,000 digits).

The setting of Sabour et al. 2017 ("Dynamic Routing Between Capsules", MultiMNIST) as used for
multi-task learning by Sener & Koltun 2018 ("Multi-Task Learning as Multi-Objective Optimization"):
every example is one image holding two overlapping digits, one towards the top-left and one towards
the bottom-right; task `left` classifies the top-left digit and task `right` the bottom-right one
(10 classes each). This is our own construction in that spirit, not a copy of either paper's
files (they start from the 60k MNIST training set, which is not available here):

  * Canvas 36x36 (28 + 2 * 4), uint8, background 0.
  * Left digit: its 28x28 image pasted with its top-left corner at (row, col) = (4 - sy, 4 - sx),
    sy, sx independent uniform integers in [0, 4]: the centred position shifted up and left by
    0-4 px each. Right digit: corner at (4 + sy', 4 + sx'), sy', sx' in [0, 4] likewise: shifted
    down and right. The two are combined by pixel-wise maximum (overlap keeps the brighter ink).
  * The two digits of a pair are two different images drawn uniformly with replacement from the
    split's pool; their classes may be equal (Sabour et al. require different classes; we do not,
    so that the two tasks' labels are independent).
  * Source pools: the 10,000 MNIST test digits are permuted with the fixed seed `POOL_SEED` and cut
    into disjoint pools of 8,000 (train), 1,000 (validation) and 1,000 (test) digits, so no digit
    image appears in two splits. A split's pairs use only its own pool.
  * Pairs: 30,000 train, 5,000 validation, 5,000 test by default; every draw (digits, shifts) comes
    from `numpy.random.SeedSequence([SEED_SALT, pair_seed, split number])`, so (sizes, pair_seed)
    fixes the data bit for bit. Other sizes/seeds: `register(num_train=..., ...)`.

Features: `image` uint8 [36, 36]; `left`, `right` (class labels 0-9); `left_index`, `right_index`
(the source digits' row in the MNIST test file, for provenance checks) and `left_corner`,
`right_corner` (int32 [2], the pasted digit's top-left (row, col) on the canvas). The trainer's
batch has `inputs` = the image as float32 in [0, 1], [B, 36, 36] (input kind 'dense': a `cnn`
encoder adds the channel axis).

Registered datasets: `multi_mnist` (the defaults above) on import, others by `register(...)`.
"""

import dataclasses
import functools
import gzip
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

RAW_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'raw', 'mnist')
IMAGES_FILE = 't10k-images-idx3-ubyte.gz'
LABELS_FILE = 't10k-labels-idx1-ubyte.gz'
NUM_SOURCE = 10_000
DIGIT = 28
MAX_SHIFT = 4
CANVAS = DIGIT + 2 * MAX_SHIFT  # 36
POOL_SEED = 20171026  # Sabour et al.'s arXiv date. Changing it needs a new VERSION.
POOL_SIZES = {'train': 8_000, 'validation': 1_000, 'test': 1_000}
SEED_SALT = 5_312_018
DEFAULT_SIZES = {'train': 30_000, 'validation': 5_000, 'test': 5_000}
SPLITS = ('train', 'validation', 'test')

TASKS = (Task('left', 'multiclass', 10), Task('right', 'multiclass', 10))

_FIX = 'restore it from the repository (git checkout -- mtl_jax/data/raw/mnist) or reinstall mtl_jax'


def _read_idx(path: str, magic: int, dims: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise UserError(f'multi_mnist: raw data file {path} is missing; {_FIX}')
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f'multi_mnist: raw data file {path} is corrupt ({e}); {_FIX}') from None
  header = 4 * (1 + dims)
  if len(raw) < header or int.from_bytes(raw[:4], 'big') != magic:
    raise UserError(f'multi_mnist: {path} is not an IDX file with magic number {magic}; {_FIX}')
  shape = tuple(int.from_bytes(raw[4 * (i + 1):4 * (i + 2)], 'big') for i in range(dims))
  if len(raw) != header + int(np.prod(shape)):
    raise UserError(f'multi_mnist: {path} is truncated: {len(raw) - header} bytes of data for '
                    f'shape {shape}; {_FIX}')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_mnist(raw_dir: str = RAW_DIR) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [10000, 28, 28], labels uint8 [10000]) of the vendored MNIST test set."""
  images = _read_idx(os.path.join(raw_dir, IMAGES_FILE), 2051, 3)
  labels = _read_idx(os.path.join(raw_dir, LABELS_FILE), 2049, 1)
  if images.shape != (NUM_SOURCE, DIGIT, DIGIT) or labels.shape != (NUM_SOURCE,):
    raise UserError(f'multi_mnist: {raw_dir} holds images {images.shape} and labels '
                    f'{labels.shape}, expected ({NUM_SOURCE}, 28, 28) and ({NUM_SOURCE},); {_FIX}')
  if labels.max() > 9:
    raise UserError(f'multi_mnist: {os.path.join(raw_dir, LABELS_FILE)} holds label '
                    f'{labels.max()}; {_FIX}')
  return images, labels


def source_pools(num_source: int = NUM_SOURCE) -> dict[str, np.ndarray]:
  """Disjoint sorted source-digit indices of each split: a `POOL_SEED` permutation cut 8k/1k/1k."""
  perm = np.random.default_rng(POOL_SEED).permutation(num_source)
  bounds = np.cumsum([0] + [POOL_SIZES[s] for s in SPLITS])
  return {s: np.sort(perm[a:b]) for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}


def draw_pairs(pool: np.ndarray, num: int, pair_seed: int, split: str) -> dict[str, np.ndarray]:
  """Source indices and canvas corners of `num` pairs from `pool`; deterministic in its args."""
  rng = np.random.default_rng(np.random.SeedSequence(
      [SEED_SALT, int(pair_seed), SPLITS.index(split)]))
  left = rng.choice(pool, num)
  right = rng.choice(pool, num)
  same = left == right
  while same.any():  # Two different images per pair.
    right[same] = rng.choice(pool, int(same.sum()))
    same = left == right
  shifts = rng.integers(0, MAX_SHIFT + 1, size=(num, 4))
  return {'left_index': left.astype(np.int32), 'right_index': right.astype(np.int32),
          'left_corner': (MAX_SHIFT - shifts[:, :2]).astype(np.int32),
          'right_corner': (MAX_SHIFT + shifts[:, 2:]).astype(np.int32)}


def compose(left: np.ndarray, right: np.ndarray, left_corner, right_corner) -> np.ndarray:
  """One uint8 [36, 36] canvas: the two 28x28 digits pasted at their corners, pixel-wise max."""
  canvas = np.zeros((CANVAS, CANVAS), np.uint8)
  (r, c), (r2, c2) = left_corner, right_corner
  canvas[r:r + DIGIT, c:c + DIGIT] = left
  canvas[r2:r2 + DIGIT, c2:c2 + DIGIT] = np.maximum(canvas[r2:r2 + DIGIT, c2:c2 + DIGIT], right)
  return canvas


def generate(images: np.ndarray, labels: np.ndarray, sizes: dict[str, int],
             pair_seed: int) -> dict[str, dict[str, np.ndarray]]:
  """Every split's columns (see the module docstring), from the MNIST arrays."""
  pools = source_pools(len(images))
  out = {}
  for split in SPLITS:
    pairs = draw_pairs(pools[split], sizes[split], pair_seed, split)
    image = np.stack([compose(images[a], images[b], ca, cb) for a, b, ca, cb in zip(
        pairs['left_index'], pairs['right_index'], pairs['left_corner'], pairs['right_corner'])]
                     ) if sizes[split] else np.zeros((0, CANVAS, CANVAS), np.uint8)
    out[split] = {'image': image,
                  'left': labels[pairs['left_index']].astype(np.int64),
                  'right': labels[pairs['right_index']].astype(np.int64), **pairs}
  return out


@dataclasses.dataclass(eq=False)
class MultiMnistConfig(tfds.core.BuilderConfig):
  num_train: int = DEFAULT_SIZES['train']
  num_validation: int = DEFAULT_SIZES['validation']
  num_test: int = DEFAULT_SIZES['test']
  pair_seed: int = 0

  @property
  def sizes(self) -> dict[str, int]:
    return {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}


def make_config(num_train: int = DEFAULT_SIZES['train'],
                num_validation: int = DEFAULT_SIZES['validation'],
                num_test: int = DEFAULT_SIZES['test'], pair_seed: int = 0) -> MultiMnistConfig:
  values = (num_train, num_validation, num_test, pair_seed)
  if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
    raise UserError(f'multi_mnist: sizes and pair_seed must be integers >= 0, got {values}')
  if min(values[:3]) < 1:
    raise UserError(f'multi_mnist: every split needs at least one pair, got {values[:3]}')
  default = values == (*DEFAULT_SIZES.values(), 0)
  name = 'default' if default else f'n{num_train}_{num_validation}_{num_test}_s{pair_seed}'
  return MultiMnistConfig(name=name, num_train=int(num_train), num_validation=int(num_validation),
                          num_test=int(num_test), pair_seed=int(pair_seed),
                          description=f'{num_train}/{num_validation}/{num_test} pairs, '
                                      f'pair seed {pair_seed}')


class MultiMnist(pipeline.LocalBuilder):
  """MultiMNIST-style digit pairs; see the module docstring."""

  name = 'multi_mnist'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '36x36 canvas, shifts 0-4 px, pixel-wise max, 8k/1k/1k source pools '
                            'of the MNIST test set.'}
  BUILDER_CONFIGS = [make_config()]
  RAW_DIR = RAW_DIR  # Class attribute so that tests can point it elsewhere.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(CANVAS, CANVAS), dtype=np.uint8),
            'left': tfds.features.ClassLabel(num_classes=10),
            'right': tfds.features.ClassLabel(num_classes=10),
            'left_index': tfds.features.Scalar(dtype=np.int32),
            'right_index': tfds.features.Scalar(dtype=np.int32),
            'left_corner': tfds.features.Tensor(shape=(2,), dtype=np.int32),
            'right_corner': tfds.features.Tensor(shape=(2,), dtype=np.int32),
        }),
        homepage='http://yann.lecun.com/exdb/mnist/',
        citation=('LeCun, Cortes, Burges, the MNIST database (CC BY-SA 3.0); construction after '
                  'Sabour et al. 2017 and Sener & Koltun 2018.'),
        license='CC BY-SA 3.0',
        disable_shuffling=True,  # The pairs are drawn at random already; keep their order.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw files are vendored; nothing is downloaded.
    config = self.builder_config
    images, labels = read_mnist(self.RAW_DIR)
    columns = generate(images, labels, config.sizes, config.pair_seed)
    self.info.metadata.update({
        'canvas': CANVAS, 'max_shift': MAX_SHIFT, 'pool_seed': POOL_SEED,
        'pool_sizes': dict(POOL_SIZES), 'pair_seed': config.pair_seed,
        'split_sizes': config.sizes,
    })
    return {split: self._generate_examples(columns[split]) for split in SPLITS}

  def _generate_examples(self, columns):
    for i in range(len(columns['left'])):
      yield i, {key: value[i] for key, value in columns.items()}


@functools.cache
def builder_class(num_train: int = DEFAULT_SIZES['train'],
                  num_validation: int = DEFAULT_SIZES['validation'],
                  num_test: int = DEFAULT_SIZES['test'], pair_seed: int = 0) -> type:
  """A `MultiMnist` subclass whose only config is these sizes and seed (same data folder layout
  as the base class: <data_dir>/multi_mnist/<config name>/<version>)."""
  return pipeline.with_config(MultiMnist,
                              make_config(num_train, num_validation, num_test, pair_seed))


INPUT_KEYS = ('image',)


def image_batch(rows: dict, spec: 'registry.DatasetSpec', tasks=None) -> dict:
  """`pipeline.to_batch` with `inputs` = the images as float32 in [0, 1], [B, 36, 36]."""
  batch = pipeline.to_batch(rows, spec, tasks)
  batch['inputs'] = np.asarray(batch['inputs']['image'], np.float32) * np.float32(1 / 255)
  return batch


def dataset_name(num_train: int = DEFAULT_SIZES['train'],
                 num_validation: int = DEFAULT_SIZES['validation'],
                 num_test: int = DEFAULT_SIZES['test'], pair_seed: int = 0) -> str:
  config = make_config(num_train, num_validation, num_test, pair_seed)
  return 'multi_mnist' if config.name == 'default' else f'multi_mnist_{config.name}'


def register(num_train: int = DEFAULT_SIZES['train'],
             num_validation: int = DEFAULT_SIZES['validation'],
             num_test: int = DEFAULT_SIZES['test'], pair_seed: int = 0) -> str:
  """Registers the trainer dataset of these sizes and seed unless it is; returns its name
  (`multi_mnist` for the defaults, else e.g. `multi_mnist_n2000_200_200_s0`)."""
  args = (num_train, num_validation, num_test, pair_seed)
  name = dataset_name(*args)
  if name not in registry.DATASETS:
    registry.DATASETS.register(name, registry.DatasetSpec(
        name=name, builder_cls=builder_class(*args), tasks=TASKS, input_kind='dense',
        input_keys=INPUT_KEYS, batch_fn=image_batch))
  return name


register()
