"""A differentiable regulariser of the parameters, added to the update as its gradient."""

from typing import Callable

import jax
import optax

from mtl_jax.errors import UserError


def penalty(penalty_fn: Callable[[optax.Params], jax.Array]) -> optax.GradientTransformation:
  """Adds ∇_Θ R(Θ) to the updates, where R = `penalty_fn(params)` is a scalar.

  For regularisers that belong to an architecture rather than to a task, such as attention_mix's
  λ Σ_k a_k² (`MultiTaskModel.penalty`). Applied after the multi-task method, so R is never one of
  the objectives a gradient-aggregation method balances; the step's objective is Σ_k w_k L_k + R
  for weighting methods, and the aggregated direction + ∇R for aggregation methods.

      optax.chain(mtl_jax.optim.penalty(model.penalty), optax.adam(1e-3))

  It needs `params`. Output scale: the updates plus the full gradient of R.
  """
  if not callable(penalty_fn):
    raise UserError(f'penalty(penalty_fn) needs a function params -> scalar, got {penalty_fn!r}')

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise UserError('penalty needs the parameters: call tx.update(updates, state, params)')
    grads = jax.grad(lambda p: penalty_fn(p).astype(jax.numpy.float32))(params)
    updates = jax.tree.map(lambda u, g: (u + g).astype(u.dtype), updates, grads)
    return updates, state

  return optax.GradientTransformation(init, update)
