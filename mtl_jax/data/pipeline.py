"""Generic data pipeline: tfds builder -> ArrayRecord -> numpy columns -> grain batches.

The flow (what the trainer does)::

  spec = data.get('census_income')
  builder = data.prepare(spec.builder_cls, data_dir)        # builds once, then reuses
  columns = data.load_columns(builder, 'train')             # {'categorical': [N, C], ...}
  data.check_columns(columns, tasks, 'train')               # labels in range, inputs finite
  it = data.train_iterator(columns, batch_size, seed,
                           process_index, process_count,
                           transform=spec.to_batch)
  batch = next(it)                                          # already in the trainer's format
  state = it.get_state()  # or save it with grain.checkpoint.CheckpointSave(it) in orbax
  for rows, valid in data.eval_batches(columns, eval_batch_size):  # padded to a static shape
    batch = spec.to_batch(rows)                             # then keep the `valid` rows

Design choices:
  * The splits fit in memory (tabular data), so a split is read once from ArrayRecord and kept as
    a "struct of arrays": a (possibly nested) dict of numpy arrays sharing their leading axis.
  * The training iterator is a grain pipeline over *batches of row indices*
    (`ShuffledIndexBatches`: a per-epoch NumPy permutation from `(seed, epoch)`, cut into global
    batches), then one vectorised gather per batch (`columns[...][indices]`), then `transform`
    (the dataset's `to_batch`). Reading never touches disk, each epoch gets a new order, and the
    iterator's state is just a position in that stream, so `get_state()`/`set_state()` (and
    grain's orbax handler) resume exactly. Shuffling index by index with
    `MapDataset.range(N).shuffle()` ran at ~84k examples/s here, which starved the step; whole
    batches of indices from NumPy remove that per-example Python cost.
  * `to_batch` is folded into the grain map (`transform=spec.to_batch`), so `next(it)` already
    yields the trainer's format and the checkpointed iterator state is all that is needed to
    resume the data.
  * Multi-process: every process draws the same global batch and takes its contiguous slice of
    it; so within an epoch the processes see disjoint examples, and their local batches at step
    k, concatenated in process order, are exactly the global batch a single process would draw.

Batch format (`to_batch`)::

  {'inputs': {name: array [B, ...]},            # e.g. {'categorical': int32 [B, C],
                                                 #       'numeric': float32 [B, N]}
   'labels': {task: array [B] or [B, K]},        # int32 for classification, float32 regression
   'label_mask': {task: bool [B]}}               # False where the label is missing

A label is missing where it is -1 (binary, multiclass; multilabel: every entry -1) or NaN
(regression); it is then replaced by 0 and masked. `eval_batches` yields `(batch, valid)` with
`valid` bool [B], False on the padding rows (with a `transform`, it is also ANDed into every
label_mask).
"""

import contextlib
import fcntl
import functools
import inspect
import os
import shutil
import sys
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.tasks import Task

Columns = dict[str, Any]  # Nested dict of numpy arrays with a common leading axis.
Batch = dict[str, Any]

# Examples per `__getitems__` call in `load_columns`.
_READ_CHUNK = 8192


# ---------------------------------------------------------------------------------------------
# Building and reading.


class LocalBuilder(tfds.core.GeneratorBasedBuilder):
  """Base for the project's own tfds builders (data files in the repository, no download).

  It fixes one thing for builders that live outside the tfds package: tfds' default `code_path`
  goes through the `importlib_resources` backport, which is not a dependency of ours, and fails;
  the path only serves to look for a checksums file, which local builders do not have. Subclasses
  build their `DatasetInfo` directly (`tfds.core.DatasetInfo(builder=self, ...)`), since
  `dataset_info_from_configs` also looks for files inside the tfds package.
  """

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


def with_config(base: type, config) -> type:
  """A subclass of the builder `base` whose only (so default) config is `config`.

  `pipeline.prepare` and `DatasetSpec` take a builder class and no config; this binds one. It
  keeps `base`'s name (the same data folder: <data_dir>/<name>/<config name>/<version>) and stays
  out of tfds' registry, which holds `base`.
  """
  def body(namespace):
    namespace.update(name=base.name, BUILDER_CONFIGS=[config], __module__=base.__module__,
                     __doc__=f'`{base.__name__}` with config {config.name}.')

  return types.new_class(f'{base.__name__}_{config.name}', (base,),
                         {'skip_registration': True}, body)


@contextlib.contextmanager
def _file_lock(path: str):
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(builder) -> bool:
  """Whether the builder's version directory holds its info and every split's files."""
  path = builder.data_path
  if not (path / 'dataset_info.json').exists() or not builder.info.splits:
    return False
  try:
    return all(f.exists() for s in builder.info.splits.values() for f in s.filepaths)
  except ValueError:  # No filename template: the info is from an incompatible writer.
    return False


def prepare(builder_cls: type, data_dir: str | None = None,
            **builder_kwargs) -> tfds.core.DatasetBuilder:
  """Builds the dataset as ArrayRecord under `data_dir` unless it is already there; the builder.

  `data_dir` None (or '') means $TFDS_DATA_DIR, else ~/tensorflow_datasets.

  Concurrent calls on one machine are serialised by a lock file in `data_dir`. A previous attempt
  that stopped half way is cleaned up: tfds' own `incomplete.*` temporary folders are removed and a
  version folder that lacks its info or a split file is deleted and rebuilt.
  """
  if not data_dir:
    data_dir = os.environ.get('TFDS_DATA_DIR') or os.path.join('~', 'tensorflow_datasets')
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  try:
    os.makedirs(data_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create the data directory {data_dir} ({e}); pass a writable '
                    f'--config.data_dir') from None
  name = builder_cls.name
  make = lambda: builder_cls(data_dir=data_dir, file_format='array_record', **builder_kwargs)
  with _file_lock(os.path.join(data_dir, f'.{name}.prepare.lock')):
    builder = make()
    if builder.data_path.exists() and not _is_complete(builder):
      shutil.rmtree(os.fspath(builder.data_path))
      builder = make()
    dataset_dir = os.path.dirname(os.fspath(builder.data_path))
    if os.path.isdir(dataset_dir):
      for entry in os.listdir(dataset_dir):
        if entry.startswith('incomplete.'):  # Left by a killed build; we hold the lock.
          shutil.rmtree(os.path.join(dataset_dir, entry), ignore_errors=True)
    if not builder.data_path.exists():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
      builder = make()  # A fresh builder reads back exactly what was written.
  file_format = builder.info.file_format
  if file_format is None or file_format.value != 'array_record':
    raise UserError(
        f'dataset {name!r} in {builder.data_path} is stored as {file_format}, not array_record; '
        f'delete that folder or use another data_dir')
  return builder


def _stack(items: Sequence[Any]) -> Any:
  """List of (nested dict) examples -> (nested dict) of arrays with a leading example axis."""
  first = items[0]
  if isinstance(first, Mapping):
    return {key: _stack([item[key] for item in items]) for key in first}
  return np.stack([np.asarray(item) for item in items]) if np.ndim(first) else np.asarray(items)


def _concat(chunks: Sequence[Any]) -> Any:
  first = chunks[0]
  if isinstance(first, Mapping):
    return {key: _concat([chunk[key] for chunk in chunks]) for key in first}
  return np.concatenate(chunks)


def load_columns(builder: tfds.core.DatasetBuilder, split: str) -> Columns:
  """A whole split as a (nested) dict of numpy arrays, one row per example, in stored order.

  `split` is a split name or any tfds split slice ('train[:10%]', 'test[100:200]').

  A builder with a `read_split(split)` method (the `data.catalog` adapters, which map the
  trainer's split names to tfds split expressions and turn examples into fixed-shape columns)
  reads the split itself.
  """
  read_split = getattr(builder, 'read_split', None)
  if callable(read_split):
    return read_split(split)
  splits = list(builder.info.splits)
  if split.split('[')[0] not in splits:
    raise UnknownNameError(f'dataset {builder.name!r} has no split {split!r}; valid splits: '
                           f'{", ".join(splits)}')
  try:
    num = builder.info.splits[split].num_examples
  except (ValueError, KeyError, AssertionError) as e:
    raise UserError(f'dataset {builder.name!r}: bad split {split!r} ({e})') from None
  if num == 0:
    raise UserError(f'dataset {builder.name!r}: split {split!r} is empty (in {builder.data_path}); '
                    f'choose another split, or delete that folder to rebuild the dataset')
  source = builder.as_data_source(split=split)
  if len(source) != num:
    raise UserError(f'dataset {builder.name!r}: split {split!r} holds {len(source)} examples, its '
                    f'info says {num}; delete {builder.data_path} to rebuild it')
  chunks = [_stack(source.__getitems__(range(start, min(start + _READ_CHUNK, num))))
            for start in range(0, num, _READ_CHUNK)]
  return _concat(chunks)


# ---------------------------------------------------------------------------------------------
# Columns.


def _leaves(tree: Any, prefix: str = '') -> Iterator[tuple[str, np.ndarray]]:
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      yield from _leaves(value, f'{prefix}/{key}' if prefix else str(key))
  else:
    yield prefix, tree


def num_rows(columns: Columns) -> int:
  """The common leading size of every array in `columns`; UserError when they disagree."""
  sizes = {name: len(array) for name, array in _leaves(columns)}
  if not sizes:
    raise UserError('no data columns')
  if len(set(sizes.values())) != 1:
    raise UserError(f'data columns have different numbers of rows: {sizes}')
  return next(iter(sizes.values()))


def first_rows(columns: Columns, count: int) -> Columns:
  """The first `count` rows (e.g. an example batch to initialise a model with)."""
  return gather(columns, np.arange(min(count, num_rows(columns))))


def gather(columns: Columns, indices: np.ndarray) -> Columns:
  """Rows `indices` of every column (one vectorised take per array)."""
  # Called per column per batch: the `ndarray` and plain `dict` checks come first because
  # `isinstance(x, typing.Mapping)` and `np.take`'s dispatch cost more than a small batch's take.
  if isinstance(columns, np.ndarray):
    return columns.take(indices, axis=0)
  if isinstance(columns, dict) or isinstance(columns, Mapping):
    return {key: gather(value, indices) for key, value in columns.items()}
  return np.take(columns, indices, axis=0)


def _missing(labels: np.ndarray, kind: str, per_token: bool = False) -> np.ndarray:
  """bool [N]: where a task's label is missing (-1, or NaN for regression); [N, T] for a
  per-token task, whose labels are missing position by position."""
  labels = np.asarray(labels)
  if kind == 'regression':
    miss = np.isnan(labels) if np.issubdtype(labels.dtype, np.floating) else labels != labels
  else:
    miss = labels == -1
  if miss.ndim > 1 and not per_token:
    miss = miss.reshape(len(miss), -1).all(axis=1)
  return miss


def check_columns(columns: Columns, tasks: Sequence[Task], split: str) -> None:
  """UserError unless every task's labels are valid and every floating input is finite."""
  n = num_rows(columns)
  label_names = {task.name for task in tasks}
  for task in tasks:
    if task.name not in columns:
      raise UserError(f'task {task.name!r}: split {split!r} has no label column {task.name!r}; '
                      f'columns: {", ".join(columns)}')
    labels = np.asarray(columns[task.name])
    task.check_labels(labels, ~_missing(labels, task.kind, task.per_token),
                      where=f'split {split!r}')
  for name, array in _leaves({k: v for k, v in columns.items() if k not in label_names}):
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
      finite = np.isfinite(array).reshape(n, -1).all(axis=1)
      if not finite.all():
        rows = np.flatnonzero(~finite)
        raise UserError(
            f'feature {name!r} has non-finite values (NaN or inf) in {len(rows)} rows of split '
            f'{split!r}, the first at row {rows[0]}; clean the data or rebuild the dataset')


def to_batch(rows: Columns, spec: Any, tasks: Sequence[Task] | None = None) -> Batch:
  """Gathered rows -> {'inputs', 'labels', 'label_mask'} (see the module docstring).

  Args:
    rows: dict of arrays [B, ...] holding the inputs and one column per task (named as the task).
    spec: a `DatasetSpec` (anything with `.tasks` and `.input_keys`); `input_keys` None means
      every column that is not a task's label is an input.
    tasks: the tasks whose labels the batch carries; default: all of `spec.tasks`.
  """
  tasks = spec.tasks if tasks is None else tasks
  input_keys = spec.input_keys
  if input_keys is None:
    label_names = {task.name for task in spec.tasks}
    input_keys = [key for key in rows if key not in label_names]
  inputs = {key: _narrow(rows[key]) for key in input_keys}
  labels, label_mask = {}, {}
  for task in tasks:
    y = np.asarray(rows[task.name])
    missing = _missing(y, task.kind, task.per_token)
    fill = missing.reshape(missing.shape + (1,) * (y.ndim - missing.ndim))
    y = np.where(fill, 0, y)
    labels[task.name] = y.astype(np.float32 if task.kind == 'regression' else np.int32)
    label_mask[task.name] = ~missing
  return {'inputs': inputs, 'labels': labels, 'label_mask': label_mask}


def _narrow(tree: Any) -> Any:
  """64-bit numbers -> 32-bit (what JAX uses without x64)."""
  if isinstance(tree, Mapping):
    return {key: _narrow(value) for key, value in tree.items()}
  array = np.asarray(tree)
  if array.dtype == np.float64:
    return array.astype(np.float32)
  if array.dtype == np.int64:
    return array.astype(np.int32)
  return array


# ---------------------------------------------------------------------------------------------
# Iterators.


def _gather_batch(indices: np.ndarray, columns: Columns,
                  transform: Callable[[Columns], Any] | None):
  rows = gather(columns, np.asarray(indices, np.int64))
  return rows if transform is None else transform(rows)


class ShuffledIndexBatches(grain.MapDataset):
  """Element i is this process's slice of global batch i of an endless, epoch-reshuffled stream.

  Epoch e is `permutation(N)` drawn from `(seed, e)`, cut into `N // batch_size` global batches
  (the remainder of each epoch is dropped, so every example is seen at most once per epoch); each
  process takes its contiguous `batch_size // process_count` rows of every global batch. The
  global batch is therefore the same whatever the number of processes. Indices are produced a
  whole batch at a time with NumPy, not one example at a time, so the pipeline costs one
  vectorised gather per batch.
  """

  def __init__(self, num_rows: int, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    super().__init__()
    if num_rows < batch_size:
      raise UserError(f'the training split has {num_rows} rows, fewer than one batch of '
                      f'{batch_size}; lower --config.batch_size')
    self._num_rows, self._batch_size, self._seed = num_rows, batch_size, seed
    self._local = batch_size // process_count
    self._offset = process_index * self._local
    self._batches_per_epoch = num_rows // batch_size
    self._cached_epoch, self._cached_permutation = None, None

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return (f'ShuffledIndexBatches(num_rows={self._num_rows}, batch_size={self._batch_size}, '
            f'seed={self._seed})')

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._cached_epoch:
      rng = np.random.default_rng([self._seed, epoch])
      self._cached_epoch, self._cached_permutation = epoch, rng.permutation(self._num_rows)
    return self._cached_permutation

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(int(index), self._batches_per_epoch)
    start = position * self._batch_size + self._offset
    return self._permutation(epoch)[start:start + self._local]


def check_stream(batch_size: int, seed: int, process_index: int, process_count: int) -> None:
  """UserError unless the global batch splits evenly over the processes, `process_index` is one of
  them and the seed fits the shuffles' 32 bits (every training stream's arguments)."""
  if not 0 <= process_index < process_count:
    raise UserError(f'process_index {process_index} is not in [0, process_count={process_count})')
  if batch_size <= 0 or batch_size % process_count:
    raise UserError(f'batch_size {batch_size} must be a positive multiple of the number of '
                    f'processes ({process_count}); change --config.batch_size')
  if not 0 <= seed < 2**32:
    raise UserError(f'data seed {seed} must be in [0, 2**32); change --config.seed')


def train_iterator(columns: Columns, batch_size: int, seed: int, process_index: int = 0,
                   process_count: int = 1, *,
                   transform: Callable[[Columns], Any] | None = None,
                   read_options: grain.ReadOptions | None = None) -> grain.DatasetIterator:
  """Infinite shuffled batches of this process's `batch_size // process_count` rows.

  Args:
    columns: the split, from `load_columns`.
    batch_size: the global batch size (over all processes).
    seed: the shuffle seed, in [0, 2**32); each epoch is reshuffled from it.
    process_index, process_count: this process and how many read the same stream.
    transform: applied to the gathered rows inside the pipeline (e.g. `spec.to_batch`, or
      `functools.partial(spec.to_batch, tasks=tasks)`); None yields the gathered rows (same
      structure as `columns`).
    read_options: grain threading/prefetching. Default: no threads: a batch costs one NumPy
      gather, and JAX's asynchronous dispatch already overlaps it with the step.

  Returns:
    A grain `DatasetIterator`: `next(it)`, `it.get_state()`, `it.set_state(state)`, and savable
    with `grain.checkpoint.CheckpointSave(it)` in an orbax CheckpointManager.
  """
  n = num_rows(columns)
  check_stream(batch_size, seed, process_index, process_count)
  ds = ShuffledIndexBatches(n, batch_size, int(seed), process_index, process_count)
  ds = ds.map(functools.partial(_gather_batch, columns=columns, transform=transform))
  read_options = read_options or grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  return iter(ds.to_iter_dataset(read_options))


def eval_batches(columns: Columns, batch_size: int, *,
                 transform: Callable[[Columns], Any] | None = None
                 ) -> Iterator[tuple[Any, np.ndarray]]:
  """The split in stored order as `(batch, valid)`, every batch exactly `batch_size` rows.

  The last batch is padded with zero rows; `valid` (bool [batch_size]) is False on them. With
  `transform` (e.g. `spec.to_batch`), the batch is transformed and `valid` is ANDed into every
  `label_mask`, so padding never counts as a label.
  """
  if batch_size <= 0:
    raise UserError(f'eval batch_size {batch_size} must be positive')
  n = num_rows(columns)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    batch = _pad(gather(columns, np.arange(start, stop)), batch_size)
    valid = np.arange(batch_size) < stop - start
    if transform is not None:
      batch = transform(batch)
      if isinstance(batch, Mapping) and 'label_mask' in batch:
        batch['label_mask'] = {
            name: np.logical_and(mask, valid.reshape((-1,) + (1,) * (np.ndim(mask) - 1)))
            for name, mask in batch['label_mask'].items()}
    yield batch, valid


def _pad(tree: Any, size: int) -> Any:
  if isinstance(tree, Mapping):
    return {key: _pad(value, size) for key, value in tree.items()}
  missing = size - len(tree)
  if missing == 0:
    return tree
  return np.concatenate([tree, np.zeros((missing,) + tree.shape[1:], tree.dtype)])
