import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mtl_jax.errors import UserError
from mtl_jax.optim.dbmtl import DBMTLState, dbmtl
from tests.optim import helpers, weighting_checks


def reference_updates(jacobians, loss_seq, beta, beta_sigma, eps=1e-8):
  """DB-MTL as in the paper / the authors' code, on explicit gradients (float64): EMA of the
  log-loss gradients g_k / (L_k + eps), each rescaled to the largest norm, summed."""
  buffer = np.zeros_like(np.asarray(jacobians[0], np.float64))
  out = []
  for t, (jac, losses) in enumerate(zip(jacobians, loss_seq), start=1):
    log_grads = np.asarray(jac, np.float64) / (np.asarray(losses, np.float64)[:, None] + eps)
    beta_t = beta / t ** beta_sigma
    buffer = beta_t * buffer + (1 - beta_t) * log_grads
    norms = np.linalg.norm(buffer, axis=1)
    out.append(np.sum((norms.max() / norms)[:, None] * buffer, axis=0))
  return out


def run(tx, jacobians, loss_seq):
  tree0 = weighting_checks.as_tree(jacobians[0])
  state = tx.init(helpers.params_like(tree0))
  step = jax.jit(lambda g, s, l: tx.update(g, s, None, losses=l))
  outs = []
  for jac, losses in zip(jacobians, loss_seq):
    out, state = step(weighting_checks.as_tree(jac), state, jnp.asarray(losses, jnp.float32))
    outs.append(helpers.flat(out))
  return outs, state


def random_sequence(seed, k=3, dim=6, steps=5):
  rng = np.random.default_rng(seed)
  jacobians = [np.asarray(rng.normal(size=(k, dim)) * np.array([[5.0], [1.0], [0.1]])[:k],
                          np.float32).astype(np.float64) for _ in range(steps)]
  loss_seq = [rng.uniform(0.05, 4.0, size=k) for _ in range(steps)]
  return jacobians, loss_seq


@pytest.mark.parametrize('beta,beta_sigma', [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_matches_the_reference(beta, beta_sigma):
  jacobians, loss_seq = random_sequence(0)
  outs, state = run(dbmtl(3, beta=beta, beta_sigma=beta_sigma), jacobians, loss_seq)
  expected = reference_updates(jacobians, loss_seq, beta, beta_sigma)
  for out, ref in zip(outs, expected):
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
  if beta > 0:
    assert int(state.step) == len(loss_seq)


def test_hand_worked_without_averaging():
  # g1 = (3, 0), L1 = 1; g2 = (0, 2), L2 = 4: log-gradients (3, 0) and (0, 0.5); the second is
  # rescaled to norm 3: d = (3, 3).
  tx = dbmtl(2, beta=0.0)
  grads = {'a': jnp.array([[3.0, 0.0], [0.0, 2.0]])}
  out, _ = tx.update(grads, tx.init(None), None, losses=jnp.array([1.0, 4.0]))
  np.testing.assert_allclose(out['a'], [3.0, 3.0], rtol=1e-6)
  w, _ = tx.gramian_weights(jnp.array([[9.0, 0.0], [0.0, 4.0]]), jnp.array([1.0, 4.0]), None)
  np.testing.assert_allclose(w, [1.0, 1.5], rtol=1e-6)  # max_j ||grad log L_j|| / ||g_k||


def test_each_rescaled_term_has_the_largest_norm():
  jacobians, loss_seq = random_sequence(1, k=3, dim=8, steps=1)
  jac, losses = jacobians[0], loss_seq[0]
  tx = dbmtl(3, beta=0.0)
  w, _ = tx.gramian_weights(jnp.asarray(jac @ jac.T, jnp.float32),
                            jnp.asarray(losses, jnp.float32), None)
  terms = np.asarray(w, np.float64)[:, None] * jac
  log_norms = np.linalg.norm(jac, axis=1) / losses
  np.testing.assert_allclose(np.linalg.norm(terms, axis=1), log_norms.max(), rtol=1e-5)
  # Rescaling a task's loss by a constant (its gradient and loss alike) changes nothing.
  scaled = np.array([1.0, 1e-3, 30.0])
  jac_s = jac * scaled[:, None]
  w3, _ = tx.gramian_weights(jnp.asarray(jac_s @ jac_s.T, jnp.float32),
                             jnp.asarray(losses * scaled, jnp.float32), None)
  np.testing.assert_allclose(np.asarray(w3, np.float64) @ jac_s, np.asarray(w, np.float64) @ jac,
                             rtol=1e-4)


def test_gramian_and_elementwise_versions_agree_without_averaging():
  jacobians, loss_seq = random_sequence(2, steps=2)
  via_gramian, _ = run(dbmtl(3, beta=0.0), jacobians, loss_seq)
  module = importlib.import_module('mtl_jax.optim.dbmtl')
  # pylint: disable-next=protected-access
  via_buffer, _ = run(module._elementwise_dbmtl(3, 0.0, 0.0, 1e-8), jacobians, loss_seq)
  for a, b in zip(via_gramian, via_buffer):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_family_modes_and_state_shapes():
  tx = dbmtl(3)
  assert tx.family == 'elementwise' and tx.modes == ('jacobian',)
  params = {'w': jnp.zeros((4, 2)), 'b': jnp.zeros(2, jnp.bfloat16)}
  state = tx.init(params)
  assert isinstance(state, DBMTLState)
  assert state.buffer['w'].shape == (3, 4, 2) and state.buffer['b'].shape == (3, 2)
  assert state.buffer['b'].dtype == jnp.float32
  tx0 = dbmtl(3, beta=0.0)
  assert tx0.family == 'gramian' and tx0.modes == ('jacobian', 'rep')
  assert not tx0.weights_task_params


def test_absent_tasks_and_nonfinite_inputs():
  jacobians, loss_seq = random_sequence(3, steps=1)
  jac = jacobians[0].copy()
  jac[1] = 0.0
  losses = np.array(loss_seq[0])
  losses[1] = 0.0
  for beta in (0.0, 0.9):
    outs, _ = run(dbmtl(3, beta=beta), [jac], [losses])
    keep = np.array([0, 2])
    expected = reference_updates([jac[keep]], [losses[keep]], beta, 0.0)[0]
    np.testing.assert_allclose(outs[0], expected, rtol=1e-4)
  tx = dbmtl(2)
  tree = weighting_checks.as_tree(np.ones((2, 4)))
  state = tx.init(helpers.params_like(tree))
  _, state = tx.update(tree, state, None, losses=jnp.ones(2))
  _, after = tx.update(tree, state, None, losses=jnp.array([jnp.nan, 1.0]))
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_errors():
  for kwargs in ({'beta': 1.0}, {'beta': -0.1}, {'beta_sigma': -1.0}, {'eps': 0.0}):
    with pytest.raises(UserError):
      dbmtl(2, **kwargs)
  tx = dbmtl(2)
  state = tx.init({'a': jnp.zeros(3)})
  with pytest.raises(UserError, match='structure of the parameters'):
    tx.update({'a': jnp.zeros((2, 4))}, state, None, losses=jnp.ones(2))
  with pytest.raises(UserError, match='num_tasks=2'):
    tx.update({'a': jnp.zeros((3, 3))}, state, None, losses=jnp.ones(3))


@pytest.mark.parametrize('beta', [0.0, 0.9])
def test_chain_jit_and_state(beta):
  problems = [helpers.random_problem(s, 3) for s in range(4)]
  grads, losses = problems[0]
  combined, _ = helpers.chain_update(dbmtl(3, beta=beta), grads, losses)
  expected = reference_updates([helpers.jacobian_matrix(grads)], [np.asarray(losses)], beta, 0.0)
  np.testing.assert_allclose(helpers.flat(combined), expected[0], rtol=1e-5, atol=1e-6)
  helpers.assert_jit_traces_once(dbmtl(3, beta=beta), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(dbmtl(3, beta=beta, beta_sigma=0.5), problems)


_finite = {beta: weighting_checks.FiniteChecker(lambda k, beta=beta: dbmtl(k, beta=beta))
           for beta in (0.0, 0.9)}


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems(), st.sampled_from([0.0, 0.9]))
def test_degenerate_inputs_stay_finite(problem, beta):
  _finite[beta](*problem)
