"""Projection onto the dual cone of the task gradients, from their Gramian (private; used by
`upgrad` and `dualproj`).

With J the K x P Jacobian (rows g_k) and G = J J^T, the dual cone is {x : J x >= 0}, the directions
that conflict with no task. By Proposition 1 of Quinton & Rey (2024), "Jacobian Descent for
Multi-Objective Optimization", the projection of J^T u onto it is J^T w with

    w = argmin_{v >= u} v^T G v                                   (componentwise v_k >= u_k),

a K-dimensional QP whose KKT conditions are: w >= u, G w >= 0, (w - u)_k (G w)_k = 0. With
v = w - u it is the non-negative quadratic program  min_{v >= 0} v^T G v + 2 (G u)^T v, which is
solved here by the active-set method of Lawson & Hanson (1974) in its Gramian ("normal equations")
form, as in Bro & De Jong's FNNLS (1997).
"""

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError

__all__ = ['project_weights', 'check_max_iters']

# The KKT check accepts (C y)_k >= -OPT_TOL * eps * ||y||_1 on the cosine matrix C (|C_kl| <= 1):
# about the round-off of a float32 matrix-vector product (a smaller value costs nothing but
# iterations: spurious additions are caught by the stall test).
OPT_TOL = 2.0


def check_max_iters(max_iters, name: str) -> int:
  if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
    raise UserError(f'{name}(max_iters=...) must be a positive integer, got {max_iters!r}')
  return max_iters


def _nnqp(g: jax.Array, u: jax.Array, max_iters: int) -> tuple[jax.Array, jax.Array]:
  """argmin_{w >= u} w^T G w by Lawson-Hanson, for a PSD G with entries in [-1, 1].

  The iterate v = w - u is always feasible (v >= 0) and the passive set P holds the coordinates
  free to move (v_k > 0). One iteration solves G_PP s_P = -(G u)_P (s = 0 off P), then:

  * if s_P > 0 (an interior point of the face): v = s. If some k outside P has (G (u + v))_k < -tol
    (moving v_k up lowers the objective), the most negative one joins P; otherwise v is optimal.
  * otherwise: v moves towards s as far as v >= 0 allows and the coordinates that reached 0 leave P.

  Exact after finitely many steps in exact arithmetic (the objective at the feasible points
  strictly decreases, so no passive set repeats). In floating point the loop also stops when a
  feasible point fails to lower the objective (round-off cycling) or when a solve is not finite,
  and after `max_iters` iterations in any case. Returns (w, iterations taken).
  """
  num = g.shape[0]
  dtype = g.dtype
  eps = jnp.finfo(dtype).eps
  c = g @ u

  def body(carry):
    i, v, passive, best, done = carry
    m = passive.astype(dtype)
    mat = g * m[:, None] * m[None, :] + jnp.diag(1.0 - m)
    s = jnp.linalg.solve(mat, -c * m) * m
    finite = jnp.all(jnp.isfinite(s))
    s = jnp.where(finite, s, v)
    feasible = jnp.all(jnp.where(passive, s > 0, True))
    # Feasible: accept s and look for a coordinate to free.
    x = u + s
    grad = g @ x
    value = x @ grad
    tol = OPT_TOL * eps * jnp.sum(jnp.abs(x))
    candidates = ~passive & (grad < -tol)
    j = jnp.argmin(jnp.where(candidates, grad, jnp.inf))
    optimal = ~jnp.any(candidates) | (value >= best)
    grown = passive | (~optimal & (jnp.arange(num) == j))
    # Infeasible: step towards s until a coordinate hits 0, and drop it.
    leaving = passive & (s <= 0)
    ratios = jnp.where(leaving, v / jnp.maximum(v - s, jnp.finfo(dtype).tiny), jnp.inf)
    alpha = jnp.clip(jnp.min(ratios), 0.0, 1.0)
    moved = v + alpha * (s - v)
    kept = passive & (moved > 0) & ~(leaving & (ratios <= alpha))
    moved = jnp.where(kept, jnp.maximum(moved, 0.0), 0.0)

    new_v = jnp.where(feasible, s, moved)
    new_passive = jnp.where(feasible, grown, kept)
    new_v = jnp.where(finite, new_v, v)
    new_passive = jnp.where(finite, new_passive, passive)
    new_best = jnp.where(feasible & finite, jnp.minimum(best, value), best)
    new_done = done | ~finite | (feasible & optimal)
    return i + 1, new_v, new_passive, new_best, new_done

  def cond(carry):
    return (carry[0] < max_iters) & ~carry[4]

  init = (jnp.int32(0), jnp.zeros((num,), dtype), jnp.zeros((num,), bool),
          jnp.array(jnp.inf, dtype), jnp.bool_(False))
  steps, v = jax.lax.while_loop(cond, body, init)[:2]
  return u + jnp.maximum(v, 0.0), steps


def project_weights(gramian: jax.Array, lower: jax.Array, max_iters: int,
                    return_steps: bool = False):
  """The weights of the projections of J^T u onto the dual cone {x : J x >= 0}, one per row u of
  `lower` ([B, K]): row b of the result is argmin_{w >= lower[b]} w^T G w (B QPs, vmapped).

  The QPs are solved on the cosine matrix C = D^-1 G D^-1, D = diag(||g_k||), in the variables
  y = D w (y >= D u): the same problem, equilibrated, so that neither the gradients' overall scale
  nor their relative scales (a task whose gradient is 1e-8 of another's still defines a half-space
  of the cone) affect the solve or its tolerances. A zero gradient constrains nothing: its weight
  stays u_k. A Gramian that is not finite gives w = u. Jittable; static shapes; float32 (float64
  when G is float64).
  """
  gramian = jnp.asarray(gramian)
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  g = gramian.astype(dtype)
  lower = jnp.asarray(lower, dtype)
  g = 0.5 * (g + g.T)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
  valid = (norms > 0) & jnp.isfinite(norms)
  inv = jnp.where(valid, 1.0 / jnp.where(valid, norms, 1.0), 0.0)
  norms = jnp.where(valid, norms, 0.0)
  cos = g * inv[:, None] * inv[None, :]
  ok = jnp.all(jnp.isfinite(cos))
  cos = jnp.where(ok, cos, 0.0)
  y, steps = jax.vmap(lambda u: _nnqp(cos, u * norms, max_iters))(lower)
  w = jnp.where(valid, y * inv, lower)
  good = ok & jnp.all(jnp.isfinite(w))
  w = jnp.where(good, w, lower)
  if return_steps:
    return w, steps
  return w
