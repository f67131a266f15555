import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mtl_jax.errors import UserError
from mtl_jax.optim.gradnorm import GradNormState, gradnorm
from tests.optim import helpers, weighting_checks


def reference_weights(jacobians, loss_seq, alpha, lr):
  """GradNorm from the paper, on explicit Jacobians: the weights used at each step. dL_grad/dw
  comes from jax.grad of L_grad = sum_k | ||w_k g_k|| - target_k | itself."""
  k = len(loss_seq[0])
  w = np.ones(k)
  adam = weighting_checks.NumpyAdam(lr)
  initial = np.asarray(loss_seq[0], np.float64)
  used = []
  for jac, losses in zip(jacobians, loss_seq):
    ratio = np.asarray(losses, np.float64) / initial
    r = ratio / ratio.mean()
    target = np.mean(np.linalg.norm(w[:, None] * jac, axis=1)) * r ** alpha  # a constant
    jac32 = jnp.asarray(jac, jnp.float32)
    l_grad = lambda v: jnp.sum(jnp.abs(jnp.linalg.norm(v[:, None] * jac32, axis=1) - target))
    used.append(w.copy())
    w = adam.step(w, np.asarray(jax.grad(l_grad)(jnp.asarray(w, jnp.float32)), np.float64))
    w = k * w / w.sum()
  return used


def run(tx, jacobians, loss_seq):
  step = jax.jit(lambda g, l, s: tx.gramian_weights(g, l, s))
  state = tx.init(None)
  used = []
  for jac, losses in zip(jacobians, loss_seq):
    jac32 = jnp.asarray(jac, jnp.float32)
    w, state = step(jac32 @ jac32.T, jnp.asarray(losses, jnp.float32), state)
    used.append(np.asarray(w))
  return used, state


def test_matches_the_paper_on_explicit_gradients():
  rng = np.random.default_rng(0)
  jacobians = [rng.normal(size=(3, 6)) * np.array([[3.0], [1.0], [0.2]]) for _ in range(6)]
  jacobians = [np.asarray(j, np.float32).astype(np.float64) for j in jacobians]
  loss_seq = [np.array([2.0, 1.0, 0.5]) * np.array([0.9, 0.95, 0.99]) ** t for t in range(6)]
  for alpha, lr in ((1.5, 0.025), (0.5, 0.2)):
    used, state = run(gradnorm(3, alpha=alpha, learning_rate=lr), jacobians, loss_seq)
    expected = reference_weights(jacobians, loss_seq, alpha, lr)
    np.testing.assert_allclose(np.array(used), np.array(expected), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(state.initial_losses, loss_seq[0], rtol=1e-6)
    np.testing.assert_allclose(np.sum(state.weights), 3.0, rtol=1e-6)
  # The task with the largest gradient loses weight, the smallest gains.
  assert used[-1][0] < 1.0 < used[-1][2]


def test_first_step_by_hand():
  # Norms (2, 1), equal training rates: target = 1.5 for both, G = (2, 1), so
  # dL/dw = (sign(0.5) * 2, sign(-0.5) * 1); Adam's first step is -lr * sign: w = (1 - lr, 1 + lr).
  tx = gradnorm(2, learning_rate=0.1)
  w, state = tx.gramian_weights(jnp.diag(jnp.array([4.0, 1.0])), jnp.array([1.0, 3.0]),
                                tx.init(None))
  np.testing.assert_array_equal(w, [1.0, 1.0])
  np.testing.assert_allclose(state.weights, [0.9, 1.1], rtol=1e-6)
  # Unit norms, L(0) = (1, 1), L = (0.5, 1.5): r = (0.5, 1.5), mean_j w_j ||g_j|| = 1 (sum w = 2),
  # targets r^1.5 = (0.354, 1.837). w = (0.37, 1.63): task 0 is above its target (it would be
  # below 0.5^1.35 = 0.392), task 1 below: w -> (0.37 - lr, 1.63 + lr), sum still 2.
  state = GradNormState(jnp.array([0.37, 1.63]), jnp.array([1.0, 1.0]),
                        tx.init(None).inner)
  _, state = tx.gramian_weights(jnp.eye(2), jnp.array([0.5, 1.5]), state)
  np.testing.assert_allclose(state.weights, [0.27, 1.73], rtol=1e-5)


def test_equalises_weighted_gradient_norms():
  # Fixed gradients of norms (2, 1, 4) and equal training rates: w_k ||g_k|| -> common value, with
  # sum w = 3: w = 3 (1/2, 1, 1/4) / 1.75.
  tx = gradnorm(3, learning_rate=0.01)
  g = jnp.diag(jnp.array([4.0, 1.0, 16.0]))
  losses = jnp.array([1.0, 2.0, 3.0])

  def body(state, _):
    return tx.gramian_weights(g, losses, state)[1], None

  state, _ = jax.lax.scan(body, tx.init(None), None, length=600)
  np.testing.assert_allclose(state.weights, 3 * np.array([0.5, 1.0, 0.25]) / 1.75, atol=0.03)


def test_slow_tasks_get_larger_weights():
  # Equal gradient norms; task 1's loss has not fallen: L~ = (0.5, 1.5), r = (0.5, 1.5), so the
  # target norms are mean * r^alpha and the weight ratio w_1 / w_0 grows with alpha (no pull at
  # alpha = 0: equal norms, equal weights).
  g = jnp.eye(2)
  ratios = []
  for alpha in (0.0, 0.5, 1.5):
    tx = gradnorm(2, alpha=alpha, learning_rate=0.01)
    state = tx.gramian_weights(g, jnp.array([2.0, 2.0]), tx.init(None))[1]  # records L(0)

    def body(state, _, tx=tx):
      return tx.gramian_weights(g, jnp.array([1.0, 3.0]), state)[1], None

    state, _ = jax.lax.scan(body, state, None, length=400)
    ratios.append(float(state.weights[1] / state.weights[0]))
  assert abs(ratios[0] - 1.0) < 0.05
  assert 1.5 < ratios[1] < ratios[2]


def test_absent_tasks_and_nonfinite_inputs():
  tx = gradnorm(3)
  g = jnp.diag(jnp.array([1.0, 0.0, 4.0]))
  _, state = tx.gramian_weights(g, jnp.array([1.0, 0.0, 2.0]), tx.init(None))
  np.testing.assert_array_equal(state.initial_losses, [1.0, 0.0, 2.0])  # task 1 not seen yet
  _, state = tx.gramian_weights(g, jnp.array([1.0, 5.0, 2.0]), state)
  np.testing.assert_array_equal(state.initial_losses, [1.0, 5.0, 2.0])
  assert np.all(np.isfinite(state.weights)) and np.all(np.asarray(state.weights) > 0)
  for bad_g, bad_l in ((g, jnp.array([jnp.nan, 1.0, 1.0])), (g.at[0, 0].set(jnp.inf), jnp.ones(3))):
    _, after = tx.gramian_weights(bad_g, bad_l, state)
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(state)):
      np.testing.assert_array_equal(a, b)


def test_errors():
  with pytest.raises(UserError):
    gradnorm(2, alpha=-1.0)
  with pytest.raises(UserError):
    gradnorm(2, learning_rate=0.0)
  with pytest.raises(UserError, match='num_tasks=2'):
    gradnorm(2).gramian_weights(jnp.eye(3), jnp.ones(3), gradnorm(2).init(None))


def test_chain_jit_and_state():
  grads, losses = helpers.random_problem(8, 3)
  w = helpers.assert_chain_matches_weights(gradnorm(3), grads, losses)
  np.testing.assert_array_equal(w, [1.0, 1.0, 1.0])
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  helpers.assert_jit_traces_once(gradnorm(3), problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(gradnorm(3, learning_rate=0.3), problems, num_before=3)
  tx = gradnorm(3)
  assert isinstance(tx.init(None), GradNormState)
  assert tx.family == 'gramian' and tx.modes == ('jacobian', 'rep') and tx.weights_task_params
  # The combined update uses the weights before this step's update of w.
  state = tx.init(None)
  for task_grads, losses in problems[:2]:
    w_before = state.weights
    out, state = tx.update(task_grads, state, None, losses=losses)
    np.testing.assert_allclose(helpers.flat(out), np.asarray(w_before, np.float64)
                               @ helpers.jacobian_matrix(task_grads), rtol=1e-5, atol=1e-6)
  assert not np.allclose(state.weights, 1.0)


_finite = weighting_checks.FiniteChecker(lambda k: gradnorm(k, learning_rate=0.5))


@settings(max_examples=20, deadline=None)
@given(weighting_checks.degenerate_problems())
def test_degenerate_inputs_stay_finite(problem):
  _, state = _finite(*problem)
  np.testing.assert_allclose(np.sum(state.weights), problem[0].shape[0], rtol=1e-5)
  assert np.all(np.asarray(state.weights) > 0)
