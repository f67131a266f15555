"""Meta-learning (MAML, first-order MAML, Reptile) over any `mtl_jax.models` architecture, and
transfer of a trained trunk to a new task (`meta.transfer`, driven by `config.transfer`).

Pure functions of `loss_fn(params, batch) -> scalar` (`model_loss` builds one from a
`MultiTaskModel` and tasks). A meta-batch is a pytree with a leading task axis; tasks are
vmapped, inner steps are one `lax.scan`, and `jit_meta_step` shards the tasks over the mesh.

    loss_fn = meta.model_loss(model, tasks)
    step = meta.make_maml_step(loss_fn, optax.adam(1e-3), inner_lr=0.01, inner_steps=1)
    step = meta.jit_meta_step(step, mesh)
    state, metrics = step(meta.init_state(params, optax.adam(1e-3)), support, query)
    adapted = meta.adapt(loss_fn, state.params, task_support, lr=0.01, steps=10)
"""

from mtl_jax.meta.adaptation import (InnerLoopResult, adapt, adaptation_curve, inner_loop,
                                mask_leaves)
from mtl_jax.meta.maml import fomaml, make_maml_step, maml, meta_gradient
from mtl_jax.meta.model_loss import model_loss, task_specific
from mtl_jax.meta.reptile import make_reptile_step, reptile_direction
from mtl_jax.meta.step import MetaState, init_state, jit_meta_step, put_tasks
from mtl_jax.meta import transfer  # restore_shared, transfer_optimizer (see docs/TRANSFER.md)

__all__ = ['InnerLoopResult', 'MetaState', 'adapt', 'adaptation_curve', 'fomaml',
           'init_state', 'inner_loop', 'jit_meta_step', 'make_maml_step', 'make_reptile_step',
           'maml', 'mask_leaves', 'meta_gradient', 'model_loss', 'put_tasks',
           'reptile_direction', 'task_specific', 'transfer']
