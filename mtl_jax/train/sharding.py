"""A mesh over every device of every process; batches split along its `data` axis.

The train step runs under `jax.jit` with explicit shardings: state replicated, batch sharded on
`data`, state donated. (`jax.pmap` is in maintenance mode; mesh + jit is its successor.)
"""

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mtl_jax.errors import UserError

DATA_AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  """Before compiling: the global batch must split evenly over devices and processes."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise UserError(
        f'batch_size={batch_size} is not divisible by the {num_devices} devices of the mesh; '
        f'use a multiple of {num_devices}, e.g. --config.batch_size='
        f'{max(num_devices, batch_size // num_devices * num_devices)}')
  if batch_size % jax.process_count():
    raise UserError(f'batch_size={batch_size} is not divisible by the '
                    f'{jax.process_count()} processes')


@jax.tree_util.register_pytree_node_class
class PackedBatch:
  """A batch on the device as ONE uint8 [B, bytes] array, with the layout to unpack it in `jit`.

  Each host-to-device transfer has a fixed cost (0.1–1 ms on this loaded 2-core CPU) whatever the
  array's size, and a multi-task batch has two leaves per task (labels and mask): QM9's 12 tasks
  make 25, several times its train step. The host writes every leaf's bytes side by side (one
  copy, µs) and the compiled step takes them apart: a slice along the byte axis (no
  communication: the array is sharded on the batch axis) and a bitcast to the leaf's dtype.

  The layout is the pytree's static part, so `jit` compiles once per layout, exactly as it would
  once per set of leaf shapes.
  """

  def __init__(self, data: jax.Array, layout: tuple):
    self.data = data
    self.layout = layout  # (treedef, ((start, stop, dtype, trailing shape), ...) per leaf)

  def tree_flatten(self):
    return (self.data,), self.layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    return cls(children[0], layout)

  def unpack(self) -> Any:
    treedef, slots = self.layout
    batch = self.data.shape[0]
    leaves = []
    for start, stop, dtype, trailing in slots:
      raw = self.data[:, start:stop]
      if dtype == np.bool_:
        leaf = raw != 0
      elif dtype.itemsize == 1:
        leaf = jax.lax.bitcast_convert_type(raw, dtype)
      else:
        leaf = jax.lax.bitcast_convert_type(raw.reshape(batch, -1, dtype.itemsize), dtype)
      leaves.append(leaf.reshape((batch,) + trailing))
    return jax.tree.unflatten(treedef, leaves)


@functools.cache
def _canonical(dtype: np.dtype) -> np.dtype:
  """The dtype JAX gives an array of `dtype` (cached: this runs per leaf per batch, and both
  `canonicalize_dtype` and `np.dtype.name` are Python code)."""
  return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def pack(local_batch: Any) -> tuple[np.ndarray, tuple]:
  """Host side of `PackedBatch`: every leaf's bytes side by side, uint8 [B, total bytes].

  Leaves are first cast to the dtype JAX would give them (64-bit -> 32-bit unless x64 is on).
  """
  leaves, treedef = jax.tree.flatten(local_batch)
  leaves = [np.asarray(x) for x in leaves]
  if not leaves or any(x.ndim == 0 or x.shape[0] != leaves[0].shape[0] for x in leaves):
    raise ValueError('every leaf of a batch needs the same leading (batch) dimension; got shapes '
                     f'{[x.shape for x in leaves]}')
  batch = leaves[0].shape[0]
  columns, slots, offset = [], [], 0
  for x in leaves:
    dtype = _canonical(x.dtype)
    column = np.ascontiguousarray(x, dtype).reshape(batch, -1).view(np.uint8)
    columns.append(column)
    slots.append((offset, offset + column.shape[1], dtype, x.shape[1:]))
    offset += column.shape[1]
  data = np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
  return data, (treedef, tuple(slots))


def put_batch(local_batch: Any, mesh: Mesh) -> PackedBatch:
  """Assembles each process's slice of the batch into one global array sharded on `data`
  (`PackedBatch`: one transfer per batch); `jit_train_step` and `unpack` restore the tree."""
  data, layout = pack(local_batch)
  return PackedBatch(jax.make_array_from_process_local_data(data_sharded(mesh), data), layout)


def put_tree(local_batch: Any, mesh: Mesh) -> Any:
  """Like `put_batch` but one global array per leaf, the tree kept: for callers whose function
  takes the batch as it is (evaluation's `predict`), where a transfer per leaf does not matter."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def unpack(batch: Any) -> Any:
  """The batch tree from a `PackedBatch` (inside `jit`); any other tree is returned as it is."""
  return batch.unpack() if isinstance(batch, PackedBatch) else batch


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """The whole step as one program: state replicated and donated, batch on the data axis (a
  `PackedBatch` from `put_batch` or a tree of arrays)."""
  return jax.jit(lambda state, batch: train_step(state, unpack(batch)),
                 in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,))
