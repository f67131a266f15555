import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import rlw
from mtl_jax.optim.rlw import RLWState
from tests.optim import helpers


NUM_TASKS = 3


def weight_sequence(tx, num_steps, state=None):
  """The weights of `num_steps` consecutive updates ([num_steps, K]) and the final state."""
  state = tx.init(None) if state is None else state
  losses = jnp.ones((NUM_TASKS,))

  def body(state, _):
    w = tx.loss_weights(state, losses)
    return tx.advance(state, losses, w), w

  state, ws = jax.lax.scan(body, state, None, length=num_steps)
  return np.asarray(ws), state


def test_same_seed_same_weights_and_resume():
  a, _ = weight_sequence(rlw(NUM_TASKS, seed=7), 20)
  b, _ = weight_sequence(rlw(NUM_TASKS, seed=7), 20)
  c, _ = weight_sequence(rlw(NUM_TASKS, seed=8), 20)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert len({tuple(row) for row in a}) == 20  # fresh weights at every step
  # Stopping after 8 steps and continuing from the state gives the same sequence.
  first, state = weight_sequence(rlw(NUM_TASKS, seed=7), 8)
  rest, _ = weight_sequence(rlw(NUM_TASKS, seed=7), 12, state=state)
  np.testing.assert_array_equal(np.concatenate([first, rest]), a)


def test_weights_are_k_softmax_of_standard_normal():
  n = 4000
  ws, _ = weight_sequence(rlw(NUM_TASKS, seed=0), n)
  assert np.all(ws > 0)
  np.testing.assert_allclose(ws.sum(axis=1), NUM_TASKS, rtol=1e-5)
  # log w = z - logsumexp(z) + log K, so centred log-weights are centred z: each component has
  # variance 1 - 1/K and mean 0 when z ~ N(0, I).
  centred = np.log(ws) - np.log(ws).mean(axis=1, keepdims=True)
  var = centred.var(axis=0)
  expected_var = 1 - 1 / NUM_TASKS
  # The sample variance of n Gaussians has std sigma^2 sqrt(2 / (n - 1)); allow 4 of those.
  assert np.all(np.abs(var - expected_var) < 4 * expected_var * np.sqrt(2 / (n - 1))), var
  # E[w_k] = 1 by symmetry; the std of the mean is std(w) / sqrt(n).
  assert np.all(np.abs(ws.mean(axis=0) - 1) < 4 * ws.std(axis=0) / np.sqrt(n))


def test_state_type_and_errors():
  state = rlw(2, seed=3).init(None)
  assert isinstance(state, RLWState) and state.key.dtype == jnp.uint32
  with pytest.raises(UserError):
    rlw(2, seed=1.5)
  with pytest.raises(UserError):
    rlw(0)


def test_chain_weighted_mode_jit_and_state():
  grads, losses = helpers.random_problem(4, 3)
  w = helpers.assert_chain_matches_weights(rlw(3), grads, losses)
  assert not np.allclose(w, 1.0)
  params, losses_fn = helpers.toy_model(3)
  helpers.assert_weighted_mode_consistent(rlw(3), params, losses_fn)
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  helpers.assert_jit_traces_once(rlw(3), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(rlw(3), problems)
