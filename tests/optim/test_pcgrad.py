import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import pcgrad
from mtl_jax.optim.pcgrad import PCGradState, pcgrad_coefficients, random_orders
from tests.optim import conflict_checks as cc


def reference(jac, orders):
  """Yu et al. (2020), Algorithm 1, on the vectors (float64): for each i, for j != i in
  `orders[i]`, project g_i^PC off the original g_j when they conflict; return sum_i g_i^PC."""
  out = []
  for i, g in enumerate(jac):
    pc = g.copy()
    for j in orders[i]:
      if j == i:
        continue
      dot = pc @ jac[j]
      if dot < 0:
        pc = pc - dot / (jac[j] @ jac[j]) * jac[j]
    out.append(pc)
  return np.sum(out, axis=0)


def all_outcomes(jac):
  """The reference's result for every combination of per-task orders."""
  k = len(jac)
  per_task = [[p for p in itertools.permutations(range(k)) if True] for _ in range(k)]
  # Only the relative order of the other tasks matters: dedupe by removing i.
  per_task = [sorted({tuple(j for j in p if j != i) for p in perms})
              for i, perms in enumerate(per_task)]
  return [reference(jac, orders) for orders in itertools.product(*per_task)]


_coefficients = jax.jit(pcgrad_coefficients)
RUN = cc.Runners(pcgrad)  # K -> runner of pcgrad(K, seed=0); all inputs are K x 4


def pad(rows):
  rows = np.asarray(rows, np.float64)
  return np.pad(rows, ((0, 0), (0, 4 - rows.shape[1])))


def test_hand_worked_two_tasks():
  # g1 = (1, 0), g2 = (-1, 1): <g1, g2> = -1.
  # g1^PC = g1 + (1/2) g2 = (1/2, 1/2), g2^PC = g2 + g1 = (0, 1); sum (1/2, 3/2).
  jac = pad([[1.0, 0.0], [-1.0, 1.0]])
  out, _ = RUN[2](jac)
  np.testing.assert_allclose(out, [0.5, 1.5, 0, 0], rtol=1e-6)
  w, _ = RUN[2].weights(jac)
  np.testing.assert_allclose(w, [2.0, 1.5], rtol=1e-6)  # (1/2, 1/2) = g1 + g2 / 2, (0, 1) = g1 + g2


@pytest.mark.parametrize('num_tasks', [2, 3, 5])
def test_coefficients_match_vector_implementation(num_tasks):
  rng = np.random.default_rng(num_tasks)
  for _ in range(5):
    jac = cc.rounded(cc.random_jacobian(rng, num_tasks, 4))
    orders = np.stack([rng.permutation(num_tasks) for _ in range(num_tasks)])
    coef = np.asarray(_coefficients(jnp.asarray(jac @ jac.T, jnp.float32), jnp.asarray(orders)),
                      np.float64)
    expected = reference(jac, orders)
    np.testing.assert_allclose(coef.sum(0) @ jac, expected, rtol=1e-4,
                               atol=1e-5 * np.abs(jac).max())


@pytest.mark.parametrize('num_tasks', [3, 4])
def test_transform_is_one_of_the_random_order_outcomes(num_tasks):
  rng = np.random.default_rng(10 + num_tasks)
  jac = cc.rounded(cc.random_jacobian(rng, num_tasks, 4))
  outcomes = all_outcomes(jac)
  seen = set()
  tol = 1e-4 * np.abs(jac).max()
  run = RUN[num_tasks]
  for seed in range(12):
    out, _ = run(jac, pcgrad(num_tasks, seed=seed).init(None))
    matches = [i for i, o in enumerate(outcomes) if np.allclose(out, o, rtol=1e-4, atol=tol)]
    assert matches, out
    seen.add(min(matches))
  distinct = {tuple(np.round(o / tol)) for o in outcomes}
  if len(distinct) > 1:  # the order matters here: different seeds must reach different outcomes
    assert len(seen) > 1


def test_no_conflict_is_the_plain_sum():
  rng = np.random.default_rng(0)
  jac = np.abs(rng.normal(size=(3, 4))) + 0.1  # all inner products positive
  w, _ = RUN[3].weights(jac)
  np.testing.assert_array_equal(w, np.ones(3))
  out, _ = RUN[3](jac)
  np.testing.assert_allclose(out, cc.rounded(jac).sum(0), rtol=1e-6)


def test_two_tasks_projected_gradients_do_not_conflict():
  rng = np.random.default_rng(1)
  for _ in range(10):
    jac = cc.rounded(rng.normal(size=(2, 4)))
    coef = np.asarray(_coefficients(jnp.asarray(jac @ jac.T, jnp.float32),
                                    jnp.array([[0, 1], [0, 1]])), np.float64)
    pc = coef @ jac
    scale = np.abs(jac).max() ** 2
    assert pc[0] @ jac[1] >= -1e-5 * scale and pc[1] @ jac[0] >= -1e-5 * scale


def test_orders_are_uniform_permutations():
  draws = np.asarray(jax.jit(jax.vmap(lambda k: random_orders(k, 3)))(
      jax.random.split(jax.random.key(0), 3000)))
  counts = {}
  for row in draws.reshape(-1, 3):
    assert sorted(row) == [0, 1, 2]
    counts[tuple(row)] = counts.get(tuple(row), 0) + 1
  assert len(counts) == 6
  n = draws.shape[0] * 3
  # Each of the 6 permutations has probability 1/6: binomial std sqrt(n p (1 - p)); allow 4.
  for c in counts.values():
    assert abs(c - n / 6) < 4 * np.sqrt(n * (1 / 6) * (5 / 6))


def test_same_seed_same_result_and_the_key_advances():
  jac = cc.random_jacobian(np.random.default_rng(3), 3, 4)
  state_a, state_b = pcgrad(3, seed=5).init(None), pcgrad(3, seed=5).init(None)
  first = state_a
  for _ in range(3):
    out_a, state_a = RUN[3](jac, state_a)
    out_b, state_b = RUN[3](jac, state_b)
    np.testing.assert_array_equal(out_a, out_b)
  assert not np.array_equal(np.asarray(state_a.key), np.asarray(first.key))


def test_identical_opposite_zero_and_single():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  run2 = RUN[2]
  np.testing.assert_allclose(run2(np.stack([g, g]))[0], 2 * g, rtol=1e-6)
  # Exactly opposite: each is projected onto the other's orthogonal complement: 0 + 0.
  np.testing.assert_allclose(run2(np.stack([g, -g]))[0], 0.0, atol=1e-6)
  np.testing.assert_allclose(run2(np.stack([g, np.zeros(4)]))[0], g, rtol=1e-6)
  np.testing.assert_allclose(RUN[1](g[None])[0], g, rtol=1e-6)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_equivariance(scale):
  jac = cc.random_jacobian(np.random.default_rng(4), 3, 4)
  run = RUN[3]
  out, _ = run(jac)
  out_s, _ = run(jac * scale)
  np.testing.assert_allclose(out_s / scale, out, rtol=1e-4, atol=1e-5 * np.abs(out).max())


def test_bfloat16():
  jac = cc.random_jacobian(np.random.default_rng(5), 3, 4)
  run = RUN[3]
  out16, _ = run(jac, dtype=jnp.bfloat16)
  out32, _ = run(cc.rounded(jac, jnp.bfloat16))
  np.testing.assert_allclose(out16, out32, rtol=2e-2, atol=2e-2 * np.abs(out32).max())


def test_robust_to_degenerate_inputs():
  cc.check_robust(RUN)


def test_metadata_errors_chain_jit_and_state():
  tx = pcgrad(3)
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and not tx.weights_task_params
  state = tx.init(None)
  assert isinstance(state, PCGradState) and state.key.dtype == jnp.uint32
  with pytest.raises(UserError):
    pcgrad(0)
  with pytest.raises(UserError):
    pcgrad(2, seed=0.5)
  with pytest.raises(UserError, match='num_tasks=3'):
    RUN[3].weights(np.ones((2, 4)))
  cc.check_weighted_sum(RUN[3], cc.random_jacobian(np.random.default_rng(0), 3, 4))
  cc.check_chain_jit_and_state(tx, 3)
