"""Shared pieces of the tests of upgrad, dualproj, aligned_mtl and config: gradient trees from
matrices, a jitted runner, random Jacobians and degenerate-input strategies."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

from mtl_jax.optim.base import gramian
from tests.optim import helpers


def as_tree(jac, dtype=jnp.float32):
  """Splits a K x P matrix (P >= 2) into a two-leaf gradient tree."""
  jac = jnp.asarray(np.asarray(jac, np.float64), dtype)
  cut = jac.shape[1] // 2
  return {'a': jac[:, :cut], 'b': jac[:, cut:].reshape(jac.shape[0], 1, -1)}


class Runner:
  """`runner(jac)`: the method's weights on the gradients `jac` (K x P) and the direction
  d = sum_k w_k g_k they give (float64, from the gradients as rounded to `dtype`). The Gramian is
  computed eagerly by `optim.gramian` and the weights by one jitted function of it per method, so
  every P reuses the compilation for a given K. `runner.update(jac)` is the transform's own output
  (the chain tests check that it is the same combination)."""

  def __init__(self, tx):
    self.tx = tx
    self._weights = jax.jit(lambda g, losses: tx.gramian_weights(g, losses, tx.init(None))[0])
    self._update = jax.jit(
        lambda task_grads, losses: tx.update(task_grads, tx.init(None), None, losses=losses)[0])

  def __call__(self, jac, dtype=jnp.float32):
    jac = np.asarray(jac, np.float64)
    g = gramian(as_tree(jac, dtype))
    w = np.asarray(self._weights(g, jnp.ones(jac.shape[0], jnp.float32)), np.float64)
    return w @ representable(jac, dtype), w

  def update(self, jac, dtype=jnp.float32):
    jac = np.asarray(jac, np.float64)
    out = self._update(as_tree(jac, dtype), jnp.ones(jac.shape[0], jnp.float32))
    assert all(x.dtype == dtype for x in jax.tree.leaves(out))
    return helpers.flat(out)


def random_jacobian(rng, num_tasks, dim):
  """Task gradients with a shared component and different norms (conflicting and not)."""
  shared = rng.normal(size=(1, dim)) * rng.uniform(0.0, 2.0)
  own = rng.normal(size=(num_tasks, dim)) * rng.uniform(0.1, 3.0, size=(num_tasks, 1))
  return shared + own


def float32_exact(jac):
  """The matrix rounded to float32 (and back to float64), so references see the method's input."""
  return np.asarray(jac, np.float32).astype(np.float64)


VECTORS = [
    [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.5], [-1.0, 1.0, -2.0, -0.5], [3.0, 3.0, 3.0, 3.0]]
SCALES = [0.0, 1e-8, 1e-3, 1.0, 1e3, 1e8]


@st.composite
def degenerate_jacobians(draw, sizes=(1, 2, 3, 5)):
  """K x 4 Jacobians of duplicated, negated and zero gradients at scales from 1e-8 to 1e8, and a
  dtype (float32 or bfloat16)."""
  num = draw(st.sampled_from(sizes))
  rows = draw(st.lists(st.tuples(st.sampled_from(VECTORS), st.sampled_from(SCALES)),
                       min_size=num, max_size=num))
  dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
  jac = np.array([np.asarray(v) * s for v, s in rows], np.float64)
  return jac, dtype


def representable(jac, dtype):
  """The gradients as the method sees them (rounded to `dtype`), in float64."""
  return np.asarray(jnp.asarray(jac, dtype).astype(jnp.float32), np.float64)
