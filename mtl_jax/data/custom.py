"""Bring your own data: a CSV file, a NumPy `.npz` file or CoNLL-U files as a trainer dataset.

Each `register_*` function reads and checks the data at once (every problem is a `UserError` naming
the file, the column or task, and the fix, raised before anything trains), registers a dataset
under `name` in `mtl_jax.data.DATASETS`, and returns `name`. The data is written as ArrayRecord by a
tfds `LocalBuilder` the first time the trainer prepares it, under
`<data_dir>/custom_<format>/<name>_<hash>/`: the hash covers the file contents and every option, so
editing the file or an option builds a new folder instead of reusing a stale one.

    from mtl_jax.data import custom
    custom.register_csv('houses', '/data/houses.csv',
                        tasks={'price': 'regression', 'sold': 'binary', 'kind': 'multiclass'},
                        numeric=['area', 'rooms'], categorical=['city'])
    config.dataset = 'houses'; config.tasks = ('price', 'sold', 'kind')

In a config file, do that inside `get_config()` (the config file runs in the training process), or
put the same arguments in `config.custom_data` (a dict with 'format': 'csv' | 'npz' | 'conllu',
'name', and the keyword arguments of the matching function) and call
`register_from_config(config)`; see docs/DATA.md.

CSV (`register_csv`): a header row, comma-separated (any `csv` dialect option via `delimiter`).
  * tasks: {task name: kind} (the task reads the column of the same name) or
    {task name: {'kind': kind, 'column': column name}}. Kinds: 'binary' (0/1 or true/false),
    'multiclass' (any values; classes are the distinct values, sorted numerically when they all
    are integers, else as strings; the list is in the metadata), 'regression' (numbers; stored
    as they are, or standardised with the train split's mean and std with
    `standardize_targets=True`, statistics in metadata 'target_stats': the losses and metrics then
    see standardised targets). An empty cell (or NA, NaN, null, none) is a missing label: masked
    out of the loss and metrics.
  * numeric: columns of numbers, standardised with the train split's mean and std (unless
    `standardize=False`); an empty or non-finite cell is an error (fill or drop those rows).
  * categorical: columns of any values, one embedding per column; the vocabulary is the train
    split's values (index 0: a value not seen in train).
  * split: `split_column` naming a column of 'train'/'validation'/'test' values, or else a seeded
    permutation of the rows cut by `split_fractions` (default 80/10/10, `seed` 0).
  Input kind: 'tabular' when there are categorical columns (the `Tabular` layer), else 'dense' (the
  standardised numeric columns as one array).

NPZ (`register_npz`): one `np.savez` file; `inputs` names the one float array of features
[N, ...] (a vector per row, or an image [N, H, W] for the `cnn` encoder), `tasks` {array name:
kind} with labels as the pipeline expects them: binary {0, 1}, multiclass integers in [0, K)
(K = largest label + 1, or give {'kind': 'multiclass', 'num_classes': K}), multilabel [N, K] of
{0, 1}, regression [N] or [N, K]; -1 (classification) or NaN (regression) marks a missing label.
Split: `split_key` naming an array of 'train'/'validation'/'test' (or 0/1/2), else random as above.

CoNLL-U (`register_conllu`): three files (train, validation, test; plain or .gz), per-token tasks
among 'upos', 'xpos', 'deprel' (subtypes removed), parsed with `ud_ewt.parse_conllu`; word and
character vocabularies as `ud_ewt.build_vocabularies`; label classes are the train labels, sorted
(a validation/test label unseen in train is missing, -1, not scored). Input kind 'tokens', so the
`ud_ewt` config's encoders apply.
"""

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import types
import zlib
from typing import Any, Mapping, Sequence

import csv
import numpy as np
import tensorflow_datasets as tfds

from mtl_jax.data import pipeline
from mtl_jax.data import registry
from mtl_jax.data import ud_ewt
from mtl_jax.errors import UserError
from mtl_jax.tasks import Task

SPLITS = ('train', 'validation', 'test')
MISSING = ('', 'na', 'nan', 'null', 'none')
RESERVED = ('categorical', 'numeric', 'x', 'row', 'tokens', 'chars', 'mask', 'length')
CSV_KINDS = ('binary', 'multiclass', 'regression')
NPZ_KINDS = ('binary', 'multiclass', 'multilabel', 'regression')
CONLLU_TASKS = ('upos', 'xpos', 'deprel')
_NAME = re.compile(r'[A-Za-z0-9_]+')
_TASK_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')

# name -> fingerprint of what it was registered with (to make registering idempotent).
_REGISTERED: dict[str, str] = {}


@dataclasses.dataclass
class Encoded:
  """A parsed dataset: per-split columns, the tasks, and what the builder and spec need."""

  columns: dict[str, dict[str, np.ndarray]]  # split -> column -> array
  tasks: tuple[Task, ...]
  input_kind: str
  input_keys: tuple[str, ...]
  metadata: dict


# ---------------------------------------------------------------------------------------------
# Shared checks.


def _check_file(path: str, what: str) -> str:
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.isfile(path):
    raise UserError(f'{what} file {path} does not exist; check the path given to '
                    f'mtl_jax.data.custom (relative paths are relative to {os.getcwd()})')
  return path


def _check_name(name: str) -> None:
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise UserError(f'custom dataset name {name!r} must be letters, digits and underscores')


def _task_specs(tasks: Mapping, path: str, kinds: Sequence[str]) -> dict[str, dict]:
  """{task name: {'kind', 'column', ...}} from the user's {name: kind or dict}."""
  if not isinstance(tasks, Mapping) or not tasks:
    raise UserError(f'{path}: `tasks` must be a non-empty dict {{task name: kind}}, e.g. '
                    f'{{"price": "regression"}}; got {tasks!r}')
  specs = {}
  for name, value in tasks.items():
    spec = {'kind': value} if isinstance(value, str) else dict(value)
    spec.setdefault('column', name)
    if not _TASK_NAME.fullmatch(str(name)) or name in RESERVED:
      raise UserError(f'{path}: task name {name!r} must be an identifier (letters, digits, '
                      f'underscores) and not one of {", ".join(RESERVED)}; name it e.g. '
                      f'{{"my_task": {{"kind": ..., "column": {name!r}}}}}')
    if spec.get('kind') not in kinds:
      raise UserError(f'{path}: task {name!r} has kind {spec.get("kind")!r}; valid kinds for '
                      f'this format: {", ".join(kinds)}')
    specs[name] = spec
  return specs


def _random_splits(n: int, fractions: Sequence[float], seed: int, path: str) -> np.ndarray:
  """Split id (0 train, 1 validation, 2 test) of each row: a seeded permutation cut by fractions."""
  fractions = [float(f) for f in fractions]
  if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
    raise UserError(f'{path}: split_fractions must be three positive numbers summing to 1 '
                    f'(train, validation, test), got {fractions}')
  perm = np.random.default_rng(int(seed)).permutation(n)
  n_train, n_val = round(n * fractions[0]), round(n * fractions[1])
  split = np.empty(n, np.int64)
  split[perm[:n_train]] = 0
  split[perm[n_train:n_train + n_val]] = 1
  split[perm[n_train + n_val:]] = 2
  return split


def _split_ids(values: Sequence, path: str, column: str) -> np.ndarray:
  lookup = {'train': 0, 'validation': 1, 'test': 2, '0': 0, '1': 1, '2': 2}
  out = np.empty(len(values), np.int64)
  for i, v in enumerate(values):
    key = str(v.decode() if isinstance(v, bytes) else v).strip().lower()
    if key not in lookup:
      raise UserError(f'{path}: split column {column!r} holds {v!r} at row {i}; use train, '
                      f'validation or test (or 0, 1, 2)')
    out[i] = lookup[key]
  return out


def _check_split_sizes(split: np.ndarray, path: str) -> None:
  for k, name in enumerate(SPLITS):
    if not (split == k).any():
      raise UserError(f'{path}: the {name} split is empty ({len(split)} rows in all); add rows, '
                      f'change split_fractions or the split column')


# ---------------------------------------------------------------------------------------------
# CSV.


def _read_csv(path: str, delimiter: str) -> tuple[list[str], list[list[str]]]:
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', newline='', encoding='utf-8') as f:
      rows = list(csv.reader(f, delimiter=delimiter))
  except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as e:
    raise UserError(f'CSV file {path} cannot be read ({e}); it must be UTF-8 text with a header '
                    f'row') from None
  rows = [row for row in rows if row]  # Blank lines.
  if len(rows) < 2:
    raise UserError(f'CSV file {path} has no data rows under its header')
  header = [h.strip() for h in rows[0]]
  for number, row in enumerate(rows[1:], 2):
    if len(row) != len(header):
      raise UserError(f'CSV file {path}, line {number}: {len(row)} fields, the header has '
                      f'{len(header)}; fix the row (quote fields that contain {delimiter!r})')
  return header, rows[1:]


def _floats(values: Sequence[str], path: str, column: str, role: str, fix: str) -> np.ndarray:
  out = np.empty(len(values))
  for i, v in enumerate(values):
    s = v.strip()
    if s.lower() in MISSING:
      out[i] = np.nan
      continue
    try:
      out[i] = float(s)
    except ValueError:
      raise UserError(f'CSV file {path}: {role} column {column!r} holds {v!r} (data row {i + 1}),'
                      f' not a number; {fix}') from None
  return out


def _classes(values: list[str]) -> list[str]:
  """Distinct non-missing values, sorted numerically when all are integers, else as strings."""
  distinct = sorted({v for v in values if v.lower() not in MISSING})
  try:
    numbers = [float(v) for v in distinct]
    if all(math.isfinite(x) and x == int(x) for x in numbers):
      return [d for _, d in sorted(zip(numbers, distinct))]
  except ValueError:
    pass
  return distinct


def _csv_task(name: str, spec: dict, values: list[str], path: str) -> tuple[Task, np.ndarray, dict]:
  kind, column = spec['kind'], spec['column']
  values = [v.strip() for v in values]
  missing = np.array([v.lower() in MISSING for v in values])
  if missing.all():
    raise UserError(f'CSV file {path}: task {name!r} (column {column!r}) has no labels at all; '
                    f'fill the column or drop the task')
  if kind == 'regression':
    y = _floats(values, path, column, f'regression task {name!r}',
                "use kind 'multiclass' for a column of categories, or fix the value")
    if not np.isfinite(y[~missing]).all():
      raise UserError(f'CSV file {path}: regression task {name!r} (column {column!r}) holds inf; '
                      f'fix the value or leave the cell empty (missing label)')
    return Task(name, 'regression'), y.astype(np.float32), {}
  if kind == 'binary':
    truth = {'0': 0, '1': 1, '0.0': 0, '1.0': 1, 'false': 0, 'true': 1}
    y = np.full(len(values), -1, np.int64)
    for i, v in enumerate(values):
      if missing[i]:
        continue
      if v.lower() not in truth:
        raise UserError(f'CSV file {path}: binary task {name!r} (column {column!r}) holds {v!r} '
                        f'(data row {i + 1}); a binary task needs 0/1 or true/false; use kind '
                        f"'multiclass' for other values")
      y[i] = truth[v.lower()]
    return Task(name, 'binary'), y, {}
  classes = _classes(values)  # multiclass
  numeric = all(re.fullmatch(r'[-+]?\d+(\.0*)?', c) for c in classes)
  if not numeric and all(re.fullmatch(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?', c)
                         for c in classes):  # Numbers, not all integers: a continuous column.
    raise UserError(f'CSV file {path}: multiclass task {name!r} (column {column!r}) holds '
                    f'non-integer numbers ({len(classes)} distinct values); use kind '
                    f"'regression' for a continuous target")
  if len(classes) < 2:
    raise UserError(f'CSV file {path}: multiclass task {name!r} (column {column!r}) has '
                    f'{len(classes)} class ({classes}); it needs at least 2; drop the task or fix '
                    f'the column')
  index = {c: k for k, c in enumerate(classes)}
  y = np.array([-1 if m else index[v] for v, m in zip(values, missing)], np.int64)
  return Task(name, 'multiclass', len(classes)), y, {'classes': classes}


def encode_csv(path: str, *, tasks: Mapping, numeric: Sequence[str] = (),
               categorical: Sequence[str] = (), split_column: str | None = None,
               split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
               standardize: bool = True, standardize_targets: bool = False,
               delimiter: str = ',') -> Encoded:
  """Parses and checks a CSV file (see the module docstring); no registration."""
  path = _check_file(path, 'CSV')
  header, rows = _read_csv(path, delimiter)
  specs = _task_specs(tasks, path, CSV_KINDS)
  numeric, categorical = list(numeric), list(categorical)
  if not numeric and not categorical:
    raise UserError(f'CSV file {path}: no input columns; list some in numeric=[...] or '
                    f'categorical=[...] (columns: {", ".join(header)})')
  used = {}
  for role, names in (('numeric', numeric), ('categorical', categorical),
                      ('task', [s['column'] for s in specs.values()]),
                      ('split', [split_column] if split_column else [])):
    for column in names:
      if column not in header:
        raise UserError(f'CSV file {path} has no column {column!r} (listed as a {role} column); '
                        f'its columns are: {", ".join(header)}')
      if column in used:
        raise UserError(f'CSV file {path}: column {column!r} is listed as both {used[column]} and '
                        f'{role}; a column is either an input, a task or the split')
      used[column] = role
  if len(set(header)) != len(header):
    raise UserError(f'CSV file {path} repeats a column name in its header: {header}')
  col = {name: [row[j] for row in rows] for j, name in enumerate(header)}
  n = len(rows)
  split = (_split_ids(col[split_column], path, split_column) if split_column
           else _random_splits(n, split_fractions, seed, path))
  _check_split_sizes(split, path)
  train = split == 0

  data: dict[str, np.ndarray] = {'row': np.arange(n, dtype=np.int64)}
  metadata: dict[str, Any] = {'format': 'csv', 'path': path, 'numeric_columns': numeric,
                              'categorical_columns': categorical}
  if numeric:
    x = np.stack([_floats(col[c], path, c, 'numeric input',
                          'list it as categorical=[...] if it holds categories')
                  for c in numeric], axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
      r, j = np.argwhere(bad)[0]
      raise UserError(f'CSV file {path}: numeric input column {numeric[j]!r} has '
                      f'{int(bad[:, j].sum())} empty, NaN or inf cells, the first in data row '
                      f'{r + 1}; fill them (e.g. with the column mean) or drop those rows')
    if standardize:
      mean, std = x[train].mean(0), x[train].std(0)
      std = np.where(std > 0, std, 1.0)
      x = (x - mean) / std
      metadata.update(numeric_mean=mean.tolist(), numeric_std=std.tolist())
    data['numeric'] = x.astype(np.float32)
  if categorical:
    codes = np.zeros((n, len(categorical)), np.int32)
    vocabularies = []
    for j, c in enumerate(categorical):
      values = np.array([v.strip() for v in col[c]], dtype=object)
      vocab = sorted(set(values[train]))
      index = {v: k + 1 for k, v in enumerate(vocab)}  # 0: unseen in train.
      codes[:, j] = [index.get(v, 0) for v in values]
      vocabularies.append(vocab)
    data['categorical'] = codes
    metadata.update(vocabularies=vocabularies, vocab_sizes=[len(v) + 1 for v in vocabularies])
  task_list, classes, target_stats = [], {}, {}
  for name, spec in specs.items():
    task, y, extra = _csv_task(name, spec, col[spec['column']], path)
    if task.kind == 'regression' and standardize_targets:
      known = y[train & ~np.isnan(y)]
      if not len(known):
        raise UserError(f'CSV file {path}: regression task {name!r} has no label in the train '
                        f'split, so it cannot be standardised; add labels or '
                        f'standardize_targets=False')
      mean, std = float(known.mean()), float(known.std()) or 1.0
      y = ((y - mean) / std).astype(np.float32)
      target_stats[name] = {'mean': mean, 'std': std}
    task_list.append(task)
    data[name] = y
    if extra:
      classes[name] = extra['classes']
  metadata['classes'] = classes
  metadata['target_stats'] = target_stats  # {task: {'mean', 'std'}} when standardize_targets.
  metadata['task_columns'] = {name: spec['column'] for name, spec in specs.items()}
  if categorical:
    input_kind, input_keys = 'tabular', ('categorical',) + (('numeric',) if numeric else ())
  else:
    input_kind, input_keys = 'dense', ('numeric',)
  columns = {s: {k: v[split == i] for k, v in data.items()} for i, s in enumerate(SPLITS)}
  metadata['split_sizes'] = {s: int((split == i).sum()) for i, s in enumerate(SPLITS)}
  return Encoded(columns, tuple(task_list), input_kind, input_keys, metadata)


# ---------------------------------------------------------------------------------------------
# NPZ.


def encode_npz(path: str, *, tasks: Mapping, inputs: str = 'x', split_key: str | None = None,
               split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Encoded:
  """Parses and checks an .npz file (see the module docstring); no registration."""
  path = _check_file(path, 'NPZ')
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zlib.error) as e:
    raise UserError(f'NPZ file {path} cannot be read ({e}); write it with numpy.savez') from None
  specs = _task_specs(tasks, path, NPZ_KINDS)
  if not isinstance(inputs, str):
    raise UserError(f'NPZ file {path}: `inputs` names ONE array (got {inputs!r}); concatenate '
                    f'your features into one float array [N, ...]')
  for role, key in [('input', inputs)] + [('task', s['column']) for s in specs.values()] + (
      [('split', split_key)] if split_key else []):
    if key not in arrays:
      raise UserError(f'NPZ file {path} has no array {key!r} (the {role} array); its arrays are: '
                      f'{", ".join(sorted(arrays))}')
  x = arrays[inputs]
  if x.ndim < 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
    raise UserError(f'NPZ file {path}: input array {inputs!r} must be numbers of shape [N, ...], '
                    f'got {x.dtype} {list(x.shape)}')
  n = len(x)
  x = x.astype(np.float32)
  bad = ~np.isfinite(x.reshape(n, -1)).all(1)
  if bad.any():
    raise UserError(f'NPZ file {path}: input array {inputs!r} has NaN or inf in {int(bad.sum())} '
                    f'rows, the first row {int(np.flatnonzero(bad)[0])}; fill or drop them')
  data = {'x': x, 'row': np.arange(n, dtype=np.int64)}
  task_list = []
  for name, spec in specs.items():
    kind, key = spec['kind'], spec['column']
    y = arrays[key]
    where = f'NPZ file {path}: task {name!r} (array {key!r})'
    if len(y) != n:
      raise UserError(f'{where} has {len(y)} rows, the input {inputs!r} has {n}; they must match')
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
      raise UserError(f'{where} has dtype {y.dtype}; labels must be numbers')
    if kind == 'regression':
      if y.ndim > 2:
        raise UserError(f'{where}: regression targets must be [N] or [N, K], got {list(y.shape)}')
      y = y.astype(np.float32)
      if np.isinf(y).any():
        raise UserError(f'{where} holds inf; use NaN for a missing target')
      task_list.append(Task(name, 'regression', 1 if y.ndim == 1 else y.shape[1]))
    else:
      want_dims = 2 if kind == 'multilabel' else 1
      yf = y.astype(np.float64)
      if y.ndim != want_dims:
        raise UserError(f'{where}: {kind} labels must be {"[N, K]" if want_dims == 2 else "[N]"},'
                        f' got shape {list(y.shape)}')
      if np.isnan(yf).any() or (yf != np.round(yf)).any():
        raise UserError(f'{where}: {kind} labels must be integers (-1 = missing); use kind '
                        f"'regression' for continuous targets")
      y = yf.astype(np.int64)
      if kind == 'multiclass':
        num = int(spec.get('num_classes', y.max() + 1))
        if num < 2 or y.max() >= num or y.min() < -1:
          raise UserError(f'{where}: multiclass labels must be integers in [0, {num}) or -1, and '
                          f'there must be at least 2 classes; got values {y.min()}..{y.max()}')
        task_list.append(Task(name, 'multiclass', num))
      else:
        valid = np.isin(y, (-1, 0, 1))
        if not valid.all():
          raise UserError(f'{where}: {kind} labels must be 0 or 1 (-1 = missing), found '
                          f'{y[~valid].flat[0]}; use kind \'multiclass\' for more classes')
        task_list.append(Task(name, kind, 1 if kind == 'binary' else y.shape[1]))
    data[name] = y
  split = (_split_ids(list(arrays[split_key]), path, split_key) if split_key
           else _random_splits(n, split_fractions, seed, path))
  _check_split_sizes(split, path)
  columns = {s: {k: v[split == i] for k, v in data.items()} for i, s in enumerate(SPLITS)}
  metadata = {'format': 'npz', 'path': path, 'input_array': inputs,
              'task_arrays': {name: s['column'] for name, s in specs.items()},
              'split_sizes': {s: int((split == i).sum()) for i, s in enumerate(SPLITS)}}
  return Encoded(columns, tuple(task_list), 'dense', ('x',), metadata)


# ---------------------------------------------------------------------------------------------
# CoNLL-U.


def _read_conllu(path: str, split: str) -> list:
  path = _check_file(path, f'CoNLL-U ({split})')
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8') as f:
      text = f.read()
  except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
    raise UserError(f'CoNLL-U file {path} cannot be read ({e}); it must be UTF-8 text (or gzip '
                    f'of it)') from None
  sentences = ud_ewt.parse_conllu(text, path)
  if not sentences:
    raise UserError(f'CoNLL-U file {path} ({split}) holds no sentences')
  return sentences


def encode_conllu(*, train: str, validation: str, test: str,
                  tasks: Sequence[str] = ('upos',), max_len: int = 128,
                  max_word_len: int = ud_ewt.MAX_WORD_LEN,
                  min_word_count: int = ud_ewt.MIN_WORD_COUNT,
                  min_char_count: int = ud_ewt.MIN_CHAR_COUNT) -> Encoded:
  """Parses three CoNLL-U files (see the module docstring); no registration."""
  paths = {'train': train, 'validation': validation, 'test': test}
  tasks = list(tasks)
  if not tasks or any(t not in CONLLU_TASKS for t in tasks) or len(set(tasks)) != len(tasks):
    raise UserError(f'CoNLL-U dataset ({train}): tasks must be distinct names among '
                    f'{", ".join(CONLLU_TASKS)}, got {tasks}')
  sentences = {s: _read_conllu(p, s) for s, p in paths.items()}
  words, chars = ud_ewt.build_vocabularies(sentences['train'], min_word_count, min_char_count)
  labels = {t: sorted({getattr(w, t) for s in sentences['train'] for w in s}) for t in tasks}
  for t, classes in labels.items():
    if len(classes) < 2:
      raise UserError(f'CoNLL-U file {paths["train"]}: task {t!r} has {len(classes)} distinct '
                      f'label(s) in train; a tagging task needs at least 2; drop it')
  word_index = {w: i + 2 for i, w in enumerate(words)}
  char_index = {c: i + 2 for i, c in enumerate(chars)}
  columns, stats = {}, {'truncated_sentences': {}, 'unseen_labels': {}}
  for split, sents in sentences.items():
    n = len(sents)
    c = {'tokens': np.zeros((n, max_len), np.int32),
         'chars': np.zeros((n, max_len, max_word_len), np.uint8),
         'mask': np.zeros((n, max_len), bool),
         **{t: np.full((n, max_len), -1, np.int32) for t in tasks},
         'row': np.arange(n, dtype=np.int64)}
    index = {t: {label: k for k, label in enumerate(labels[t])} for t in tasks}
    stats['truncated_sentences'][split] = sum(len(s) > max_len for s in sents)
    unseen = {t: 0 for t in tasks}
    for i, sentence in enumerate(sents):
      for j, word in enumerate(sentence[:max_len]):
        c['tokens'][i, j] = word_index.get(ud_ewt.normalize(word.form), ud_ewt.OOV)
        form = ud_ewt.clip_word(word.form, max_word_len)
        c['chars'][i, j, :len(form)] = [char_index.get(ch, ud_ewt.OOV) for ch in form]
        c['mask'][i, j] = True
        for t in tasks:
          c[t][i, j] = index[t].get(getattr(word, t), -1)
          unseen[t] += c[t][i, j] == -1
    stats['unseen_labels'][split] = {t: int(v) for t, v in unseen.items()}
    columns[split] = c
  metadata = {'format': 'conllu', 'paths': {s: os.path.abspath(p) for s, p in paths.items()},
              'vocab_size': len(words) + 2, 'char_vocab_size': len(chars) + 2,
              'max_len': max_len, 'max_word_len': max_word_len, 'classes': labels,
              'split_sizes': {s: len(v) for s, v in sentences.items()}, **stats}
  task_list = tuple(Task(t, 'multiclass', len(labels[t]), per_token=True) for t in tasks)
  return Encoded(columns, task_list, 'tokens', ('tokens', 'chars', 'mask'), metadata)


# ---------------------------------------------------------------------------------------------
# Builder and registration.


class CustomData(pipeline.LocalBuilder):
  """Writes an `Encoded` dataset; subclasses made by `_builder_class` bind it."""

  name = 'custom_data'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  ENCODED: Encoded | None = None
  skip_registration = True

  def _info(self) -> tfds.core.DatasetInfo:
    features = {}
    for key, value in self.ENCODED.columns['train'].items():
      features[key] = (tfds.features.Tensor(shape=value.shape[1:], dtype=value.dtype)
                       if value.ndim > 1 else tfds.features.Scalar(dtype=value.dtype))
    return tfds.core.DatasetInfo(
        builder=self, description='A user dataset registered with mtl_jax.data.custom.',
        features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    self.info.metadata.update(json.loads(json.dumps(self.ENCODED.metadata)))
    return {s: self._generate_examples(self.ENCODED.columns[s]) for s in SPLITS}

  def _generate_examples(self, columns):
    for i in range(len(columns['row'])):
      yield i, {key: value[i] for key, value in columns.items()}


def _fingerprint(fmt: str, files: Sequence[str], options: dict) -> str:
  h = hashlib.sha256(json.dumps([fmt, options], sort_keys=True, default=str).encode())
  for path in files:
    with open(path, 'rb') as f:
      h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()[:12]


def _builder_class(fmt: str, name: str, digest: str, encoded: Encoded) -> type:
  config = tfds.core.BuilderConfig(name=f'{name}_{digest}', description=f'{fmt} dataset {name}')

  def body(namespace):
    namespace.update(name=f'custom_{fmt}', BUILDER_CONFIGS=[config], ENCODED=encoded,
                     __module__=__name__)

  return types.new_class(f'Custom_{name}', (CustomData,), {'skip_registration': True}, body)


def _tabular_batch(rows: dict, spec, tasks=None) -> dict:
  """`pipeline.to_batch`, with an empty numeric block when the CSV has only categorical inputs."""
  batch = pipeline.to_batch(rows, spec, tasks)
  if 'numeric' not in batch['inputs']:
    size = len(batch['inputs']['categorical'])
    batch['inputs']['numeric'] = np.zeros((size, 0), np.float32)
  return batch


def _dense_batch(rows: dict, spec, tasks=None) -> dict:
  batch = pipeline.to_batch(rows, spec, tasks)
  (key,) = spec.input_keys
  batch['inputs'] = batch['inputs'][key]
  return batch


def _input_info(builder) -> dict:
  metadata = builder.info.metadata
  info = {k: metadata[k] for k in ('vocab_sizes', 'vocab_size', 'char_vocab_size', 'max_len',
                                   'max_word_len') if k in metadata}
  if 'vocab_sizes' in info:
    info['vocab_sizes'] = list(info['vocab_sizes'])
  return info


def _register(fmt: str, name: str, files: Sequence[str], options: dict, encode) -> str:
  _check_name(name)
  files = [_check_file(p, fmt.upper() if fmt != 'conllu' else 'CoNLL-U') for p in files]
  digest = _fingerprint(fmt, files, options)
  if name in _REGISTERED:
    if _REGISTERED[name] == digest:
      return name
    raise UserError(f'custom dataset {name!r} is already registered with other data or options; '
                    f'give this one another name')
  if name in registry.DATASETS:
    raise UserError(f'dataset name {name!r} is taken by a built-in dataset; choose another name')
  encoded = encode()
  batch_fn = {'tabular': _tabular_batch, 'dense': _dense_batch,
              'tokens': registry.token_batch}[encoded.input_kind]
  registry.DATASETS.register(name, registry.DatasetSpec(
      name=name, builder_cls=_builder_class(fmt, name, digest, encoded), tasks=encoded.tasks,
      input_kind=encoded.input_kind, input_keys=encoded.input_keys, input_info_fn=_input_info,
      batch_fn=batch_fn))
  _REGISTERED[name] = digest
  return name


def register_csv(name: str, path: str, *, tasks: Mapping, numeric: Sequence[str] = (),
                 categorical: Sequence[str] = (), split_column: str | None = None,
                 split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                 standardize: bool = True, standardize_targets: bool = False,
                 delimiter: str = ',') -> str:
  """Registers a CSV file as dataset `name` (see the module docstring); returns `name`."""
  options = dict(tasks=tasks, numeric=list(numeric), categorical=list(categorical),
                 split_column=split_column, split_fractions=list(split_fractions), seed=seed,
                 standardize=standardize, standardize_targets=standardize_targets,
                 delimiter=delimiter)
  return _register('csv', name, [path], options, lambda: encode_csv(path, **options))


def register_npz(name: str, path: str, *, tasks: Mapping, inputs: str = 'x',
                 split_key: str | None = None,
                 split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
  """Registers an .npz file as dataset `name` (see the module docstring); returns `name`."""
  options = dict(tasks=tasks, inputs=inputs, split_key=split_key,
                 split_fractions=list(split_fractions), seed=seed)
  return _register('npz', name, [path], options, lambda: encode_npz(path, **options))


def register_conllu(name: str, *, train: str, validation: str, test: str,
                    tasks: Sequence[str] = ('upos',), max_len: int = 128,
                    max_word_len: int = ud_ewt.MAX_WORD_LEN,
                    min_word_count: int = ud_ewt.MIN_WORD_COUNT,
                    min_char_count: int = ud_ewt.MIN_CHAR_COUNT) -> str:
  """Registers three CoNLL-U files as dataset `name` (see the module docstring); returns `name`."""
  options = dict(tasks=list(tasks), max_len=max_len, max_word_len=max_word_len,
                 min_word_count=min_word_count, min_char_count=min_char_count)
  return _register('conllu', name, [train, validation, test], options,
                   lambda: encode_conllu(train=train, validation=validation, test=test, **options))


_FORMATS = {'csv': register_csv, 'npz': register_npz, 'conllu': register_conllu}


def register(spec: Mapping) -> str:
  """Registers from a dict: {'format': 'csv'|'npz'|'conllu', 'name': ..., **the function's keyword
  arguments (including 'path' for csv and npz)}; returns the name."""
  spec = _plain(spec)
  fmt = spec.pop('format', None)
  if fmt not in _FORMATS:
    raise UserError(f'custom_data.format is {fmt!r}; valid: {", ".join(_FORMATS)}')
  if 'name' not in spec:
    raise UserError('custom_data needs a name (the value to give config.dataset)')
  try:
    return _FORMATS[fmt](**spec)
  except TypeError as e:
    raise UserError(f'custom_data for format {fmt!r}: {e}; see mtl_jax.data.custom.'
                    f'{_FORMATS[fmt].__name__} for the options') from None


def register_from_config(config) -> None:
  """If `config.custom_data` is set, registers it, and checks that `config.dataset` names it.
  The trainer hook: call this in `train.loop.setup` before the dataset is looked up."""
  custom = config.get('custom_data', None)
  if not custom:
    return
  name = register(custom)
  if config.dataset != name:
    raise UserError(f'config.custom_data registers dataset {name!r} but config.dataset is '
                    f'{config.dataset!r}; set --config.dataset={name}')


def _plain(value):
  """ConfigDicts, FrozenConfigDicts and tuples -> dicts and lists (JSON-able, hashable options)."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value
