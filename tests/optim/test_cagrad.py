import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from mtl_jax.errors import UserError
from mtl_jax.optim import cagrad
from mtl_jax.optim.cagrad import cagrad_dual
from tests.optim import conflict_checks as cc

RUN = cc.Runners(lambda k: cagrad(c=0.5, rescale=0))  # inputs K x 4
# The dual solver with c traced (one compilation per K for all c).
_dual = jax.jit(cagrad_dual, static_argnums=(2, 3))


def direction(jac, c):
  """d = g0 + lambda g_w (rescale 0) from the solver, float64."""
  jac = np.asarray(jac, np.float64)
  k = len(jac)
  w, lam = _dual(jnp.asarray(jac @ jac.T, jnp.float32), jnp.float32(c), 40, 100)
  return (np.full(k, 1 / k) + float(lam) * np.asarray(w, np.float64)) @ jac


def reference(jac, c):
  """Liu et al. (2021) through the dual, as in the official code but in float64 with tight
  tolerances and several starts (scipy SLSQP): d = g0 + c ||g0|| g_w / ||g_w||."""
  gram = jac @ jac.T
  k = len(jac)
  u = np.full(k, 1 / k)
  r = c * np.sqrt(u @ gram @ u)
  best = None
  for start in [u] + list(np.random.default_rng(0).dirichlet(np.ones(k), size=4)):
    res = minimize(lambda w: w @ gram @ u + r * np.sqrt(max(w @ gram @ w, 0.0)), start,
                   bounds=[(0, 1)] * k, constraints=({'type': 'eq', 'fun': lambda w: 1 - w.sum()},),
                   method='SLSQP', options={'ftol': 1e-15, 'maxiter': 1000})
    if best is None or res.fun < best.fun:
      best = res
  gw = best.x @ jac
  return jac.mean(0) + r * gw / np.linalg.norm(gw)


def test_c_zero_is_exactly_the_mean():
  rng = np.random.default_rng(0)
  run = cc.Runner(cagrad(c=0.0))
  jac = cc.random_jacobian(rng, 3, 4)
  w, _ = run.weights(jac)
  np.testing.assert_array_equal(w, np.full(3, np.float32(1 / 3)))
  np.testing.assert_allclose(run(jac)[0], cc.rounded(jac).mean(0), rtol=1e-6)


def test_hand_worked():
  # K = 1: d = g + c ||g|| g / ||g|| = (1 + c) g.
  g = np.array([[1.0, -2.0, 0.5, 3.0]])
  np.testing.assert_allclose(RUN[1](g)[0], 1.5 * g[0], rtol=1e-5)
  # Orthonormal g1, g2: by symmetry w = (1/2, 1/2), g_w = g0, d = (1 + c) g0.
  jac = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
  g0 = jac.mean(0)
  np.testing.assert_allclose(RUN[2](jac)[0], 1.5 * g0, rtol=1e-5)
  np.testing.assert_allclose(direction(jac, 0.8), 1.8 * g0, rtol=1e-5)


def test_rescale():
  # rescale 1 divides d by 1 + c^2, rescale 2 by 1 + c (K = 1: d = (1 + c) g).
  g = np.array([[1.0, -2.0, 0.5, 3.0]])
  for rescale, expected in ((1, 1.5 / 1.25), (2, 1.0)):
    w, _ = jax.jit(lambda gram, r=rescale: cagrad(c=0.5, rescale=r).gramian_weights(
        gram, jnp.ones(1), None))(jnp.asarray(g @ g.T, jnp.float32))
    np.testing.assert_allclose(w, [expected], rtol=1e-5)


@pytest.mark.parametrize('num_tasks', [2, 3, 5])
def test_matches_scipy_reference(num_tasks):
  rng = np.random.default_rng(num_tasks)
  for c in (0.2, 0.5, 0.8):
    for _ in range(3):
      jac = cc.rounded(cc.random_jacobian(rng, num_tasks, 4))
      d = direction(jac, c)
      expected = reference(jac, c)
      # Measured agreement ~1e-7..5e-5; the reference's own tolerance is not far below.
      assert np.linalg.norm(d - expected) <= 1e-3 * np.linalg.norm(expected)
      # The primal constraint is tight and the worst-task improvement is (at least) optimal.
      g0 = jac.mean(0)
      np.testing.assert_allclose(np.linalg.norm(d - g0), c * np.linalg.norm(g0), rtol=1e-4)
      scale = np.abs(jac).max() ** 2
      assert (jac @ d).min() >= (jac @ expected).min() - 1e-4 * scale


def test_worst_task_improves_on_the_mean():
  # CAGrad maximises min_k <g_k, d> over a ball around g0 containing g0.
  rng = np.random.default_rng(11)
  for _ in range(5):
    jac = cc.rounded(cc.random_jacobian(rng, 3, 4))
    d = RUN[3](jac)[0]
    assert (jac @ d).min() >= (jac @ jac.mean(0)).min() - 1e-5 * np.abs(jac).max() ** 2


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_equivariance(scale):
  jac = cc.random_jacobian(np.random.default_rng(4), 3, 4)
  out, _ = RUN[3](jac)
  out_s, _ = RUN[3](jac * scale)
  np.testing.assert_allclose(out_s / scale, out, rtol=1e-4, atol=1e-5 * np.abs(out).max())


def test_degenerate_cases_give_the_mean():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  h = np.array([2.0, 1.0, 0.0, 0.0])  # orthogonal to g
  np.testing.assert_allclose(RUN[2](np.stack([g, -g]))[0], 0.0, atol=1e-6)  # g0 = 0
  np.testing.assert_array_equal(RUN[2](np.zeros((2, 4)))[0], 0.0)
  np.testing.assert_allclose(RUN[2](np.stack([g, g]))[0], 1.5 * g, rtol=1e-5)
  # 0 on an edge of the hull: the dual has g_w = 0 and the paper's lambda is 0/0: the mean.
  jac = np.stack([g, -g, h])
  np.testing.assert_allclose(RUN[3](jac)[0], jac.mean(0), rtol=1e-5, atol=1e-6)


def test_bfloat16():
  jac = cc.random_jacobian(np.random.default_rng(5), 3, 4)
  out16, _ = RUN[3](jac, dtype=jnp.bfloat16)
  out32, _ = RUN[3](cc.rounded(jac, jnp.bfloat16))
  np.testing.assert_allclose(out16, out32, rtol=2e-2, atol=2e-2 * np.abs(out32).max())


def test_robust_to_degenerate_inputs():
  cc.check_robust(RUN)


def test_metadata_errors_chain_jit_and_state():
  tx = cagrad()
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and not tx.weights_task_params
  for bad in ({'c': -0.1}, {'c': float('nan')}, {'c': 'x'}, {'rescale': 3}, {'rescale': True},
              {'num_iters': 0}):
    with pytest.raises(UserError):
      cagrad(**bad)
  cc.check_weighted_sum(RUN[3], cc.random_jacobian(np.random.default_rng(0), 3, 4))
  cc.check_chain_jit_and_state(tx, 3)
