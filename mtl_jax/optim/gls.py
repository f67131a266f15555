"""Geometric loss strategy (GLS), Chennupati et al. (CVPR Workshops 2019)."""

import jax.numpy as jnp

from mtl_jax.optim import _util
from mtl_jax.optim.base import EmptyState, MultiTaskTransformation, loss_weighting


def gls() -> MultiTaskTransformation:
  """Geometric loss strategy: minimise the geometric mean of the task losses.

  "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
  Learning", Chennupati, Sistu, Yogamani & Rawashdeh, CVPR Workshops 2019. The objective is

      L_gls = (prod_k L_k)^(1/K),

  whose gradient is `sum_k w_k g_k` with

      w_k = (prod_j L_j)^(1/K) / (K L_k)

  (computed from the current losses and treated as constants, so the "weighted" mode's one
  backward pass of `sum_k w_k L_k` gives exactly the gradient of L_gls). The weights are computed
  in log space, `w_k = exp(mean_j log L_j - log L_k) / K`, so they neither overflow nor underflow
  when the product of the losses would.

  Output scale: that of the *mean* of the task gradients (w = 1/K when all losses are equal; in
  general sum_k w_k = GM(L) / HM(L) >= 1 times that). This is the paper's objective, as in
  LibMTL's GLS. K = 1 gives w = 1.

  The losses must be positive. A task whose loss is not positive and finite (a loss of exactly 0
  marks a task absent from the batch) is left out: it gets w_k = 0 and the geometric mean is taken
  over the K' present tasks (`(prod_{present} L_j)^(1/K')`). If no task is present all weights
  are 0. Stateless.
  """

  def loss_weights(state, losses):
    del state
    losses = _util.as_float32(losses)
    present = (losses > 0) & jnp.isfinite(losses)
    count = jnp.maximum(jnp.sum(present), 1).astype(jnp.float32)
    log_l = jnp.log(jnp.where(present, losses, 1.0))
    log_gm = jnp.sum(jnp.where(present, log_l, 0.0)) / count
    return jnp.where(present, jnp.exp(log_gm - log_l) / count, 0.0)

  return loss_weighting('gls', EmptyState, loss_weights)
