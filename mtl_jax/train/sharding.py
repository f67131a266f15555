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


def put_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's slice of the batch into one global array sharded on `data`."""
  sharding = data_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def jit_train_step(train_step: Callable, mesh: Mesh) -> Callable:
  """The whole step as one program: state replicated and donated, batch on the data axis."""
  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), data_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,))
