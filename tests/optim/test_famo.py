import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.famo import FAMOState, famo
from tests.optim import helpers, weighting_checks


def softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def reference_weights(loss_seq, lr=0.025, wd=1e-3, min_loss=1e-8):
  """FAMO written from the paper (Algorithm 1) and the official code, in float64: the logits take
  one Adam step (L2 decay in the gradient) on J_softmax^T delta with delta the decrease of the
  log-losses since the previous step, then w = c z / L with c = 1 / sum(z / L)."""
  xi = np.zeros(len(loss_seq[0]))
  adam = weighting_checks.NumpyAdam(lr, weight_decay=wd)
  prev, weights = None, []
  for losses in loss_seq:
    losses = np.maximum(np.asarray(losses, np.float64), min_loss)
    if prev is not None:
      delta = np.log(prev) - np.log(losses)
      z = softmax(xi)
      xi = adam.step(xi, (np.diag(z) - np.outer(z, z)) @ delta)
    z = softmax(xi)
    weights.append((z / losses) / np.sum(z / losses))
    prev = losses
  return weights


def run(tx, loss_seq):
  state = tx.init(None)
  weights = []
  step = jax.jit(lambda s, l: (tx.loss_weights(s, l), tx.advance(s, l, None)))
  for losses in loss_seq:
    w, state = step(state, jnp.asarray(losses, jnp.float32))
    weights.append(np.asarray(w))
  return weights, state


def test_matches_the_reference_algorithm():
  rng = np.random.default_rng(0)
  loss_seq = [rng.uniform(0.1, 3.0, size=3) for _ in range(8)]
  # Make task 0 improve fast and task 2 stall, so that the logits move visibly.
  for t, losses in enumerate(loss_seq):
    losses[0] = 2.0 * 0.7 ** t
    losses[2] = 1.0 + 0.01 * t
  for lr, wd in ((0.025, 1e-3), (0.3, 0.05)):
    weights, _ = run(famo(3, learning_rate=lr, weight_decay=wd), loss_seq)
    expected = reference_weights(loss_seq, lr, wd)
    np.testing.assert_allclose(np.array(weights), np.array(expected), rtol=1e-5, atol=1e-7)
    # The stalled task gained weight relative to the plain 1/L weighting of step 1.
    assert weights[-1][2] / weights[-1][0] > (loss_seq[-1][0] / loss_seq[-1][2])
  # First step: uniform logits, w = (1 / L) / sum(1 / L); weights always sum to 1.
  np.testing.assert_allclose(weights[0], (1 / loss_seq[0]) / np.sum(1 / loss_seq[0]), rtol=1e-6)
  np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-6)


def test_update_is_the_gradient_of_the_official_loss():
  # With c held constant, grad sum_k (z_k / c) log L_k = sum_k w_k g_k.
  params, losses_fn = helpers.toy_model(3, seed=5)
  tx = famo(3)
  logits = jnp.array([0.3, -0.2, 0.5])
  state = FAMOState(logits, tx.init(None).inner, jnp.zeros(3), jnp.zeros((), jnp.int32))
  z = jax.nn.softmax(logits)
  c = jnp.sum(z / losses_fn(params))

  def objective(p):
    return jnp.sum(z / c * jnp.log(losses_fn(p)))

  weighting_checks.assert_gradient_of(tx, params, losses_fn, objective, state=state)


def test_absent_tasks_and_nonfinite_losses():
  tx = famo(3)
  weights, state = run(tx, [[1.0, 0.0, 2.0], [0.5, 1.0, 2.0]])
  assert weights[0][1] == 0.0 and weights[1][1] > 0.0
  np.testing.assert_allclose(weights[0], [2 / 3, 0.0, 1 / 3], rtol=1e-6)
  # Task 1 had no previous loss: delta_1 = 0, exactly as a task whose loss did not move.
  expected = reference_weights([[1.0, 2.0, 2.0], [0.5, 2.0, 2.0]])[1]
  z = expected * np.array([0.5, 2.0, 2.0])
  z = z / z.sum()
  np.testing.assert_allclose(weights[1], z / [0.5, 1.0, 2.0] / np.sum(z / [0.5, 1.0, 2.0]),
                             rtol=1e-5)
  np.testing.assert_array_equal(tx.loss_weights(tx.init(None), jnp.zeros(3)), [0.0, 0.0, 0.0])
  after = tx.advance(state, jnp.array([jnp.nan, 1.0, 1.0]), None)
  for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_errors():
  with pytest.raises(UserError):
    famo(2, learning_rate=0.0)
  with pytest.raises(UserError):
    famo(2, weight_decay=-1.0)
  with pytest.raises(UserError):
    famo(2, min_loss=0.0)
  with pytest.raises(UserError, match='num_tasks=2'):
    famo(2).loss_weights(famo(2).init(None), jnp.ones(3))


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(7, 3)
  w = helpers.assert_chain_matches_weights(famo(3), grads, losses)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  helpers.assert_jit_traces_once(famo(3), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(famo(3, learning_rate=0.5), problems, num_before=3)
  tx = famo(3)
  assert tx.family == 'loss_weighting' and tx.modes[0] == 'weighted' and tx.weights_task_params


_finite = weighting_checks.FiniteChecker(lambda k: famo(k))


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems())
def test_degenerate_inputs_stay_finite(problem):
  _finite(*problem)
