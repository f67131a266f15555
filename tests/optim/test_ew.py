import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import ew
from tests.optim import helpers


def test_hand_worked_sum():
  grads = {'a': jnp.array([[1.0, 2.0], [3.0, -1.0]]), 'b': jnp.array([[0.5], [0.25]])}
  combined, _ = helpers.chain_update(ew(), grads, jnp.array([1.0, 2.0]))
  np.testing.assert_allclose(combined['a'], [4.0, 1.0])
  np.testing.assert_allclose(combined['b'], [0.75])


def test_weights_are_one_and_metadata():
  tx = ew()
  np.testing.assert_array_equal(tx.loss_weights(tx.init(None), jnp.ones(4)), np.ones(4))
  assert tx.name == 'ew' and tx.family == 'loss_weighting' and 'weighted' in tx.modes


def test_chain_matches_weights():
  grads, losses = helpers.random_problem(0, 3)
  w = helpers.assert_chain_matches_weights(ew(), grads, losses)
  np.testing.assert_array_equal(w, np.ones(3))


def test_weighted_mode_consistent():
  params, losses_fn = helpers.toy_model(3)
  helpers.assert_weighted_mode_consistent(ew(), params, losses_fn)


def test_missing_losses_is_a_user_error():
  grads, _ = helpers.random_problem(0, 2)
  tx = ew()
  with pytest.raises(UserError, match='losses'):
    tx.update(grads, tx.init(None))


def test_jit_and_state():
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  helpers.assert_jit_traces_once(ew(), problems)
  helpers.assert_state_roundtrips(ew(), problems)
