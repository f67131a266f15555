import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import gradvac, pcgrad
from mtl_jax.optim.gradvac import GradVacState, gradvac_step
from tests.optim import conflict_checks as cc
from tests.optim.test_pcgrad import RUN as PCGRAD_RUN

BETA = 0.01
RUN = cc.Runners(lambda k: gradvac(k, beta=BETA))  # all inputs are K x 4
_step = jax.jit(gradvac_step, static_argnums=3)


def reference(jac, orders, targets, beta):
  """Wang et al. (2021), Algorithm 1, on the vectors (float64): returns (sum_i g_i^PC, targets)."""
  targets = np.array(targets, np.float64)
  out = []
  for i, g in enumerate(jac):
    pc = g.copy()
    for j in orders[i]:
      if j == i:
        continue
      gj = jac[j]
      phi = pc @ gj / (np.linalg.norm(pc) * np.linalg.norm(gj))
      t = targets[i, j]
      if phi < t:
        pc = pc + (np.linalg.norm(pc) * (t * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - t ** 2))
                   / (np.linalg.norm(gj) * np.sqrt(1 - t ** 2))) * gj
      targets[i, j] = (1 - beta) * t + beta * phi
    out.append(pc)
  return np.sum(out, axis=0), targets


def run_step(jac, orders, targets, beta=BETA):
  coef, new_targets = _step(jnp.asarray(jac @ jac.T, jnp.float32), jnp.asarray(orders),
                            jnp.asarray(targets, jnp.float32), beta)
  return np.asarray(coef, np.float64), np.asarray(new_targets, np.float64)


def test_hand_worked_two_tasks():
  # g1 = (1, 0), g2 = (0, 1), target 1/2 for (1, 2): phi = 0 < 1/2, so
  # g1' = g1 + 1 * (1/2 * 1 - 0) / (1 * sqrt(3/4)) g2 = (1, 1/sqrt(3)), whose cosine with g2 is 1/2.
  # Task 2 has target 0 = phi: no correction. Both targets move by beta * (phi - target).
  jac = np.array([[1.0, 0.0, 0, 0], [0.0, 1.0, 0, 0]])
  targets = np.array([[0.0, 0.5], [0.0, 0.0]])
  coef, new_targets = run_step(jac, np.array([[0, 1], [0, 1]]), targets, beta=0.1)
  g1 = coef[0] @ jac
  np.testing.assert_allclose(g1, [1.0, 1 / np.sqrt(3), 0, 0], rtol=1e-6)
  assert abs(g1 @ jac[1] / np.linalg.norm(g1) - 0.5) < 1e-6
  np.testing.assert_allclose(coef[1], [0.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(new_targets, [[0.0, 0.45], [0.0, 0.0]], atol=1e-7)


@pytest.mark.parametrize('num_tasks', [2, 3, 5])
def test_matches_vector_implementation_over_several_steps(num_tasks):
  rng = np.random.default_rng(num_tasks)
  targets = ours = np.zeros((num_tasks, num_tasks))
  for _ in range(4):
    jac = cc.rounded(cc.random_jacobian(rng, num_tasks, 4))
    orders = np.stack([rng.permutation(num_tasks) for _ in range(num_tasks)])
    expected, targets = reference(jac, orders, targets, beta=0.3)
    coef, ours = run_step(jac, orders, ours, beta=0.3)
    np.testing.assert_allclose(coef.sum(0) @ jac, expected, rtol=1e-4,
                               atol=1e-4 * np.abs(jac).max())
    np.testing.assert_allclose(ours, targets, atol=1e-5)


def test_first_step_equals_pcgrad():
  # With targets 0 the correction makes <g_i^PC, g_j> = 0 when it was negative: PCGrad's
  # projection. Same seed, same orders.
  rng = np.random.default_rng(7)
  for _ in range(3):
    jac = cc.random_jacobian(rng, 3, 4)
    w_vac, _ = RUN[3].weights(jac, gradvac(3, seed=4).init(None))
    w_pc, _ = PCGRAD_RUN[3].weights(jac, pcgrad(3, seed=4).init(None))
    np.testing.assert_allclose(w_vac, w_pc, rtol=1e-5, atol=1e-6)


def test_ema_updates_every_pair_as_in_the_paper():
  # Two aligned gradients: no correction, but both targets move towards their cosine (LibMTL
  # would leave them at 0).
  jac = np.array([[1.0, 0.0, 0, 0], [1.0, 1.0, 0, 0]])
  w, state = RUN[2].weights(jac)
  np.testing.assert_array_equal(w, [1.0, 1.0])
  cos = 1 / np.sqrt(2)
  np.testing.assert_allclose(np.asarray(state.targets), [[0, BETA * cos], [BETA * cos, 0]],
                             rtol=1e-6)


def test_same_seed_same_result():
  jac = cc.random_jacobian(np.random.default_rng(3), 3, 4)
  state_a, state_b = gradvac(3, seed=2).init(None), gradvac(3, seed=2).init(None)
  for _ in range(3):
    out_a, state_a = RUN[3](jac, state_a)
    out_b, state_b = RUN[3](jac, state_b)
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(np.asarray(state_a.targets), np.asarray(state_b.targets))


def test_identical_opposite_zero_single_and_saturated_targets():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(RUN[2](np.stack([g, g]))[0], 2 * g, rtol=1e-6)
  # Opposite: with target 0 each is projected to 0.
  np.testing.assert_allclose(RUN[2](np.stack([g, -g]))[0], 0.0, atol=1e-6)
  np.testing.assert_allclose(RUN[2](np.stack([g, np.zeros(4)]))[0], g, rtol=1e-6)
  np.testing.assert_allclose(RUN[1](g[None])[0], g, rtol=1e-6)
  # Targets that rounded to 1 apply no (infinite) correction.
  state = GradVacState(gradvac(2).init(None).key, jnp.ones((2, 2), jnp.float32))
  out, state = RUN[2](np.stack([g, np.array([1.0, 0, 0, 0])]), state)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(np.asarray(state.targets)))


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_equivariance(scale):
  jac = cc.random_jacobian(np.random.default_rng(4), 3, 4)
  out, _ = RUN[3](jac)
  out_s, _ = RUN[3](jac * scale)
  np.testing.assert_allclose(out_s / scale, out, rtol=1e-4, atol=1e-5 * np.abs(out).max())


def test_bfloat16():
  jac = cc.random_jacobian(np.random.default_rng(5), 3, 4)
  out16, _ = RUN[3](jac, dtype=jnp.bfloat16)
  out32, _ = RUN[3](cc.rounded(jac, jnp.bfloat16))
  np.testing.assert_allclose(out16, out32, rtol=2e-2, atol=2e-2 * np.abs(out32).max())


def test_robust_to_degenerate_inputs():
  cc.check_robust(RUN)


def test_metadata_errors_chain_jit_and_state():
  tx = gradvac(3)
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and not tx.weights_task_params
  state = tx.init(None)
  assert isinstance(state, GradVacState) and state.targets.shape == (3, 3)
  assert state.targets.dtype == jnp.float32 and state.key.dtype == jnp.uint32
  for bad in ({'beta': -0.1}, {'beta': 1.5}, {'beta': 'x'}, {'seed': 1.0}):
    with pytest.raises(UserError):
      gradvac(3, **bad)
  cc.check_weighted_sum(RUN[3], cc.random_jacobian(np.random.default_rng(0), 3, 4))
  cc.check_chain_jit_and_state(gradvac(3, beta=0.5), 3)
