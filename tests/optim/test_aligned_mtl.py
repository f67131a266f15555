import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.aligned_mtl import aligned_mtl, balance_transformation
from tests.optim import helpers
from tests.optim.gramian_method_checks import (Runner, degenerate_jacobians, float32_exact,
                                               random_jacobian, representable)

EPS32 = float(np.finfo(np.float32).eps)


def aligned_reference(jac, pref=None, scale_mode='min', rcond=None):
  """Algorithm 1 of the paper / the official ProcrustesSolver, in float64 NumPy: w = B p with
  B = sigma V_R Lambda_R^{-1/2} V_R^T, eigenvalues <= rcond * lambda_max dropped."""
  gram = jac @ jac.T
  num = len(jac)
  pref = np.ones(num) if pref is None else np.asarray(pref, np.float64)
  lam, vecs = np.linalg.eigh(gram)
  keep = lam > (num * EPS32 if rcond is None else rcond) * lam.max()
  if not keep.any():
    return pref
  lam, vecs = lam[keep], vecs[:, keep]
  sigma2 = {'min': lam.min(), 'median': np.sort(lam)[(len(lam) - 1) // 2],
            'rmse': lam.mean()}[scale_mode]
  b = np.sqrt(sigma2) * (vecs / np.sqrt(lam)) @ vecs.T
  return b @ pref


run = Runner(aligned_mtl())


def test_hand_worked():
  # g1 = (2, 0), g2 = (0, 1): G = diag(4, 1), sigma_min = 1, B = diag(1/2, 1): both aligned
  # gradients have norm 1, d = (1, 1).
  d, w = run([[2.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(w, [0.5, 1.0], rtol=1e-6)
  np.testing.assert_allclose(d, [1.0, 1.0], rtol=1e-6)
  # Identical gradients: rank 1, B = 11^T / 2, d = 2 g. Opposite: d = 0. One task: d = g.
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(run(np.stack([g, g]))[0], 2 * g, rtol=1e-5)
  np.testing.assert_allclose(run(np.stack([g, -g]))[0], 0.0, atol=1e-6)
  np.testing.assert_allclose(run(g[None])[0], g, rtol=1e-6)
  d, w = run(np.zeros((3, 4)))
  assert np.all(d == 0)
  np.testing.assert_array_equal(w, np.ones(3))  # B = I when G = 0


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_numpy_reference(num_tasks):
  rng = np.random.default_rng(40 + num_tasks)
  for _ in range(3):
    jac = float32_exact(random_jacobian(rng, num_tasks, 3 * num_tasks))
    d, w = run(jac)
    d_ref = aligned_reference(jac) @ jac
    # float32 eigendecomposition: relative error ~ eps * cond(G) (cond <= ~1e3 here).
    np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3 * np.abs(d_ref).max())


def test_aligned_gramian_has_condition_number_one():
  rng = np.random.default_rng(41)
  for num, dim in [(3, 9), (5, 15), (6, 3)]:  # the last one has rank 3
    jac = float32_exact(random_jacobian(rng, num, dim))
    gram = jac @ jac.T
    b, rank = jax.jit(balance_transformation)(jnp.asarray(gram, jnp.float32))
    b = np.asarray(b, np.float64)
    assert int(rank) == min(num, dim)
    aligned = b @ gram @ b  # the Gramian of the aligned gradients B J
    lam = np.linalg.eigvalsh(aligned)
    support = lam[-int(rank):]
    sigma2 = np.linalg.eigvalsh(gram)[-int(rank)]  # smallest non-zero eigenvalue of G
    np.testing.assert_allclose(support, sigma2, rtol=1e-3)  # all equal: condition number 1
    assert np.all(np.abs(lam[:-int(rank)]) <= 1e-5 * sigma2)
    np.testing.assert_allclose(b, b.T, atol=1e-6)


def test_rank_deficient_matches_reference():
  rng = np.random.default_rng(42)
  jac = float32_exact(random_jacobian(rng, 4, 2))  # 4 tasks in 2 dimensions: rank 2
  d, w = run(jac)
  d_ref = aligned_reference(jac) @ jac
  np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-4 * np.abs(d_ref).max())


@pytest.mark.parametrize('scale_mode', ['median', 'rmse'])
def test_scale_modes(scale_mode):
  rng = np.random.default_rng(43)
  jac = float32_exact(random_jacobian(rng, 4, 10))
  d, _ = Runner(aligned_mtl(scale_mode=scale_mode))(jac)
  d_ref = aligned_reference(jac, scale_mode=scale_mode) @ jac
  np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3 * np.abs(d_ref).max())
  # 'min' gives the smallest update of the three.
  assert np.linalg.norm(d) > np.linalg.norm(run(jac)[0])


def test_rcond_and_preferences():
  jac = np.array([[1.0, 0.0], [0.0, 1e-2]])  # G = diag(1, 1e-4)
  np.testing.assert_allclose(run(jac)[0], [1e-2, 1e-2], rtol=1e-5)
  # With rcond = 1e-3 the second direction counts as zero: B = diag(1, 0).
  d, w = Runner(aligned_mtl(rcond=1e-3))(jac)
  np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-7)
  rng = np.random.default_rng(44)
  jac = float32_exact(random_jacobian(rng, 3, 8))
  pref = [0.5, 2.0, 0.0]
  d, w = Runner(aligned_mtl(num_tasks=3, pref_vector=pref))(jac)
  d_ref = aligned_reference(jac, pref) @ jac
  np.testing.assert_allclose(d, d_ref, rtol=1e-3, atol=1e-3 * np.abs(d_ref).max())


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_invariance(scale):
  rng = np.random.default_rng(45)
  jac = random_jacobian(rng, 3, 6)
  d1, w1 = run(jac)
  ds, ws = run(jac * scale)
  np.testing.assert_allclose(ws, w1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(ds / scale, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())


def test_bfloat16_gradients():
  rng = np.random.default_rng(46)
  jac = representable(random_jacobian(rng, 3, 8), jnp.bfloat16)
  d16 = run.update(jac, jnp.bfloat16)
  d32, _ = run(jac)
  np.testing.assert_allclose(d16, d32, rtol=1e-2, atol=1e-2 * np.abs(d32).max())


@settings(max_examples=25, deadline=None)
@given(degenerate_jacobians())
def test_degenerate_inputs_are_finite(problem):
  jac, dtype = problem
  d, w = run(jac, dtype)
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(w))
  # Each aligned gradient has norm <= sigma_min <= min over the kept directions, so
  # ||d|| <= K * max_k ||g_k|| (up to round-off).
  jac = representable(jac, dtype)
  assert np.linalg.norm(d) <= len(jac) * np.linalg.norm(jac, axis=1).max() * (1 + 1e-3) + 1e-30


def test_degenerate_gramians_give_identity():
  for bad in (jnp.full((3, 3), jnp.nan), jnp.diag(jnp.array([1.0, jnp.inf, 1.0]))):
    np.testing.assert_array_equal(run._weights(bad, jnp.ones(3)), np.ones(3, np.float32))


def test_errors_and_metadata():
  with pytest.raises(UserError, match='scale_mode'):
    aligned_mtl(scale_mode='max')
  for bad in (-1e-3, 1.0, 'x'):
    with pytest.raises(UserError, match='rcond'):
      aligned_mtl(rcond=bad)
  with pytest.raises(UserError, match='num_tasks'):
    aligned_mtl(num_tasks=0)
  with pytest.raises(UserError, match='num_tasks=3'):
    Runner(aligned_mtl(num_tasks=3))(np.ones((4, 4)))
  tx = aligned_mtl()
  assert tx.name == 'aligned_mtl' and tx.family == 'gramian' and tx.modes == ('jacobian', 'rep')
  assert not tx.weights_task_params


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(29, 4)
  helpers.assert_chain_matches_weights(aligned_mtl(), grads, losses)
  problems = [helpers.random_problem(s, 4) for s in range(4)]
  helpers.assert_jit_traces_once(aligned_mtl(num_tasks=4, scale_mode='median'), problems)
  helpers.assert_state_roundtrips(aligned_mtl(), problems)
