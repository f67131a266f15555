import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.dualproj import dualproj
from tests.optim import helpers
from tests.optim.gramian_method_checks import (Runner, degenerate_jacobians, float32_exact,
                                               random_jacobian, representable)
from tests.optim.test_upgrad import (assert_conflict_free, brute_force_projection,
                                     nnls_projection)

run = Runner(dualproj())


def test_hand_worked():
  # g1 = (1, 0), g2 = (-1, 1): the mean (0, 1/2) is in the dual cone {0 <= x_1 <= x_2}: unchanged.
  d, w = run([[1.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(d, [0.0, 0.5], atol=1e-7)
  np.testing.assert_allclose(w, [0.5, 0.5], rtol=1e-6)
  # g1 = (1, 0), g2 = (-2, 1): the mean (-1/2, 1/2) conflicts with g1; its projection onto the
  # cone {0 <= 2 x_1 <= x_2} is (0, 1/2) = 1 g1 + 1/2 g2.
  d, w = run([[1.0, 0.0], [-2.0, 1.0]])
  np.testing.assert_allclose(d, [0.0, 0.5], atol=1e-6)
  np.testing.assert_allclose(w, [1.0, 0.5], rtol=1e-6)


def test_torchjd_docstring_example():
  # TorchJD's DualProj example: J = [[-4, 1, 1], [6, 1, 1]] -> [0.5563, 1.1109, 1.1109] (with its
  # 1e-4 ridge). Exactly: G = [[18, -22], [-22, 38]], G p = (-2, 8) for p = (1/2, 1/2), so
  # w = (11/18, 1/2) and d = (5/9, 10/9, 10/9).
  d, w = run(np.array([[-4.0, 1.0, 1.0, 0.0], [6.0, 1.0, 1.0, 0.0]]))
  np.testing.assert_allclose(w, [11 / 18, 0.5], rtol=1e-6)
  np.testing.assert_allclose(d[:3], [5 / 9, 10 / 9, 10 / 9], rtol=1e-5)
  np.testing.assert_allclose(d[:3], [0.5563, 1.1109, 1.1109], atol=1e-3)


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_brute_force(num_tasks):
  rng = np.random.default_rng(30 + num_tasks)
  for dim in sorted({max(num_tasks - 1, 2), 3 * num_tasks}):
    for _ in range(3):
      jac = float32_exact(random_jacobian(rng, num_tasks, dim))
      gram = jac @ jac.T
      d, w = run(jac)
      mean = np.full(num_tasks, 1.0 / num_tasks)
      _, w_star = brute_force_projection(gram, mean)
      scale = np.sqrt(gram.diagonal().max())
      # The two float64 references agree (enumeration and scipy's NNLS).
      w_nnls = nnls_projection(gram, mean)
      assert np.linalg.norm((w_star - w_nnls) @ jac) <= 1e-9 * scale * np.abs(w_star).sum()
      err = np.linalg.norm(d - w_star @ jac) / (scale * np.abs(w_star).sum())
      assert err <= 1e-5, err  # measured <= 2e-7
      assert_conflict_free(jac, w)
      assert np.all(w >= mean - 1e-7)


def test_no_conflict_with_the_mean_is_the_mean():
  rng = np.random.default_rng(31)
  jac = np.abs(rng.normal(size=(3, 6)))
  d, w = run(jac)
  np.testing.assert_allclose(w, np.full(3, 1 / 3), rtol=1e-6)
  # Conflicting gradients whose mean conflicts with none: still the mean.
  jac = np.array([[1.0, 0.2, 0.0, 0.0], [-0.3, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
  assert np.any(jac @ jac.T < 0) and np.all(jac @ jac.mean(0) >= 0)
  d, w = run(jac)
  np.testing.assert_allclose(w, np.full(3, 1 / 3), rtol=1e-6)


def test_preferences():
  rng = np.random.default_rng(32)
  jac = float32_exact(random_jacobian(rng, 3, 5))
  pref = np.array([3.0, 1.0, 0.0])
  d, w = Runner(dualproj(pref_vector=list(pref)))(jac)
  _, w_star = brute_force_projection(jac @ jac.T, pref)
  scale = np.sqrt((jac ** 2).sum(1).max())
  assert np.linalg.norm(d - w_star @ jac) <= 1e-5 * scale * np.abs(w_star).sum()
  assert np.all(w >= pref - 1e-6)
  with pytest.raises(UserError, match='pref_vector'):
    dualproj(pref_vector=[1.0, -2.0])


def test_single_identical_opposite_and_zero_gradients():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(run(g[None])[0], g, rtol=1e-6)
  np.testing.assert_allclose(run(np.stack([g, g, g]))[0], g, rtol=1e-6)
  np.testing.assert_allclose(run(np.stack([g, -g]))[0], 0.0, atol=1e-6)
  d, w = run(np.zeros((3, 4)))
  assert np.all(d == 0) and np.all(np.isfinite(w))


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_invariance(scale):
  rng = np.random.default_rng(33)
  jac = random_jacobian(rng, 3, 6)
  d1, w1 = run(jac)
  ds, ws = run(jac * scale)
  np.testing.assert_allclose(ws, w1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ds / scale, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())


def test_bfloat16_gradients():
  rng = np.random.default_rng(34)
  jac = representable(random_jacobian(rng, 3, 8), jnp.bfloat16)
  d16 = run.update(jac, jnp.bfloat16)
  d32, _ = run(jac)
  np.testing.assert_allclose(d16, d32, rtol=1e-2, atol=1e-2 * np.abs(d32).max())


@settings(max_examples=25, deadline=None)
@given(degenerate_jacobians())
def test_degenerate_inputs_are_finite_and_conflict_free(problem):
  jac, dtype = problem
  d, w = run(jac, dtype)
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(w))
  assert_conflict_free(representable(jac, dtype), w)


def test_errors_and_metadata():
  with pytest.raises(UserError, match='max_iters'):
    dualproj(max_iters=0)
  tx = dualproj()
  assert tx.name == 'dualproj' and tx.family == 'gramian' and tx.modes == ('jacobian', 'rep')
  assert not tx.weights_task_params


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(19, 4)
  helpers.assert_chain_matches_weights(dualproj(), grads, losses)
  problems = [helpers.random_problem(s, 4) for s in range(4)]
  helpers.assert_jit_traces_once(dualproj(), problems)
  helpers.assert_state_roundtrips(dualproj(), problems)
