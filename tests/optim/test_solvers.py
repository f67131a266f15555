import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtl_jax.optim.solvers import min_norm_simplex, project_simplex


def brute_force_min_norm(gram):
  """Exact min of w^T G w over the simplex, float64, by enumerating every support S: the optimum
  is the affine minimiser of some support (KKT), so the best feasible one among all 2^K - 1
  is the answer. Independent of the solver under test."""
  num = gram.shape[0]
  best, best_w = np.inf, None
  for r in range(1, num + 1):
    for support in itertools.combinations(range(num), r):
      s = list(support)
      kkt = np.zeros((r + 1, r + 1))
      kkt[:r, :r] = gram[np.ix_(s, s)]
      kkt[:r, r] = kkt[r, :r] = 1.0
      rhs = np.zeros(r + 1)
      rhs[r] = 1.0
      a = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:r]
      if np.all(a >= -1e-12) and abs(a.sum() - 1) < 1e-9:
        w = np.zeros(num)
        w[s] = np.maximum(a, 0)
        value = w @ gram @ w
        if value < best:
          best, best_w = value, w / w.sum()
  return best, best_w


def bisection_projection(v):
  """Projection onto the simplex by bisection on theta in sum max(v - theta, 0) = 1."""
  lo, hi = v.min() - 1.0, v.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if np.maximum(v - mid, 0).sum() > 1:
      lo = mid
    else:
      hi = mid
  return np.maximum(v - 0.5 * (lo + hi), 0)


project = jax.jit(project_simplex)
solve = jax.jit(min_norm_simplex, static_argnums=1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4))
def test_projection_matches_bisection(values):
  v = np.asarray(values, np.float32)
  got = np.asarray(project(jnp.asarray(v)), np.float64)
  np.testing.assert_allclose(got, bisection_projection(v.astype(np.float64)),
                             atol=1e-4 * max(1.0, np.abs(v).max()))
  assert np.all(got >= 0) and abs(got.sum() - 1) < 1e-4 * max(1.0, np.abs(v).max())


def test_projection_by_hand():
  np.testing.assert_allclose(project(jnp.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5], rtol=1e-6)
  np.testing.assert_allclose(project(jnp.array([0.5, 0.5, 3.0])), [0.0, 0.0, 1.0])
  np.testing.assert_allclose(project(jnp.array([1.0, 1.0, -5.0])), [0.5, 0.5, 0.0])
  np.testing.assert_allclose(project(jnp.zeros(4)), [0.25] * 4)


def random_jacobian(rng, num_tasks, dim):
  """Task gradients with a shared component and different norms (conflicting and not)."""
  shared = rng.normal(size=(1, dim)) * rng.uniform(0.0, 2.0)
  own = rng.normal(size=(num_tasks, dim)) * rng.uniform(0.1, 3.0, size=(num_tasks, 1))
  return shared + own


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_brute_force(num_tasks):
  rng = np.random.default_rng(num_tasks)
  for dim in (2, num_tasks, 3 * num_tasks):
    for _ in range(4):
      jac = random_jacobian(rng, num_tasks, dim)
      gram = jac @ jac.T
      best, best_w = brute_force_min_norm(gram)
      w = np.asarray(solve(jnp.asarray(gram, jnp.float32), 100), np.float64)
      assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
      scale = gram.diagonal().max()
      # Tolerance: G in float32 carries a relative round-off of about K * eps (~1e-6 for K=10),
      # so the objective is only defined to that accuracy; allow 10x that. Since the min-norm
      # point d* is unique and ||d||^2 - ||d*||^2 >= ||d - d*||^2 on the hull, the point is then
      # within sqrt(1e-5) ~ 3e-3 (relative to the largest gradient).
      gap = (w @ gram @ w - best) / scale
      assert -1e-5 <= gap <= 1e-5, gap
      d, d_star = w @ jac, best_w @ jac
      assert np.linalg.norm(d - d_star) <= 3.2e-3 * np.sqrt(scale)


def test_closed_form_and_budget():
  # K = 2 by hand: g1 = (2, 0), g2 = (0, 1): w1 = (G22 - G12) / ||g1 - g2||^2 = 1 / 5.
  np.testing.assert_allclose(solve(jnp.array([[4.0, 0.0], [0.0, 1.0]]), 100), [0.2, 0.8])
  # Identical vectors: every w is optimal; the closed form picks 1/2.
  np.testing.assert_allclose(solve(jnp.ones((2, 2)), 100), [0.5, 0.5])
  # Orthonormal vectors: uniform weights.
  np.testing.assert_allclose(solve(jnp.eye(5), 100), np.full(5, 0.2), rtol=1e-5)
  # Any budget returns a point of the simplex.
  rng = np.random.default_rng(0)
  jac = random_jacobian(rng, 6, 4)
  for budget in (1, 2, 5):
    w = np.asarray(solve(jnp.asarray(jac @ jac.T, jnp.float32), budget))
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5


def test_degenerate_gramians_give_uniform_weights():
  for gram in [jnp.zeros((3, 3)), jnp.full((3, 3), jnp.nan),
               jnp.diag(jnp.array([1.0, jnp.inf, 1.0]))]:
    np.testing.assert_allclose(solve(gram, 100), np.full(3, 1 / 3), rtol=1e-6)
  np.testing.assert_array_equal(solve(jnp.zeros((1, 1)), 100), [1.0])


def test_jit_vmap_and_float64_input():
  rng = np.random.default_rng(1)
  grams = []
  for _ in range(4):
    jac = random_jacobian(rng, 4, 6)
    grams.append(jac @ jac.T)
  batched = jax.jit(jax.vmap(min_norm_simplex))(jnp.asarray(np.stack(grams), jnp.float32))
  batched = np.asarray(batched)
  for gram, w in zip(grams, batched):
    best, _ = brute_force_min_norm(gram)
    assert (w @ gram @ w - best) / gram.diagonal().max() < 1e-5
