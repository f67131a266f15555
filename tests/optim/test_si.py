import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.si import si
from tests.optim import helpers, weighting_checks

_weights = jax.jit(lambda losses: si().loss_weights(None, losses))


def test_hand_worked_weights():
  np.testing.assert_allclose(_weights(jnp.array([0.5, 2.0, 4.0])), [2.0, 0.5, 0.25], rtol=1e-6)
  tx = si()
  grads = {'a': jnp.array([[1.0, 2.0], [4.0, -4.0]])}
  combined, _ = tx.update(grads, tx.init(None), None, losses=jnp.array([0.5, 4.0]))
  np.testing.assert_allclose(combined['a'], [3.0, 3.0], rtol=1e-6)


def test_update_is_the_gradient_of_the_sum_of_log_losses():
  params, losses_fn = helpers.toy_model(3, seed=2)
  weighting_checks.assert_gradient_of(si(), params, losses_fn,
                                      lambda p: jnp.sum(jnp.log(losses_fn(p))))


def test_rescaling_a_task_loss_does_not_change_the_update():
  params, losses_fn = helpers.toy_model(3, seed=3)
  scales = jnp.array([1e-3, 1.0, 50.0])
  tx = si()

  @jax.jit
  def update(params, scales):
    fn = lambda p: scales * losses_fn(p)
    return tx.update(jax.jacrev(fn)(params), tx.init(params), params, losses=fn(params))[0]

  np.testing.assert_allclose(helpers.flat(update(params, scales)),
                             helpers.flat(update(params, jnp.ones(3))), rtol=1e-4, atol=1e-6)


def test_absent_tiny_and_nonfinite_losses():
  np.testing.assert_allclose(_weights(jnp.array([0.0, 1e-12, 2.0])), [0.0, 1e8, 0.5], rtol=1e-6)
  np.testing.assert_allclose(_weights(jnp.array([jnp.inf, -1.0, jnp.nan])), [0.0, 0.0, 0.0])
  np.testing.assert_allclose(si(min_loss=1e-3).loss_weights(None, jnp.array([1e-5, 0.5])),
                             [1e3, 2.0], rtol=1e-6)
  with pytest.raises(UserError):
    si(min_loss=0.0)


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(5, 3)
  w = helpers.assert_chain_matches_weights(si(), grads, losses)
  np.testing.assert_allclose(w, 1.0 / np.asarray(losses, np.float64), rtol=1e-6)
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  helpers.assert_jit_traces_once(si(), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(si(), problems)
  tx = si()
  assert tx.family == 'loss_weighting' and tx.modes[0] == 'weighted' and tx.weights_task_params


_finite = weighting_checks.FiniteChecker(lambda k: si())


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems())
def test_degenerate_inputs_stay_finite(problem):
  _finite(*problem)
