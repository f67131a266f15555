import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import graddrop
from mtl_jax.optim.graddrop import GradDropState, graddrop_leaf
from tests.optim import conflict_checks as cc

RUN = cc.Runners(lambda k: graddrop())  # inputs K x 4
_leaf = jax.jit(graddrop_leaf)


def reference(grads, uniform, leak):
  """Chen et al. (2020), Algorithm 1 (f = identity, sgn(A) = 1), float64, for given U."""
  grads = np.asarray(grads, np.float64)
  purity = 0.5 * (1 + grads.sum(0) / np.abs(grads).sum(0))
  out = np.zeros(grads.shape[1:])
  for g, l in zip(grads, leak):
    mask = (purity > uniform) * (g > 0) + (purity < uniform) * (g < 0)
    out += (l + (1 - l) * mask) * g
  return out


def test_leaf_matches_reference_for_given_uniforms():
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(3, 5, 7))  # [K, batch, features], as in "rep" mode
  uniform = rng.uniform(size=(5, 7))
  for leak in ([0.0, 0.0, 0.0], [0.2, 0.5, 1.0]):
    out = _leaf(jnp.asarray(grads, jnp.float32), jnp.asarray(uniform, jnp.float32),
                jnp.asarray(leak, jnp.float32))
    np.testing.assert_allclose(out, reference(cc.rounded(grads), uniform, leak), rtol=1e-5,
                               atol=1e-6)


def test_hand_worked_element():
  # One element, g = (3, -1): P = (1 + 2/4) / 2 = 3/4. U = 0.5 < P keeps the positive part: 3;
  # U = 0.9 > P keeps the negative part: -1.
  grads = jnp.array([[3.0], [-1.0]])
  zero_leak = jnp.zeros(2)
  assert float(_leaf(grads, jnp.array([0.5]), zero_leak)[0]) == 3.0
  assert float(_leaf(grads, jnp.array([0.9]), zero_leak)[0]) == -1.0


def test_keep_frequency_is_the_sign_purity():
  # 20000 copies of the element g = (3, -1, 0.5): P = (1 + 2.5 / 4.5) / 2 = 7/9.
  n = 20000
  grads = np.tile(np.array([3.0, -1.0, 0.5])[:, None], (1, n))
  tx = graddrop(seed=1)
  out, _ = jax.jit(lambda g: tx.update(g, tx.init(None), None, losses=jnp.ones(3)))(
      jnp.asarray(grads, jnp.float32))
  out = np.asarray(out)
  assert set(np.unique(out)) <= {3.5, -1.0}
  freq = np.mean(out == 3.5)
  p = 7 / 9
  assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n), freq


def test_consistent_signs_and_leak_one_give_the_plain_sum():
  rng = np.random.default_rng(2)
  positive = np.abs(rng.normal(size=(3, 4)))
  for jac in (positive, -positive):
    np.testing.assert_allclose(RUN[3](jac)[0], cc.rounded(jac).sum(0), rtol=1e-6)
  mixed = rng.normal(size=(3, 4))
  out, _ = cc.Runner(graddrop(leak=[1.0, 1.0, 1.0]))(mixed)
  np.testing.assert_allclose(out, cc.rounded(mixed).sum(0), rtol=1e-6)
  grads = rng.normal(size=(3, 5, 7))
  out = _leaf(jnp.asarray(grads, jnp.float32), jnp.asarray(rng.uniform(size=(5, 7)), jnp.float32),
              jnp.ones(3))
  np.testing.assert_allclose(out, cc.rounded(grads).sum(0), rtol=1e-5, atol=1e-6)


def test_output_is_a_signed_part_of_the_sum():
  # With leak 0 every element is either the sum of the positive or of the negative components.
  rng = np.random.default_rng(3)
  jac = cc.rounded(rng.normal(size=(3, 4)))
  state = None
  for _ in range(5):
    out, state = RUN[3](jac, state)
    pos, neg = np.where(jac > 0, jac, 0).sum(0), np.where(jac < 0, jac, 0).sum(0)
    assert np.all(np.isclose(out, pos, rtol=1e-6) | np.isclose(out, neg, rtol=1e-6))


def test_zero_identical_opposite_single():
  g = np.array([0.5, -1.0, 2.0, 0.25])
  np.testing.assert_array_equal(RUN[2](np.zeros((2, 4)))[0], 0.0)
  np.testing.assert_allclose(RUN[2](np.stack([g, g]))[0], 2 * g, rtol=1e-6)
  # Exactly opposite: P = 1/2 per element; one of the two survives.
  out, _ = RUN[2](np.stack([g, -g]))
  np.testing.assert_allclose(np.abs(out), np.abs(g), rtol=1e-6)
  np.testing.assert_allclose(RUN[1](g[None])[0], g, rtol=1e-6)
  # Tiny gradients are treated like any others (no additive epsilon in the purity).
  tiny = np.abs(g)[None].repeat(2, 0) * 1e-30
  np.testing.assert_allclose(RUN[2](tiny)[0], cc.rounded(tiny).sum(0), rtol=1e-5)


def test_same_seed_same_masks_and_fresh_masks_each_step():
  rng = np.random.default_rng(4)
  jac = rng.normal(size=(3, 4))
  outs_a, outs_b, state_a, state_b = [], [], None, None
  for _ in range(12):
    out_a, state_a = RUN[3](jac, state_a)
    out_b, state_b = RUN[3](jac, state_b)
    outs_a.append(out_a)
    outs_b.append(out_b)
  np.testing.assert_array_equal(outs_a, outs_b)
  assert len({tuple(o) for o in outs_a}) > 1
  assert isinstance(state_a, GradDropState) and state_a.key.dtype == jnp.uint32


def test_bfloat16_rep_shaped_leaves():
  rng = np.random.default_rng(5)
  tx = graddrop()
  grads = {'features': jnp.asarray(rng.normal(size=(3, 8, 5)), jnp.bfloat16)}
  out, _ = jax.jit(lambda g: tx.update(g, tx.init(None), None, losses=jnp.ones(3)))(grads)
  assert out['features'].dtype == jnp.bfloat16 and out['features'].shape == (8, 5)
  assert np.all(np.isfinite(np.asarray(out['features'], np.float32)))


def test_robust_to_degenerate_inputs():
  cc.check_robust(RUN)


def test_metadata_errors_chain_jit_and_state():
  tx = graddrop()
  assert tx.family == 'elementwise' and tx.modes == ('rep', 'jacobian')
  assert tx.gramian_weights is None and tx.loss_weights is None
  for bad in ({'leak': -0.1}, {'leak': 2.0}, {'leak': 'x'}, {'leak': True}, {'leak': [[0.1]]},
              {'seed': 'a'}):
    with pytest.raises(UserError):
      graddrop(**bad)
  with pytest.raises(UserError, match='leaks'):
    cc.Runner(graddrop(leak=[0.1, 0.2]))(np.ones((3, 4)))
  cc.check_chain_jit_and_state(tx, 3)
