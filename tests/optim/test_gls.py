import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings

from mtl_jax.optim.gls import gls
from tests.optim import helpers, weighting_checks

_weights = jax.jit(lambda losses: gls().loss_weights(None, losses))


def test_hand_worked_weights():
  # L = (1, 4): GM = 2, w_k = GM / (K L_k) = (1, 1/4).
  tx = gls()
  np.testing.assert_allclose(_weights(jnp.array([1.0, 4.0])), [1.0, 0.25], rtol=1e-6)
  grads = {'a': jnp.array([[1.0, 2.0], [4.0, -4.0]])}
  combined, _ = tx.update(grads, tx.init(None), None, losses=jnp.array([1.0, 4.0]))
  np.testing.assert_allclose(combined['a'], [2.0, 1.0], rtol=1e-6)
  # K = 3, L = (1, 8, 27): GM = 6, w = 6 / (3 L) = (2, 1/4, 2/27).
  np.testing.assert_allclose(_weights(jnp.array([1.0, 8.0, 27.0])),
                             [2.0, 0.25, 2.0 / 27.0], rtol=1e-5)


def test_update_is_the_gradient_of_the_geometric_mean():
  params, losses_fn = helpers.toy_model(3, seed=1)
  weighting_checks.assert_gradient_of(gls(), params, losses_fn,
                                      lambda p: jnp.prod(losses_fn(p)) ** (1.0 / 3.0))


def test_properties():
  rng = np.random.default_rng(0)
  for k in (1, 2, 5):
    losses = rng.uniform(0.01, 10.0, size=k).astype(np.float32)
    w = np.asarray(_weights(jnp.asarray(losses)), np.float64)
    # w_k L_k = GM / K for every task; the weights do not change when all losses are rescaled.
    gm = np.exp(np.mean(np.log(losses.astype(np.float64))))
    np.testing.assert_allclose(w * losses, gm / k, rtol=1e-5)
    w_scaled = np.asarray(_weights(jnp.asarray(losses * 1e6)), np.float64)
    np.testing.assert_allclose(w_scaled, w, rtol=1e-5)
  np.testing.assert_allclose(_weights(jnp.array([0.7])), [1.0])
  # Equal losses: the mean of the task gradients.
  np.testing.assert_allclose(_weights(jnp.full(4, 3.0)), 0.25, rtol=1e-6)
  # The product (1e-60) underflows float32; log space keeps the weights exact.
  np.testing.assert_allclose(_weights(jnp.array([1e-20, 1e-20, 1e-20])), 1 / 3, rtol=1e-5)


def test_absent_and_nonfinite_tasks_are_left_out():
  # L = (0, 1, 4): the geometric mean over the present tasks, GM = 2, K' = 2.
  np.testing.assert_allclose(_weights(jnp.array([0.0, 1.0, 4.0])), [0.0, 1.0, 0.25],
                             rtol=1e-6)
  np.testing.assert_array_equal(_weights(jnp.zeros(3)), [0.0, 0.0, 0.0])
  w = _weights(jnp.array([jnp.nan, 1.0, -2.0]))
  np.testing.assert_allclose(w, [0.0, 1.0, 0.0])


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(4, 3)
  w = helpers.assert_chain_matches_weights(gls(), grads, losses)
  gm = np.exp(np.mean(np.log(np.asarray(losses, np.float64))))
  np.testing.assert_allclose(w, gm / (3 * np.asarray(losses, np.float64)), rtol=1e-5)
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  helpers.assert_jit_traces_once(gls(), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(gls(), problems)
  tx = gls()
  assert tx.family == 'loss_weighting' and tx.modes[0] == 'weighted' and tx.weights_task_params


_finite = weighting_checks.FiniteChecker(lambda k: gls())


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems())
def test_degenerate_inputs_stay_finite(problem):
  _finite(*problem)
