"""Pieces the meta-learning experiments share: meta-training loops compiled in chunks, the
fine-tuning evaluation, and mean ± std formatting."""

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import meta

PyTree = Any


def train(meta_step: Callable, sample: Callable, params: PyTree,
          optimizer: optax.GradientTransformation, key: jax.Array, num_steps: int,
          chunk: int = 500, log: Callable | None = None):
  """Runs `num_steps` meta-steps; `sample(key) -> meta-batches` (the step's arguments after the
  state) draws fresh tasks every step. Steps run in jitted chunks of `chunk` (one `lax.scan`), so
  Python is out of the loop. Returns (params, [(step, mean metrics of the chunk)], seconds)."""
  chunk = min(chunk, num_steps)
  if num_steps % chunk:
    raise ValueError(f'num_steps={num_steps} is not a multiple of the chunk {chunk}')
  def run_chunk(state, key):
    def body(state, key):
      return meta_step(state, *sample(key))
    return jax.lax.scan(body, state, jax.random.split(key, chunk))

  run_chunk = jax.jit(run_chunk, donate_argnums=(0,))
  state = meta.init_state(params, optimizer)
  history, start = [], time.perf_counter()
  for index in range(-(-num_steps // chunk)):
    state, metrics = run_chunk(state, jax.random.fold_in(key, index))
    mean = {name: float(np.mean(value)) for name, value in metrics.items()}
    history.append(((index + 1) * chunk, mean))
    if log:
      log(f'  step {(index + 1) * chunk}: ' + ', '.join(f'{k} {v:.4f}' for k, v in mean.items()))
  jax.block_until_ready(state)
  return state.params, history, time.perf_counter() - start


def make_curves(loss_fn: Callable, steps: int, mask=None) -> Callable:
  """`curves(params, support, query, lr) -> [T, steps + 1]`: each task's query loss after
  0..steps fine-tuning steps of SGD(lr) on its support set, all from `params` (tasks on the
  leading axis of `support` and `query`). One compiled program per shape, whatever the lr."""
  def curves(params, support, query, lr):
    one = lambda s, q: meta.adaptation_curve(loss_fn, params, s, q, lr, steps, mask=mask)
    return jax.vmap(one)(support, query)
  return jax.jit(curves)


def mean_std(values) -> str:
  values = np.asarray(values, np.float64)
  bad = ~np.isfinite(values) | (values > 1e6)
  if bad.any():
    return f'diverged ({int(bad.sum())}/{values.size} seeds)'
  return f'{values.mean():.3f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.3f}'


def jnp_tree_mean(trees):
  return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *trees)
