"""A mesh over every device of every process; batches split along its `data` axis.

The train step runs under `jax.jit` with explicit shardings: state replicated, batch sharded on
`data`, state donated. (`jax.pmap` is in maintenance mode; mesh + jit is its successor.)
"""

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
  """A batch on the device as one [B, F] buffer per dtype, with the layout to unpack it in `jit`.

  Each host-to-device transfer has a fixed cost (50–130 µs on a loaded 2-core CPU) whatever the
  array's size, and a batch has a leaf per task label and mask: QM9's 12 tasks make 25 leaves,
  several times its train step. Concatenating the leaves of each dtype on the host (µs) and
  slicing them apart inside the compiled step (free: a slice along the feature axis of an array
  sharded on the batch axis stays on its device) makes that one transfer per dtype.

  The layout is the pytree's static part, so `jit` compiles once per layout, exactly as it would
  once per set of leaf shapes.
  """

  def __init__(self, buffers: tuple, layout: tuple):
    self.buffers = tuple(buffers)
    self.layout = layout  # (treedef, ((buffer, start, stop, trailing shape), ...) per leaf)

  def tree_flatten(self):
    return self.buffers, self.layout

  @classmethod
  def tree_unflatten(cls, layout, buffers):
    return cls(buffers, layout)

  def unpack(self) -> Any:
    treedef, slots = self.layout
    leaves = [self.buffers[b][:, start:stop].reshape(self.buffers[b].shape[:1] + trailing)
              for b, start, stop, trailing in slots]
    return jax.tree.unflatten(treedef, leaves)


def pack(local_batch: Any) -> tuple[list[np.ndarray], tuple]:
  """Host side of `PackedBatch`: the leaves of each dtype side by side as [B, F] arrays."""
  leaves, treedef = jax.tree.flatten(local_batch)
  leaves = [np.asarray(x) for x in leaves]
  if not leaves or any(x.ndim == 0 or x.shape[0] != leaves[0].shape[0] for x in leaves):
    raise ValueError('every leaf of a batch needs the same leading (batch) dimension; got shapes '
                     f'{[x.shape for x in leaves]}')
  groups: dict = {}  # dtype -> (its buffer's index, [B, F_i] columns, F so far)
  slots = []
  for x in leaves:
    group = groups.get(x.dtype)
    if group is None:
      group = groups[x.dtype] = [len(groups), [], 0]
    column = x.reshape(x.shape[0], -1)
    group[1].append(column)
    slots.append((group[0], group[2], group[2] + column.shape[1], x.shape[1:]))
    group[2] += column.shape[1]
  buffers = [np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
             for _, columns, _ in groups.values()]
  return buffers, (treedef, tuple(slots))


def put_batch(local_batch: Any, mesh: Mesh) -> PackedBatch:
  """Assembles each process's slice of the batch into global arrays sharded on `data`, packed
  into one transfer per dtype (`PackedBatch`); `jit_train_step` and `unpack` restore the tree."""
  sharding = data_sharded(mesh)
  buffers, layout = pack(local_batch)
  return PackedBatch([jax.make_array_from_process_local_data(sharding, b) for b in buffers], layout)


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
