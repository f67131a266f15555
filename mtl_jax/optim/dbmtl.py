"""Dual-balancing multi-task learning (DB-MTL), Lin et al. (2023)."""

from typing import Any, NamedTuple

import functools

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, elementwise, \
    gramian_weighting


class DBMTLState(NamedTuple):
  """`step`: updates seen (int32); `buffer`: the moving averages of the log-loss gradients, a
  pytree like the parameters with a leading task axis K (float32, or the parameters' dtype if
  wider)."""
  step: jax.Array
  buffer: Any


def _log_loss_factors(losses, eps):
  """1 / (L_k + eps) for present tasks (a positive, finite loss), 0 for the others."""
  present = (losses > 0) & jnp.isfinite(losses)
  return jnp.where(present, 1.0 / (jnp.where(present, losses, 1.0) + eps), 0.0)


def _max_norm_factors(norms):
  """alpha_k = max_j n_j / n_k for non-zero n_k (each rescaled term gets the largest norm), 0 for
  a zero n_k (a zero vector stays zero)."""
  nonzero = norms > 0
  return jnp.where(nonzero, jnp.max(norms) / jnp.where(nonzero, norms, 1.0), 0.0)


def dbmtl(num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0,
          eps: float = 1e-8) -> MultiTaskTransformation:
  """DB-MTL: log-transformed losses, and task gradients rescaled to the largest gradient norm.

  "Dual-Balancing for Multi-Task Learning", Lin et al., arXiv:2308.12029 (2023). Two balancing
  steps:

  * loss scale: each task is trained on log(L_k + eps), whose gradient is g_k / (L_k + eps);
  * gradient magnitude: the (moving average of the) log-loss gradients

        h_k <- beta_t h_k + (1 - beta_t) g_k / (L_k + eps),        beta_t = beta / t^beta_sigma,

    are each rescaled to the largest norm, and the update is

        d = sum_k (max_j ||h_j|| / ||h_k||) h_k.

  Output scale: a sum of K vectors each of norm max_j ||h_j||: on the scale of the sum of the
  log-loss gradients (each h_k has about the size of g_k / L_k).

  Two implementations, chosen by beta:

  * beta = 0 (no moving average): d is the linear combination sum_k w_k g_k with
    w_k = max_j ||grad log L_j|| / ||g_k||, ||grad log L_j|| = sqrt(G_jj) / (L_j + eps): a Gramian
    method, "jacobian" or "rep" mode, no per-parameter state.
  * beta > 0 (the default; the paper uses the moving average): h needs state shaped like the
    shared parameters times K (`init(params)` builds it; K copies of the shared parameters in
    float32, so K times the shared parameters' memory). An elementwise
    method, "jacobian" mode only (representation gradients change with every batch, so a moving
    average of them means nothing). The buffer starts at zero and is not bias-corrected (as in the
    authors' code, LibMTL's DB_MTL), so the first updates are (1 - beta) times smaller.

  Args:
    num_tasks: K.
    beta: the moving-average factor (0 <= beta < 1); 0.9, LibMTL's default (the authors' code).
    beta_sigma: beta_t = beta / t^beta_sigma decays the averaging over the steps t = 1, 2, ...;
      0 (LibMTL's default) keeps beta_t = beta.
    eps: the epsilon of log(L + eps) (1e-8 as in the authors' code).

  Task-specific parameters: trained on log(L_k + eps) as in the paper (gradient
  g_k / (L_k + eps), through `task_weights`, in the train step's "jacobian"/"rep" modes).

  Notes: a task whose loss is not positive and finite (a loss of exactly 0 marks a task absent from
  the batch) contributes a zero log-gradient (its average decays), and a zero h_k stays zero (LibMTL
  divides by ||h_k|| + 1e-8 instead). In the elementwise version a step with non-finite losses or
  gradients leaves the state unchanged.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'dbmtl')
  if not 0 <= beta < 1:
    raise UserError(f'dbmtl(beta=...) must be in [0, 1), got {beta!r}')
  if not beta_sigma >= 0:
    raise UserError(f'dbmtl(beta_sigma=...) must be non-negative, got {beta_sigma!r}')
  if not eps > 0:
    raise UserError(f'dbmtl(eps=...) must be positive, got {eps!r}')
  if beta == 0:
    return _gramian_dbmtl(num_tasks, eps)
  return _elementwise_dbmtl(num_tasks, beta, beta_sigma, eps)


def _gramian_dbmtl(num_tasks, eps):
  def gramian_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'dbmtl')
    g = jnp.asarray(gramian).astype(jnp.promote_types(gramian.dtype, jnp.float32))
    factors = _log_loss_factors(_util.as_float32(losses), eps).astype(g.dtype)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0)) * factors  # ||grad log L_k||
    w = _max_norm_factors(norms) * factors
    return jnp.where(jnp.isfinite(w), w, 0.0), state

  return gramian_weighting('dbmtl', EmptyState, gramian_weights, task_weights=functools.partial(
      _task_weights, eps=eps))


def _elementwise_dbmtl(num_tasks, beta, beta_sigma, eps):
  def buffer_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)

  def init(params):
    buffer = jax.tree.map(
        lambda p: jnp.zeros((num_tasks,) + jnp.shape(p), buffer_dtype(jnp.result_type(p))), params)
    return DBMTLState(jnp.zeros((), jnp.int32), buffer)

  def update(task_grads, state, params=None, *, losses, **extra_args):
    del params, extra_args
    _util.check_losses_shape(losses, num_tasks, 'dbmtl')
    if jax.tree.structure(task_grads) != jax.tree.structure(state.buffer) or any(
        g.shape != b.shape for g, b in zip(jax.tree.leaves(task_grads),
                                           jax.tree.leaves(state.buffer))):
      raise UserError(
          'dbmtl(beta > 0) keeps a moving average per parameter: the task gradients must have '
          'the structure of the parameters its state was initialised from, with a leading task '
          f'axis of {num_tasks}; got {jax.tree.map(jnp.shape, task_grads)} for a state of '
          f'{jax.tree.map(jnp.shape, state.buffer)}')
    losses = _util.as_float32(losses)
    factors = _log_loss_factors(losses, eps)
    step = state.step + 1
    beta_t = beta / step.astype(jnp.float32) ** beta_sigma

    def average(h, grad):
      f = factors.astype(h.dtype).reshape((num_tasks,) + (1,) * (h.ndim - 1))
      log_grad = grad.astype(h.dtype) * f
      return log_grad + beta_t.astype(h.dtype) * (h - log_grad)

    buffer = jax.tree.map(average, state.buffer, task_grads)
    sq = sum(jnp.sum(jnp.square(h.reshape(num_tasks, -1).astype(jnp.float32)), axis=1)
             for h in jax.tree.leaves(buffer))
    alpha = _max_norm_factors(jnp.sqrt(sq))

    def combine(h, grad):
      a = alpha.astype(h.dtype)
      return jnp.tensordot(a, h, axes=1).astype(grad.dtype)

    out = jax.tree.map(combine, buffer, task_grads)
    finite = jnp.all(jnp.isfinite(sq)) & jnp.all(jnp.isfinite(losses))
    new = DBMTLState(step, buffer)
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
    return out, new

  return elementwise('dbmtl', init, update, modes=('jacobian',),
                     task_weights=functools.partial(_task_weights, eps=eps))


def _task_weights(state, losses, eps):
  """Task-specific parameters descend the log-loss, as in the paper: grad log L_k = grad L_k / L_k."""
  del state
  return _log_loss_factors(_util.as_float32(losses), eps)
