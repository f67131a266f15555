"""The inner loop of gradient-based meta-learning: k SGD steps on one task's support set.

    φ_0 = θ,    φ_{i+1} = φ_i − α · m ⊙ ∇_φ L(φ_i; S)        i = 0 .. k−1

with α the inner learning rate, S the task's support batch (the same batch at every step, as in
MAML, or one batch per step), and m the adaptation mask: which parameters adapt (all of them, or
e.g. only the task heads, ANIL: Raghu et al., "Rapid Learning or Feature Reuse?", ICLR 2020).
Parameters outside the mask stay θ inside the loop but remain differentiable inputs of it, so a
second-order meta-gradient still reaches them through the adapted parameters.

The loop is one `lax.scan`, so k steps compile to one body whatever k is. MAML, first-order
MAML, Reptile and evaluation (`adaptation_curve`) all use it.

`first_order=True` stops the gradient of every inner gradient: the adapted parameters then depend
on θ as φ_k = θ + const, so ∂φ_k/∂θ = I (FOMAML, Finn et al. 2017 §5.2) and differentiating
through the loop costs no second-order terms.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]  # loss_fn(params, batch) -> scalar
# None (every parameter adapts), a pytree of Python bools with the params' structure or a prefix
# of it (e.g. {'shared': False, 'tasks': True}), or a function params -> such a pytree.
Mask = Any


class InnerLoopResult(NamedTuple):
  params: PyTree  # φ_k
  support_losses: jax.Array  # [k]: L(φ_i; S) before step i (the loss each step descended)


def mask_leaves(mask: Mask, params: PyTree) -> list[bool]:
  """One Python bool per leaf of `params` (in `jax.tree.leaves` order): does it adapt?"""
  if mask is None:
    return [True] * len(jax.tree.leaves(params))
  if callable(mask):
    mask = mask(params)
  # A prefix mask broadcasts its bool over the subtree it covers.
  full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask, params)
  flags = jax.tree.leaves(full)
  if len(flags) != len(jax.tree.leaves(params)):
    raise ValueError('the adaptation mask does not cover every parameter leaf')
  if not any(flags):
    raise ValueError('the adaptation mask selects no parameter: nothing would adapt')
  return flags


def _split(params: PyTree, flags: list[bool]):
  """(adapted leaves, rebuild(adapted leaves) -> params): the loop carries only what adapts, so
  the frozen parameters' gradients are never computed, and stay closed-over inputs."""
  leaves, treedef = jax.tree.flatten(params)
  fast = [leaf for leaf, flag in zip(leaves, flags) if flag]

  def rebuild(fast_leaves):
    it = iter(fast_leaves)
    return treedef.unflatten([next(it) if flag else leaf for leaf, flag in zip(leaves, flags)])

  return fast, rebuild


def inner_loop(loss_fn: LossFn, params: PyTree, support: PyTree, lr, steps: int, *,
               mask: Mask = None, first_order: bool = False,
               per_step_batches: bool = False) -> InnerLoopResult:
  """`steps` SGD steps of `loss_fn` on `support` from `params` (see the module docstring).

  Args:
    loss_fn: `loss_fn(params, batch) -> scalar`.
    params: θ, the starting point.
    support: the task's support batch; with `per_step_batches`, a pytree whose leaves have a
      leading axis of size `steps`, batch i feeding step i (Reptile's k mini-batches).
    lr: α, a float or a scalar array.
    steps: k >= 0, a Python int (the scan length).
    mask: which parameters adapt (module docstring); None: all.
    first_order: stop the gradient through the inner gradients (FOMAML).
    per_step_batches: see `support`.

  Returns:
    `InnerLoopResult(params=φ_k, support_losses=[L(φ_0; S_0), ..., L(φ_{k-1}; S_{k-1})])`.
  """
  if steps < 0:
    raise ValueError(f'inner steps must be >= 0, got {steps}')
  fast, rebuild = _split(params, mask_leaves(mask, params))

  def body(fast, batch):
    batch = support if batch is None else batch
    loss, grads = jax.value_and_grad(lambda f: loss_fn(rebuild(f), batch))(fast)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    fast = [p - jnp.asarray(lr, p.dtype) * g for p, g in zip(fast, grads)]
    return fast, loss

  fast, losses = jax.lax.scan(body, fast, support if per_step_batches else None, length=steps)
  return InnerLoopResult(rebuild(fast), losses)


def adapt(loss_fn: LossFn, params: PyTree, support: PyTree, lr, steps: int, *,
          mask: Mask = None, first_order: bool = False,
          per_step_batches: bool = False) -> PyTree:
  """φ_k: `inner_loop`'s adapted parameters alone."""
  return inner_loop(loss_fn, params, support, lr, steps, mask=mask, first_order=first_order,
                    per_step_batches=per_step_batches).params


def adaptation_curve(loss_fn: LossFn, params: PyTree, support: PyTree, query: PyTree, lr,
                     steps: int, *, mask: Mask = None,
                     query_loss_fn: LossFn | None = None) -> jax.Array:
  """[L_q(φ_0; Q), ..., L_q(φ_k; Q)]: the query loss after 0, 1, ..., k inner steps on `support`.

  For evaluation: one scan gives every step count at once. `query_loss_fn` (default `loss_fn`)
  scores the query set, e.g. with a metric other than the training loss.
  """
  query_loss_fn = loss_fn if query_loss_fn is None else query_loss_fn
  fast, rebuild = _split(params, mask_leaves(mask, params))

  def body(fast, _):
    query_loss = query_loss_fn(rebuild(fast), query)
    grads = jax.grad(lambda f: loss_fn(rebuild(f), support))(fast)
    return [p - jnp.asarray(lr, p.dtype) * g for p, g in zip(fast, grads)], query_loss

  fast, losses = jax.lax.scan(body, fast, None, length=steps)
  return jnp.concatenate([losses, query_loss_fn(rebuild(fast), query)[None]])
