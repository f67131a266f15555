"""Conflict-averse gradient descent (CAGrad), Liu et al. (NeurIPS 2021)."""

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim.base import (EmptyState, MultiTaskTransformation, gramian_weighting,
                                 normalize_gramian)
from mtl_jax.optim.solvers import min_norm_simplex

RESCALES = (0, 1, 2)


def cagrad_dual(gramian: jax.Array, c: float, num_iters: int = 40, max_iters: int = 100):
  """The CAGrad dual solution from the Gramian: (w, lambda) with d = g0 + lambda g_w.

      w = argmin_{w in simplex} F(w) = g_w^T g0 + r ||g_w||,    r = c ||g0||,
      lambda = r / ||g_w||,

  where g0 = J^T u (u = 1/K) is the mean gradient and g_w = J^T w. Returns lambda = 0 where the
  paper's formula is 0/0 (see `cagrad`).

  Solver (a reparametrisation of the non-smooth dual into a 1-D root search over exact min-norm
  problems): for t > 0 let x(t) = g_{w(t)} be the projection of the point -t g0 onto the convex
  hull H of the task gradients, i.e. w(t) is the min-norm point of the hull of {g_k + t g0}
  (Gramian G + t (G u 1^T + 1 u^T G) + t^2 u^T G u 11^T; Wolfe's algorithm, `min_norm_simplex`).
  Its optimality conditions, <g_k, x(t) + t g0> >= <x(t), x(t) + t g0> with equality on the
  support of w(t), are exactly the KKT conditions of F when x(t) + t g0 is parallel to
  d = g0 + r x / ||x||, i.e. when t = ||x(t)|| / r. So w* = w(t*) for any root t* of
  h(t) = r t - ||x(t)||, and h is continuous, h(0) = -||x(0)|| <= 0 and h(1/r) >= 0 once G is
  divided by its largest diagonal (||x|| <= max_k ||g_k|| = 1). `num_iters` bisection steps on
  [0, 1/r] (each one min-norm solve of at most `max_iters` Wolfe steps) find it.
  """
  g, _, ok = normalize_gramian(gramian)
  dtype, num = g.dtype, g.shape[0]
  u = jnp.full((num,), 1.0 / num, dtype)
  gu = g @ u
  q0 = jnp.maximum(u @ gu, 0.0)  # ||g0||^2 / scale
  r = c * jnp.sqrt(q0)
  # ||g0||^2 below the round-off of a float32 Gramian entry: the mean gradient is ~0.
  ok = ok & (q0 > num * jnp.finfo(dtype).eps)
  r = jnp.where(ok, r, 1.0)

  def hull_point(t):
    shifted = g + t * (gu[:, None] + gu[None, :]) + (t * t) * q0
    w = min_norm_simplex(shifted, max_iters)
    return w, jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))

  def bisect(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    above = r * mid - hull_point(mid)[1] >= 0
    return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

  lo, hi = jax.lax.fori_loop(0, num_iters, bisect, (jnp.zeros((), dtype), 1.0 / r))
  w, norm = hull_point(hi)
  # lo == 0: h >= 0 at every probe, the root is at t = 0, i.e. 0 is in the hull and the dual
  # solution has g_w = 0 (lambda would be r / 0).
  defined = ok & (lo > 0) & (norm > jnp.finfo(dtype).eps)
  lam = jnp.where(defined, r / jnp.where(defined, norm, 1.0), 0.0)
  return w, lam


def cagrad(c: float = 0.5, rescale: int = 1, num_iters: int = 40) -> MultiTaskTransformation:
  """CAGrad: the direction within c ||g0|| of the mean gradient g0 that maximises the worst
  task's improvement.

  "Conflict-Averse Gradient Descent for Multi-task Learning", Liu et al., NeurIPS 2021:

      max_d min_k <g_k, d>   s.t.  ||d - g0|| <= c ||g0||,         g0 = (1/K) sum_k g_k,

  solved through its dual: with phi = c^2 ||g0||^2 and g_w = sum_k w_k g_k,

      w* = argmin_{w in simplex} g_w^T g0 + sqrt(phi) ||g_w||,
      d  = g0 + (sqrt(phi) / ||g_w*||) g_w*,

  all computed from the Gramian G (||g0||^2 = u^T G u, g_w^T g0 = w^T G u, ||g_w||^2 = w^T G w),
  so the update is sum_k a_k g_k with a = u + lambda w* (`gramian_weights`), then rescaled as in
  the official code: `rescale=0`: d; `1` (default, as in the official code and LibMTL):
  d / (1 + c^2); `2`: d / (1 + c).

  Output scale: the *mean* gradient (c = 0 gives exactly g0 = (1/K) sum_k g_k). The official code
  multiplies the result by K afterwards "to match the sum loss"; LibMTL does not. Multiply the
  learning rate by K to compare with sum-scale methods.

  Solver: see `cagrad_dual` (a bisection over t of exact min-norm problems, `num_iters` steps of
  one Wolfe solve each; G is normalised first, so the result is scale-free). The reference solves
  the dual with scipy's SLSQP. Measured (float32, random gradients, K = 2..10, c in {0.1, 0.5,
  0.9}): the direction d agrees with a float64 SLSQP solution (tight tolerance, several starts) to
  a relative 1.3e-5 (median ~1e-7); with two nearly opposite gradients (1e-2 relative
  perturbation) to 5.5e-3 (median 1e-4), where the float32 Gramian limits it.

  Degenerate cases: a mean gradient that is zero (||g0||^2 below K eps max_k ||g_k||^2, the
  round-off of the Gramian), or gradients whose convex hull contains 0 in such a way that the dual
  solution has g_w = 0 (the paper's lambda = sqrt(phi) / ||g_w|| is then 0/0; LibMTL adds 1e-8),
  give lambda = 0: the mean g0 (rescaled). The paper's analysis takes c in [0, 1); larger c is
  allowed (at Pareto-stationary gradients it then also returns the mean).

  Modes: "jacobian" (the paper) and "rep" (LibMTL refuses rep_grad for CAGrad). Task-specific
  parameters get their plain task gradients. Stateless.

  Args:
    c: the radius, relative to ||g0||, c >= 0.
    rescale: 0, 1 or 2 (see above).
    num_iters: bisection steps of the dual solver.
  """
  if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 or c == float('inf'):
    raise UserError(f'cagrad(c=...) must be a finite number >= 0, got {c!r}')
  if rescale not in RESCALES or isinstance(rescale, bool):
    raise UserError(f'cagrad(rescale=...) must be one of 0, 1, 2, got {rescale!r}')
  if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
    raise UserError(f'cagrad(num_iters=...) must be a positive integer, got {num_iters!r}')
  c = float(c)
  factor = {0: 1.0, 1: 1.0 / (1.0 + c * c), 2: 1.0 / (1.0 + c)}[rescale]

  def gramian_weights(gramian, losses, state):
    num = gramian.shape[0]
    u = jnp.full((num,), 1.0 / num, jnp.float32)
    if c == 0.0:
      return u, state
    w, lam = cagrad_dual(gramian, c, num_iters)
    a = u.astype(w.dtype) + lam * w
    return a * factor, state

  return gramian_weighting('cagrad', EmptyState, gramian_weights)
