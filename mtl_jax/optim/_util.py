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
