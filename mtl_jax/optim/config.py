"""ConFIG, Liu et al. (2024): the direction with equal cosine to every task gradient."""

from typing import Optional, Sequence

import jax.numpy as jnp

from mtl_jax.optim import _pref, _util
from mtl_jax.optim.aligned_mtl import check_rcond
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, gramian_weighting


def config_weights(gramian: jnp.ndarray, pref: jnp.ndarray,
                   rcond: Optional[float] = None) -> jnp.ndarray:
  """ConFIG's weights w (d = J^T w) from G = J J^T and the preferences p; see `config`."""
  gramian = jnp.asarray(gramian)
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  g = gramian.astype(dtype)
  p = jnp.asarray(pref, dtype)
  num = g.shape[0]
  g = 0.5 * (g + g.T)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
  valid = (norms > 0) & jnp.isfinite(norms)
  inv = jnp.where(valid, 1.0 / jnp.where(valid, norms, 1.0), 0.0)
  norms = jnp.where(valid, norms, 0.0)
  cos = g * inv[:, None] * inv[None, :]  # the Gramian of the unit vectors u_k (0 for zero g_k)
  ok = jnp.all(jnp.isfinite(cos))
  cos = jnp.where(ok, cos, 0.0)
  lam, vecs = jnp.linalg.eigh(cos)
  rcond = num * jnp.finfo(dtype).eps if rcond is None else rcond
  keep = lam > rcond * lam[-1]
  q = vecs.T @ p
  a = vecs @ jnp.where(keep, q / jnp.where(keep, lam, 1.0), 0.0)  # C^+ p
  norm2 = a @ cos @ a  # ||g_u||^2 = p^T C^+ p
  in_range = jnp.sum(jnp.where(keep, q * q, 0.0))  # ||C C^+ p||^2
  length = norms @ (cos @ a)  # sum_k <g_k, g_u>
  degenerate = ~ok | (norm2 <= 0) | (in_range <= rcond * (p @ p))
  w = inv * a * (length / jnp.where(degenerate, 1.0, norm2))
  return jnp.where(degenerate | ~jnp.all(jnp.isfinite(w)), jnp.zeros_like(w), w)


def config(num_tasks: Optional[int] = None, pref_vector: Optional[Sequence[float]] = None,
           rcond: Optional[float] = None) -> MultiTaskTransformation:
  """ConFIG (Conflict-Free Inverse Gradients): the direction with equal cosine to every task
  gradient, with the length of the sum of the gradients' projections on it.

  "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", Liu, Chu & Thuerey,
  2024 (arXiv:2408.11104), Eq. 2 (official code: tum-pbs/ConFIG, `ConFIG_update`). With unit
  vectors u_k = g_k / ||g_k|| (rows of U),

      g_u = U^+ p,        g^_u = g_u / ||g_u||,        d = (sum_k <g_k, g^_u>) g^_u,

  p = 1 unless `pref_vector` is given. When the u_k are linearly independent, U g_u = p: every
  task gradient has cosine p_k / ||g_u|| > 0 with d (equal cosines for p = 1), so d conflicts with
  none of them.

  Through the Gramian: with D = diag(||g_k||) and C = D^-1 G D^-1 = U U^T (the cosine matrix),
  U^+ p = U^T C^+ p, so with a = C^+ p (||g_u||^2 = a^T C a, sum_k <g_k, g_u> = ||g||^T C a),

      w = D^-1 a (||g||^T C a) / (a^T C a),        d = J^T w.

  C^+ is taken from the eigendecomposition of C, eigenvalues at most `rcond * lambda_max` counting
  as zero (default `rcond = K * eps`, eps of the computation dtype). Note that C's eigenvalues are
  the squared singular values of U, so this cut-off on U's singular values is sqrt(rcond), looser
  than the official code's `lstsq(U, p)` (which sees U itself): nearly dependent unit vectors (a
  smallest singular value below ~1e-3 of the largest for K ~ 10 in float32) are treated as
  dependent, and d is then the least-squares compromise in their span. A zero gradient has no
  unit vector (its row of U is 0, as `nan_to_num` makes it in the official code) and gets weight 0.
  When p has no component in the range of C (e.g. two exactly opposite gradients) g_u = 0 and
  d = 0 (the official code would divide by zero).

  Output scale: the sum of the projections of the gradients on the common direction: identical
  gradients g, g give d = 2 g, orthogonal unit gradients e_1, e_2 give d = e_1 + e_2 (`ew()`'s
  scale). The weights do not depend on the gradients' overall scale.

  Differences: the official code uses a special closed form for K = 2 (`ConFIG_update_double`)
  that gives the same direction (the bisector of the two unit vectors); here one formula serves
  every K. TorchJD's `ConFIG` is the same method (pinv of U, p = 1 by default).

  Args:
    num_tasks: K, optional: when given, the number of losses (and of `pref_vector` entries) is
      checked against it.
    pref_vector: non-negative target cosines p (up to scale; K entries); default 1 for every task.
    rcond: relative eigenvalue cut-off of C^+; default K * float32 eps.
  """
  if num_tasks is not None:
    num_tasks = _util.check_num_tasks(num_tasks, 'config')
  pref = _pref.check_pref_vector(pref_vector, 'config')
  rcond = check_rcond(rcond, 'config')

  def gramian_weights(gramian, losses, state):
    if num_tasks is not None:
      _util.check_losses_shape(losses, num_tasks, 'config')
    dtype = jnp.promote_types(gramian.dtype, jnp.float32)
    p = _pref.resolve(pref, losses.shape[0], 1.0, 'config', dtype)
    return config_weights(gramian, p, rcond), state

  return gramian_weighting('config', EmptyState, gramian_weights)
