"""Smooth Tchebycheff scalarisation (STCH), Lin et al. (ICML 2024)."""

import numpy as np
import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, loss_weighting


def stch(num_tasks: int, mu: float = 1.0, preference=None,
         ideal_point=0.0) -> MultiTaskTransformation:
  """Smooth Tchebycheff scalarisation: a log-sum-exp smoothing of max_k lambda_k (L_k - z*_k).

  "Smooth Tchebycheff Scalarization for Multi-Objective Optimization", Lin et al., ICML 2024. The
  objective is

      L_stch = mu log sum_k exp(lambda_k (L_k - z*_k) / mu),

  with a preference lambda on the simplex and the ideal point z*. Its gradient is
  `sum_k w_k g_k` with

      w_k = lambda_k softmax_k(lambda (L - z*) / mu)

  (the losses treated as constants, so the "weighted" mode gives exactly the gradient of L_stch).
  As mu -> 0 it becomes the (non-smooth) Tchebycheff scalarisation max_k lambda_k (L_k - z*_k),
  which puts all the weight on the worst weighted task; as mu -> infinity w -> lambda / K.

  Output scale: sum_k w_k is at most max_k lambda_k; with the default uniform preference
  lambda = 1/K the weights are 1/K times a convex combination (sum_k w_k = 1/K), so the update is
  about 1/K of a single task gradient, 1/K^2 of equal weighting's sum: raise the learning rate
  accordingly (or pass a preference and rescale).

  Args:
    num_tasks: K.
    mu: the smoothing parameter mu > 0 (LibMTL's default 1.0; the paper's theory wants it small).
    preference: lambda, K non-negative numbers (not all zero), normalised here to sum to 1;
      None gives the uniform 1/K.
    ideal_point: z*, a number or K numbers. The paper's z* is the ideal point (the best value of
      each objective, minus a small margin); for losses bounded below by 0 the default z* = 0 is
      that bound. Set it when your losses have another lower bound.

  Difference from LibMTL's STCH (which follows the authors' MTL code): LibMTL first trains
  `warmup_epoch` epochs on sum_k log L_k (the SI loss), averages the losses of the last warm-up
  epoch into a nadir vector N, then minimises K * mu log sum_k exp(log(L_k / N_k) / mu), i.e. this
  objective on log-losses normalised by N, with lambda = 1 and z* = 0, times K. Here the paper's
  formula is applied to the raw losses with no warm-up; feed log-losses by composing with your own
  loss transform if you want the LibMTL variant.

  Notes: a non-finite loss is replaced by z*_k (weight as if at the ideal point; the train step
  skips such steps anyway). Stateless.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'stch')
  if not mu > 0:
    raise UserError(f'stch(mu=...) must be positive, got {mu!r}')
  if preference is None:
    lam = np.full((num_tasks,), 1.0 / num_tasks)
  else:
    lam = np.asarray(preference, np.float64).reshape(-1)
    if lam.shape != (num_tasks,) or not np.all(np.isfinite(lam)) or np.any(lam < 0) \
        or not lam.sum() > 0:
      raise UserError(f'stch(preference=...) must be {num_tasks} non-negative numbers, not all '
                      f'zero; got {preference!r}')
    lam = lam / lam.sum()
  ideal = np.broadcast_to(np.asarray(ideal_point, np.float64), (num_tasks,)) \
      if np.ndim(ideal_point) == 0 else np.asarray(ideal_point, np.float64)
  if ideal.shape != (num_tasks,) or not np.all(np.isfinite(ideal)):
    raise UserError(f'stch(ideal_point=...) must be a finite number or {num_tasks} finite '
                    f'numbers, got {ideal_point!r}')
  lam = jnp.asarray(lam, jnp.float32)
  ideal = jnp.asarray(ideal, jnp.float32)

  def loss_weights(state, losses):
    del state
    _util.check_losses_shape(losses, num_tasks, 'stch')
    losses = _util.as_float32(losses)
    gap = jnp.where(jnp.isfinite(losses), losses - ideal, 0.0)
    return lam * jax.nn.softmax(lam * gap / mu)

  return loss_weighting('stch', EmptyState, loss_weights)
