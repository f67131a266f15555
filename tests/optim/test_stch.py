import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.stch import stch
from tests.optim import helpers, weighting_checks


def stch_objective(losses, mu, lam, ideal):
  """The paper's g_mu(x | lambda) = mu log sum_k exp(lambda_k (L_k - z*_k) / mu)."""
  return mu * jnp.log(jnp.sum(jnp.exp(lam * (losses - ideal) / mu)))


def test_hand_worked_two_tasks():
  # lambda = (1/2, 1/2), mu = 1, L = (1, 3): softmax((0.5, 1.5)) = (1, e) / (1 + e).
  w = np.asarray(stch(2).loss_weights(None, jnp.array([1.0, 3.0])))
  e = math.e
  np.testing.assert_allclose(w, [0.5 / (1 + e), 0.5 * e / (1 + e)], rtol=1e-6)
  # A preference (1, 3) is normalised to (1/4, 3/4); the ideal point shifts the losses.
  w = np.asarray(stch(2, mu=0.5, preference=(1.0, 3.0), ideal_point=(1.0, 2.0))
                 .loss_weights(None, jnp.array([3.0, 2.0])))
  a, b = math.exp(0.25 * 2.0 / 0.5), math.exp(0.75 * 0.0 / 0.5)
  np.testing.assert_allclose(w, [0.25 * a / (a + b), 0.75 * b / (a + b)], rtol=1e-6)


def test_weights_are_the_gradient_of_the_objective():
  rng = np.random.default_rng(0)
  for k, mu in ((2, 0.1), (3, 1.0), (5, 7.0)):
    losses = jnp.asarray(rng.uniform(0.0, 4.0, size=k), jnp.float32)
    lam = rng.uniform(0.1, 1.0, size=k)
    ideal = rng.uniform(-0.5, 0.5, size=k)
    tx = stch(k, mu=mu, preference=lam, ideal_point=ideal)
    lam = lam / lam.sum()
    expected = jax.grad(stch_objective)(losses, mu, jnp.asarray(lam, jnp.float32),
                                        jnp.asarray(ideal, jnp.float32))
    np.testing.assert_allclose(jax.jit(tx.loss_weights)(None, losses), expected, rtol=1e-5,
                               atol=1e-7)


def test_update_is_the_gradient_of_the_objective():
  params, losses_fn = helpers.toy_model(3, seed=4)
  lam = jnp.array([0.2, 0.3, 0.5])
  tx = stch(3, mu=0.3, preference=lam)
  weighting_checks.assert_gradient_of(
      tx, params, losses_fn, lambda p: stch_objective(losses_fn(p), 0.3, lam, 0.0))


def test_limits_of_mu():
  losses = jnp.array([1.0, 2.0, 1.5])
  lam = np.array([0.5, 0.2, 0.3])
  # mu -> 0: the Tchebycheff scalarisation, all weight on argmax_k lambda_k L_k (task 0: 0.5).
  w = np.asarray(stch(3, mu=1e-4, preference=lam).loss_weights(None, losses))
  np.testing.assert_allclose(w, [0.5, 0.0, 0.0], atol=1e-6)
  # mu -> infinity: w -> lambda / K.
  w = np.asarray(stch(3, mu=1e6, preference=lam).loss_weights(None, losses))
  np.testing.assert_allclose(w, lam / 3, rtol=1e-5)
  # Uniform preference: a common shift of the ideal point changes nothing; the weights are
  # 1/K times a convex combination.
  w0 = np.asarray(stch(3).loss_weights(None, losses))
  w1 = np.asarray(stch(3, ideal_point=-2.0).loss_weights(None, losses))
  np.testing.assert_allclose(w0, w1, rtol=1e-6)
  np.testing.assert_allclose(w0.sum(), 1.0 / 3.0, rtol=1e-6)
  assert w0[1] > w0[2] > w0[0]  # the larger the loss, the larger the weight


def test_large_and_nonfinite_losses():
  w = np.asarray(stch(2, mu=0.01).loss_weights(None, jnp.array([1e8, 1e8 - 1e3])))
  np.testing.assert_allclose(w, [0.5, 0.0], atol=1e-6)
  w = np.asarray(stch(3).loss_weights(None, jnp.array([jnp.nan, 1.0, jnp.inf])))
  assert np.all(np.isfinite(w))


def test_errors():
  with pytest.raises(UserError):
    stch(2, mu=0.0)
  with pytest.raises(UserError, match='preference'):
    stch(2, preference=(1.0, -1.0))
  with pytest.raises(UserError, match='preference'):
    stch(2, preference=(1.0, 1.0, 1.0))
  with pytest.raises(UserError, match='preference'):
    stch(2, preference=(0.0, 0.0))
  with pytest.raises(UserError, match='ideal_point'):
    stch(2, ideal_point=(0.0, 0.0, 0.0))
  with pytest.raises(UserError, match='num_tasks=2'):
    stch(2).loss_weights(None, jnp.ones(3))


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(6, 3)
  helpers.assert_chain_matches_weights(stch(3, mu=0.5), grads, losses)
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  helpers.assert_jit_traces_once(stch(3), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(stch(3), problems)
  tx = stch(3)
  assert tx.family == 'loss_weighting' and tx.modes[0] == 'weighted' and tx.weights_task_params


_finite = weighting_checks.FiniteChecker(lambda k: stch(k, mu=0.1))


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems())
def test_degenerate_inputs_stay_finite(problem):
  _finite(*problem)
