"""QM9 (499-molecule subset): 12 regression targets from a SMILES fingerprint computed without RDKit.

Data: `raw/qm9_subset/qm9_mol_multitask_chemprop.csv` (chemprop's test subset of QM9; see its
ATTRIBUTION.md): a SMILES string and 12 targets per molecule.

Split: a permutation of the 499 rows with the fixed seed `SPLIT_SEED`, cut 80/10/10 (rounded):
399 train, 50 validation, 50 test molecules.

Input `x` (float32 [NUM_FEATURES], standardised): a deliberately SIMPLE featurisation of the SMILES
text, not a chemistry-grade fingerprint (no graph, no valence model, no hydrogens unless written):
  * `COUNT_FEATURES` (16 counts over the SMILES tokens): aliphatic C, N, O, F; aromatic c, n, o;
    any other atom; bracket atoms; explicit H inside brackets; formal-charge signs; '=' and '#'
    bonds; ring closures (digits / 2); branches '('; heavy atoms in total;
  * `HASH_BUCKETS` (128) hashed character n-gram counts: every character 1-, 2- and 3-gram of the
    SMILES string, bucket `zlib.crc32(ngram) % 128` (stable across processes, unlike `hash`).
Each feature is then standardised with the train split's mean and standard deviation (1 where the
train std is 0); both are in `builder.info.metadata` ('feature_mean', 'feature_std').

Targets: the 12 columns `TARGETS`, one regression task each. They are STANDARDISED with the train
split's per-task mean and std (metadata 'target_mean', 'target_std'), and that is what is stored and
what the losses and metrics see: a test RMSE of 0.5 means half a train standard deviation. Convert
back with `destandardize(task, values, metadata)`. The raw values are QM9's units (Debye, Bohr^3,
Hartree, ...), whose scales differ by orders of magnitude (u0 ~ -400 Hartree, homo ~ -0.25), which
is why each task is standardised.
"""

import csv
import os
import re
import zlib

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

RAW_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'raw', 'qm9_subset',
                        'qm9_mol_multitask_chemprop.csv')
TARGETS = ('mu', 'alpha', 'homo', 'lumo', 'gap', 'r2', 'zpve', 'cv', 'u0', 'u298', 'h298', 'g298')
NUM_ROWS = 499
SPLIT_SEED = 20140805  # Scientific Data's QM9 publication date. Changing it needs a new VERSION.
SPLIT_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
NGRAMS = (1, 2, 3)
HASH_BUCKETS = 128
COUNT_FEATURES = ('C', 'N', 'O', 'F', 'c', 'n', 'o', 'other_atom', 'bracket_atom', 'bracket_H',
                  'charge', 'double_bond', 'triple_bond', 'ring_closure', 'branch', 'heavy_atoms')
NUM_FEATURES = len(COUNT_FEATURES) + HASH_BUCKETS

TASKS = tuple(Task(name, 'regression') for name in TARGETS)

_FIX = ('restore it from the repository (git checkout -- mtl_jax/data/raw/qm9_subset) or '
        'reinstall mtl_jax')
# One SMILES token: a bracket atom, a two-letter organic atom, a one-letter atom, a ring closure
# (%nn or a digit), or any other single character (bonds, branches, '.').
_TOKEN = re.compile(r'\[[^\]]*\]|Cl|Br|%\d\d|.')
_ORGANIC = set('BCNOPSFI') | {'Cl', 'Br'} | set('bcnops')


def tokenize(smiles: str) -> list[str]:
  return _TOKEN.findall(smiles)


def featurize(smiles: str) -> np.ndarray:
  """float64 [NUM_FEATURES]: the raw (unstandardised) counts described in the module docstring."""
  counts = dict.fromkeys(COUNT_FEATURES, 0)
  for token in tokenize(smiles):
    if token.startswith('['):
      counts['bracket_atom'] += 1
      counts['heavy_atoms'] += 1
      inner = re.sub(r'^\d+', '', token[1:-1])  # Drop an isotope number.
      element = re.match(r'Cl|Br|[A-Z][a-z]?|[a-z]', inner)
      symbol = element.group(0) if element else ''
      if symbol in ('C', 'N', 'O', 'F', 'c', 'n', 'o'):
        counts[symbol] += 1
      else:
        counts['other_atom'] += 1
      rest = inner[len(symbol):]
      h = re.search(r'H(\d*)', rest)
      if h and symbol != 'H':
        counts['bracket_H'] += int(h.group(1) or 1)
      counts['charge'] += rest.count('+') + rest.count('-')
    elif token in _ORGANIC:
      counts[token if token in ('C', 'N', 'O', 'F', 'c', 'n', 'o') else 'other_atom'] += 1
      counts['heavy_atoms'] += 1
    elif token == '=':
      counts['double_bond'] += 1
    elif token == '#':
      counts['triple_bond'] += 1
    elif token.isdigit() or token.startswith('%'):
      counts['ring_closure'] += 1
    elif token == '(':
      counts['branch'] += 1
  counts['ring_closure'] /= 2  # Every ring is opened and closed by the same label.
  hashed = np.zeros(HASH_BUCKETS)
  for n in NGRAMS:
    for i in range(len(smiles) - n + 1):
      hashed[zlib.crc32(smiles[i:i + n].encode('utf-8')) % HASH_BUCKETS] += 1
  return np.concatenate([np.array([counts[k] for k in COUNT_FEATURES], np.float64), hashed])


def read_raw(path: str = RAW_PATH) -> tuple[list[str], np.ndarray]:
  """(SMILES strings, targets float64 [N, 12]); a UserError naming `path` if it is bad."""
  if not os.path.isfile(path):
    raise UserError(f'qm9: raw data file {path} is missing; {_FIX}')
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  expected = ['smiles', *TARGETS]
  if not rows or rows[0] != expected:
    raise UserError(f'qm9: {path} has header {rows[0] if rows else None}, expected {expected}; '
                    f'{_FIX}')
  body = rows[1:]
  if len(body) != NUM_ROWS:
    raise UserError(f'qm9: {path} has {len(body)} molecules, expected {NUM_ROWS}; {_FIX}')
  smiles, targets = [], np.empty((len(body), len(TARGETS)))
  for i, row in enumerate(body):
    try:
      targets[i] = [float(v) for v in row[1:]]
    except ValueError as e:
      raise UserError(f'qm9: {path}, line {i + 2}: {e}; {_FIX}') from None
    smiles.append(row[0])
  if not np.isfinite(targets).all():
    raise UserError(f'qm9: {path} holds non-finite targets; {_FIX}')
  return smiles, targets


def split_indices(num_rows: int = NUM_ROWS, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Sorted row indices of each split: a seeded permutation cut 80/10/10 (rounded)."""
  perm = np.random.default_rng(seed).permutation(num_rows)
  n_train = round(num_rows * SPLIT_FRACTIONS['train'])
  n_val = round(num_rows * SPLIT_FRACTIONS['validation'])
  return {'train': np.sort(perm[:n_train]), 'validation': np.sort(perm[n_train:n_train + n_val]),
          'test': np.sort(perm[n_train + n_val:])}


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  std = values.std(axis=0)
  return values.mean(axis=0), np.where(std > 0, std, 1.0)


def encode(smiles: list[str], targets: np.ndarray, splits: dict[str, np.ndarray]):
  """(columns of all rows, metadata): features and targets standardised with train statistics."""
  features = np.stack([featurize(s) for s in smiles])
  train = splits['train']
  f_mean, f_std = _mean_std(features[train])
  t_mean, t_std = _mean_std(targets[train])
  columns = {'x': ((features - f_mean) / f_std).astype(np.float32),
             'row': np.arange(len(smiles), dtype=np.int64)}
  standardized = (targets - t_mean) / t_std
  for k, name in enumerate(TARGETS):
    columns[name] = standardized[:, k].astype(np.float32)
  metadata = {
      'count_features': list(COUNT_FEATURES), 'hash_buckets': HASH_BUCKETS, 'ngrams': list(NGRAMS),
      'feature_mean': f_mean.tolist(), 'feature_std': f_std.tolist(),
      'targets': list(TARGETS),
      'target_mean': dict(zip(TARGETS, t_mean.tolist())),
      'target_std': dict(zip(TARGETS, t_std.tolist())),
      'split_seed': SPLIT_SEED,
      'split_sizes': {name: int(len(idx)) for name, idx in splits.items()},
  }
  return columns, metadata


def destandardize(task: str, values, metadata) -> np.ndarray:
  """Standardised predictions or targets of `task` -> QM9's units."""
  return (np.asarray(values, np.float64) * metadata['target_std'][task]
          + metadata['target_mean'][task])


class Qm9Subset(pipeline.LocalBuilder):
  """QM9, 499-molecule subset, 12 standardised regression targets; see the module docstring."""

  name = 'qm9_subset'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '80/10/10 split (seed 20140805), 16 counts + 128 hashed n-grams.'}
  RAW_PATH = RAW_PATH  # Class attribute so that tests can point it elsewhere.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'x': tfds.features.Tensor(shape=(NUM_FEATURES,), dtype=np.float32),
            'row': tfds.features.Scalar(dtype=np.int64),
            **{name: tfds.features.Scalar(dtype=np.float32) for name in TARGETS},
        }),
        homepage='https://doi.org/10.1038/sdata.2014.22',
        citation=('Ramakrishnan et al., Quantum chemistry structures and properties of 134 kilo '
                  'molecules, Scientific Data 2014 (CC0); subset from chemprop (MIT).'),
        license='CC0 (QM9); MIT (chemprop subset file)',
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    smiles, targets = read_raw(self.RAW_PATH)
    splits = split_indices(len(smiles))
    columns, metadata = encode(smiles, targets, splits)
    self.info.metadata.update(metadata)
    return {name: self._generate_examples(columns, idx) for name, idx in splits.items()}

  def _generate_examples(self, columns, indices):
    for i in indices:  # Key = the CSV row, so each split is stored in file order.
      yield int(i), {key: value[i] for key, value in columns.items()}


def dense_batch(rows: dict, spec: 'registry.DatasetSpec', tasks=None) -> dict:
  """`pipeline.to_batch` with the inputs as the one float array `x` [B, NUM_FEATURES].

  The 12 scalar regression targets are handled as one [12, B] array (one NaN test, one fill)
  rather than task by task: with batches of a few dozen molecules and a step of well under a
  millisecond, `pipeline.to_batch`'s per-task NumPy calls were about half of the batch's cost
  (benchmarks/input_pipeline.py). The result is the same: float32 labels [B] (NaN -> 0) and
  bool label masks [B] (False where the target is NaN), in the order of `tasks`.
  """
  tasks = spec.tasks if tasks is None else tasks
  y = None
  if tasks and all(t.kind == 'regression' for t in tasks):
    # [K, B], contiguous rows; np.array of the list is ~3x cheaper than np.stack on [B] arrays.
    y = np.array([rows[t.name] for t in tasks], dtype=np.float32)
  if y is None or y.ndim != 2:  # not the 12 scalar targets: the generic path
    batch = pipeline.to_batch(rows, spec, tasks)
    batch['inputs'] = batch['inputs']['x']
    return batch
  missing = np.isnan(y)
  y[missing] = 0.0
  present = ~missing
  return {'inputs': np.asarray(rows['x'], np.float32),
          'labels': {t.name: y[k] for k, t in enumerate(tasks)},
          'label_mask': {t.name: present[k] for k, t in enumerate(tasks)}}


def _input_info(builder) -> dict:
  return {'num_features': NUM_FEATURES}


if 'qm9_subset' not in registry.DATASETS:
  QM9_SUBSET = registry.DATASETS.register('qm9_subset', registry.DatasetSpec(
      name='qm9_subset', builder_cls=Qm9Subset, tasks=TASKS, input_kind='dense', input_keys=('x',),
      input_info_fn=_input_info, batch_fn=dense_batch))
