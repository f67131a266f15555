"""DualProj, Quinton & Rey (2024): the mean gradient projected onto the dual cone."""

from typing import Optional, Sequence

import jax.numpy as jnp

from mtl_jax.optim import _dual_cone, _pref
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, gramian_weighting


def dualproj(pref_vector: Optional[Sequence[float]] = None,
             max_iters: int = 200) -> MultiTaskTransformation:
  """DualProj: the (preference-weighted) mean gradient, projected onto the dual cone of the task
  gradients.

  "Jacobian Descent for Multi-Objective Optimization", Quinton & Rey, 2024 (arXiv:2406.16232),
  where it is the baseline aggregator A_DualProj (the projection of Gradient Episodic Memory,
  Lopez-Paz & Ranzato 2017, applied to the mean); TorchJD's `DualProj`. With J the Jacobian,
  G = J J^T and pi_J the projection onto {x : J x >= 0},

      d = pi_J(J^T p) = J^T w,        w = argmin_{v >= p} v^T G v,

  with p = (1/K, ..., 1/K) unless `pref_vector` is given (Proposition 1 of the paper). One K x K
  QP, solved inside jit by the active-set method of `_dual_cone` (Lawson-Hanson in Gramian form) on
  the cosine matrix D^-1 G D^-1, D = diag(||g_k||) (scale-free; see `upgrad`).

  Properties: <d, g_k> >= 0 for every k (up to float32 round-off of G); d = J^T p whenever the
  mean does not conflict with any task (G p >= 0), in particular when no two gradients conflict.

  Output scale: that of the (preference-weighted) mean, about 1/K of `ew()`'s sum with the default
  preferences (as in the paper and TorchJD).

  Differences from TorchJD: no `reg_eps` ridge on the trace-normalised Gramian and no `norm_eps`
  cut-off for small gradients (see `upgrad`); float32 on the device instead of quadprog on the host.

  Args:
    pref_vector: non-negative preference per task (K entries); default uniform 1/K.
    max_iters: iteration budget of the QP (the loop exits as soon as the KKT conditions hold). If it
      runs out the weights are feasible (w >= p) but may not be optimal.
  """
  pref = _pref.check_pref_vector(pref_vector, 'dualproj')
  max_iters = _dual_cone.check_max_iters(max_iters, 'dualproj')

  def gramian_weights(gramian, losses, state):
    num = losses.shape[0]
    dtype = jnp.promote_types(gramian.dtype, jnp.float32)
    p = _pref.resolve(pref, num, 1.0 / num, 'dualproj', dtype)
    return _dual_cone.project_weights(gramian, p[None], max_iters)[0], state

  return gramian_weighting('dualproj', EmptyState, gramian_weights)
