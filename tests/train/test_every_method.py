"""Every registered method inside the real train step: each of its modes runs and is finite, the
modes it does not admit are refused before compiling, and its state survives an orbax checkpoint
so that the resumed run is bitwise the uninterrupted one (checked in the method's first mode: the
state's structure does not depend on the mode)."""

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mtl_jax import optim
from mtl_jax.optim import base as optim_base
from mtl_jax.errors import UserError
from mtl_jax.train import checkpoint as checkpoint_lib
from mtl_jax.train import step as step_lib
from tests import helpers

TASKS = helpers.TASKS
K = len(TASKS)
# Hyperparameters a method cannot default.
REQUIRED = {'static': {'weights': (1.0, 2.0, 0.5, 1.0)},
            'task_sampling': {'strategy': 'uniform'}}


def _build(name):
  return optim.get(name, num_tasks=K, **REQUIRED.get(name, {}))


def _cases():
  for name in optim.METHODS.names():
    for mode in optim_base.MODES:
      yield name, mode


@pytest.mark.parametrize('name,mode', list(_cases()))
def test_method_in_the_train_step(name, mode, tmp_path):
  method = _build(name)
  model = helpers.model('hard')
  example = helpers.batch()
  tx = optax.adam(1e-2)
  if mode not in method.modes:
    with pytest.raises(UserError, match=f"cannot run in '{mode}' mode"):
      step_lib.make_train_step(model, TASKS, method, tx, mode)
    return
  train_step = jax.jit(step_lib.make_train_step(model, TASKS, method, tx, mode))
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  batches = [helpers.batch(seed=s) for s in range(4)]
  for batch in batches[:2]:
    state, metrics = train_step(state, batch)
    assert bool(metrics['finite']), (name, mode)
  assert int(state.skipped_steps) == 0
  if mode != next(m for m in optim_base.MODES if m in method.modes):
    return

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / 'state', state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / 'state', checkpoint_lib.abstract(state, None))
  uninterrupted, resumed = state, restored
  for batch in batches[2:]:
    uninterrupted, _ = train_step(uninterrupted, batch)
    resumed, _ = train_step(resumed, batch)
  for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
