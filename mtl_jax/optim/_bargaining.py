"""Private: the positive solution of `G w = w^(-p)` (Nash-MTL: p = 1; FairGrad: p = 1 / alpha).

Both methods need weights `w > 0` with `(G w)_k = w_k^(-p)` for every task k, where `G = J J^T` is
the K x K Gramian. This is the stationarity condition of the convex function

    f(w) = 1/2 w^T G w + sum_k psi(w_k),     psi'(w) = -w^(-p)
    (psi(w) = -log w for p = 1, psi(w) = w^(1-p) / (p - 1) otherwise),

which is strictly convex on w > 0 (psi'' = p w^(-p-1) > 0), so the solution is unique when it
exists. It exists unless f is unbounded below, i.e. unless some direction d >= 0, d != 0 has
G d = 0 (0 is a non-negative combination of the gradients, e.g. two exactly opposite gradients or a
zero gradient): then no positive solution exists and the iterates run off to infinity.

The solver runs damped Newton steps on f in the relative coordinates w <- w (1 - tau v) (with
D = diag(w), the Newton system is (D G D + p diag(w^(1-p))) v = D grad f, whose matrix has
eigenvalues >= p min_k w_k^(1-p), and is exactly I + D G D for Nash-MTL), with a backtracking
(Armijo) line search evaluated for all step lengths tau_max 2^-m, m < 30, at once (no inner loop),
tau_max keeping w > 0. G is divided by its largest diagonal entry first, and the starting point is
rescaled along its ray to the minimiser of f there, so the result does not depend on the scale of
the gradients; the answer is mapped back with the exact scaling law w(s G) = s^(-1/(1+p)) w(G).
The loop exits early once the Newton decrement is below 1e-10 (f is within 1e-10 of its minimum),
no step decreases f, or the step no longer changes w (float32 round-off), and after `num_iters`
steps at most.

The solve is declared failed (`ok = False`), and callers keep their previous weights, when
  * G is zero or not finite, or the result is not finite and positive;
  * no positive solution exists: 0 is in the convex hull of the gradients, i.e. the min-norm point
    of the hull (MGDA's, `solvers.min_norm_simplex`, one Wolfe solve) has squared norm at most
    10 K eps max_k ||g_k||^2 (float32 cannot tell such gradients from Pareto-stationary ones;
    e.g. g and -g + 3e-3 h are refused, g and -g + 1e-2 h are solved to 0.2%);
  * the Newton iterate has not converged: max_k |(G w)_k - w_k^(-p)| / ((|G| w)_k + w_k^(-p))
    exceeds `tol` (1e-2). (The mismatch is measured relative to the size of the terms: when d is
    nearly orthogonal to some g_k, (G w)_k cancels and its float32 value carries an error
    ~eps (|G| w)_k that the plain residual w_k^p (G w)_k - 1 would amplify.)

Measured (float32, gradients drawn as in the tests, K = 2..20, 20 problems each, cold start from
uniform weights; relative error of w against a float64 scipy `least_squares` solution):
  * p = 1 (Nash-MTL), 0.5, 2, 10: 4-9 Newton steps (median), at most 17; max error 2e-4 (p = 1),
    8e-4 (p = 0.5, 2, K = 20), 3e-4 (p = 10); median error ~1e-7; no false failures.
  * p = 0.1 (FairGrad alpha = 10; the system is nearly linear, w ~ G^-1 1, and inherits G's
    conditioning): median 8 steps, max error 1.4e-2, and 1 of 100 problems not converged within
    the budget (a weight near 0 where psi is stiff), which falls back.
"""

import jax
import jax.numpy as jnp

from mtl_jax.optim.base import normalize_gramian
from mtl_jax.optim.solvers import min_norm_simplex

NUM_HALVINGS = 30
DEFAULT_TOL = 1e-2
STATIONARY_TOL = 10.0  # x K eps: 0 counts as in the hull below this squared distance (G / max diag)


def _objective(g, w, power):
  quadratic = 0.5 * w @ g @ w
  if power == 1.0:
    return quadratic - jnp.sum(jnp.log(w))
  return quadratic + jnp.sum(w ** (1.0 - power)) / (power - 1.0)


def relative_residual(g, w, power):
  """max_k |(G w)_k - w_k^(-p)| / ((|G| w)_k + w_k^(-p)): the mismatch relative to the size of the
  terms, so that the cancellation in (G w)_k (whose float32 error is ~eps (|G| w)_k) does not count
  as a mismatch. About half of |w_k^p (G w)_k - 1| when (G w)_k does not cancel."""
  target = w ** (-power)
  return jnp.max(jnp.abs(g @ w - target) / (jnp.abs(g) @ w + target))


def _newton(g, power, start, num_iters):
  """Damped Newton on f from `start` (positive), on a normalised G. Returns (w, steps)."""
  taus = 0.5 ** jnp.arange(NUM_HALVINGS, dtype=g.dtype)
  num = g.shape[0]

  def body(carry):
    i, w, _ = carry
    s = w * (g @ w) - w ** (1.0 - power)  # D grad f
    h = w[:, None] * g * w[None, :] + jnp.diag(power * w ** (1.0 - power))
    v = jnp.linalg.solve(h, s)
    decrement = s @ v  # lambda^2 >= 0: f(w) - f* ~ lambda^2 / 2 near the solution
    v_max = jnp.max(v)
    tau_max = jnp.where(v_max > 0, jnp.minimum(1.0, 0.99 / jnp.where(v_max > 0, v_max, 1.0)),
                        1.0)
    steps = tau_max * taus
    candidates = w[None, :] * (1.0 - steps[:, None] * v[None, :])
    positive = jnp.all(candidates > 0, axis=1)
    values = jax.vmap(lambda c: _objective(g, c, power))(
        jnp.where(positive[:, None], candidates, 1.0))
    accept = positive & jnp.isfinite(values) & (
        values <= _objective(g, w, power) - 0.25 * steps * decrement)
    good = jnp.any(accept) & jnp.all(jnp.isfinite(v)) & jnp.isfinite(decrement)
    best = jnp.argmax(accept)
    new_w = jnp.where(good, candidates[best], w)
    stalled = jnp.max(jnp.abs(steps[best] * v)) < 4 * jnp.finfo(w.dtype).eps  # w no longer moves
    done = ~good | (decrement < 1e-10) | stalled
    return i + 1, new_w, done

  def cond(carry):
    return (carry[0] < num_iters) & ~carry[2]

  steps, w, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), start, jnp.bool_(num == 0)))
  return w, steps


def solve_power_system(gramian, power: float, init, num_iters: int, tol: float = DEFAULT_TOL):
  """The w > 0 with `G w = w^(-power)` elementwise, warm-started from the direction of `init`.

  Returns `(w, ok)`; `w` is meaningful only where `ok` (see the module docstring). `power` is a
  Python float (static); everything else is traced, jittable, with a bounded `lax.while_loop`.
  """
  g, scale, finite = normalize_gramian(gramian)
  dtype, num = g.dtype, g.shape[0]

  start = jnp.asarray(init).astype(dtype)
  start = jnp.where(jnp.all(start > 0) & jnp.all(jnp.isfinite(start)), start, 1.0)
  # The minimiser of f along the ray t * start: t^(1+p) start^T G start = sum_k start_k^(1-p).
  quad = start @ g @ start
  ray = (jnp.sum(start ** (1.0 - power)) / jnp.where(quad > 0, quad, 1.0)) ** (1.0 / (1.0 + power))
  start = jnp.where((quad > 0) & jnp.isfinite(ray) & (ray > 0), start * ray, start)

  w_hat, _ = _newton(g, power, start, num_iters)
  residual = relative_residual(g, w_hat, power)
  # A solution exists iff 0 is not in the convex hull of the gradients (MGDA's min-norm point).
  hull = min_norm_simplex(g)
  exists = hull @ g @ hull > STATIONARY_TOL * num * jnp.finfo(dtype).eps
  w = w_hat * jnp.where(finite, scale, 1.0) ** (-1.0 / (1.0 + power))
  ok = (finite & exists & jnp.all(jnp.isfinite(w)) & jnp.all(w > 0) & (residual <= tol))
  return w, ok
