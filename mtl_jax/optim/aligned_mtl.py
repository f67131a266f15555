"""Aligned-MTL, Senushkin et al. (CVPR 2023): principal components of the task gradients aligned
so that the gradient system has condition number 1."""

from typing import Optional, Sequence

import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _pref, _util
from mtl_jax.optim.base import (EmptyState, MultiTaskTransformation, gramian_weighting,
                                 normalize_gramian)

SCALE_MODES = ('min', 'median', 'rmse')


def check_rcond(rcond, name: str) -> Optional[float]:
  if rcond is None:
    return None
  if isinstance(rcond, bool) or not isinstance(rcond, (int, float)) or not 0 <= rcond < 1:
    raise UserError(f'{name}(rcond=...) must be None or a number in [0, 1), got {rcond!r}')
  return float(rcond)


def balance_transformation(gramian: jnp.ndarray, rcond: Optional[float] = None,
                           scale_mode: str = 'min') -> tuple[jnp.ndarray, jnp.ndarray]:
  """B = sigma V_R Lambda_R^{-1/2} V_R^T from G = V Lambda V^T, and the rank R.

  Eigenvalues at most `rcond * lambda_max` (default `rcond = K * eps`, eps of the computation
  dtype: the official code's tolerance) are treated as zero and their eigenvectors dropped. sigma^2
  is the smallest kept eigenvalue ('min', the paper), their median ('median', the lower one for an
  even count, as torch.median) or their mean ('rmse'). G is symmetrised and divided by its largest
  diagonal entry first (B does not depend on the gradients' scale). R = 0 (G zero) or a non-finite G
  gives B = I.
  """
  g, _, ok = normalize_gramian(gramian)
  dtype, num = g.dtype, g.shape[0]
  eye = jnp.eye(num, dtype=dtype)
  lam, vecs = jnp.linalg.eigh(g)  # ascending
  tol = (num * jnp.finfo(dtype).eps if rcond is None else rcond) * lam[-1]
  keep = lam > tol
  rank = jnp.sum(keep)
  safe = jnp.where(keep, lam, 1.0)
  if scale_mode == 'min':
    sigma2 = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale_mode == 'median':
    # The kept eigenvalues are the last R of the ascending list; torch.median's lower median of
    # those is entry (R - 1) // 2 among them.
    sigma2 = lam[jnp.clip(num - rank + (rank - 1) // 2, 0, num - 1)]
  else:
    sigma2 = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
  inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
  b = jnp.sqrt(jnp.where(rank > 0, sigma2, 1.0)) * (vecs * inv_sqrt[None, :]) @ vecs.T
  good = ok & (rank > 0) & jnp.all(jnp.isfinite(b))
  return jnp.where(good, b, eye), rank


def aligned_mtl(num_tasks: Optional[int] = None, pref_vector: Optional[Sequence[float]] = None,
                scale_mode: str = 'min', rcond: Optional[float] = None) -> MultiTaskTransformation:
  """Aligned-MTL: the task gradients' principal components are rescaled to a common length.

  "Independent Component Alignment for Multi-Task Learning", Senushkin, Patakin, Kuznetsov &
  Konushin, CVPR 2023, Algorithm 1 (official code: SamsungLabs/MTL, `ProcrustesSolver`). With
  J the Jacobian (rows g_k) and its Gramian G = J J^T = V Lambda V^T,

      B = sqrt(lambda_R) V Lambda^{-1/2} V^T,        w = B p,        d = J^T w = sum_k w_k g_k,

  where lambda_R is the smallest non-zero eigenvalue (sigma_min^2 of J) and p the task
  preferences (1 for every task unless `pref_vector` is given). The rows of B J are the aligned
  task gradients: their Gramian B G B = lambda_R V_R V_R^T has all its non-zero eigenvalues equal
  to sigma_min^2 (condition number 1 on its support, the closest such system to J in the
  Procrustes sense), and d is their (preference-weighted) sum. Eigenvalues at most
  `rcond * lambda_max` count as zero and their directions are dropped (rank deficiency: e.g. more
  tasks than dimensions in "rep" mode, duplicated or exactly opposite gradients).

  Output scale: the sum of K aligned gradients, each of norm at most sigma_min (the smallest
  singular value of J), so the update shrinks with the worst-conditioned direction of the
  gradients; identical gradients g, g give d = 2 g and exactly opposite ones d = 0. The weights do
  not depend on the gradients' overall scale.

  Differences: as the official code and LibMTL, p = 1 (sum of the aligned gradients); TorchJD's
  `AlignedMTL` defaults to p = 1/K (their mean). `scale_mode` 'median' and 'rmse' are the official
  code's alternatives to the paper's sigma_min. The eigendecomposition runs in float32 (float64 for
  a float64 G) on G divided by its largest diagonal entry.

  Args:
    num_tasks: K, optional: when given, the number of losses (and of `pref_vector` entries) is
      checked against it.
    pref_vector: non-negative task importance p (K entries); default 1 for every task.
    scale_mode: 'min' (paper), 'median' or 'rmse' (sigma^2 = the median / mean kept eigenvalue).
    rcond: relative eigenvalue cut-off; default K * float32 eps (the official code's).
  """
  if num_tasks is not None:
    num_tasks = _util.check_num_tasks(num_tasks, 'aligned_mtl')
  pref = _pref.check_pref_vector(pref_vector, 'aligned_mtl')
  if scale_mode not in SCALE_MODES:
    raise UserError(f'aligned_mtl(scale_mode={scale_mode!r}) is not one of '
                    f'{", ".join(map(repr, SCALE_MODES))}')
  rcond = check_rcond(rcond, 'aligned_mtl')

  def gramian_weights(gramian, losses, state):
    if num_tasks is not None:
      _util.check_losses_shape(losses, num_tasks, 'aligned_mtl')
    b, _ = balance_transformation(gramian, rcond, scale_mode)
    p = _pref.resolve(pref, losses.shape[0], 1.0, 'aligned_mtl', b.dtype)
    return b @ p, state

  return gramian_weighting('aligned_mtl', EmptyState, gramian_weights)
