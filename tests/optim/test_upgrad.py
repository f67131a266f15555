import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim import _dual_cone
from mtl_jax.optim.upgrad import upgrad
from tests.optim import helpers
from tests.optim.gramian_method_checks import (Runner, degenerate_jacobians, float32_exact,
                                               random_jacobian, representable)


def brute_force_projection(gram, lower):
  """argmin_{w >= lower} w^T G w in float64, by enumerating the free set S = {k : w_k > lower_k}:
  the stationary point of a given S is w_S = lower_S + lstsq(G_SS, -(G lower)_S), w = lower off S,
  and the optimum is the feasible one of least objective (an optimum whose free columns are
  linearly independent always exists, so lstsq finds it). Independent of the solver under test."""
  num = len(lower)
  c = gram @ lower
  best, best_w = np.inf, None
  for r in range(num + 1):
    for free in itertools.combinations(range(num), r):
      s = list(free)
      v = np.zeros(num)
      if s:
        v[s] = np.linalg.lstsq(gram[np.ix_(s, s)], -c[s], rcond=None)[0]
      if np.all(v >= -1e-12):
        w = lower + np.maximum(v, 0.0)
        value = w @ gram @ w
        if value < best:
          best, best_w = value, w
  return best, best_w


def nnls_projection(gram, lower):
  """The same QP by scipy's NNLS (Lawson-Hanson in float64) on a square root of G: with
  G = A^T A, w^T G w = ||A (lower + v)||^2, v >= 0. For K too large to enumerate."""
  lam, vecs = np.linalg.eigh(gram)
  a = np.sqrt(np.maximum(lam, 0.0))[:, None] * vecs.T
  v, _ = scipy.optimize.nnls(a, -a @ lower, maxiter=100 * len(lower))
  return lower + v


def slsqp_projection(gram, lower):
  res = scipy.optimize.minimize(lambda w: w @ gram @ w, lower + 0.1, jac=lambda w: 2 * gram @ w,
                                bounds=[(b, None) for b in lower], method='SLSQP',
                                options={'ftol': 1e-15, 'maxiter': 500})
  return res.x


def upgrad_reference(jac, pref=None):
  """UPGrad's weights from the paper's definition, in float64: sum_i w(p_i e_i)."""
  gram = jac @ jac.T
  num = len(jac)
  pref = np.full(num, 1.0 / num) if pref is None else np.asarray(pref, np.float64)
  return sum(brute_force_projection(gram, pref[i] * np.eye(num)[i])[1] for i in range(num))


run = Runner(upgrad())


def test_hand_worked_two_tasks():
  # g1 = (1, 0), g2 = (-1, 1): the dual cone is {x : 0 <= x_1 <= x_2}. g1 / 2 projects onto the
  # line x_1 = x_2 at (1/4, 1/4); g2 / 2 onto x_1 = 0 at (0, 1/2). Mean: (1/4, 3/4).
  d, w = run([[1.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(d, [0.25, 0.75], rtol=1e-6)
  np.testing.assert_allclose(w, [1.0, 0.75], rtol=1e-6)
  # Orthogonal gradients do not conflict: the plain mean.
  np.testing.assert_allclose(run([[2.0, 0.0], [0.0, 1.0]])[0], [1.0, 0.5], rtol=1e-6)


def test_torchjd_docstring_example():
  # TorchJD's UPGrad example: J = [[-4, 1, 1], [6, 1, 1]] -> [0.2929, 1.9004, 1.9004] (with its
  # 1e-4 ridge on the trace-normalised Gramian). Exactly: G = [[18, -22], [-22, 38]];
  # w(e1 / 2) = (1/2, 11/38), w(e2 / 2) = (11/18, 1/2), so w = (10/9, 15/19).
  jac = np.array([[-4.0, 1.0, 1.0, 0.0], [6.0, 1.0, 1.0, 0.0]])
  d, w = run(jac)
  np.testing.assert_allclose(w, [10 / 9, 15 / 19], rtol=1e-6)
  np.testing.assert_allclose(d[:3], [0.2924, 1.9006, 1.9006], atol=1e-4)
  np.testing.assert_allclose(d[:3], [0.2929, 1.9004, 1.9004], atol=1e-3)


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_brute_force(num_tasks):
  rng = np.random.default_rng(num_tasks)
  problems = 1 if num_tasks == 10 else 3
  for dim in sorted({max(num_tasks - 1, 2), 3 * num_tasks}):
    for _ in range(problems):
      jac = float32_exact(random_jacobian(rng, num_tasks, dim))
      gram = jac @ jac.T
      d, w = run(jac)
      w_star = upgrad_reference(jac)
      scale = np.sqrt(gram.diagonal().max())
      # The projection J^T w is unique (w need not be): compare points, relative to the largest
      # gradient and the size of the weights. Measured: <= 1e-7 (float32 round-off of G).
      err = np.linalg.norm(d - w_star @ jac) / (scale * np.abs(w_star).sum())
      assert err <= 1e-5, err
      assert_conflict_free(jac, w)
      assert np.all(w >= 1.0 / num_tasks - 1e-7)


def test_brute_force_agrees_with_slsqp():
  # The reference itself, against a generic QP solver.
  rng = np.random.default_rng(11)
  jac = random_jacobian(rng, 3, 4)
  gram = jac @ jac.T
  for i in range(3):
    lower = np.eye(3)[i] / 3
    d_brute = brute_force_projection(gram, lower)[1] @ jac
    d_slsqp = slsqp_projection(gram, lower) @ jac
    np.testing.assert_allclose(d_brute, d_slsqp, atol=1e-6 * np.abs(jac).max())


def test_many_tasks_match_nnls_and_iteration_counts():
  rng = np.random.default_rng(20)
  solve = jax.jit(lambda g, lower: _dual_cone.project_weights(g, lower, 200, return_steps=True))
  for num, dim in [(40, 12), (40, 40), (40, 400)]:
    jac = float32_exact(random_jacobian(rng, num, dim))
    gram = jac @ jac.T
    w, steps = solve(jnp.asarray(gram, jnp.float32), jnp.eye(num) / num)
    w = np.asarray(w, np.float64)
    assert int(np.max(steps)) <= num + 5  # about one iteration per freed coordinate
    scale = np.sqrt(gram.diagonal().max())
    for i in range(num):
      ref = nnls_projection(gram, np.eye(num)[i] / num)
      err = np.linalg.norm((w[i] - ref) @ jac) / (scale * np.abs(ref).sum())
      assert err <= 1e-5, (num, dim, i, err)


def test_no_conflict_is_the_mean():
  rng = np.random.default_rng(3)
  for num in (2, 3, 5):
    jac = np.abs(rng.normal(size=(num, 6)))  # non-negative entries: G >= 0, nothing conflicts
    d, w = run(jac)
    np.testing.assert_allclose(w, np.full(num, 1.0 / num), rtol=1e-6)
    np.testing.assert_allclose(d, jac.mean(0), rtol=1e-5)


def test_preferences():
  rng = np.random.default_rng(4)
  jac = float32_exact(random_jacobian(rng, 3, 5))
  pref = [2.0, 0.0, 1.0]
  runner = Runner(upgrad(pref_vector=pref))
  d, w = runner(jac)
  w_star = upgrad_reference(jac, pref)
  scale = np.sqrt((jac ** 2).sum(1).max())
  assert np.linalg.norm(d - w_star @ jac) <= 1e-5 * scale * np.abs(w_star).sum()
  assert w[1] >= 0 and w[0] >= 2 - 1e-6 and w[2] >= 1 - 1e-6
  with pytest.raises(UserError, match='pref_vector'):
    runner(random_jacobian(rng, 4, 5))


def test_single_identical_opposite_and_zero_gradients():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(run(g[None])[0], g, rtol=1e-6)
  np.testing.assert_allclose(run(np.stack([g, g, g]))[0], g, rtol=1e-6)
  d, w = run(np.stack([g, -g]))
  np.testing.assert_allclose(d, 0.0, atol=1e-6)
  np.testing.assert_allclose(w, [1.0, 1.0], rtol=1e-5)  # each projects to 0: w(e_i/2) = (1/2, 1/2)
  for k in (1, 3):
    d, w = run(np.zeros((k, 4)))
    assert np.all(d == 0) and np.all(np.isfinite(w))
  # A zero gradient conflicts with nothing and contributes nothing.
  d, _ = run(np.stack([g, np.zeros(4), 2 * g]))
  np.testing.assert_allclose(d, g, rtol=1e-5)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_invariance(scale):
  rng = np.random.default_rng(5)
  jac = random_jacobian(rng, 3, 6)
  d1, w1 = run(jac)
  ds, ws = run(jac * scale)
  np.testing.assert_allclose(ws, w1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ds / scale, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())
  # Relative scales do not matter either: a tiny gradient still defines a half-space of the cone.
  jac[1] *= scale
  d, w = run(jac)
  assert_conflict_free(jac, w)


def test_bfloat16_gradients():
  rng = np.random.default_rng(6)
  jac = representable(random_jacobian(rng, 3, 8), jnp.bfloat16)
  d16 = run.update(jac, jnp.bfloat16)
  d32, _ = run(jac)
  # Same (bf16-rounded) gradients; the bf16 output is rounded to 2^-8.
  np.testing.assert_allclose(d16, d32, rtol=1e-2, atol=1e-2 * np.abs(d32).max())


def test_budget_and_degenerate_gramians():
  rng = np.random.default_rng(7)
  jac = random_jacobian(rng, 6, 4)
  gram = jnp.asarray(jac @ jac.T, jnp.float32)
  lower = jnp.eye(6) / 6
  # Any budget gives feasible weights (w >= lower): here 2 iterations of the 6 needed.
  w, steps = jax.jit(lambda g: _dual_cone.project_weights(g, lower, 2, return_steps=True))(gram)
  assert np.all(np.isfinite(w)) and np.all(np.asarray(w) >= np.asarray(lower) - 1e-7)
  assert np.max(steps) == 2
  for bad in (jnp.zeros((3, 3)), jnp.full((3, 3), jnp.nan), jnp.diag(jnp.array([1.0, jnp.inf, 1.0]))):
    w = run._weights(bad, jnp.ones(3))
    np.testing.assert_array_equal(w, np.full(3, 1 / 3, np.float32))


@settings(max_examples=30, deadline=None)
@given(degenerate_jacobians())
def test_degenerate_inputs_are_finite_and_conflict_free(problem):
  jac, dtype = problem
  d, w = run(jac, dtype)
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(w))
  jac = representable(jac, dtype)
  assert_conflict_free(jac, w)


def assert_conflict_free(jac, w, rel=1e-5):
  """<d, g_k> >= -tol_k for d = J^T w, with the round-off bound of a float32 Gramian:
  |<d, g_k>| errs by at most ~eps * ||g_k|| * sum_l ||g_l|| |w_l| (so the test is as strict for
  a tiny gradient as for a large one)."""
  norms = np.linalg.norm(jac, axis=1)
  assert np.all(jac @ (w @ jac) >= -rel * norms * (norms @ np.abs(w)))


def test_errors_and_metadata():
  for bad in ([1.0, -1.0], [0.0, 0.0], [np.nan, 1.0], 'ab', []):
    with pytest.raises(UserError, match='pref_vector'):
      upgrad(pref_vector=bad)
  for bad in (0, 1.5, True):
    with pytest.raises(UserError, match='max_iters'):
      upgrad(max_iters=bad)
  tx = upgrad()
  assert tx.name == 'upgrad' and tx.family == 'gramian' and tx.modes == ('jacobian', 'rep')
  assert not tx.weights_task_params


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(9, 4)
  helpers.assert_chain_matches_weights(upgrad(), grads, losses)
  problems = [helpers.random_problem(s, 4) for s in range(4)]
  helpers.assert_jit_traces_once(upgrad(pref_vector=[1.0, 2.0, 0.5, 1.0]), problems)
  helpers.assert_state_roundtrips(upgrad(), problems)
