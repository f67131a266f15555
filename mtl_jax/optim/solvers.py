"""Small quadratic programs over the probability simplex, solved inside `jit`.

Every solver here runs a bounded number of iterations with static shapes (no host round trip, no
data-dependent Python control flow), so it can sit inside a jitted train step, and it always returns
finite weights on the simplex, falling back to uniform weights when the problem is degenerate.
"""

import jax
import jax.numpy as jnp

from mtl_jax.optim.base import normalize_gramian

__all__ = ['project_simplex', 'min_norm_simplex']


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of `v` (shape [K]) onto the simplex {w : w >= 0, sum_k w_k = 1}.

  The sort-based algorithm of Held, Wolfe & Crowder (1974) / Duchi et al. (2008): with `u` the
  entries sorted in decreasing order, `rho = max{j : u_j - (sum_{i<=j} u_i - 1) / j > 0}` and
  `theta = (sum_{i<=rho} u_i - 1) / rho`, the projection is `max(v - theta, 0)`. O(K log K),
  jittable; use `jax.vmap` for a batch.
  """
  v = jnp.asarray(v)
  if v.ndim != 1:
    raise ValueError(f'project_simplex expects a vector, got shape {v.shape}')
  num = v.shape[0]
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  ind = jnp.arange(1, num + 1, dtype=v.dtype)
  cond = u - css / ind > 0  # always true at j = 1
  rho = jnp.max(jnp.where(cond, jnp.arange(1, num + 1), 1))
  theta = css[rho - 1] / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def _min_norm_two(g: jax.Array) -> jax.Array:
  """Exact minimiser of w^T G w on the 2-simplex: w_1 = clip((G22 - G12) / ||g1 - g2||^2, 0, 1)."""
  denom = g[0, 0] + g[1, 1] - 2.0 * g[0, 1]  # ||g1 - g2||^2 >= 0
  safe = jnp.where(denom > 0, denom, 1.0)
  w1 = jnp.where(denom > 0, jnp.clip((g[1, 1] - g[0, 1]) / safe, 0.0, 1.0), 0.5)
  return jnp.stack([w1, 1.0 - w1])


def _affine_minimizer(g: jax.Array, corral: jax.Array) -> jax.Array:
  """argmin_a a^T G a s.t. sum_k a_k = 1 and a_k = 0 off the corral (no sign constraint).

  On the corral S the minimiser is a_S = M⁻¹1 / (1ᵀM⁻¹1) with M = G_SS (Lagrange conditions
  G_SS a_S = μ1, 1ᵀa_S = 1). M is solved by Cholesky at a static K x K size (rows off the corral
  read a_k = 0 through an identity block), with a ridge of K·eps (G has max diagonal 1) so that a
  singular G_SS (affinely dependent points, which round-off can produce) still gives a finite
  answer: then a is the minimiser of aᵀ(G + ridge·I)a, within the round-off of G of the exact one.
  A Cholesky solve, not least squares: the SVD behind `lstsq` made K = 40 cost 11 ms a step.
  """
  num = g.shape[0]
  m = corral.astype(g.dtype)
  ridge = num * jnp.finfo(g.dtype).eps
  system = g * m[:, None] * m[None, :] + jnp.diag(1.0 - m) + ridge * jnp.eye(num, dtype=g.dtype)
  a = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(system, lower=True), m) * m
  total = a.sum()
  solved = jnp.isfinite(total) & (total > 0)
  # A failed factorisation (G_SS indefinite beyond the ridge, only from round-off) gives the
  # corral's centroid: still an affine point of the corral, and Wolfe's monotone check then stops.
  return jnp.where(solved, a / jnp.where(solved, total, 1.0), m / jnp.maximum(m.sum(), 1.0))


def _wolfe(g: jax.Array, max_iters: int) -> tuple[jax.Array, jax.Array]:
  """Wolfe's (1976) min-norm-point algorithm, on the Gramian, with a bounded number of steps.

  The iterate `lam` is always on the simplex and its objective never increases. A "major" step
  checks optimality (x = J^T lam is optimal iff <x, g_k> >= ||x||^2 for all k) and otherwise adds
  the most violated point j = argmin_k <x, g_k> to the corral; a "minor" step moves to the affine
  minimiser of the corral, or, if that leaves the simplex, as far towards it as the simplex allows
  and drops the points whose weight reached 0. Exact (finite termination) in exact arithmetic. In
  floating point it stops when the optimality gap ||x||^2 - min_k <x, g_k> is below K * eps (G is
  normalised to max diagonal 1), when a major step fails to decrease ||x||^2 (round-off cycling),
  or after `max_iters` steps, whichever comes first. Returns the weights and the steps taken.
  """
  num = g.shape[0]
  dtype = g.dtype
  eps = jnp.finfo(dtype).eps
  tol = num * eps
  start = jax.nn.one_hot(jnp.argmin(jnp.diag(g)), num, dtype=dtype)
  major_phase, minor_phase = 0, 1

  def major(carry):
    i, lam, corral, _, best, _ = carry
    gl = g @ lam
    obj = lam @ gl
    j = jnp.argmin(gl)
    stop = (obj - gl[j] <= tol) | corral[j] | (obj >= best)
    return (i, lam, corral.at[j].set(True), jnp.int32(minor_phase), jnp.minimum(obj, best), stop)

  def minor(carry):
    i, lam, corral, _, best, done = carry
    a = _affine_minimizer(g, corral)
    inside = jnp.all(jnp.where(corral, a > eps, True))
    leaving = corral & (a <= eps)
    ratios = jnp.where(leaving, lam / jnp.where(leaving, lam - a, 1.0), jnp.inf)
    theta = jnp.clip(jnp.min(ratios), 0.0, 1.0)
    moved = lam + theta * (a - lam)
    kept = corral & (moved > eps)
    moved = jnp.where(kept, jnp.maximum(moved, 0.0), 0.0)
    moved = moved / jnp.where(moved.sum() > 0, moved.sum(), 1.0)
    lam = jnp.where(inside, a, moved)
    corral = jnp.where(inside, corral, kept)
    phase = jnp.where(inside, major_phase, minor_phase).astype(jnp.int32)
    return i, lam, corral, phase, best, done

  def body(carry):
    carry = jax.lax.cond(carry[3] == major_phase, major, minor, carry)
    return (carry[0] + 1,) + carry[1:]

  def cond(carry):
    return (carry[0] < max_iters) & ~carry[5]

  init = (jnp.int32(0), start, start > 0, jnp.int32(major_phase), jnp.array(jnp.inf, dtype),
          jnp.bool_(False))
  steps, lam = jax.lax.while_loop(cond, body, init)[:2]
  lam = jnp.maximum(lam, 0.0)
  return lam / jnp.where(lam.sum() > 0, lam.sum(), 1.0), steps


def min_norm_simplex(gramian: jax.Array, num_iters: int = 100) -> jax.Array:
  """The weights of the min-norm point of the convex hull of K vectors, from their Gramian.

  Solves `w* = argmin_{w >= 0, sum w = 1} w^T G w` where `G = J J^T` (K x K, G_kl = <g_k, g_l>), so
  that `d = sum_k w*_k g_k` is the element of smallest norm in conv{g_1, ..., g_K}: the MGDA
  direction of Sener & Koltun (2018), with <d, g_k> >= ||d||^2 >= 0 for every k.

  * K = 1: w = [1]. K = 2: the exact closed form w_1 = clip((G22 - G12) / ||g1 - g2||^2, 0, 1)
    (1/2 when g1 = g2).
  * K >= 3: Wolfe's min-norm-point algorithm (an active-set method, exact up to round-off), at most
    `num_iters` steps (one step = one optimality check or one (K+1) x (K+1) least-squares solve);
    the loop exits as soon as it has converged. It typically needs about twice as many steps as
    there are tasks in the support of the solution.
  * G is symmetrised and divided by its largest diagonal entry first, so the result does not
    depend on the gradients' scale (1e-8 and 1e8 behave the same).
  * Degenerate input: if G is all zeros (every gradient zero) or has a non-finite entry, the
    weights are uniform. Any output is finite, non-negative and sums to 1.

  Accuracy: the solution is exact up to the round-off of G. In float32 the objective is known to
  about K * eps * max_k ||g_k||^2, so when the gradients are nearly collinear the returned point can
  be up to ~sqrt(K * eps) * max_k ||g_k|| away from the exact one (the weights themselves may be
  far apart when the minimiser is not unique, e.g. for duplicated gradients; the point d is
  unique).

  Everything is traced with static shapes and a bounded `lax.while_loop`: jittable, vmappable, no
  host round trip. The computation runs in float32 (or float64 when G is float64).
  """
  gramian = jnp.asarray(gramian)
  if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1]:
    raise ValueError(f'min_norm_simplex expects a square K x K Gramian, got {gramian.shape}')
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  g = gramian.astype(dtype)
  num = g.shape[0]
  if num == 1:
    return jnp.ones((1,), dtype)
  uniform = jnp.full((num,), 1.0 / num, dtype)
  g, _, ok = normalize_gramian(g)
  if num == 2:
    w = _min_norm_two(g)
  else:
    w = _wolfe(g, num_iters)[0]
  return jnp.where(ok & jnp.all(jnp.isfinite(w)), w, uniform)
