"""Shared pieces of the tests of gls, si, stch, famo, gradnorm, imtl and dbmtl: a NumPy Adam written
from its definition, degenerate-input strategies and a finiteness check."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from tests.optim import helpers


class NumpyAdam:
  """Adam (Kingma & Ba), optionally with L2 decay added to the gradient (torch's weight_decay):
  x <- x - lr * m_hat / (sqrt(v_hat) + eps)."""

  def __init__(self, lr, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    self.lr, self.wd, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
    self.m = self.v = None
    self.t = 0

  def step(self, x, grad):
    x = np.asarray(x, np.float64)
    grad = np.asarray(grad, np.float64) + self.wd * x
    if self.m is None:
      self.m, self.v = np.zeros_like(x), np.zeros_like(x)
    self.t += 1
    self.m = self.b1 * self.m + (1 - self.b1) * grad
    self.v = self.b2 * self.v + (1 - self.b2) * grad ** 2
    m_hat = self.m / (1 - self.b1 ** self.t)
    v_hat = self.v / (1 - self.b2 ** self.t)
    return x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def as_tree(jac, dtype=jnp.float32):
  """Splits a K x P matrix into a two-leaf gradient tree (P >= 2)."""
  jac = jnp.asarray(np.asarray(jac, np.float32), dtype)
  cut = jac.shape[1] // 2
  return {'a': jac[:, :cut], 'b': jac[:, cut:].reshape(jac.shape[0], 1, -1)}


VECTORS = [
    [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, -2.0, -0.5], [3.0, 3.0, 3.0, 3.0]]
SCALES = [0.0, 1e-8, 1e-3, 1.0, 1e3, 1e8]
LOSSES = [0.0, 1e-8, 0.3, 1.0, 2.5, 1e8]


@st.composite
def degenerate_problems(draw, num_tasks=st.sampled_from([1, 2, 4]), zero_losses=True):
  """(K x 4 Jacobian, losses, dtype): duplicated, negated and zero gradients at scales from 1e-8
  to 1e8, losses from 0 (absent task; only if `zero_losses`) to 1e8, float32 or bfloat16."""
  k = draw(num_tasks)
  rows = draw(st.lists(st.tuples(st.sampled_from(VECTORS), st.sampled_from(SCALES)),
                       min_size=k, max_size=k))
  loss_values = LOSSES if zero_losses else LOSSES[1:]
  losses = draw(st.lists(st.sampled_from(loss_values), min_size=k, max_size=k))
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  jac = np.array([np.asarray(v) * s for v, s in rows], np.float64)
  return jac, np.asarray(losses, np.float32), dtype


class FiniteChecker:
  """Runs a few jitted updates of `make_tx(K)` on a problem and asserts that every output and state
  leaf is finite (jitted functions are cached per K, so repeated shapes do not recompile)."""

  def __init__(self, make_tx):
    self.make_tx = make_tx
    self.cache = {}

  def __call__(self, jac, losses, dtype, steps=2):
    k = jac.shape[0]
    if k not in self.cache:
      tx = self.make_tx(k)
      self.cache[k] = (tx, jax.jit(lambda g, s, l: tx.update(g, s, None, losses=l)))
    tx, step = self.cache[k]
    tree = as_tree(jac, dtype)
    state = tx.init(helpers.params_like(tree))
    losses = jnp.asarray(losses)
    outs = []
    for i in range(steps):
      # Vary the losses a little between steps (stateful methods compare consecutive losses).
      out, state = step(tree, state, losses * (1.0 + 0.25 * i))
      outs.append(out)
      for leaf in jax.tree.leaves(out):
        assert leaf.dtype == dtype
        assert np.all(np.isfinite(np.asarray(leaf, np.float32))), (jac, losses, out)
      for leaf in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64))), (jac, losses, state)
    return outs, state


def assert_gradient_of(tx, params, losses_fn, objective=None, state=None):
  """Loss weighting, in one jitted program: the transform's output on the Jacobian, the
  "weighted" mode's one backward of sum_k w_k L_k and (if given) the gradient of the paper's
  objective agree."""
  state = tx.init(params) if state is None else state

  @jax.jit
  def run(params, state):
    losses = losses_fn(params)
    combined, _ = tx.update(jax.jacrev(losses_fn)(params), state, params, losses=losses)
    w = jax.lax.stop_gradient(tx.loss_weights(state, losses))
    one_backward = jax.grad(lambda p: jnp.dot(w, losses_fn(p)))(params)
    reference = jax.grad(objective)(params) if objective is not None else one_backward
    return combined, one_backward, reference

  combined, one_backward, reference = run(params, state)
  np.testing.assert_allclose(helpers.flat(combined), helpers.flat(one_backward), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(helpers.flat(combined), helpers.flat(reference), rtol=1e-5, atol=1e-6)
