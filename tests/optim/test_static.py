import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import static
from tests.optim import helpers


def test_hand_worked_weighted_sum():
  grads = {'a': jnp.array([[1.0, 2.0], [3.0, -1.0]])}
  combined, _ = helpers.chain_update(static([0.5, 2.0]), grads, jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(combined['a'], [0.5 + 6.0, 1.0 - 2.0])


def test_chain_and_weighted_mode():
  grads, losses = helpers.random_problem(1, 3)
  w = helpers.assert_chain_matches_weights(static([0.1, 1.0, 3.0]), grads, losses)
  np.testing.assert_allclose(w, [0.1, 1.0, 3.0], rtol=1e-7)
  params, losses_fn = helpers.toy_model(3)
  helpers.assert_weighted_mode_consistent(static([0.1, 1.0, 3.0]), params, losses_fn)


def test_wrong_number_of_weights():
  grads, losses = helpers.random_problem(0, 3)
  tx = static([1.0, 2.0])
  with pytest.raises(UserError, match='2 weights given for 3 tasks'):
    tx.update(grads, tx.init(None), losses=losses)


@pytest.mark.parametrize('bad', [[], [1.0, float('nan')], 'abc', [[1.0, 2.0]]])
def test_bad_weights(bad):
  with pytest.raises(UserError):
    static(bad)


def test_jit_and_state():
  problems = [helpers.random_problem(s, 2) for s in range(4)]
  helpers.assert_jit_traces_once(static([1.0, 0.5]), problems)
  helpers.assert_state_roundtrips(static([1.0, 0.5]), problems)
