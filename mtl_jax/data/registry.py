"""Datasets by name: what to build, which tasks it offers, and how rows become batches."""

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from mtl_jax.data import census
from mtl_jax.data import pipeline
from mtl_jax.data import ud_ewt
from mtl_jax.registry import Registry
from mtl_jax.tasks import Task


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset the trainer can use.

  Attributes:
    name: the registry name (`--config.dataset`).
    builder_cls: its tfds builder class (prepared with `pipeline.prepare`).
    tasks: every task it offers; each task's labels are the column named as the task.
    input_kind: what the inputs are, for choosing an input layer ('tabular', 'dense', 'tokens').
    input_keys: the columns that are inputs; None: every column that is not a task label.
    input_info_fn: builder -> dict of facts an encoder needs (e.g. vocabulary sizes).
    batch_fn: (rows, spec, tasks) -> trainer batch; default `pipeline.to_batch`.
    time_buckets: for token datasets (`token_batch`): the lengths the token axis of a batch may
      be cut to (see `token_batch`); empty: batches keep the stored length.
  """

  name: str
  builder_cls: type
  tasks: tuple[Task, ...]
  input_kind: str = 'tabular'
  input_keys: tuple[str, ...] | None = None
  input_info_fn: Callable[[Any], dict] | None = None
  batch_fn: Callable[..., dict] = pipeline.to_batch
  time_buckets: tuple[int, ...] = ()

  def input_info(self, builder) -> dict:
    """Facts about the inputs that models need, read from the prepared builder."""
    return {} if self.input_info_fn is None else self.input_info_fn(builder)

  def to_batch(self, rows: dict, tasks: Sequence[Task] | None = None) -> dict:
    """Gathered rows -> {'inputs', 'labels', 'label_mask'} for `tasks` (default: all)."""
    return self.batch_fn(rows, self, tasks)


def _census_input_info(builder) -> dict:
  metadata = builder.info.metadata
  return {
      'vocab_sizes': list(metadata['vocab_sizes']),
      'categorical_columns': list(metadata['categorical_columns']),
      'numeric_columns': list(metadata['numeric_columns']),
      'num_categorical': len(metadata['categorical_columns']),
      'num_numeric': len(metadata['numeric_columns']),
  }


def token_batch(rows: dict, spec: DatasetSpec, tasks: Sequence[Task] | None = None) -> dict:
  """`pipeline.to_batch` for token datasets: per-token tasks (labels [B, T], -1 = no label), and
  every input with the token axis second, padding on the right, and a `mask` input [B, T].

  A per-token task's label_mask is [B, T]: True where the label exists and the token is real
  (`rows['mask']`), so that padding rows (all zeros, as `eval_batches` pads) never count.

  With `spec.time_buckets`, the token axis of the inputs and per-token labels is cut to the
  smallest bucket that holds the batch's longest sentence (the stored length if none does). Only
  padding is removed, and a sequence model's output at a real token does not depend on the padding
  after it, so the loss and metrics are those of the uncut batch (in training, up to dropout's
  random masks, whose draw depends on the shape); but random batches of EWT rarely need the stored
  88 positions (a batch of 32 needs 48 or fewer half the time), and a BiLSTM's cost is linear in
  them. Each bucket is one more shape for the jitted step to compile, so buckets are few. Every
  process cuts its own rows, so a multi-process run needs `time_buckets=()`.
  """
  tasks = spec.tasks if tasks is None else tasks
  real = np.asarray(rows['mask'], bool)
  length = real.shape[1]
  longest = int(real.sum(1).max()) if real.size else 0
  cut = next((b for b in sorted(spec.time_buckets) if longest <= b < length), length)
  if cut < length:
    token_columns = set(spec.input_keys or ()) | {t.name for t in tasks if t.per_token}
    rows = {k: (v[:, :cut] if k in token_columns else v) for k, v in rows.items()}
    real = real[:, :cut]
  batch = pipeline.to_batch(rows, spec, [t for t in tasks if not t.per_token])
  labels, label_mask = {}, {}
  for task in tasks:
    if task.per_token:
      y = np.asarray(rows[task.name])
      keep = (y != -1) & real
      labels[task.name] = np.where(keep, y, 0).astype(np.int32)
      label_mask[task.name] = keep
    else:
      labels[task.name] = batch['labels'][task.name]
      label_mask[task.name] = batch['label_mask'][task.name]
  # In the order of `tasks`, like `pipeline.to_batch`.
  batch['labels'], batch['label_mask'] = labels, label_mask
  return batch


def _ud_input_info(builder) -> dict:
  metadata = builder.info.metadata
  return {
      'vocab_size': int(metadata['vocab_size']),
      'char_vocab_size': int(metadata['char_vocab_size']),
      'max_len': int(metadata['max_len']),
      'max_word_len': int(metadata['max_word_len']),
  }


DATASETS: Registry[DatasetSpec] = Registry('dataset')

CENSUS_INCOME = DATASETS.register('census_income', DatasetSpec(
    name='census_income',
    builder_cls=census.CensusIncome,
    tasks=census.TASKS,
    input_kind='tabular',
    input_keys=('categorical', 'numeric'),
    input_info_fn=_census_input_info,
))


UD_ENGLISH_EWT = DATASETS.register('ud_english_ewt', DatasetSpec(
    name='ud_english_ewt',
    builder_cls=ud_ewt.UdEnglishEwt,
    tasks=ud_ewt.TASKS,
    input_kind='tokens',
    input_keys=('tokens', 'chars', 'mask'),
    input_info_fn=_ud_input_info,
    batch_fn=token_batch,
    time_buckets=ud_ewt.TIME_BUCKETS,
))


def get(name: str) -> DatasetSpec:
  """The registered dataset `name`; UnknownNameError listing the valid names otherwise."""
  return DATASETS.get(name)
