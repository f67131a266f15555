import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtl_jax.errors import UserError
from mtl_jax.optim.imtl import IMTLState, imtl, impartial_weights
from tests.optim import helpers, weighting_checks

_alpha = jax.jit(impartial_weights)


def paper_alpha(jac):
  """IMTL-G as written in the paper, on explicit gradients (float64):
  alpha_{2:K} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:K}."""
  jac = np.asarray(jac, np.float64)
  units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
  d = jac[0:1] - jac[1:]
  u = units[0:1] - units[1:]
  rest = jac[0] @ u.T @ np.linalg.inv(d @ u.T)
  return np.concatenate([[1.0 - rest.sum()], rest])


def test_matches_the_paper_formula():
  rng = np.random.default_rng(0)
  for k, dim in ((2, 3), (3, 5), (4, 4), (5, 12)):
    for _ in range(3):
      jac = rng.normal(size=(k, dim)) * rng.uniform(0.1, 10.0, size=(k, 1))
      jac = np.asarray(jac, np.float32).astype(np.float64)
      alpha = np.asarray(_alpha(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64)
      np.testing.assert_allclose(alpha, paper_alpha(jac), rtol=2e-3, atol=2e-4)


def test_equal_projections_on_the_unit_gradients():
  rng = np.random.default_rng(1)
  for k in (2, 3, 6):
    jac = rng.normal(size=(k, 2 * k)) * rng.uniform(0.01, 100.0, size=(k, 1))
    jac = np.asarray(jac, np.float32).astype(np.float64)
    tx = imtl(k, mode='gradient')
    update = jax.jit(lambda g, tx=tx, k=k: tx.update(g, tx.init(None), None, losses=jnp.ones(k)))
    d = helpers.flat(update(weighting_checks.as_tree(jac))[0])
    proj = (jac / np.linalg.norm(jac, axis=1, keepdims=True)) @ d
    np.testing.assert_allclose(proj, proj[0], rtol=1e-3)
    assert proj[0] > 0


def test_hand_worked_two_tasks():
  # g1 = (1, 0), g2 = (0, 2): equal projections need alpha_1 = 2 alpha_2, so alpha = (2/3, 1/3)
  # and d = (2/3, 2/3).
  jac = np.array([[1.0, 0.0], [0.0, 2.0]])
  np.testing.assert_allclose(_alpha(jnp.asarray(jac @ jac.T, jnp.float32)), [2 / 3, 1 / 3],
                             rtol=1e-6)
  # g1 = (1, 0), g2 = (1, 1): d = alpha_1 g1 + alpha_2 g2 = (1, alpha_2) with
  # d.u1 = 1 = d.u2 = (1 + alpha_2) / sqrt(2): alpha_2 = sqrt(2) - 1.
  jac = np.array([[1.0, 0.0], [1.0, 1.0]])
  np.testing.assert_allclose(_alpha(jnp.asarray(jac @ jac.T, jnp.float32)),
                             [2 - np.sqrt(2), np.sqrt(2) - 1], rtol=1e-5)


def test_degenerate_systems_have_defined_answers():
  def alpha(rows):
    jac = np.asarray(rows, np.float64)
    return np.asarray(_alpha(jnp.asarray(jac @ jac.T, jnp.float32)))

  g = np.array([0.5, -1.0, 2.0])
  np.testing.assert_allclose(alpha([g, g, g]), [1 / 3] * 3, atol=1e-6)  # identical: uniform
  np.testing.assert_allclose(alpha([g, 3 * g]), [0.5, 0.5], atol=1e-6)  # parallel: uniform
  np.testing.assert_allclose(alpha([g, -g]), [0.5, 0.5], atol=1e-6)  # opposite: d = 0
  np.testing.assert_allclose(alpha([g, -3 * g]) @ np.array([1.0, -3.0]), 0.0, atol=1e-6)
  # A zero gradient gets alpha = 0 and the others are solved among themselves.
  e1, e2 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
  np.testing.assert_allclose(alpha([np.zeros(3), e1, e2]), [0.0, 2 / 3, 1 / 3], atol=1e-6)
  np.testing.assert_allclose(alpha([e1, np.zeros(3), e2]), [2 / 3, 0.0, 1 / 3], atol=1e-6)
  np.testing.assert_allclose(alpha([np.zeros(3)] * 3), [1 / 3] * 3)
  np.testing.assert_allclose(alpha([g]), [1.0])
  bad = np.asarray(_alpha(jnp.array([[jnp.nan, 0.0], [0.0, 1.0]])))
  np.testing.assert_allclose(bad, [0.5, 0.5])
  # Scale invariance, 1e-8 to 1e8.
  jac = np.array([[1.0, 0.2, 0.0], [0.1, 1.0, -0.5], [-0.3, 0.4, 1.0]])
  base = alpha(jac)
  for scale in (1e-8, 1e8):
    np.testing.assert_allclose(alpha(jac * scale), base, rtol=1e-4, atol=1e-6)


def test_hybrid_uses_the_scaled_gradients():
  rng = np.random.default_rng(2)
  jac = np.asarray(rng.normal(size=(3, 5)), np.float32).astype(np.float64)
  s = np.array([0.5, -1.0, 0.2])
  tx = imtl(3)
  state = IMTLState(jnp.asarray(s, jnp.float32), tx.init(None).inner)
  losses = jnp.array([2.0, 0.5, 1.0])
  w, new_state = tx.gramian_weights(jnp.asarray(jac @ jac.T, jnp.float32), losses, state)
  scaled = np.exp(s)[:, None] * jac
  np.testing.assert_allclose(w, paper_alpha(scaled) * np.exp(s), rtol=1e-3, atol=1e-5)
  # IMTL-L: Adam's first step is -lr * sign(d/ds (e^s L - s)) = -lr * sign(e^s L - 1).
  ds = np.exp(s) * np.asarray(losses) - 1.0
  np.testing.assert_allclose(new_state.log_scales, s - 1e-3 * np.sign(ds), rtol=1e-5)
  assert not tx.weights_task_params and tx.family == 'gramian'


def test_loss_mode_is_loss_weighting_towards_unit_scaled_losses():
  tx = imtl(3, mode='loss', learning_rate=0.05)
  losses = jnp.array([0.3, 2.0, 5.0])
  assert tx.family == 'loss_weighting' and tx.modes[0] == 'weighted'
  np.testing.assert_array_equal(tx.loss_weights(tx.init(None), losses), [1.0, 1.0, 1.0])

  def body(state, _):
    return tx.advance(state, losses, None), None

  state, _ = jax.lax.scan(body, tx.init(None), None, length=2000)
  # The fixed point of e^s L - s: e^s L = 1.
  np.testing.assert_allclose(tx.loss_weights(state, losses) * losses, 1.0, atol=2e-2)
  params, losses_fn = helpers.toy_model(3, seed=6)
  weighting_checks.assert_gradient_of(tx, params, losses_fn, state=state)
  # Absent task (loss 0) keeps its scale; non-finite losses keep the state.
  after = tx.advance(state, jnp.array([1.0, 0.0, 1.0]), None)
  assert after.log_scales[1] == state.log_scales[1]
  after = tx.advance(state, jnp.array([1.0, jnp.inf, 1.0]), None)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_errors():
  with pytest.raises(UserError, match='mode'):
    imtl(2, mode='both')
  with pytest.raises(UserError):
    imtl(2, learning_rate=0.0)
  with pytest.raises(UserError, match='num_tasks=2'):
    imtl(2).gramian_weights(jnp.eye(3), jnp.ones(3), imtl(2).init(None))


@pytest.mark.parametrize('mode', ['hybrid', 'gradient', 'loss'])
def test_chain_jit_and_state(mode):
  grads, losses = helpers.random_problem(9, 3)
  w = helpers.assert_chain_matches_weights(imtl(3, mode=mode), grads, losses)
  if mode != 'loss':
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  helpers.assert_jit_traces_once(imtl(3, mode=mode), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(imtl(3, mode=mode, learning_rate=0.1), problems)


_finite = {mode: weighting_checks.FiniteChecker(lambda k, mode=mode: imtl(k, mode=mode))
           for mode in ('hybrid', 'gradient')}


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems(), st.sampled_from(['hybrid', 'gradient']))
def test_degenerate_inputs_stay_finite(problem, mode):
  _finite[mode](*problem)
