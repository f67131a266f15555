"""The two-objective toy problem of CAGrad (Liu et al., NeurIPS 2021), reused by Nash-MTL and FAMO.

The function is the official `toy.py` of Cranial-XIX/CAGrad (class `Toy`), term for term::

    f1 = log(max(|0.5 (-x1 - 7) - tanh(-x2)|,     LOWER)) + 6
    f2 = log(max(|0.5 (-x1 + 3) + tanh(-x2) + 2|, LOWER)) + 6
    c1 = max(tanh(0.5 x2), 0)
    f1_sq = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    f2_sq = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    c2 = max(tanh(-0.5 x2), 0)
    L1 = f1 c1 + f1_sq c2
    L2 = f2 c1 + f2_sq c2

with LOWER = 5e-6. Nash-MTL's and FAMO's toy code (`experiments/toy/problem.py`) is the same
function with `L1` multiplied by `scale` (their default 0.1, an imbalanced variant); `scale=1` is
CAGrad's.

The clamps are written as `where(a >= lo, a, lo)` rather than `maximum(a, lo)` so that their
derivative at the kink is PyTorch's (`torch.clamp` passes the gradient when a >= lo; JAX's
`maximum` splits it 1/2 : 1/2 at a tie). It matters at x2 = 0 (where both gates are 0), e.g. at
Nash-MTL's start (0, 0).

Below the x1 axis (x2 < 0) the log terms are gated off (c1 = 0) and L_k = c2(x2) q_k(x1, x2) with
q_k the quadratics: this is where the Pareto set lies (`pareto_set`): the curve of points where the
two gradients are anti-parallel, from the minimiser of L2 (x1 = -7) to that of L1 (x1 = 7),
slightly bent around x2 = -8.355. The minimiser of the average loss (L1 + L2)/2 is the point of
that curve where the gradients have equal length, (0, -8.3552) for `scale=1`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

LOWER = 0.000005

# Initial points. CAGrad's toy.py (`run_all`): three starts. Nash-MTL's and FAMO's toy trainer.py:
# five starts, two of which are CAGrad's. Their union has six points.
CAGRAD_STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
NASH_MTL_STARTS = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
STARTS = CAGRAD_STARTS + tuple(s for s in NASH_MTL_STARTS if s not in CAGRAD_STARTS)

# Every loss is above -20 (q_k >= -20 and 0 <= c2 < 1; the log terms are >= log(LOWER) + 6 > -7).
# FAMO's toy passes min_losses = (-21 scale, -21) so that L_k - min_loss_k > 0.
LOSS_FLOOR = -21.0


def _clamp_min(a, lo):
  """torch.clamp(a, min=lo), with torch's derivative at a == lo (1, not 1/2)."""
  return jnp.where(a >= lo, a, lo)


def losses(x: jax.Array, scale: float = 1.0) -> jax.Array:
  """The two task losses [L1, L2] at x = [x1, x2] (any float dtype; leading batch axes allowed)."""
  x1, x2 = x[..., 0], x[..., 1]
  f1 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOWER)) + 6
  f2 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOWER)) + 6
  c1 = _clamp_min(jnp.tanh(x2 * 0.5), 0.0)
  f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  c2 = _clamp_min(jnp.tanh(-x2 * 0.5), 0.0)
  l1 = (f1 * c1 + f1_sq * c2) * scale
  l2 = f2 * c1 + f2_sq * c2
  return jnp.stack([l1, l2], axis=-1)


def losses_and_jacobian(x: jax.Array, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(L, J) at one point: L [2], J [2, 2] with row k = grad L_k (what `jax.jacrev` returns)."""
  fn = functools.partial(losses, scale=scale)
  return fn(x), jax.jacrev(fn)(x)


def loss_floor(scale: float = 1.0) -> np.ndarray:
  """FAMO's toy `min_losses`: a strict lower bound of each loss, (-21 scale, -21)."""
  return np.array([LOSS_FLOOR * scale, LOSS_FLOOR], np.float32)


# ----------------------------------------------------------------- reference sets, in float64


def _lower_half(x1, x2, scale):
  """Losses and gradients for x2 < 0 (c1 = 0, L_k = c2 q_k), float64 NumPy, closed form."""
  c2 = np.tanh(-0.5 * x2)
  dc2 = -0.5 * (1.0 - c2 ** 2)
  q1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
  q2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
  g1 = scale * np.array([c2 * (x1 - 7) / 5, dc2 * q1 + c2 * 0.02 * (x2 + 8)])
  g2 = np.array([c2 * (x1 + 7) / 5, dc2 * q2 + c2 * 0.02 * (x2 + 8)])
  return np.array([scale * c2 * q1, c2 * q2]), g1, g2


def _pareto_x2(x1, scale):
  """x2 < 0 where some convex combination lam g1 + (1 - lam) g2 vanishes, for x1 in [-7, 7].

  The x1 components fix lam = (x1 + 7) / ((x1 + 7) - scale (x1 - 7)) (they do not depend on x2
  once divided by c2), and the x2 component is then a function of x2 alone with one sign change
  on [-20, -0.5]; brentq finds it to 1e-13.
  """
  lam = (x1 + 7) / ((x1 + 7) - scale * (x1 - 7))

  def x2_component(x2):
    _, g1, g2 = _lower_half(x1, x2, scale)
    return lam * g1[1] + (1 - lam) * g2[1]

  return optimize.brentq(x2_component, -20.0, -0.5, xtol=1e-13, rtol=1e-14)


class ReferenceSets(NamedTuple):
  """`pareto`: [N, 2] points of the Pareto set, x1 from -7 to 7 (float64); `optimum`: the
  minimiser of the average loss [2]; `optimum_loss`: the average loss there."""
  pareto: np.ndarray
  optimum: np.ndarray
  optimum_loss: float


@functools.lru_cache(maxsize=8)
def reference_sets(scale: float = 1.0, num: int = 2801) -> ReferenceSets:
  """The Pareto set (a polyline of `num` points) and the average-loss optimum, computed in float64.

  Pareto set: the points x with x2 < 0 where the two gradients are anti-parallel (a convex
  combination of them vanishes: no direction decreases both losses), solved for x2 by root finding
  at `num` values of x1 evenly spaced over [-7, 7] (the endpoints are the single-task minimisers).
  The test suite checks that no point of a dense grid over [-10, 10]^2 dominates them, i.e. that
  they are the (global) Pareto set and not merely Pareto-stationary.

  Average-loss optimum: the point of that curve where lam = 1/2 (grad L1 + grad L2 = 0), i.e.
  x1 = -7 (1 - scale) / (1 + scale).
  """
  x1 = np.linspace(-7.0, 7.0, num)
  x2 = np.array([_pareto_x2(a, scale) for a in x1])
  x1_opt = -7.0 * (1 - scale) / (1 + scale)
  optimum = np.array([x1_opt, _pareto_x2(x1_opt, scale)])
  values, _, _ = _lower_half(optimum[0], optimum[1], scale)
  return ReferenceSets(np.stack([x1, x2], 1), optimum, float(values.mean()))


def distance_to_polyline(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
  """Euclidean distance from each of `points` [..., 2] to the polyline [N, 2] (its segments)."""
  points = np.asarray(points, np.float64)
  a, b = polyline[:-1], polyline[1:]
  ab = b - a
  p = points[..., None, :]
  t = np.clip(np.sum((p - a) * ab, -1) / np.sum(ab * ab, -1), 0.0, 1.0)
  closest = a + t[..., None] * ab
  return np.sqrt(np.min(np.sum((p - closest) ** 2, -1), -1))


def anti_parallel_cosine(jacobian: np.ndarray) -> np.ndarray:
  """cos(g1, g2) from Jacobians [..., 2, 2] (rows g_k): -1 on the Pareto set."""
  jacobian = np.asarray(jacobian, np.float64)
  g1, g2 = jacobian[..., 0, :], jacobian[..., 1, :]
  norms = np.linalg.norm(g1, axis=-1) * np.linalg.norm(g2, axis=-1)
  return np.sum(g1 * g2, -1) / np.where(norms > 0, norms, 1.0)
