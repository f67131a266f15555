"""One training step: forward, per-task losses, the method's gradient, the optimiser, as one program.

Gradient modes (DESIGN.md §1):

* "weighted": `w = method.loss_weights(state, L)`, then one backward pass of Σ_k w_k L_k.
* "jacobian": J_k = ∇_Θs L_k for every task (K vector-Jacobian products sharing one forward
  pass); the method combines them (through G = J Jᵀ for Gramian methods). Unrolled, with a
  shared representation z, J_k is the VJP of Z_k = ∂L_k/∂z through the trunk, so no task's
  backward pass runs through another task's head (at K = 8 on `benchmarks/vs_pytorch.py`'s MLP:
  5-12 % less step time, 1.6x faster to compile).
* "rep": Z_k = ∇_z L_k at the shared representation z, each through task k's head alone
  (`model.decode(..., task_names=[k])`); G = Z Zᵀ gives the weights, and one VJP of Σ_k w_k Z_k
  through the trunk gives the shared gradient. Needs `model.has_shared_representation`.

Task-specific parameters get Σ_k c_k ∇L_k with c = w for loss-weighting methods (the weighted loss
is the objective, so all three modes agree), c = 1 for gradient-aggregation methods (their
weights arbitrate the shared parameters only, as in LibMTL), or the method's own
`task_weights(state, losses)` where its paper fixes them (IMTL, DB-MTL).

A step whose losses or gradients are not all finite (or whose gradient norm overflows) changes nothing but `step` and
`skipped_steps`: parameters, optimiser state, method state and collections stay as they were.
"""

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from mtl_jax.errors import UserError
from mtl_jax.models.base import MultiTaskModel
from mtl_jax.models.base import merge as merge_collections
from mtl_jax.optim import base as optim_base
from mtl_jax.tasks import Task

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  collections: PyTree  # non-trainable model variables, e.g. batch_stats
  opt_state: PyTree
  mtl_state: PyTree
  rng: jax.Array  # raw uint32 key: checkpoints store it as a plain array
  skipped_steps: jax.Array

  @property
  def variables(self):
    return {'params': self.params, **self.collections}


def create_state(model: MultiTaskModel, method, optimizer: optax.GradientTransformation,
                 rng: jax.Array, example_inputs) -> TrainState:
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, example_inputs)
  params = variables['params']
  collections = {k: v for k, v in variables.items() if k != 'params'}
  return distinct_buffers(TrainState(
      step=jnp.zeros((), jnp.int32), params=params, collections=collections,
      opt_state=optimizer.init(params), mtl_state=method.init(shared_params(model, params)),
      rng=state_rng, skipped_steps=jnp.zeros((), jnp.int32)))


def distinct_buffers(tree: PyTree) -> PyTree:
  """Copies every leaf that is the same array object as an earlier one.

  The jitted step donates its state; a buffer that appears twice (a model's init or an optimiser's
  state reusing one array) would be donated twice, which crashes XLA rather than raising.
  """
  seen = set()

  def distinct(leaf):
    if isinstance(leaf, jax.Array):
      if id(leaf) in seen:
        return jnp.copy(leaf)
      seen.add(id(leaf))
    return leaf

  return jax.tree.map(distinct, tree)


def shared_params(model: MultiTaskModel, params: PyTree) -> dict:
  return {k: params[k] for k in model.shared_keys() if k in params}


def _split(model, params):
  shared = shared_params(model, params)
  rest = {k: v for k, v in params.items() if k not in shared}
  return shared, rest


def task_losses(tasks: Sequence[Task], outputs: dict, batch: dict) -> jax.Array:
  masks = batch.get('label_mask', {})
  return jnp.stack([task.loss(outputs[task.name], batch['labels'][task.name], masks.get(task.name))
                    for task in tasks])


def resolve_mode(mode: str, method, model: MultiTaskModel) -> str:
  """The gradient mode to use, or a UserError saying why the requested one cannot work."""
  if mode == 'auto':
    mode = method.modes[0]
  if mode not in optim_base.MODES:
    raise UserError(f'unknown gradient mode {mode!r}; valid: auto, {", ".join(optim_base.MODES)}')
  if mode not in method.modes:
    raise UserError(f'method {method.name!r} cannot run in {mode!r} mode; '
                    f'it supports: {", ".join(method.modes)}')
  if mode == 'rep' and not model.has_shared_representation:
    raise UserError(f'{type(model).__name__} has no single shared representation, so "rep" mode '
                    'is undefined; use mode "jacobian" (or "weighted" for a loss-weighting method)')
  if mode != 'weighted' and not model.has_shared_parameters:
    raise UserError(f'{type(model).__name__} has no shared parameters for method '
                    f'{method.name!r} to arbitrate; use a loss-weighting method (mode "weighted")')
  return mode


def make_train_step(model: MultiTaskModel, tasks: Sequence[Task], method,
                    optimizer: optax.GradientTransformation, mode: str,
                    jacobian_chunk_size: int = 0, per_task_gradients: str = 'auto') -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)`, pure and jittable.

  In the "rep" mode each task's representation gradient is one VJP through its own head. In the
  "jacobian" mode the K per-task gradients are K vector-Jacobian products sharing one forward
  pass, computed as chosen by `per_task_gradients`:
  * 'vmap': one batched backward pass over the K basis vectors;
  * 'unrolled': K backward passes in one program (XLA CPU runs batched backward passes poorly:
    2x slower than unrolled at K=8 on a 1M-parameter MLP, `benchmarks/methods.py`);
  * 'auto': 'unrolled' on CPU up to K = 16 (beyond, the program's compile time grows with K:
    ~2 min at K = 40), 'vmap' otherwise.
  `jacobian_chunk_size` > 0 instead maps over chunks of that many tasks (`lax.map` of vmapped
  VJPs), bounding the memory of the intermediate Jacobian computation; 0 does all K at once.
  """
  mode = resolve_mode(mode, method, model)
  num_tasks = len(tasks)
  if jacobian_chunk_size < 0:
    raise UserError(f'jacobian_chunk_size must be >= 0, got {jacobian_chunk_size}')
  if per_task_gradients not in ('auto', 'vmap', 'unrolled'):
    raise UserError(f'unknown per_task_gradients {per_task_gradients!r}; '
                    'valid: auto, vmap, unrolled')
  if per_task_gradients == 'auto':
    cpu = jax.default_backend() == 'cpu'
    per_task_gradients = 'unrolled' if cpu and num_tasks <= 16 else 'vmap'

  # Unrolled, each task's backward pass can start from its own Z_k = ∂L_k/∂z. Vmapped or in
  # chunks it starts from a basis vector at the losses instead: the K cotangents at z then exist
  # only inside the batched (chunked) pass, never all at once beside it (`jacobian_memory.py`:
  # stacking them took chunk 4 at K = 16 from 306 to 1,068 MiB).
  chunked = 0 < jacobian_chunk_size < num_tasks
  unrolled = per_task_gradients == 'unrolled' and not chunked

  def per_task(vjp, cotangents):
    """`vjp` of each of the K stacked `cotangents` (a pytree with a leading task axis)."""
    if chunked:
      return jax.lax.map(vjp, cotangents, batch_size=jacobian_chunk_size)
    if unrolled:
      return jax.tree.map(lambda *xs: jnp.stack(xs),
                          *[vjp(jax.tree.map(lambda x, k=k: x[k], cotangents))
                            for k in range(num_tasks)])
    return jax.vmap(vjp)(cotangents)

  def task_param_weights(state, losses, w):
    """c in Σ_k c_k ∇L_k for the task-specific parameters (see the module docstring)."""
    if method.task_weights is not None:
      return jax.lax.stop_gradient(method.task_weights(state.mtl_state, losses))
    return jax.lax.stop_gradient(w) if method.weights_task_params else jnp.ones(num_tasks)

  def forward(state, params, inputs, rngs):
    variables = {'params': params, **state.collections}
    return model.apply(variables, inputs, train=True, rngs=rngs, mutable=True)

  def aggregate(state, losses, task_grads, params):
    """The method's combination of per-task gradients (of parameters, or at the representation),
    its weights (ones for elementwise methods) and its next state."""
    if method.family == optim_base.ELEMENTWISE:
      combined, mtl_state = method.update(task_grads, state.mtl_state, params, losses=losses)
      return combined, jnp.ones(num_tasks), mtl_state
    if method.family == optim_base.LOSS_WEIGHTING:
      w = method.loss_weights(state.mtl_state, losses)
      mtl_state = method.advance(state.mtl_state, losses, w)
    else:
      w, mtl_state = method.gramian_weights(optim_base.gramian(task_grads), losses,
                                            state.mtl_state)
    w = jax.lax.stop_gradient(w)
    return optim_base.combine(w, task_grads), w, mtl_state

  def weighted(state, batch, rngs):
    def objective(params):
      outputs, collections = forward(state, params, batch['inputs'], rngs)
      losses = task_losses(tasks, outputs, batch)
      w = jax.lax.stop_gradient(method.loss_weights(state.mtl_state, losses))
      return jnp.dot(w, losses), (losses, w, collections)
    grads, (losses, w, collections) = jax.grad(objective, has_aux=True)(state.params)
    return grads, losses, w, method.advance(state.mtl_state, losses, w), collections

  def jacobian(state, batch, rngs):
    if model.has_shared_representation and unrolled:
      return through_representation(state, batch, rngs, jacobian=True)
    shared, rest = _split(model, state.params)

    def losses_of(shared, rest):
      outputs, collections = forward(state, {**rest, **shared}, batch['inputs'], rngs)
      return task_losses(tasks, outputs, batch), collections

    losses, vjp, collections = jax.vjp(losses_of, shared, rest, has_aux=True)
    jac_shared, jac_rest = per_task(vjp, jnp.eye(num_tasks, dtype=losses.dtype))
    shared_grad, w, mtl_state = aggregate(state, losses, jac_shared, shared)
    grads = {**optim_base.combine(task_param_weights(state, losses, w), jac_rest), **shared_grad}
    return grads, losses, w, mtl_state, collections

  def through_representation(state, batch, rngs, jacobian):
    """Both modes for a model with a shared representation z = encode(Θs): each task's
    Z_k = ∂L_k/∂z through its own head, then
    * "rep" (`jacobian=False`): the method combines the Z_k, and one VJP of Σ_k w_k Z_k through
      the trunk gives the shared gradient;
    * "jacobian" (unrolled only): J_k = VJP of Z_k through the trunk (K trunk backward passes,
      none through another task's head), and the method combines the J_k.
    """
    shared, rest = _split(model, state.params)
    inputs = batch['inputs']

    def encode(shared):
      variables = {'params': {**rest, **shared}, **state.collections}
      return model.encode(variables, inputs, train=True, rngs=rngs, mutable=True)

    def decode_one(task):
      """Task `task`'s loss through its own head alone: K heads cost K head backward passes, not
      K² (one VJP of all K losses per basis vector would send zeros through every other head)."""
      def loss(features, rest):
        variables = {'params': {**rest, **shared}, **state.collections}
        outputs, collections = model.decode(variables, features, train=True, rngs=rngs,
                                            mutable=True, task_names=(task.name,))
        return task_losses([task], outputs, batch)[0], collections
      return loss

    features, encode_vjp, encode_collections = jax.vjp(encode, shared, has_aux=True)
    per_task_losses, rep_grads, jac_rest, decode_collections = [], [], [], {}
    for task in tasks:
      loss, decode_vjp, collections = jax.vjp(decode_one(task), features, rest, has_aux=True)
      rep_grad, rest_grad = decode_vjp(jnp.ones_like(loss))
      per_task_losses.append(loss)
      rep_grads.append(rep_grad)
      jac_rest.append(rest_grad)
      decode_collections = merge_collections(decode_collections, collections)
    losses = jnp.stack(per_task_losses)
    rep_grads, jac_rest = (jax.tree.map(lambda *xs: jnp.stack(xs), *g)
                           for g in (rep_grads, jac_rest))
    if jacobian:
      (jac_shared,) = per_task(encode_vjp, rep_grads)
      shared_grad, w, mtl_state = aggregate(state, losses, jac_shared, shared)
    else:
      combined, w, mtl_state = aggregate(state, losses, rep_grads, None)
      (shared_grad,) = encode_vjp(combined)
    grads = {**optim_base.combine(task_param_weights(state, losses, w), jac_rest), **shared_grad}
    collections = merge_collections(encode_collections, decode_collections)
    return grads, losses, w, mtl_state, collections

  def representation(state, batch, rngs):
    return through_representation(state, batch, rngs, jacobian=False)

  compute = {'weighted': weighted, 'jacobian': jacobian, 'rep': representation}[mode]

  def train_step(state: TrainState, batch: dict):
    rngs = {'dropout': jax.random.fold_in(state.rng, state.step)}
    grads, losses, w, mtl_state, collections = compute(state, batch, rngs)
    grad_norm = optax.tree.norm(grads)
    # One reduction serves both the metric and the guard: a NaN or inf anywhere in the gradient
    # (or a norm that overflows float32) makes the norm non-finite.
    finite = jnp.all(jnp.isfinite(losses)) & jnp.isfinite(grad_norm)

    def apply(state):
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
      return state.replace(params=optax.apply_updates(state.params, updates),
                           opt_state=opt_state, mtl_state=mtl_state,
                           collections=merge_collections(state.collections, collections))

    # A branch rather than a select over the whole state: a rejected step leaves every piece of
    # state untouched, and an accepted one does not pay for reading both versions.
    kept = jax.lax.cond(finite, apply, lambda state: state, state)
    kept = kept.replace(step=state.step + 1,
                        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    metrics = {'losses': losses, 'weights': jnp.asarray(w, jnp.float32),
               'grad_norm': grad_norm, 'finite': finite}
    return kept, metrics

  train_step.mode = mode
  return train_step
