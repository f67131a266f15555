"""Nash-MTL, Navon et al. (ICML 2022)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim._bargaining import solve_power_system
from mtl_jax.optim.base import MultiTaskTransformation, gramian_weighting


class NashMTLState(NamedTuple):
  """`step`: updates so far (int32); `alpha`: the last bargaining solution (K, float32, before
  norm clipping), reused between solves and as the warm start and the fallback."""
  step: jax.Array
  alpha: jax.Array


def clip_weights(weights: jax.Array, gramian: jax.Array, max_norm: float) -> jax.Array:
  """Scales `weights` so that ||sum_k w_k g_k|| = sqrt(w^T G w) <= max_norm (no-op if <= 0)."""
  if max_norm <= 0:
    return weights
  g = jnp.asarray(gramian).astype(weights.dtype)
  norm = jnp.sqrt(jnp.maximum(weights @ g @ weights, 0.0))
  clip = jnp.isfinite(norm) & (norm > max_norm)
  return weights * jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0)


def nash_mtl(num_tasks: int, max_norm: float = 1.0, update_weights_every: int = 1,
             optim_niter: int = 20) -> MultiTaskTransformation:
  """Nash-MTL: the Nash bargaining solution, weights alpha > 0 with G alpha = 1 / alpha.

  "Multi-Task Learning as a Bargaining Game", Navon et al., ICML 2022. The update d = sum_k alpha_k
  g_k maximises sum_k log <g_k, d> over a ball; its weights solve

      (G alpha)_k = 1 / alpha_k   for every k,       G = J J^T,

  i.e. each task's improvement <g_k, d> is 1 / alpha_k. The solution is unique when it exists, and
  scale-equivariant: alpha(s G) = alpha(G) / sqrt(s). At the solution ||d||^2 = alpha^T G alpha = K.

  Solver: the reference code runs up to 20 convex-concave (CCP) iterations, each an ECOS solve in
  cvxpy, warm-started from the previous alpha. Here: damped Newton on the convex function
  1/2 a^T G a - sum_k log a_k, whose stationary points are exactly the solutions, warm-started from
  the previous alpha, at most `optim_niter` Newton steps (see `mtl_jax.optim._bargaining`: 5-7
  steps median and at most 13 from a cold start for K = 2..20; weights within 2e-4 relative of a
  float64 solution, median 1e-7).

  No solution: when 0 is in the convex hull of the gradients (e.g. two exactly opposite gradients,
  or a task whose gradient is exactly zero; checked with MGDA's min-norm solver, to float32
  precision) the system has no positive solution; a solve that has not converged within the
  budget is treated the same. The defined behaviour is then to keep the previous alpha (uniform
  ones before the first successful solve), like the reference, which keeps its previous alpha when
  ECOS fails.

  Output: sum_k alpha_k g_k, then, following the reference code (the paper does not discuss it),
  scaled down so that its norm is at most `max_norm` (the reference calls
  `clip_grad_norm_(shared_parameters, max_norm)`; `max_norm <= 0` disables it). Since ||d|| is
  sqrt(K) at the solution, the default max_norm = 1 makes the update a unit vector whatever the
  gradients' scale. In "rep" mode the norm clipped is that of the representation gradient (the
  Gramian the step provides); the reference has no rep mode (LibMTL refuses rep_grad here).

  Task-specific parameters: the reference back-propagates sum_k alpha_k L_k, so they get
  alpha_k grad L_k (`weights_task_params=True`); here they get the weights after clipping
  (the reference clips only the shared gradient), i.e. alpha scaled by the same factor.

  `update_weights_every`: alpha is re-solved at updates 0, n, 2n, ... and reused in between (the
  clipping still uses the current Gramian). The reference divides G by its Frobenius norm in its
  CCP objective while its constraints alpha_k (G alpha)_k >= 1 keep the original scale; we solve
  the paper's G alpha = 1 / alpha on the original scale (the solver normalises G internally and
  maps the solution back exactly).

  Args:
    num_tasks: K.
    max_norm: the clipping norm of the combined gradient (<= 0: no clipping).
    update_weights_every: re-solve every this many updates.
    optim_niter: the Newton step budget per solve.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'nash_mtl')
  if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm != max_norm:
    raise UserError(f'nash_mtl(max_norm=...) must be a number, got {max_norm!r}')
  for name, value in (('update_weights_every', update_weights_every),
                      ('optim_niter', optim_niter)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f'nash_mtl({name}=...) must be a positive integer, got {value!r}')
  max_norm = float(max_norm)

  def init_state():
    return NashMTLState(jnp.zeros((), jnp.int32), jnp.ones((num_tasks,), jnp.float32))

  def gramian_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'nash_mtl')
    previous = state.alpha

    def solve(_):
      alpha, ok = solve_power_system(gramian, 1.0, previous, optim_niter)
      return jnp.where(ok, alpha.astype(previous.dtype), previous)

    if update_weights_every == 1:
      alpha = solve(None)
    else:
      alpha = jax.lax.cond(state.step % update_weights_every == 0, solve, lambda _: previous,
                           None)
    weights = clip_weights(alpha, gramian, max_norm)
    return weights, NashMTLState(state.step + 1, alpha)

  return gramian_weighting('nash_mtl', init_state, gramian_weights, weights_task_params=True)
