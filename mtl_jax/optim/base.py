"""The common form of every multi-task optimisation method.

A method is an optax transform over **per-task gradients**: every leaf of `task_grads` has a leading
axis of size K (what `jax.jacrev` of the K-vector of losses returns), and `losses` (shape [K]) is
passed as an extra argument::

    tx = optax.chain(mtl_jax.optim.mgda(), optax.adam(1e-3))
    state = tx.init(params)
    updates, state = tx.update(task_grads, state, params, losses=losses)

The update returns one combined gradient with the task axis gone.

Most methods return a linear combination `sum_k w_k g_k` of the task gradients, and the weights are
all the train step needs to know. Two families say so, which lets the step avoid work:

* **loss weighting** (`ew`, `uw`, `dwa`, ...): `w = loss_weights(state, losses)` needs no gradient at
  all, so the step runs one backward pass of `sum_k w_k L_k` ("weighted" mode). The state moves on
  with `advance(state, losses, w)`.
* **Gramian weighting** (`mgda`, ...): `w, state = gramian_weights(G, losses, state)` with
  `G = J J^T` (K x K). The Gramian can come from the parameter Jacobian ("jacobian" mode) or from the
  gradients at the shared representation ("rep" mode), so the step never needs to materialise the
  full Jacobian in "rep" mode.

Methods that are neither (elementwise ones such as GradDrop) implement `update` directly and run in
"jacobian" mode only.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError

PyTree = Any
LossWeightsFn = Callable[[Any, jax.Array], jax.Array]  # (state, losses) -> w
AdvanceFn = Callable[[Any, jax.Array, jax.Array], Any]  # (state, losses, w) -> state
GramianWeightsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

LOSS_WEIGHTING = 'loss_weighting'
GRAMIAN = 'gramian'
ELEMENTWISE = 'elementwise'

MODES = ('weighted', 'jacobian', 'rep')


class MultiTaskTransformation(optax.GradientTransformationExtraArgs):
  """An optax transform over per-task gradients, annotated with what the train step may exploit.

  It is a real `optax.GradientTransformationExtraArgs` (so `optax.chain` passes `losses=` through),
  with these extra attributes:

  * `name`: the registry name.
  * `family`: `'loss_weighting'`, `'gramian'` or `'elementwise'`.
  * `modes`: the gradient modes the train step may use with it, preferred first.
  * `loss_weights(state, losses) -> w` and `advance(state, losses, w) -> state` (loss weighting).
  * `gramian_weights(gramian, losses, state) -> (w, state)` (Gramian weighting).
  * `weights_task_params`: whether task-specific parameters receive `w_k * grad L_k` (loss
    weighting: the weighted loss is the objective) or the plain `grad L_k` (gradient aggregation,
    as in LibMTL, whose weights only arbitrate the shared parameters).
  * `task_weights(state, losses) -> c` (optional): the weights of the task-specific parameters'
    gradients, `c_k * grad L_k`, for methods whose paper gives them their own (IMTL's loss
    scales, DB-MTL's 1/L_k); it overrides `weights_task_params`. Evaluated on the state before
    the step's update.
  """

  name: str
  family: str
  modes: tuple[str, ...]
  loss_weights: Optional[LossWeightsFn]
  advance: Optional[AdvanceFn]
  gramian_weights: Optional[GramianWeightsFn]
  weights_task_params: bool
  task_weights: Optional[Callable[[Any, jax.Array], jax.Array]]


def _make(init, update, **attrs) -> MultiTaskTransformation:
  attrs.setdefault('task_weights', None)
  tx = MultiTaskTransformation(init, update)
  for key, value in attrs.items():
    setattr(tx, key, value)
  return tx


def check_losses(task_grads: PyTree, losses: Optional[jax.Array], name: str) -> jax.Array:
  """Validates the extra argument at trace time, with a message that says what to pass."""
  if losses is None:
    raise UserError(
        f'mtl_jax.optim.{name}: pass the per-task losses, '
        f'e.g. tx.update(task_grads, state, params, losses=losses)')
  losses = jnp.asarray(losses)
  leaves = jax.tree.leaves(task_grads)
  if losses.ndim != 1:
    raise UserError(f'mtl_jax.optim.{name}: losses must have shape [K], got {losses.shape}')
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != losses.shape[0]:
      raise UserError(
          f'mtl_jax.optim.{name}: every task_grads leaf needs a leading task axis of size '
          f'K={losses.shape[0]} (the number of losses); got a leaf of shape {leaf.shape}')
  return losses


def gramian(task_grads: PyTree) -> jax.Array:
  """G = J J^T over all leaves (K x K), accumulated in float32 whatever the gradients' dtype."""
  leaves = jax.tree.leaves(task_grads)
  if not leaves:
    raise UserError('the Gramian of an empty gradient tree is undefined: no shared parameters?')
  num_tasks = leaves[0].shape[0]
  total = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  for leaf in leaves:
    flat = leaf.reshape(num_tasks, -1)
    total = total + jnp.einsum(
        'kp,lp->kl', flat, flat, preferred_element_type=jnp.float32,
        precision=jax.lax.Precision.HIGHEST)
  return total


def normalize_gramian(gramian: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """G symmetrised, in float32 or better, divided by its largest diagonal entry:
  `(g, scale, ok)` with G ≈ scale * g.

  Solvers work on this scale-free copy, so gradients of scale 1e-8 and 1e8 behave alike. When G
  is not finite or is zero (`ok` False), `g` is the identity, a harmless input whose answer the
  caller replaces by its defined fallback.
  """
  gramian = jnp.asarray(gramian)
  g = gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))
  g = 0.5 * (g + g.T)
  scale = jnp.max(jnp.diag(g))
  ok = jnp.all(jnp.isfinite(g)) & jnp.isfinite(scale) & (scale > jnp.finfo(g.dtype).tiny)
  normalized = jnp.where(ok, g / jnp.where(ok, scale, 1.0), jnp.eye(g.shape[0], dtype=g.dtype))
  return normalized, scale, ok


def combine(weights: jax.Array, task_grads: PyTree) -> PyTree:
  """sum_k w_k g_k, leaf by leaf, in the leaves' own dtype."""
  def leaf_sum(leaf):
    w = weights.astype(jnp.promote_types(leaf.dtype, jnp.float32))
    return jnp.tensordot(w, leaf.astype(w.dtype), axes=1).astype(leaf.dtype)
  return jax.tree.map(leaf_sum, task_grads)


def loss_weighting(
    name: str,
    init_state: Callable[[], Any],
    loss_weights: LossWeightsFn,
    advance: Optional[AdvanceFn] = None,
) -> MultiTaskTransformation:
  """Builds a loss-weighting method from its weight rule and its state transition."""
  advance = advance or (lambda state, losses, w: state)

  def init(params):
    del params
    return init_state()

  def update(task_grads, state, params=None, *, losses=None, **extra_args):
    del params, extra_args
    losses = check_losses(task_grads, losses, name)
    w = jax.lax.stop_gradient(loss_weights(state, losses))
    return combine(w, task_grads), advance(state, losses, w)

  return _make(init, update, name=name, family=LOSS_WEIGHTING,
               modes=('weighted', 'jacobian', 'rep'), loss_weights=loss_weights,
               advance=advance, gramian_weights=None, weights_task_params=True)


def gramian_weighting(
    name: str,
    init_state: Callable[[], Any],
    gramian_weights: GramianWeightsFn,
    *,
    weights_task_params: bool = False,
    task_weights: Optional[Callable[[Any, jax.Array], jax.Array]] = None,
) -> MultiTaskTransformation:
  """Builds a method whose output is `sum_k w_k g_k` with `w` a function of G = J J^T.

  `weights_task_params=True` for methods whose weights scale the task losses themselves (e.g.
  GradNorm), so task-specific parameters get `w_k grad L_k` too.
  """

  def init(params):
    del params
    return init_state()

  def update(task_grads, state, params=None, *, losses=None, **extra_args):
    del params, extra_args
    losses = check_losses(task_grads, losses, name)
    w, state = gramian_weights(gramian(task_grads), losses, state)
    return combine(jax.lax.stop_gradient(w), task_grads), state

  return _make(init, update, name=name, family=GRAMIAN, modes=('jacobian', 'rep'),
               loss_weights=None, advance=None, gramian_weights=gramian_weights,
               weights_task_params=weights_task_params, task_weights=task_weights)


def elementwise(
    name: str,
    init: Callable[[PyTree], Any],
    update: Callable[..., tuple[PyTree, Any]],
    *,
    modes: tuple[str, ...] = ('jacobian', 'rep'),
    task_weights: Optional[Callable[[Any, jax.Array], jax.Array]] = None,
) -> MultiTaskTransformation:
  """Builds a method that is not a linear combination of whole task gradients (e.g. GradDrop).

  `init(params)` and `update(task_grads, state, params=None, *, losses, **extra)` are optax's.
  In "rep" mode the train step calls `update` on the gradients at the shared representation
  (leaves [K, batch, ...], params=None) and back-propagates the result through the trunk; a
  method that cannot work on representation gradients leaves "rep" out of `modes`.
  """
  def checked_update(task_grads, state, params=None, *, losses=None, **extra_args):
    losses = check_losses(task_grads, losses, name)
    return update(task_grads, state, params, losses=losses, **extra_args)

  return _make(init, checked_update, name=name, family=ELEMENTWISE, modes=modes,
               loss_weights=None, advance=None, gramian_weights=None, weights_task_params=False,
               task_weights=task_weights)


class EmptyState(NamedTuple):
  """State of a stateless method."""
