"""Multiple-gradient descent (MGDA), Sener & Koltun (NeurIPS 2018)."""

import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, gramian_weighting
from mtl_jax.optim.solvers import min_norm_simplex

NORMALIZATIONS = ('none', 'l2', 'loss', 'loss+')


def mgda(normalization: str = 'none', max_iters: int = 100) -> MultiTaskTransformation:
  """MGDA: the min-norm element of the convex hull of the (normalised) task gradients.

  "Multi-Task Learning as Multi-Objective Optimization", Sener & Koltun, NeurIPS 2018. With
  normalised gradients `g~_k = g_k / n_k`,

      u* = argmin_{u in simplex} || sum_k u_k g~_k ||^2,         d = sum_k u*_k g~_k,

  which is a descent direction for every task (<d, g~_k> >= ||d||^2 >= 0; d = 0 at a Pareto
  stationary point). The solve is done on the Gramian: with D = diag(1/n_k), u* is the min-norm
  weight vector of D G D (`solvers.min_norm_simplex`), and the returned weights are the effective
  weights `w_k = u*_k / n_k`, so the update is `sum_k w_k g_k = d`.

  Normalisations (as in the paper's code and LibMTL):
    * 'none':  n_k = 1
    * 'l2':    n_k = ||g_k||
    * 'loss':  n_k = L_k
    * 'loss+': n_k = L_k ||g_k||
  A normaliser that is not positive and finite (a zero gradient, a zero or negative loss) is
  replaced by 1.

  Output scale: a convex combination, not a sum: with 'none' the update is on the scale of one
  task gradient (about 1/K of equal weighting's); with 'l2' its norm is at most 1 whatever the
  gradients' scale. Choose the learning rate accordingly.

  In "rep" mode (MGDA-UB in the paper) G is the Gramian of the gradients at the shared
  representation. Note that a task whose gradient is exactly zero (e.g. absent from the batch)
  puts the zero vector in the hull and makes d = 0.

  Args:
    normalization: one of 'none', 'l2', 'loss', 'loss+'.
    max_iters: the step budget of the min-norm solver (Wolfe's algorithm for K >= 3; the loop
      exits early once converged; K <= 2 is solved in closed form).
  """
  if normalization not in NORMALIZATIONS:
    raise UserError(f'mgda(normalization={normalization!r}) is not one of '
                    f'{", ".join(map(repr, NORMALIZATIONS))}')
  if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
    raise UserError(f'mgda(max_iters=...) must be a positive integer, got {max_iters!r}')

  def gramian_weights(gramian, losses, state):
    g = jnp.asarray(gramian).astype(jnp.promote_types(gramian.dtype, jnp.float32))
    losses = jnp.asarray(losses).astype(g.dtype)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    if normalization == 'none':
      n = jnp.ones_like(norms)
    elif normalization == 'l2':
      n = norms
    elif normalization == 'loss':
      n = losses
    else:
      n = losses * norms
    n = jnp.where((n > 0) & jnp.isfinite(n), n, 1.0)
    inv = 1.0 / n
    u = min_norm_simplex(g * inv[:, None] * inv[None, :], max_iters)
    return u * inv, state

  return gramian_weighting('mgda', EmptyState, gramian_weights)
