import math

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import dwa
from mtl_jax.optim.dwa import DWAState
from tests.optim import helpers


def run(tx, loss_seq):
  """Weights used at each update, for a sequence of loss vectors."""
  state = tx.init(None)
  weights = []
  for losses in loss_seq:
    losses = jnp.asarray(losses, jnp.float32)
    w = tx.loss_weights(state, losses)
    weights.append(np.asarray(w))
    state = tx.advance(state, losses, w)
  return weights, state


def test_hand_computed_weights():
  l1, l2, l3, l4 = [1.0, 2.0], [0.5, 1.5], [0.4, 1.5], [0.2, 1.0]
  weights, _ = run(dwa(2, temperature=2.0), [l1, l2, l3, l4])
  np.testing.assert_array_equal(weights[0], [1.0, 1.0])
  np.testing.assert_array_equal(weights[1], [1.0, 1.0])
  # Step 3: r = L(2) / L(1) = [0.5, 0.75]; w = 2 softmax(r / 2).
  e1, e2 = math.exp(0.25), math.exp(0.375)
  np.testing.assert_allclose(weights[2], [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)
  # Step 4: r = L(3) / L(2) = [0.8, 1.0].
  e1, e2 = math.exp(0.4), math.exp(0.5)
  np.testing.assert_allclose(weights[3], [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)


def test_three_tasks_and_combination_at_step_three():
  tx = dwa(3, temperature=1.0)
  _, state = run(tx, [[1.0, 1.0, 4.0], [0.5, 1.0, 2.0]])
  r = np.array([0.5, 1.0, 0.5])
  expected_w = 3 * np.exp(r) / np.exp(r).sum()
  grads = {'a': jnp.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])}
  combined, _ = tx.update(grads, state, None, losses=jnp.ones(3))
  np.testing.assert_allclose(combined['a'], expected_w @ np.array([[1, 0], [0, 1], [2, 2]]),
                             rtol=1e-6)


def test_high_temperature_and_guards():
  weights, _ = run(dwa(2, temperature=1e6), [[1.0, 2.0], [0.1, 10.0], [1.0, 1.0]])
  np.testing.assert_allclose(weights[2], [1.0, 1.0], atol=1e-5)
  # A zero loss two steps back (absent task) gives r = 1, never a NaN.
  weights, state = run(dwa(2), [[0.0, 1.0], [1.0, 0.5], [1.0, 1.0]])
  e1, e2 = math.exp(0.5), math.exp(0.25)
  np.testing.assert_allclose(weights[2], [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)], rtol=1e-6)
  # A non-finite loss leaves the state as it was.
  after = dwa(2).advance(state, jnp.array([jnp.inf, 1.0]), None)
  for a, b in zip(after, state):
    np.testing.assert_array_equal(a, b)
  assert isinstance(state, DWAState) and int(state.count) == 2


def test_errors():
  with pytest.raises(UserError):
    dwa(2, temperature=0.0)
  with pytest.raises(UserError):
    dwa(-1)


def test_chain_weighted_mode_jit_and_state():
  grads, losses = helpers.random_problem(3, 3)
  helpers.assert_chain_matches_weights(dwa(3), grads, losses)
  params, losses_fn = helpers.toy_model(3)
  tx = dwa(3)
  _, state = run(tx, [[1.0, 2.0, 3.0], [0.5, 2.5, 3.0]])
  helpers.assert_weighted_mode_consistent(tx, params, losses_fn, state=state)
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  helpers.assert_jit_traces_once(dwa(3), problems)
  helpers.assert_state_roundtrips(dwa(3), problems, num_before=2)
