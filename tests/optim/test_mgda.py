import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtl_jax.errors import UserError
from mtl_jax.optim import mgda
from mtl_jax.optim.base import gramian
from tests.optim import helpers
from tests.optim.test_solvers import brute_force_min_norm, random_jacobian


_jitted = {}


def combined_direction(task_grads, losses=None, normalization='none'):
  """mgda's output as a flat float64 vector (jitted once per normalisation, so that repeated
  shapes reuse the compilation)."""
  num = jax.tree.leaves(task_grads)[0].shape[0]
  losses = jnp.ones(num) if losses is None else losses
  if normalization not in _jitted:
    tx = mgda(normalization=normalization)
    _jitted[normalization] = jax.jit(lambda g, l: tx.update(g, tx.init(None), None, losses=l)[0])
  return helpers.flat(_jitted[normalization](task_grads, losses))


def as_tree(jac, dtype=jnp.float32):
  """Splits a K x P matrix into a two-leaf gradient tree."""
  jac = jnp.asarray(jac, dtype)
  cut = jac.shape[1] // 2
  return {'a': jac[:, :cut], 'b': jac[:, cut:]}


def test_hand_worked_two_tasks():
  # Orthogonal unit gradients: w = (1/2, 1/2).
  np.testing.assert_allclose(combined_direction(as_tree([[1.0, 0.0], [0.0, 1.0]])), [0.5, 0.5])
  # g1 = (1, 0), g2 = (1, 1): g1 is the closest point of the segment to 0.
  np.testing.assert_allclose(combined_direction(as_tree([[1.0, 0.0], [1.0, 1.0]])), [1.0, 0.0],
                             atol=1e-7)
  # g1 = (2, 0), g2 = (0, 1): w1 = 1 / 5, d = (0.4, 0.8).
  np.testing.assert_allclose(combined_direction(as_tree([[2.0, 0.0], [0.0, 1.0]])), [0.4, 0.8],
                             rtol=1e-6)


def test_hand_worked_normalizations():
  tree = as_tree([[2.0, 0.0], [0.0, 1.0]])
  losses = jnp.array([2.0, 1.0])
  # 'l2': unit gradients (1, 0), (0, 1) -> u = (1/2, 1/2), d = (1/2, 1/2),
  # w = u / ||g|| = (1/4, 1/2).
  np.testing.assert_allclose(combined_direction(tree, losses, normalization='l2'), [0.5, 0.5],
                             rtol=1e-6)
  # 'loss': g / L = (1, 0), (0, 1): the same.
  np.testing.assert_allclose(combined_direction(tree, losses, normalization='loss'), [0.5, 0.5],
                             rtol=1e-6)
  # 'loss+': g / (L ||g||) = (1/2, 0), (0, 1): u1 = 1 / (1/4 + 1) = 0.8, d = (0.4, 0.2).
  np.testing.assert_allclose(combined_direction(tree, losses, normalization='loss+'), [0.4, 0.2],
                             rtol=1e-6)
  tx = mgda(normalization='loss+')
  w, _ = tx.gramian_weights(gramian(tree), losses, tx.init(None))
  np.testing.assert_allclose(w, [0.2, 0.2], rtol=1e-6)  # u / n = (0.8 / 4, 0.2 / 1)


@pytest.mark.parametrize('num_tasks', [2, 3, 5, 10])
def test_matches_brute_force_min_norm_point(num_tasks):
  rng = np.random.default_rng(100 + num_tasks)
  for dim in (num_tasks - 1 or 1, 2 * num_tasks):
    for _ in range(3):
      jac = random_jacobian(rng, num_tasks, 2 * dim)
      jac32 = jac.astype(np.float32).astype(np.float64)
      gram = jac32 @ jac32.T
      _, w_star = brute_force_min_norm(gram)
      d = combined_direction(as_tree(jac32))
      scale = np.sqrt(gram.diagonal().max())
      # See test_solvers.test_matches_brute_force for this bound (sqrt of 1e-5 relative).
      assert np.linalg.norm(d - w_star @ jac32) <= 3.2e-3 * scale
      # No conflict: <d, g_k> >= ||d||^2 >= 0, up to the same round-off.
      assert np.all(jac32 @ d >= d @ d - 1e-5 * scale ** 2)


def test_single_task_returns_its_gradient():
  g = np.array([[0.3, -2.0, 5.0, 1.0]])
  np.testing.assert_allclose(combined_direction(as_tree(g)), g[0], rtol=1e-6)


def test_identical_opposite_and_zero_gradients():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_allclose(combined_direction(as_tree(np.stack([g, g, g]))), g, rtol=1e-5)
  for rows in ([g, -g], [g, -g, 2 * g], [g, -3 * g, np.array([1.0, 1.0, 0.0, 0.0])]):
    d = combined_direction(as_tree(np.stack(rows)))
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d, 0.0, atol=1e-5)
  for k in (1, 2, 3):
    d = combined_direction(as_tree(np.zeros((k, 4))))
    assert np.all(np.isfinite(d)) and np.all(d == 0)
  # One zero gradient among others: 0 is in the hull, so d = 0.
  np.testing.assert_allclose(combined_direction(as_tree(np.stack([g, np.zeros(4), 3 * g + 1]))),
                             0.0, atol=1e-6)


@pytest.mark.parametrize('scale', [1e-8, 1e8])
def test_scale_invariance(scale):
  rng = np.random.default_rng(7)
  for k in (2, 4):
    jac = random_jacobian(rng, k, 6)
    d1 = combined_direction(as_tree(jac))
    ds = combined_direction(as_tree(jac * scale))
    assert np.all(np.isfinite(ds))
    np.testing.assert_allclose(ds / scale, d1, rtol=1e-4, atol=1e-5 * np.abs(d1).max())


def test_bfloat16_gradients():
  rng = np.random.default_rng(8)
  jac = random_jacobian(rng, 3, 8)
  tree16 = as_tree(jac, jnp.bfloat16)
  tx = mgda()
  out, _ = jax.jit(lambda g: tx.update(g, tx.init(None), None, losses=jnp.ones(3)))(tree16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
  d16 = helpers.flat(out)
  # Reference: the same (bf16-rounded) gradients in float32; bf16 output rounding is 2^-8.
  d32 = combined_direction(jax.tree.map(lambda x: x.astype(jnp.float32), tree16))
  assert np.all(np.isfinite(d16))
  np.testing.assert_allclose(d16, d32, rtol=1e-2, atol=1e-2 * np.abs(d32).max())


_weights = jax.jit(lambda g, losses: mgda().gramian_weights(g, losses, None)[0])


# Degenerate inputs: gradients built from a few base directions, with duplicates, negations,
# zeros and wildly different scales.
_vectors = st.sampled_from([
    [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, -2.0, -0.5], [3.0, 3.0, 3.0, 3.0]])
_scales = st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 1e3, 1e8])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2).flatmap(
    lambda i: st.lists(st.tuples(_vectors, _scales), min_size=(2, 3, 5)[i], max_size=(2, 3, 5)[i])))
def test_degenerate_inputs_are_finite_and_conflict_free(rows):
  jac = np.array([np.asarray(v) * s for v, s in rows], np.float32).astype(np.float64)
  w = np.asarray(_weights(gramian(as_tree(jac)), jnp.ones(len(rows))), np.float64)
  assert np.all(np.isfinite(w)) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  d = combined_direction(as_tree(jac))
  assert np.all(np.isfinite(d))
  norms = np.linalg.norm(jac, axis=1)
  # <d, g_k> >= -tol, with a tolerance relative to float32 round-off of the largest gradient.
  assert np.all(jac @ d >= -1e-5 * norms * norms.max())


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(['none', 'l2', 'loss', 'loss+']),
       st.lists(st.sampled_from([0.0, -1.0, 1e-6, 1.0, 1e6]), min_size=3, max_size=3),
       st.sampled_from([None, 0, 2]))
def test_normalizations_with_odd_losses_stay_finite(normalization, losses, zero_task):
  jac = random_jacobian(np.random.default_rng(len(normalization)), 3, 4)
  if zero_task is not None:
    jac[zero_task] = 0.0
  d = combined_direction(as_tree(jac), jnp.asarray(losses, jnp.float32),
                         normalization=normalization)
  assert np.all(np.isfinite(d))


def test_errors_and_metadata():
  with pytest.raises(UserError, match='normalization'):
    mgda(normalization='l1')
  with pytest.raises(UserError):
    mgda(max_iters=0)
  tx = mgda()
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and not tx.weights_task_params


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(9, 4)
  w = helpers.assert_chain_matches_weights(mgda(), grads, losses)
  assert abs(w.sum() - 1) < 1e-5
  problems = [helpers.random_problem(s, 4) for s in range(4)]
  helpers.assert_jit_traces_once(mgda(normalization='loss+'), problems)
  helpers.assert_state_roundtrips(mgda(), problems)
