import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import nash_mtl
from mtl_jax.optim.nash_mtl import NashMTLState
from tests.optim import conflict_checks as cc

UNCLIPPED = cc.Runners(lambda k: nash_mtl(k, max_norm=0.0))  # inputs K x 4
CLIPPED = cc.Runners(nash_mtl)  # the default max_norm = 1


def solved(jac):
  """(alpha, ok) from the solver for the Gramian of `jac`, float64."""
  jac = np.asarray(jac, np.float64)
  alpha, ok = cc.solve_power_system(jnp.asarray(jac @ jac.T, jnp.float32), 1.0,
                                    jnp.ones(len(jac), jnp.float32), 20)
  return np.asarray(alpha, np.float64), bool(ok)


@pytest.mark.parametrize('num_tasks', [2, 3, 5])
def test_solves_the_bargaining_system(num_tasks):
  rng = np.random.default_rng(num_tasks)
  for _ in range(5):
    jac = cc.rounded(cc.random_jacobian(rng, num_tasks, 2 * num_tasks))
    gram = jac @ jac.T
    alpha, ok = solved(jac)
    assert ok and np.all(alpha > 0)
    # G alpha = 1 / alpha, i.e. alpha_k <g_k, d> = 1 (float64 check of the float32 solve).
    assert np.max(np.abs(alpha * (gram @ alpha) - 1)) < 1e-3
    expected, residual = cc.power_system_reference(gram, 1.0)
    assert residual < 1e-9
    np.testing.assert_allclose(alpha, expected, rtol=1e-3)
    # ||d||^2 = alpha^T G alpha = K at the solution.
    np.testing.assert_allclose(alpha @ gram @ alpha, num_tasks, rtol=1e-3)


def test_transform_weights_are_the_solution_and_the_default_clips_to_unit_norm():
  rng = np.random.default_rng(1)
  jac = cc.rounded(cc.random_jacobian(rng, 3, 4))
  alpha, _ = solved(jac)
  w, state = UNCLIPPED[3].weights(jac)
  np.testing.assert_allclose(w, alpha, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(state.alpha), alpha, rtol=1e-6)
  out, state = CLIPPED[3](jac)
  np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-4)  # sqrt(3) > max_norm = 1
  np.testing.assert_allclose(out, alpha @ jac / np.sqrt(alpha @ jac @ jac.T @ alpha), rtol=1e-4,
                             atol=1e-6)
  # The state keeps the unclipped solution.
  np.testing.assert_allclose(np.asarray(state.alpha), alpha, rtol=1e-6)
  assert int(state.step) == 1


def test_hand_worked_orthogonal():
  # G = diag(a^2, b^2): alpha_k = 1 / ||g_k||, d = e1 + e2 (norm sqrt 2), clipped to unit norm.
  jac = np.array([[2.0, 0, 0, 0], [0, 0.5, 0, 0]])
  w, _ = UNCLIPPED[2].weights(jac)
  np.testing.assert_allclose(w, [0.5, 2.0], rtol=1e-5)
  np.testing.assert_allclose(CLIPPED[2](jac)[0], np.array([1, 1, 0, 0]) / np.sqrt(2), rtol=1e-5)
  # K = 1: alpha = 1 / ||g||, the update is the unit vector along g.
  g = np.array([[3.0, 0.0, 4.0, 0.0]])
  np.testing.assert_allclose(CLIPPED[1](g)[0], g[0] / 5, rtol=1e-5)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_equivariance(scale):
  # alpha(s J) = alpha(J) / s (G scales by s^2); the clipped update is scale-free.
  jac = cc.random_jacobian(np.random.default_rng(4), 3, 4)
  w, _ = UNCLIPPED[3].weights(jac)
  w_s, _ = UNCLIPPED[3].weights(jac * scale)
  np.testing.assert_allclose(w_s * scale, w, rtol=1e-4)
  np.testing.assert_allclose(CLIPPED[3](jac * scale)[0], CLIPPED[3](jac)[0], rtol=1e-4,
                             atol=1e-6)


def test_warm_start_gives_the_same_solution():
  rng = np.random.default_rng(6)
  jac_a, jac_b = (cc.random_jacobian(rng, 3, 4) for _ in range(2))
  _, state = UNCLIPPED[3].weights(jac_a)
  warm, _ = UNCLIPPED[3].weights(jac_b, state)
  cold, _ = UNCLIPPED[3].weights(jac_b)
  np.testing.assert_allclose(warm, cold, rtol=1e-4)


def test_no_positive_solution_keeps_the_previous_weights():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  h = np.array([2.0, 1.0, 0.0, 0.0])
  # First step, exactly opposite gradients: uniform ones, d = g - g = 0.
  w, state = UNCLIPPED[2].weights(np.stack([g, -g]))
  np.testing.assert_array_equal(w, [1.0, 1.0])
  _, ok = solved(np.stack([g, -g]))
  assert not ok
  # After a successful step, a zero gradient (no positive solution) keeps that step's alpha.
  w1, state = UNCLIPPED[2].weights(np.stack([g, h]))
  w2, state2 = UNCLIPPED[2].weights(np.stack([g, np.zeros(4)]), state)
  np.testing.assert_array_equal(w2, w1)
  np.testing.assert_array_equal(np.asarray(state2.alpha), np.asarray(state.alpha))
  assert int(state2.step) == 2


def test_update_weights_every():
  run = cc.Runner(nash_mtl(3, max_norm=0.0, update_weights_every=3))
  rng = np.random.default_rng(7)
  state, weights = None, []
  jacs = [cc.random_jacobian(rng, 3, 4) for _ in range(5)]
  for jac in jacs:
    w, state = run.weights(jac, state)
    weights.append(w)
  np.testing.assert_array_equal(weights[1], weights[0])
  np.testing.assert_array_equal(weights[2], weights[0])
  assert not np.allclose(weights[3], weights[0])
  np.testing.assert_allclose(weights[3], UNCLIPPED[3].weights(jacs[3])[0], rtol=1e-4)
  np.testing.assert_array_equal(weights[4], weights[3])


def test_robust_to_degenerate_inputs():
  cc.check_robust(CLIPPED)


def test_metadata_errors_chain_jit_and_state():
  tx = nash_mtl(3)
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and tx.weights_task_params
  state = tx.init(None)
  assert isinstance(state, NashMTLState) and state.step.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(state.alpha), np.ones(3))
  for bad in ({'max_norm': 'x'}, {'max_norm': float('nan')}, {'update_weights_every': 0},
              {'optim_niter': 0}, {'optim_niter': 2.0}):
    with pytest.raises(UserError):
      nash_mtl(3, **bad)
  with pytest.raises(UserError, match='num_tasks=3'):
    CLIPPED[3].weights(np.ones((2, 4)))
  cc.check_weighted_sum(CLIPPED[3], cc.random_jacobian(np.random.default_rng(0), 3, 4))
  cc.check_chain_jit_and_state(tx, 3)
