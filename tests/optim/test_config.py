import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.config import config
from tests.optim import helpers
from tests.optim.gramian_method_checks import (Runner, degenerate_jacobians, float32_exact,
                                               random_jacobian, representable)


def config_reference(jac, pref=None):
  """Eq. 2 of the paper as the official `ConFIG_update` computes it, on the gradients themselves
  (float64): g_u = lstsq(U, p) with U the unit gradients (zero rows for zero gradients), then
  (sum_k <g_k, g^_u>) g^_u."""
  num = len(jac)
  pref = np.ones(num) if pref is None else np.asarray(pref, np.float64)
  norms = np.linalg.norm(jac, axis=1, keepdims=True)
  units = np.divide(jac, norms, out=np.zeros_like(jac), where=norms > 0)
  best = np.linalg.lstsq(units, pref, rcond=None)[0]
  unit = best / np.linalg.norm(best)
  return np.sum(jac @ unit) * unit


def cosines(jac, d):
  return jac @ d / (np.linalg.norm(jac, axis=1) * np.linalg.norm(d))


run = Runner(config())


def test_hand_worked():
  # g1 = (1, 0), g2 = (-1, 1): the equal-cosine direction is the bisector of the unit vectors,
  # (1, 1 + sqrt 2) / |.| = (sin 22.5, cos 22.5) degrees; the projections sum to cos 22.5, so
  # d = cos 22.5 (sin 22.5, cos 22.5) = (sqrt 2 / 4, (2 + sqrt 2) / 4).
  d, _ = run([[1.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(d, [np.sqrt(2) / 4, (2 + np.sqrt(2)) / 4], rtol=1e-6)
  # g1 = (2, 0), g2 = (0, 1): direction (1, 1) / sqrt 2, length (2 + 1) / sqrt 2: d = (1.5, 1.5).
  d, w = run([[2.0, 0.0], [0.0, 1.0]])
  np.testing.assert_allclose(d, [1.5, 1.5], rtol=1e-6)
  np.testing.assert_allclose(w, [0.75, 1.5], rtol=1e-6)


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_official_formula_and_equal_cosines(num_tasks):
  rng = np.random.default_rng(50 + num_tasks)
  for _ in range(3):
    jac = float32_exact(random_jacobian(rng, num_tasks, 3 * num_tasks))
    d, _ = run(jac)
    d_ref = config_reference(jac)
    np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4 * np.abs(d_ref).max())
    cos = cosines(jac, d)
    assert np.all(cos > 0)
    np.testing.assert_allclose(cos, cos.mean(), rtol=1e-4)


def test_preferences_set_the_cosine_ratios():
  rng = np.random.default_rng(51)
  jac = float32_exact(random_jacobian(rng, 3, 9))
  pref = [1.0, 2.0, 0.5]
  d, _ = Runner(config(num_tasks=3, pref_vector=pref))(jac)
  cos = cosines(jac, d)
  np.testing.assert_allclose(cos / cos[0], pref, rtol=1e-4)
  np.testing.assert_allclose(d, config_reference(jac, pref), rtol=1e-4,
                             atol=1e-4 * np.abs(d).max())


def test_dependent_unit_vectors_give_the_least_squares_direction():
  # Three gradients in a plane: no direction has equal cosines with all of them; the pseudo-inverse
  # (of C here, of U in the official code) gives the same least-squares compromise.
  jac = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
  d, _ = run(jac)
  np.testing.assert_allclose(d, config_reference(jac), rtol=1e-5)
  # Identical gradients: d = 2 g. Opposite ones: g_u = 0 and d = 0 (no equal-cosine direction).
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(run(np.stack([g, g]))[0], 2 * g, rtol=1e-5)
  np.testing.assert_allclose(run(np.stack([g, -g]))[0], 0.0, atol=1e-6)


def test_single_and_zero_gradients():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(run(g[None])[0], g, rtol=1e-6)
  d, w = run(np.zeros((3, 4)))
  assert np.all(d == 0) and np.all(w == 0)
  # A zero gradient has no unit vector: weight 0, and the others still get equal cosines.
  h = np.array([1.0, 0.5, 0.0, -1.0])
  jac = np.stack([g, np.zeros(4), h])
  d, w = run(jac)
  assert w[1] == 0
  np.testing.assert_allclose(d, config_reference(jac), rtol=1e-5)
  cos = cosines(jac[[0, 2]], d)
  np.testing.assert_allclose(cos[0], cos[1], rtol=1e-5)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_invariance(scale):
  rng = np.random.default_rng(52)
  jac = random_jacobian(rng, 3, 6)
  d1, w1 = run(jac)
  ds, ws = run(jac * scale)
  np.testing.assert_allclose(ws, w1, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(ds / scale, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())
  # Only directions matter: a tiny (or huge) gradient gets the same cosine as the others.
  jac[1] *= scale
  cos = cosines(jac, run(jac)[0])
  np.testing.assert_allclose(cos, cos.mean(), rtol=1e-4)


def test_bfloat16_gradients():
  rng = np.random.default_rng(53)
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
  # |sum_k <g_k, g^_u>| <= sum_k ||g_k||.
  jac = representable(jac, dtype)
  assert np.linalg.norm(d) <= np.linalg.norm(jac, axis=1).sum() * (1 + 1e-3) + 1e-30


def test_errors_and_metadata():
  for bad in (-1.0, 1.5):
    with pytest.raises(UserError, match='rcond'):
      config(rcond=bad)
  with pytest.raises(UserError, match='pref_vector'):
    config(pref_vector=[1.0, -1.0])
  with pytest.raises(UserError, match='pref_vector'):
    Runner(config(pref_vector=[1.0, 1.0]))(np.eye(3))
  with pytest.raises(UserError, match='num_tasks=2'):
    Runner(config(num_tasks=2))(np.eye(3))
  tx = config()
  assert tx.name == 'config' and tx.family == 'gramian' and tx.modes == ('jacobian', 'rep')
  assert not tx.weights_task_params


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(39, 4)
  helpers.assert_chain_matches_weights(config(), grads, losses)
  problems = [helpers.random_problem(s, 4) for s in range(4)]
  helpers.assert_jit_traces_once(config(num_tasks=4), problems)
  helpers.assert_state_roundtrips(config(), problems)
