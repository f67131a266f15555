import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import fairgrad
from mtl_jax.optim.fairgrad import FairGradState
from tests.optim import conflict_checks as cc
from tests.optim.test_nash_mtl import UNCLIPPED as NASH

RUN = cc.Runners(fairgrad)  # alpha = 1; inputs K x 4


def solved(jac, alpha):
  jac = np.asarray(jac, np.float64)
  w, ok = cc.solve_power_system(jnp.asarray(jac @ jac.T, jnp.float32), 1.0 / alpha,
                                jnp.ones(len(jac), jnp.float32), 20)
  return np.asarray(w, np.float64), bool(ok)


@pytest.mark.parametrize('alpha', [0.5, 2.0, 5.0])
def test_matches_least_squares_reference(alpha):
  rng = np.random.default_rng(int(alpha * 10))
  for _ in range(4):
    jac = cc.rounded(cc.random_jacobian(rng, 3, 4))
    gram = jac @ jac.T
    w, ok = solved(jac, alpha)
    assert ok and np.all(w > 0)
    # G w = w^(-1/alpha) (float64 check).
    assert np.max(np.abs(w ** (1 / alpha) * (gram @ w) - 1)) < 1e-3
    expected, residual = cc.power_system_reference(gram, 1.0 / alpha)
    assert residual < 1e-9
    np.testing.assert_allclose(w, expected, rtol=2e-3)


def test_small_alpha_with_a_cancelling_improvement_is_solved():
  # alpha = 0.1: task 3's improvement (G w)_3 = w_3^-10 ~ 1e-6 is far below the size of the terms
  # it cancels from, so its float32 value is mostly round-off and the plain residual
  # |w^10 (G w) - 1| is ~0.1 although w is accurate: the solve must not count that as a failure.
  jac = np.array([[0.3, -1.3, 2.4, 0.0], [2.4, -0.9, -0.6, 2.6], [-1.1, 0.4, -0.3, -0.8]])
  w, ok = solved(jac, 0.1)
  expected, residual = cc.power_system_reference(jac @ jac.T, 10.0)
  assert residual < 1e-9 and ok
  np.testing.assert_allclose(w, expected, rtol=1e-4)


def test_alpha_one_is_nash_mtl():
  rng = np.random.default_rng(1)
  for _ in range(3):
    jac = cc.random_jacobian(rng, 3, 4)
    w, _ = RUN[3].weights(jac)
    np.testing.assert_allclose(w, NASH[3].weights(jac)[0], rtol=1e-5)
    out, _ = RUN[3](jac)
    np.testing.assert_allclose(out, w @ cc.rounded(jac), rtol=1e-5, atol=1e-6)


def test_hand_worked_orthogonal():
  # G = diag(n_k^2): n_k^2 w_k = w_k^(-p) (p = 1 / alpha), so w_k = n_k^(-2 / (1 + p)).
  jac = np.array([[2.0, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 0, 3.0]])
  norms = np.array([2.0, 0.5, 3.0])
  for alpha in (1.0, 2.0):
    w, ok = solved(jac, alpha)
    assert ok
    np.testing.assert_allclose(w, norms ** (-2 / (1 + 1 / alpha)), rtol=1e-5)
  np.testing.assert_allclose(RUN[3].weights(jac)[0], 1 / norms, rtol=1e-5)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_law(scale):
  # w(s J) = s^(-2 alpha / (1 + alpha)) w(J): G scales by s^2.
  jac = cc.random_jacobian(np.random.default_rng(4), 3, 4)
  for alpha in (1.0, 2.0):
    w, _ = solved(jac, alpha)
    w_s, _ = solved(jac * scale, alpha)
    np.testing.assert_allclose(w_s * scale ** (2 * alpha / (1 + alpha)), w, rtol=1e-4)
  np.testing.assert_allclose(RUN[3].weights(jac * scale)[0] * scale, RUN[3].weights(jac)[0],
                             rtol=1e-4)


def test_no_positive_solution_keeps_the_previous_weights():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  h = np.array([2.0, 1.0, 0.0, 0.0])
  w, state = RUN[2].weights(np.stack([g, -g]))
  np.testing.assert_array_equal(w, [1.0, 1.0])  # first step: uniform
  w1, state = RUN[2].weights(np.stack([g, h]))
  w2, state2 = RUN[2].weights(np.stack([g, -2 * g]), state)
  np.testing.assert_array_equal(w2, w1)
  np.testing.assert_array_equal(np.asarray(state2.weights), w1.astype(np.float32))


def test_robust_to_degenerate_inputs():
  cc.check_robust(RUN)


def test_metadata_errors_chain_jit_and_state():
  tx = fairgrad(3, alpha=2.0)
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and not tx.weights_task_params
  state = tx.init(None)
  assert isinstance(state, FairGradState) and state.weights.dtype == jnp.float32
  for bad in ({'alpha': 0.0}, {'alpha': -1.0}, {'alpha': float('inf')}, {'alpha': 'x'},
              {'num_iters': 0}):
    with pytest.raises(UserError):
      fairgrad(3, **bad)
  cc.check_weighted_sum(RUN[3], cc.random_jacobian(np.random.default_rng(0), 3, 4))
  cc.check_chain_jit_and_state(tx, 3)
