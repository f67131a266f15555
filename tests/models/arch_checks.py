"""The contract every architecture meets (issue 4): its tests call these on their own models.

* `check_partition`: every trainable leaf is under `shared`, `tasks/<name>` or a declared group.
* `check_task_isolation`: task k's loss gives exactly zero gradient to every other task's params.
* `check_train_steps`: the real step, jitted over the 8-device mesh, runs each (method, mode) case
  finite and moves the parameters; "rep" is refused with a clear error when the model has no single
  shared representation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

# One method per gradient mode: what differs between architectures inside the step is only which
# parameters are differentiated per task (the mode); every method in every mode runs on `hard` in
# tests/train/test_every_method.py, and methods meet the model only through the mode.
REPRESENTATIVE_CASES = (('ew', 'weighted'), ('mgda', 'jacobian'), ('mgda', 'rep'))


def check_partition(model, variables, task_names) -> None:
  params = variables['params']
  assert set(params) == set(model.param_groups), (set(params), model.param_groups)
  assert set(model.param_groups.values()) <= {'shared', 'tasks'}
  assert set(params['tasks']) == set(task_names)
  for name in task_names:
    assert jax.tree.leaves(params['tasks'][name]), f'task {name} has no parameters'


def _task_grads(model, tasks, variables, example, k):
  def loss(params):
    outputs = model.apply({**variables, 'params': params}, example['inputs'])
    return step_lib.task_losses(tasks, outputs, example)[k]
  return jax.grad(loss)(variables['params'])


def check_task_isolation(model, tasks, variables, example) -> None:
  """Task k's loss moves its own head (and shared params), never another task's."""
  for k, task in enumerate(tasks):
    grads = _task_grads(model, tasks, variables, example, k)
    for other in tasks:
      norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads['tasks'][other.name]))
      if other.name == task.name:
        assert norm > 0, f'task {task.name} gives no gradient to its own parameters'
      else:
        assert norm == 0.0, f'task {task.name} moves task {other.name}\'s parameters ({norm})'


def check_train_steps(model, tasks, example, cases=REPRESENTATIVE_CASES, steps=2) -> None:
  """Runs the real jitted step on the mesh of all (8 fake) devices for each (method, mode)."""
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  tx = optax.adam(1e-2)
  for name, mode in cases:
    method = optim.get(name, num_tasks=len(tasks))
    if mode == 'rep' and not model.has_shared_representation:
      with pytest.raises(UserError, match='shared representation'):
        step_lib.resolve_mode(mode, method, model)
      continue
    if mode != 'weighted' and not model.has_shared_parameters:
      with pytest.raises(UserError, match='no shared parameters'):
        step_lib.resolve_mode(mode, method, model)
      continue
    step_lib.resolve_mode(mode, method, model)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(model, tasks, method, tx, mode), mesh)
    state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
    before = jax.tree.map(np.asarray, state.params)
    state = sharding.put_replicated(state, mesh)
    for _ in range(steps):
      state, metrics = train_step(state, sharding.put_batch(example, mesh))
      assert bool(metrics['finite']), (name, mode)
    assert int(state.skipped_steps) == 0, (name, mode)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.params, before)
    assert all(jax.tree.leaves(moved['tasks'])), (name, mode, 'some task parameters did not move')
