"""Shared pieces of the tests of pcgrad, gradvac, graddrop, cagrad, nash_mtl and fairgrad:
gradient trees from matrices, a cached jitted runner, and a degenerate-input robustness check."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from tests.optim import helpers


def as_tree(jac, dtype=jnp.float32):
  """Splits a K x P matrix (P >= 2) into a two-leaf gradient tree (one leaf 3-d)."""
  jac = jnp.asarray(np.asarray(jac, np.float64), dtype)
  cut = jac.shape[1] // 2
  return {'a': jac[:, :cut], 'b': jac[:, cut:].reshape(jac.shape[0], 1, -1)}


def rounded(jac, dtype=jnp.float32):
  """The matrix as the method sees it (rounded to `dtype`), in float64."""
  return np.asarray(jnp.asarray(np.asarray(jac, np.float64), dtype).astype(jnp.float32),
                    np.float64)


def random_jacobian(rng, num_tasks, dim):
  """Task gradients with a shared component and different norms (conflicting and not)."""
  shared = rng.normal(size=(1, dim)) * rng.uniform(0.0, 2.0)
  own = rng.normal(size=(num_tasks, dim)) * rng.uniform(0.1, 3.0, size=(num_tasks, 1))
  return shared + own


class Runner:
  """`runner(jac, state=None, dtype=...)` -> (flat float64 update, new state) and
  `runner.weights(...)` -> (weights, new state) (Gramian methods), both from one jitted function
  (compiled once per input shape and dtype: reuse runners, compilation dominates test time)."""

  def __init__(self, tx):
    self.tx = tx
    from mtl_jax.optim.base import gramian

    def both(g, s, l):
      out, new_state = tx.update(g, s, None, losses=l)
      w = tx.gramian_weights(gramian(g), l, s)[0] if tx.gramian_weights is not None else l
      return out, w, new_state

    self._both = jax.jit(both)

  def _run(self, jac, state, dtype):
    jac = np.asarray(jac, np.float64)
    state = self.tx.init(None) if state is None else state
    return self._both(as_tree(jac, dtype), state, jnp.ones(jac.shape[0], jnp.float32))

  def __call__(self, jac, state=None, dtype=jnp.float32):
    out, _, state = self._run(jac, state, dtype)
    assert all(x.dtype == dtype for x in jax.tree.leaves(out))
    return helpers.flat(out), state

  def weights(self, jac, state=None, dtype=jnp.float32):
    _, w, state = self._run(jac, state, dtype)
    return np.asarray(w, np.float64), state


class Runners:
  """Runners of `make(num_tasks)` cached by K (one compilation per K and dtype per module)."""

  def __init__(self, make):
    self.make = make
    self._runners = {}

  def __getitem__(self, num_tasks):
    if num_tasks not in self._runners:
      self._runners[num_tasks] = Runner(self.make(num_tasks))
    return self._runners[num_tasks]


VECTORS = [
    [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, -2.0, -0.5], [3.0, 3.0, 3.0, 3.0]]
SCALES = [0.0, 1e-8, 1e-3, 1.0, 1e8]


def check_robust(runners, max_examples=25):
  """Hypothesis: on degenerate inputs (K = 1 or 3; float32, and bfloat16 for K = 3), over two
  consecutive updates (so that state carried from a degenerate step is used), the output and the
  state are finite. `runners`: a `Runners`."""

  @settings(max_examples=max_examples, deadline=None)
  @given(st.sampled_from([(1, jnp.float32), (3, jnp.float32), (3, jnp.bfloat16)]).flatmap(
      lambda kd: st.tuples(st.lists(st.tuples(st.sampled_from(VECTORS), st.sampled_from(SCALES)),
                                    min_size=kd[0], max_size=kd[0]), st.just(kd[1]))))
  def check(example):
    rows, dtype = example
    jac = np.array([np.asarray(v) * s for v, s in rows])
    run = runners[jac.shape[0]]
    state = None
    for step_jac in (jac, jac[::-1]):
      out, state = run(step_jac, state, dtype=dtype)
      assert np.all(np.isfinite(out)), (jac, out)
      for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (jac, state)

  check()


def check_chain_jit_and_state(tx, num_tasks, steps_per_problem=1):
  """helpers' checks: the method runs finite in optax.chain with sgd, traces once under jit over
  several problems with evolving state, and its state round-trips through a checkpoint.
  (That the update is sum_k w_k g_k for the reported weights is `check_weighted_sum`, on an
  already compiled runner: compilation dominates these tests' time.)"""
  grads, losses = helpers.random_problem(11, num_tasks)
  combined, _ = helpers.chain_update(tx, grads, losses)
  assert np.all(np.isfinite(helpers.flat(combined)))
  problems = [helpers.random_problem(s, num_tasks) for s in range(4)]
  helpers.assert_jit_traces_once(tx, problems, steps_per_problem=steps_per_problem)
  helpers.assert_state_roundtrips(tx, problems)


def check_weighted_sum(runner, jac, state=None):
  """A Gramian method's update is sum_k w_k g_k for the weights it reports."""
  out, _ = runner(jac, state)
  w, _ = runner.weights(jac, state)
  np.testing.assert_allclose(out, w @ rounded(jac), rtol=1e-5, atol=1e-6 * np.abs(jac).max())


def _solver():
  from mtl_jax.optim._bargaining import solve_power_system
  return jax.jit(solve_power_system, static_argnums=(1, 3))


solve_power_system = _solver()  # jitted (power and num_iters static), shared by the test modules


def power_system_reference(gram, power):
  """The w > 0 with G w = w^(-power), float64, with scipy `least_squares` as in the FairGrad
  reference code (tight tolerances); returns (w, max relative residual)."""
  from scipy.optimize import least_squares
  k = gram.shape[0]
  res = least_squares(lambda x: gram @ x - x ** (-power), np.full(k, 1.0 / k),
                      bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=10000)
  w = res.x
  return w, np.max(np.abs(w ** power * (gram @ w) - 1))
