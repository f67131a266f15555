"""UCI Census-Income (KDD) as a TFDS builder, with the two tasks of the MMoE paper.

The raw file is vendored in the package (`raw/census_kdd/census-income.test.gz`, the UCI *test*
split: 99,762 rows x 42 comma-separated columns, no header; see `raw/census_kdd/ATTRIBUTION.md`).
No download happens: `_split_generators` reads that file.

Tasks (Ma et al. 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts"):
  * `income`: 1 when the label column is `50000+.` (about 6.2% of rows);
  * `never_married`: 1 when marital status (column 7, 0-based) is `Never married` (about 43.2%).

Inputs: every other column except the instance weight (column 24).
  * `numeric` float32 [7]: age, wage per hour, capital gains, capital losses, dividends from stocks,
    num persons worked for employer, weeks worked in year. The four money columns go through
    `log1p` first; then every column is standardised with the TRAIN split's mean and std.
  * `categorical` int32 [32]: every remaining column (including the integer-coded recodes, year,
    veterans benefits, own business), as an index into a per-column vocabulary built from the
    TRAIN split (sorted values, indices 1..V); index 0 is reserved for values unseen in train.
  * `row_id` int64: the 0-based line of the row in the raw file (not an input; it lets tests and
    analyses check that the splits are disjoint and trace an example back to its source).

Splits: rows are permuted with `numpy.random.default_rng(SPLIT_SEED)` (SPLIT_SEED = 20180819) and
cut 70/15/15 into `train`/`validation`/`test` (69,833 / 14,964 / 14,965 rows); each split is stored
in raw-file order (training shuffles anyway). The vocabularies, the numeric statistics and the
column names are stored in `builder.info.metadata`: `vocab_sizes` (one per categorical column, counting index 0),
`categorical_columns`, `numeric_columns`, `log1p_columns`, `numeric_mean`, `numeric_std`,
`vocabularies`, `split_seed`, `split_sizes`.
"""

import gzip
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

RAW_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'raw', 'census_kdd',
                        'census-income.test.gz')

# Column names, in file order, from the UCI `census-income.names` file.
COLUMNS = (
    'age', 'class of worker', 'detailed industry recode', 'detailed occupation recode',
    'education', 'wage per hour', 'enroll in edu inst last wk', 'marital stat',
    'major industry code', 'major occupation code', 'race', 'hispanic origin', 'sex',
    'member of a labor union', 'reason for unemployment', 'full or part time employment stat',
    'capital gains', 'capital losses', 'dividends from stocks', 'tax filer stat',
    'region of previous residence', 'state of previous residence',
    'detailed household and family stat', 'detailed household summary in household',
    'instance weight', 'migration code-change in msa', 'migration code-change in reg',
    'migration code-move within reg', 'live in this house 1 year ago',
    'migration prev res in sunbelt', 'num persons worked for employer',
    'family members under 18', 'country of birth father', 'country of birth mother',
    'country of birth self', 'citizenship', 'own business or self employed',
    "fill inc questionnaire for veteran's admin", 'veterans benefits', 'weeks worked in year',
    'year', 'income',
)
NUM_ROWS = 99_762
INSTANCE_WEIGHT = 'instance weight'
INCOME = 'income'                      # label source of the `income` task
MARITAL = 'marital stat'               # label source of the `never_married` task
INCOME_POSITIVE = '50000+.'
INCOME_NEGATIVE = '- 50000.'
NEVER_MARRIED = 'Never married'

NUMERIC_COLUMNS = ('age', 'wage per hour', 'capital gains', 'capital losses',
                   'dividends from stocks', 'num persons worked for employer',
                   'weeks worked in year')
LOG1P_COLUMNS = ('wage per hour', 'capital gains', 'capital losses', 'dividends from stocks')
CATEGORICAL_COLUMNS = tuple(
    c for c in COLUMNS if c not in NUMERIC_COLUMNS + (INSTANCE_WEIGHT, INCOME, MARITAL))

# The fixed seed of the train/validation/test permutation (the MMoE paper's arXiv date). Changing
# it changes the splits, so it also needs a new VERSION.
SPLIT_SEED = 20180819
SPLIT_FRACTIONS = {'train': 0.70, 'validation': 0.15, 'test': 0.15}

TASKS = (Task('income', 'binary'), Task('never_married', 'binary'))


def read_raw(path: str = RAW_PATH) -> dict[str, np.ndarray]:
  """The raw file as {column name: object array of the raw (unstripped) strings}.

  Raises a UserError naming `path` when the file is missing, unreadable or has the wrong shape.
  """
  fix = ('restore it from the repository (git checkout -- mtl_jax/data/raw/census_kdd) or '
         'reinstall mtl_jax')
  if not os.path.isfile(path):
    raise UserError(f'census_income: raw data file {path} is missing; {fix}')
  try:
    with gzip.open(path, 'rt', encoding='ascii') as f:
      text = f.read()
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise UserError(f'census_income: raw data file {path} is corrupt ({e}); {fix}') from None
  lines = text.rstrip('\n').split('\n') if text.strip() else []
  fields = ','.join(lines).split(',')  # One flat list: far faster than splitting line by line.
  if len(fields) != len(lines) * len(COLUMNS):
    for number, line in enumerate(lines, 1):
      if line.count(',') != len(COLUMNS) - 1:
        raise UserError(
            f'census_income: raw data file {path} is corrupt: line {number} has '
            f'{line.count(",") + 1} comma-separated fields, expected {len(COLUMNS)}; {fix}')
  if len(lines) != NUM_ROWS:
    raise UserError(f'census_income: raw data file {path} is corrupt: {len(lines)} rows, '
                    f'expected {NUM_ROWS}; {fix}')
  table = np.array(fields, dtype=object).reshape(len(lines), len(COLUMNS))
  return {name: table[:, j] for j, name in enumerate(COLUMNS)}


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """(codes, distinct stripped values) with values == distinct[codes] after stripping."""
  index: dict[str, int] = {}
  codes = np.fromiter((index.setdefault(v, len(index)) for v in values), np.int64, len(values))
  stripped = [v.strip() for v in index]
  distinct = sorted(set(stripped))
  position = {v: i for i, v in enumerate(distinct)}
  return np.array([position[v] for v in stripped], np.int64)[codes], distinct


def split_indices(num_rows: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Sorted row indices of each split: a seeded permutation cut 70/15/15."""
  perm = np.random.default_rng(seed).permutation(num_rows)
  n_train = round(num_rows * SPLIT_FRACTIONS['train'])
  n_val = round(num_rows * SPLIT_FRACTIONS['validation'])
  return {'train': np.sort(perm[:n_train]), 'validation': np.sort(perm[n_train:n_train + n_val]),
          'test': np.sort(perm[n_train + n_val:])}


def encode(raw: dict[str, np.ndarray], splits: dict[str, np.ndarray]):
  """Encodes all rows with train-split statistics: (columns dict, metadata dict)."""
  num_rows = len(raw[COLUMNS[0]])
  train = splits['train']

  codes, distinct = _factorize(raw[INCOME])
  unknown = sorted(set(distinct) - {INCOME_POSITIVE, INCOME_NEGATIVE})
  if unknown:
    raise UserError(f'census_income: the income column holds {unknown[0]!r}; expected '
                    f'{INCOME_POSITIVE!r} or {INCOME_NEGATIVE!r}')
  income = (np.array([v == INCOME_POSITIVE for v in distinct])[codes]).astype(np.int64)
  codes, distinct = _factorize(raw[MARITAL])
  never_married = (np.array([v == NEVER_MARRIED for v in distinct])[codes]).astype(np.int64)

  numeric = np.empty((num_rows, len(NUMERIC_COLUMNS)), np.float64)
  for k, name in enumerate(NUMERIC_COLUMNS):
    codes, distinct = _factorize(raw[name])
    try:
      values = np.array([float(v) for v in distinct])[codes]
    except ValueError as e:
      raise UserError(f'census_income: numeric column {name!r} holds a non-number ({e})') from None
    numeric[:, k] = np.log1p(values) if name in LOG1P_COLUMNS else values
  mean = numeric[train].mean(axis=0)
  std = numeric[train].std(axis=0)
  std = np.where(std > 0, std, 1.0)
  numeric = ((numeric - mean) / std).astype(np.float32)

  categorical = np.empty((num_rows, len(CATEGORICAL_COLUMNS)), np.int32)
  vocabularies = []
  for k, name in enumerate(CATEGORICAL_COLUMNS):
    codes, distinct = _factorize(raw[name])
    in_train = np.unique(codes[train])  # Sorted, as `distinct` is: the vocabulary is sorted.
    lookup = np.zeros(len(distinct), np.int32)  # 0: not seen in train.
    lookup[in_train] = np.arange(1, len(in_train) + 1)
    categorical[:, k] = lookup[codes]
    vocabularies.append([distinct[c] for c in in_train])

  columns = {
      'categorical': categorical,
      'numeric': numeric,
      'income': income,
      'never_married': never_married,
      'row_id': np.arange(num_rows, dtype=np.int64),
  }
  metadata = {
      'categorical_columns': list(CATEGORICAL_COLUMNS),
      'numeric_columns': list(NUMERIC_COLUMNS),
      'log1p_columns': list(LOG1P_COLUMNS),
      'vocab_sizes': [len(v) + 1 for v in vocabularies],
      'vocabularies': vocabularies,
      'numeric_mean': mean.tolist(),
      'numeric_std': std.tolist(),
      'split_seed': SPLIT_SEED,
      'split_sizes': {name: int(len(idx)) for name, idx in splits.items()},
  }
  return columns, metadata


class CensusIncome(pipeline.LocalBuilder):
  """UCI Census-Income (KDD), income and never-married tasks; see the module docstring."""

  name = 'census_income'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 70/15/15 split of the UCI test file, seed 20180819.'}
  # Class attribute so that tests can point it elsewhere.
  RAW_PATH = RAW_PATH

  def _info(self) -> tfds.core.DatasetInfo:
    # `self.dataset_info_from_configs` looks for files inside the tfds package; build it directly.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'categorical': tfds.features.Tensor(shape=(len(CATEGORICAL_COLUMNS),),
                                                dtype=np.int32),
            'numeric': tfds.features.Tensor(shape=(len(NUMERIC_COLUMNS),), dtype=np.float32),
            'income': tfds.features.ClassLabel(num_classes=2),
            'never_married': tfds.features.ClassLabel(num_classes=2),
            'row_id': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage='https://archive.ics.uci.edu/dataset/117/census+income+kdd',
        citation='UCI Machine Learning Repository, Census-Income (KDD), CC BY 4.0.',
        license='CC BY 4.0',
        disable_shuffling=True,  # Splits are already in a seeded random order.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The raw file is vendored; nothing is downloaded.
    raw = read_raw(self.RAW_PATH)
    splits = split_indices(NUM_ROWS)
    columns, metadata = encode(raw, splits)
    self.info.metadata.update(metadata)
    return {name: self._generate_examples(columns, idx) for name, idx in splits.items()}

  def _generate_examples(self, columns, indices):
    # The key is the raw row: with `disable_shuffling`, tfds stores a split sorted by key.
    for i in indices:
      yield int(i), {key: value[i] for key, value in columns.items()}
