"""The meta-training state, and the meta-step compiled over the mesh with the task axis sharded.

A meta-batch is a pytree whose every leaf has a leading task axis of size T (T tasks' support
or query sets). The meta-step runs under `jax.jit` with explicit shardings: the state replicated
and donated, the meta-batch split along the mesh's `data` axis (T must divide evenly), so each
device adapts its own tasks and the mean over tasks is the one cross-device reduction
(`mtl_jax/train/sharding.py` does the same for examples).
"""

from typing import Any, Callable, NamedTuple

import jax
import optax
from jax.sharding import Mesh

from mtl_jax.errors import UserError
from mtl_jax.train import sharding

PyTree = Any


class MetaState(NamedTuple):
  """θ and the outer optimiser's state (a tuple: `params, opt_state = state` works)."""

  params: PyTree
  opt_state: optax.OptState


def init_state(params: PyTree, optimizer: optax.GradientTransformation) -> MetaState:
  # Copies, so that donating the state never deletes the caller's arrays.
  params = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), params)
  return MetaState(params, optimizer.init(params))


def apply_outer(optimizer: optax.GradientTransformation, state: MetaState,
                grads: PyTree) -> MetaState:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return MetaState(optax.apply_updates(state.params, updates), opt_state)


def num_tasks(meta_batch: PyTree) -> int:
  sizes = {leaf.shape[0] for leaf in jax.tree.leaves(meta_batch)}
  if len(sizes) != 1:
    raise UserError(f'every leaf of a meta-batch needs the same leading task axis; got sizes '
                    f'{sorted(sizes)}')
  return sizes.pop()


def check_meta_batch(meta_batch: PyTree, mesh: Mesh) -> None:
  """Before compiling: the tasks of a meta-batch must split evenly over the mesh's devices."""
  tasks, devices = num_tasks(meta_batch), mesh.devices.size
  if tasks % devices:
    raise UserError(f'a meta-batch of {tasks} tasks does not split over the {devices} devices '
                    f'of the mesh; use a multiple of {devices} tasks')


def put_tasks(meta_batch: PyTree, mesh: Mesh) -> PyTree:
  """Each process's tasks as global arrays sharded along the task axis (`data`)."""
  check_meta_batch(meta_batch, mesh)
  # One global array per leaf (not `put_batch`'s packed bytes): a meta-batch is a few leaves,
  # transferred once per meta-step, and the step vmaps over their task axis as they are.
  return sharding.put_tree(meta_batch, mesh)


def jit_meta_step(meta_step: Callable, mesh: Mesh, num_batches: int = 2) -> Callable:
  """`meta_step(state, *meta_batches) -> (state, metrics)` as one program: the state replicated
  and donated, each of the `num_batches` meta-batches (support, query) sharded on tasks."""
  return jax.jit(meta_step,
                 in_shardings=(sharding.replicated(mesh),)
                 + (sharding.data_sharded(mesh),) * num_batches,
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=(0,))
