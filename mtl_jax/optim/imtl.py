"""Impartial multi-task learning (IMTL), Liu et al. (ICLR 2021)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, gramian_weighting, \
    loss_weighting

MODES = ('hybrid', 'loss', 'gradient')

# Singular values of the IMTL-G system below this fraction of the largest are treated as zero (the
# Gramian itself is only known to float32 round-off).
_RCOND = 1e-5


class IMTLState(NamedTuple):
  """`log_scales`: the IMTL-L scales s ([K], float32; the losses are scaled by exp(s));
  `inner`: the Adam state of s."""
  log_scales: jax.Array
  inner: optax.OptState


def impartial_weights(gramian: jax.Array) -> jax.Array:
  """IMTL-G's closed-form weights alpha (sum 1) from the Gramian G = J J^T of the gradients.

  alpha is the solution of: d = sum_k alpha_k g_k with sum_k alpha_k = 1 and equal projections
  <d, u_k> = <d, u_1> on the unit gradients u_k = g_k / ||g_k||. With D the rows g_1 - g_k and U
  the rows u_1 - u_k (k = 2..K), the paper's

      alpha_{2:K} = g_1 U^T (D U^T)^{-1},      alpha_1 = 1 - sum_k alpha_{2:K},

  is the same system written with g_1 as the reference. Everything is an inner product:
  <g_i, u_j> = G_ij / sqrt(G_jj). Here the K x K system (one row sum_k alpha_k = 1, one row
  <d, u_r - u_k> = 0 per other task) is solved by least squares, so that a singular system still
  has a defined answer: among the solutions, the one of least norm. In particular:

  * identical or positively parallel gradients (every weighting is impartial): uniform 1/K;
  * g and -g: alpha = (1/2, 1/2), d = 0;
  * a task with a zero gradient (no unit vector; e.g. absent from the batch) gets alpha_k = 0 and
    the others are solved among themselves (the reference task r is the first non-zero one);
  * all gradients zero or a non-finite G: uniform 1/K.

  G is symmetrised and divided by its largest diagonal entry first (the weights do not depend on
  the gradients' scale), and the solve runs in float32 (float64 if G is).
  """
  gramian = jnp.asarray(gramian)
  dtype = jnp.promote_types(gramian.dtype, jnp.float32)
  g = gramian.astype(dtype)
  num = g.shape[0]
  uniform = jnp.full((num,), 1.0 / num, dtype)
  if num == 1:
    return jnp.ones((1,), dtype)
  g = 0.5 * (g + g.T)
  diag = jnp.diag(g)
  scale = jnp.max(diag)
  ok = jnp.all(jnp.isfinite(g)) & (scale > jnp.finfo(dtype).tiny)
  g = jnp.where(ok, g / jnp.where(ok, scale, 1.0), jnp.eye(num, dtype=dtype))
  diag = jnp.diag(g)
  active = diag > jnp.finfo(dtype).tiny
  norms = jnp.sqrt(jnp.where(active, diag, 1.0))
  proj = jnp.where(active[None, :], g / norms[None, :], 0.0)  # proj[i, j] = <g_i, u_j>
  ref = jnp.argmax(active)
  # Row k (k != ref, active): sum_i alpha_i (<g_i, u_ref> - <g_i, u_k>) = 0.
  rows = (proj[:, ref][:, None] - proj).T
  eye = jnp.eye(num, dtype=dtype)
  rows = jnp.where(active[:, None], rows, eye)  # inactive k: alpha_k = 0
  is_ref = jnp.arange(num) == ref
  system = jnp.where(is_ref[:, None], 1.0, rows)
  rhs = is_ref.astype(dtype)
  alpha = jnp.linalg.lstsq(system, rhs, rcond=_RCOND)[0]
  good = ok & jnp.any(active) & jnp.all(jnp.isfinite(alpha))
  return jnp.where(good, alpha, uniform)


def imtl(num_tasks: int, mode: str = 'hybrid', learning_rate: float = 1e-3,
         init_log_scale: float = 0.0) -> MultiTaskTransformation:
  """IMTL: impartial loss scales (IMTL-L) and impartial gradient directions (IMTL-G).

  "Towards Impartial Multi-task Learning", Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang,
  ICLR 2021.

  * IMTL-L: each loss is scaled as exp(s_k) L_k - s_k with learned s; s minimises that objective,
    d/ds_k = exp(s_k) L_k - 1, whose fixed point exp(s_k) L_k = 1 makes every scaled loss 1.
    s takes one Adam step per update (its own optimiser, like `uw`).
  * IMTL-G: the shared update d = sum_k alpha_k g_k with sum alpha = 1 whose projections onto
    every unit task gradient u_k are equal (`impartial_weights`, computed from the Gramian).

  Modes:
    * 'hybrid' (the paper's IMTL and LibMTL's; default): IMTL-G on the scaled gradients
      exp(s_k) g_k, i.e. alpha from diag(e^s) G diag(e^s) and the weights w_k = alpha_k exp(s_k)
      on the raw gradients. Gramian family ("jacobian" and "rep" modes).
    * 'gradient': IMTL-G alone, w = alpha(G). Gramian family, stateless.
    * 'loss': IMTL-L alone, w_k = exp(s_k): a loss-weighting method ("weighted" mode, one
      backward).

  Output scale: 'hybrid' and 'gradient' give an affine combination (sum_k alpha_k = 1; the alpha_k
  may be negative), about the scale of one task gradient, 1/K of equal weighting's. 'loss' gives
  the sum of the scaled task gradients (w = 1 at s = 0).

  Gradients: the paper computes IMTL-G from the gradients at the shared feature (our "rep" mode);
  "jacobian" mode uses the gradients of all shared parameters.

  Task-specific parameters: in 'loss' and 'hybrid' mode they get the scaled-loss gradient
  exp(s_k) grad L_k, as in the paper (through `task_weights`, in "jacobian"/"rep" modes); in
  'gradient' mode the plain grad L_k.

  Args:
    num_tasks: K.
    mode: 'hybrid', 'loss' or 'gradient'.
    learning_rate: the Adam learning rate of s ('hybrid' and 'loss'); the paper (and LibMTL) train
      s with the model's optimiser.
    init_log_scale: the initial s_k (0: unscaled).

  Notes: IMTL-G's degenerate systems (identical, parallel, opposite or zero gradients) have defined,
  finite answers (see `impartial_weights`); a task whose loss is exactly 0 (absent from the batch)
  leaves its s_k unchanged; a step with non-finite losses leaves the state unchanged.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'imtl')
  if mode not in MODES:
    raise UserError(f'imtl(mode={mode!r}) is not one of {", ".join(map(repr, MODES))}')
  if not learning_rate > 0:
    raise UserError(f'imtl(learning_rate=...) must be positive, got {learning_rate!r}')
  inner = optax.adam(learning_rate)

  def init_state():
    s = jnp.full((num_tasks,), init_log_scale, jnp.float32)
    return IMTLState(s, inner.init(s))

  def advance_scales(state, losses):
    losses = _util.as_float32(losses)
    s = state.log_scales
    return IMTLState(*_util.scale_step(inner, s, state.inner, jnp.exp(s) * losses - 1.0, losses))

  if mode == 'loss':
    def loss_weights(state, losses):
      _util.check_losses_shape(losses, num_tasks, 'imtl')
      return jnp.exp(state.log_scales)

    def advance(state, losses, w):
      del w
      _util.check_losses_shape(losses, num_tasks, 'imtl')
      return advance_scales(state, losses)

    return loss_weighting('imtl', init_state, loss_weights, advance)

  if mode == 'gradient':
    def gradient_weights(gramian, losses, state):
      _util.check_losses_shape(losses, num_tasks, 'imtl')
      return impartial_weights(gramian), state

    return gramian_weighting('imtl', EmptyState, gradient_weights)

  def hybrid_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'imtl')
    g = jnp.asarray(gramian).astype(jnp.promote_types(gramian.dtype, jnp.float32))
    scales = jnp.exp(state.log_scales).astype(g.dtype)
    alpha = impartial_weights(g * scales[:, None] * scales[None, :])
    return alpha * scales, advance_scales(state, losses)

  # The paper's task parameters follow the scaled losses: exp(s_k) grad L_k.
  return gramian_weighting('imtl', init_state, hybrid_weights,
                           task_weights=lambda state, losses: jnp.exp(state.log_scales))
