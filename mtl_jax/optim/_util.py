"""Small helpers shared by the methods (private)."""

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError


def check_num_tasks(num_tasks, name: str) -> int:
  if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
    raise UserError(f'{name}(num_tasks=...) must be a positive integer, got {num_tasks!r}')
  return num_tasks


def check_losses_shape(losses: jax.Array, num_tasks: int, name: str) -> None:
  """Trace-time check that the method was built for as many tasks as there are losses."""
  if losses.shape != (num_tasks,):
    raise UserError(f'{name} was built with num_tasks={num_tasks} but got losses of shape '
                    f'{losses.shape}; pass num_tasks=K with K the number of tasks')


def as_float32(losses: jax.Array) -> jax.Array:
  return jax.lax.stop_gradient(jnp.asarray(losses).astype(jnp.float32))


def scale_step(inner, scales: jax.Array, inner_state, grad: jax.Array, losses: jax.Array):
  """One step of a learned per-task scale (UW's log-variances, IMTL-L's log-scales) with its own
  optax optimiser `inner`: a task whose loss is exactly 0 (absent from the batch) keeps its
  scale, and a non-finite loss or result leaves scales and optimiser state unchanged.
  Returns (scales, inner_state)."""
  present = losses != 0
  updates, new_inner = inner.update(jnp.where(present, grad, 0.0), inner_state, scales)
  new_scales = scales + jnp.where(present, updates, 0.0)
  finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.isfinite(new_scales))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  return keep(new_scales, scales), keep(new_inner, inner_state)


def key_data(seed: int) -> jax.Array:
  """A PRNG key as raw uint32 data (checkpoint friendly), from an integer seed."""
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise UserError(f'seed must be an integer, got {seed!r}')
  return jax.random.key_data(jax.random.key(seed))


def split_key_data(data: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(next key data to keep in the state, a key to draw from now)."""
  keep, use = jax.random.split(jax.random.wrap_key_data(data))
  return jax.random.key_data(keep), use


# Up to this many tasks, loops over the task axis are unrolled (XLA fuses them into one pass);
# beyond it XLA:CPU's fusion duplicates producers into each of the K consumers (O(K²)), so they
# run as a `fori_loop` instead. Measured on [K, 256, 256]: /tmp probes in docs/PERFORMANCE.md.
UNROLL_TASKS = 8


def task_loop(num_tasks: int, body, init):
  """`lax.fori_loop(0, num_tasks, body, init)`, unrolled for small K (see UNROLL_TASKS)."""
  return jax.lax.fori_loop(0, num_tasks, body, init,
                           unroll=num_tasks if num_tasks <= UNROLL_TASKS else 1)


def sum_tasks(x: jax.Array) -> jax.Array:
  """Σ_k x[k] over the leading task axis, as a loop of elementwise adds.

  XLA:CPU lowers `jnp.sum(x, axis=0)` of a [K, ...] gradient-sized array to a strided reduction
  that runs ~75x slower than the adds (9 ms against 0.12 ms for [8, 256, 256]).
  """
  return task_loop(x.shape[0], lambda k, acc: acc + x[k], jnp.zeros(x.shape[1:], x.dtype))
