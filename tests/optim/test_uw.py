import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import uw
from mtl_jax.optim.uw import UWState
from tests.optim import helpers


def uw_objective(s, losses):
  return jnp.sum(jnp.exp(-s) * losses + s)


def test_initial_weights_and_combination():
  tx = uw(2, init_log_var=math.log(2.0))
  grads = {'a': jnp.array([[1.0, 2.0], [3.0, -1.0]])}
  state = tx.init(None)
  np.testing.assert_allclose(tx.loss_weights(state, jnp.ones(2)), [0.5, 0.5], rtol=1e-6)
  combined, _ = tx.update(grads, state, None, losses=jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(combined['a'], [2.0, 0.5], rtol=1e-6)


def test_first_step_moves_against_the_objective_gradient():
  # Adam's first step from zero moments is -lr * sign(grad) (bias-corrected m / sqrt(v) = +-1).
  lr = 1e-2
  tx = uw(3, learning_rate=lr)
  losses = jnp.array([2.0, 0.5, 1.0 + 1e-3])
  state = tx.advance(tx.init(None), losses, None)
  ds = np.asarray(jax.grad(uw_objective)(jnp.zeros(3), losses))  # = 1 - L at s = 0
  np.testing.assert_allclose(ds, [-1.0, 0.5, -1e-3], rtol=1e-4)
  np.testing.assert_allclose(state.log_vars, -lr * np.sign(ds), rtol=1e-4)
  w = np.asarray(tx.loss_weights(state, losses))
  # A loss above 1 lowers its weight, a loss below 1 raises it.
  assert w[0] < 1.0 and w[1] > 1.0 and w[2] < 1.0
  np.testing.assert_allclose(w, np.exp(lr * np.sign(ds)), rtol=1e-5)


def test_fixed_point_is_log_loss():
  losses = jnp.array([0.3, 2.0, 5.0])
  tx = uw(3, learning_rate=0.05)

  def body(state, _):
    return tx.advance(state, losses, None), None

  state, _ = jax.lax.scan(body, tx.init(None), None, length=3000)
  np.testing.assert_allclose(state.log_vars, np.log(np.asarray(losses)), atol=1e-2)
  # At the fixed point the weighted losses are 1 and d/ds of the objective vanishes.
  np.testing.assert_allclose(tx.loss_weights(state, losses) * losses, 1.0, atol=2e-2)
  assert np.all(np.abs(jax.grad(uw_objective)(state.log_vars, losses)) < 2e-2)


def test_zero_and_nonfinite_losses_leave_state():
  tx = uw(2, learning_rate=0.1)
  state = tx.advance(tx.init(None), jnp.array([2.0, 0.0]), None)
  assert state.log_vars[0] > 0 and state.log_vars[1] == 0
  after_nan = tx.advance(state, jnp.array([jnp.nan, 1.0]), None)
  for a, b in zip(jax.tree.leaves(after_nan), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_state_type_and_errors():
  assert isinstance(uw(2).init(None), UWState)
  with pytest.raises(UserError):
    uw(0)
  with pytest.raises(UserError):
    uw(2, learning_rate=0.0)
  grads, losses = helpers.random_problem(0, 3)
  tx = uw(2)
  with pytest.raises(UserError, match='num_tasks=2'):
    tx.update(grads, tx.init(None), losses=losses)


def test_chain_weighted_mode_jit_and_state():
  grads, losses = helpers.random_problem(2, 3)
  tx = uw(3, init_log_var=0.3)
  w = helpers.assert_chain_matches_weights(tx, grads, losses)
  np.testing.assert_allclose(w, np.exp(-0.3) * np.ones(3), rtol=1e-6)
  params, losses_fn = helpers.toy_model(3)
  helpers.assert_weighted_mode_consistent(tx, params, losses_fn)
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  helpers.assert_jit_traces_once(uw(3), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(uw(3, learning_rate=0.1), problems)
