"""Datasets as tfds builders (ArrayRecord, no TensorFlow) read into memory and batched with grain.

    spec = data.get('census_income')
    builder = data.prepare(spec.builder_cls, data_dir)
    columns = data.load_columns(builder, 'train')
    data.check_columns(columns, tasks, 'train')
    it = data.train_iterator(columns, batch_size, seed, process_index, process_count,
                             transform=spec.to_batch)
    batch = next(it)  # {'inputs': ..., 'labels': {task: ...}, 'label_mask': {task: ...}}
    for rows, valid in data.eval_batches(columns, eval_batch_size):
      batch = spec.to_batch(rows)  # padded rows: `valid` is False there

See `pipeline` for the batch format and the iterator's guarantees, `census` for the dataset.
"""

from mtl_jax.data.census import CensusIncome, TASKS as CENSUS_TASKS
from mtl_jax.data.pipeline import (
    LocalBuilder,
    check_columns,
    eval_batches,
    first_rows,
    gather,
    load_columns,
    num_rows,
    prepare,
    to_batch,
    train_iterator,
)
from mtl_jax.data.registry import DATASETS, DatasetSpec, get
from mtl_jax.data import mmoe_synthetic  # registers the mmoe_synthetic_* datasets
from mtl_jax.data import catalog  # registers the tfds catalog adapters (celeb_a, smallnorb, ...)
from mtl_jax.data import multi_mnist  # registers multi_mnist
from mtl_jax.data import gradnorm_toy  # registers gradnorm_toy_t2, gradnorm_toy_t10
from mtl_jax.data import qm9  # registers qm9_subset
from mtl_jax.data import custom  # register_csv / register_npz / register_conllu / config.custom_data
from mtl_jax.data import mixtures  # registers census_income_split

__all__ = [
    'CENSUS_TASKS', 'CensusIncome', 'DATASETS', 'DatasetSpec', 'LocalBuilder', 'check_columns',
    'eval_batches', 'first_rows', 'gather', 'get', 'load_columns', 'num_rows', 'prepare',
    'to_batch', 'train_iterator',
]
