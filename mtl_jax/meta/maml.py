"""MAML and first-order MAML: learn an initialisation θ that k SGD steps adapt well.

Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017. For tasks t with support set S_t and query set Q_t:

    φ_t(θ) = θ − α Σ_{i<k} m ⊙ ∇L(φ_{t,i}; S_t)                     (`adaptation.inner_loop`)
    meta-loss  F(θ) = (1/T) Σ_t L(φ_t(θ); Q_t)
    ∇F(θ) = (1/T) Σ_t (∂φ_t/∂θ)ᵀ ∇L(φ_t; Q_t),
    ∂φ_t/∂θ = Π_i (I − α m ⊙ ∇²L(φ_{t,i}; S_t))                       (second order: MAML)
    ∂φ_t/∂θ ≈ I                                                         (first order: FOMAML)

MAML differentiates through the inner loop with `jax.grad` (Hessian-vector products, never the
Hessian); FOMAML stops the gradient of the inner gradients (Finn et al. §5.2), so its
meta-gradient is the query gradient at the adapted parameters. The T tasks of a meta-batch run
as one `vmap`; any optax transform is the outer optimiser.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtl_jax.meta import adaptation as adapt_lib
from mtl_jax.meta import step as step_lib

PyTree = Any


def maml(loss_fn: adapt_lib.LossFn, inner_lr, inner_steps: int, *, first_order: bool = False,
         mask: adapt_lib.Mask = None) -> Callable:
  """One task's meta-loss `meta_loss(params, support, query) -> L(φ(θ); Q)`, differentiable in
  `params` (second order unless `first_order`). `mask` picks the adapted parameters."""
  def meta_loss(params, support, query):
    return _task_objective(loss_fn, inner_lr, inner_steps, first_order, mask)(
        params, support, query)[0]
  return meta_loss


def fomaml(loss_fn: adapt_lib.LossFn, inner_lr, inner_steps: int, *,
           mask: adapt_lib.Mask = None) -> Callable:
  """`maml(..., first_order=True)`."""
  return maml(loss_fn, inner_lr, inner_steps, first_order=True, mask=mask)


def _task_objective(loss_fn, inner_lr, inner_steps, first_order, mask):
  """(query loss after adaptation, support losses of the inner steps) for one task."""
  def objective(params, support, query):
    adapted, support_losses = adapt_lib.inner_loop(
        loss_fn, params, support, inner_lr, inner_steps, mask=mask, first_order=first_order)
    return loss_fn(adapted, query), support_losses
  return objective


def meta_gradient(loss_fn: adapt_lib.LossFn, params: PyTree, support: PyTree, query: PyTree,
                  inner_lr, inner_steps: int, *, first_order: bool = False,
                  mask: adapt_lib.Mask = None):
  """(F(θ), ∇F(θ), support losses [T, k]) over a meta-batch (leading task axis T on `support`
  and `query`): the mean meta-loss of the T tasks, vmapped."""
  objective = _task_objective(loss_fn, inner_lr, inner_steps, first_order, mask)

  def mean_objective(params):
    query_losses, support_losses = jax.vmap(objective, in_axes=(None, 0, 0))(
        params, support, query)
    return query_losses.mean(), support_losses

  (loss, support_losses), grads = jax.value_and_grad(mean_objective, has_aux=True)(params)
  return loss, grads, support_losses


def make_maml_step(loss_fn: adapt_lib.LossFn, optimizer: optax.GradientTransformation,
                   inner_lr, inner_steps: int, *, first_order: bool = False,
                   mask: adapt_lib.Mask = None) -> Callable:
  """`meta_step(state, support, query) -> (state, metrics)`, pure and jittable
  (`step.jit_meta_step` shards it). `state` is a `step.MetaState` (`step.init_state`).

  metrics: `meta_loss` (mean query loss after adaptation, F(θ) before this update),
  `support_loss_before` (mean support loss at θ, before any inner step; NaN when k = 0),
  `grad_norm` (of ∇F).
  """
  def meta_step(state: step_lib.MetaState, support, query):
    loss, grads, support_losses = meta_gradient(
        loss_fn, state.params, support, query, inner_lr, inner_steps, first_order=first_order,
        mask=mask)
    metrics = {'meta_loss': loss,
               'support_loss_before': (support_losses[:, 0].mean() if inner_steps
                                       else jnp.float32(jnp.nan)),
               'grad_norm': optax.tree.norm(grads)}
    return step_lib.apply_outer(optimizer, state, grads), metrics

  return meta_step
