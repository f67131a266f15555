"""Projecting conflicting gradients (PCGrad), Yu et al. (NeurIPS 2020)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, gramian_weighting


class PCGradState(NamedTuple):
  """`key`: the raw (uint32) data of the PRNG key the next projection orders are drawn from."""
  key: jax.Array


def normalized_gramian(gramian: jax.Array) -> jax.Array:
  """G symmetrised, in float32 (or better), divided by its largest diagonal entry when that is
  positive and finite (the methods here only use scale-free ratios of its entries)."""
  g = jnp.asarray(gramian)
  g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
  g = 0.5 * (g + g.T)
  scale = jnp.max(jnp.diag(g))
  ok = jnp.isfinite(scale) & (scale > jnp.finfo(g.dtype).tiny)
  return g / jnp.where(ok, scale, 1.0)


def random_orders(key: jax.Array, num_tasks: int) -> jax.Array:
  """[K, K]: row i is a uniformly random permutation of the tasks, the order in which task i's
  gradient meets the others (the entry i itself is skipped)."""
  keys = jax.random.split(key, num_tasks)
  return jax.vmap(lambda k: jax.random.permutation(k, num_tasks))(keys)


def pcgrad_coefficients(gramian: jax.Array, orders: jax.Array) -> jax.Array:
  """C (K x K) with g_i^PC = sum_k C_ik g_k, computed from G alone.

  Row i starts at e_i; for each j != i in the order `orders[i]`, if <g_i^PC, g_j> = C_i G_j < 0
  (and g_j != 0), C_ij -= C_i G_j / G_jj. All rows advance together.
  """
  g = normalized_gramian(gramian)
  num = g.shape[0]
  rows = jnp.arange(num)

  def step(s, coef):
    j = orders[:, s]
    dot = jnp.sum(coef * g[j], axis=1)  # <g_i^PC, g_{j_i}>
    norm2 = g[j, j]
    project = (j != rows) & (dot < 0) & (norm2 > 0)
    delta = jnp.where(project, dot / jnp.where(project, norm2, 1.0), 0.0)
    return coef - delta[:, None] * jax.nn.one_hot(j, num, dtype=coef.dtype)

  return jax.lax.fori_loop(0, num, step, jnp.eye(num, dtype=g.dtype))


def pcgrad(num_tasks: int, seed: int = 0) -> MultiTaskTransformation:
  """PCGrad: project each task gradient off the gradients it conflicts with, then sum.

  "Gradient Surgery for Multi-Task Learning", Yu et al., NeurIPS 2020, Algorithm 1. For each task i
  (from g_i^PC = g_i), for each other task j in a random order,

      if <g_i^PC, g_j> < 0:   g_i^PC <- g_i^PC - (<g_i^PC, g_j> / ||g_j||^2) g_j,

  (the modified g_i^PC against the *original* g_j), and the update is sum_i g_i^PC.

  Every g_i^PC stays a linear combination sum_k C_ik g_k of the task gradients, and the inner
  products it needs are <g_i^PC, g_j> = (C G)_ij, so the method runs on the Gramian: the update is
  sum_k w_k g_k with w = 1^T C (`gramian_weights`). Without any conflict (all <g_i, g_j> >= 0) it is
  the plain sum, w = 1.

  Output scale: the sum of the (projected) task gradients, like equal weighting.

  Randomness: each task's order is a fresh uniform permutation at every update, drawn from a key
  kept in the state as raw uint32 data, so a fixed `seed` reproduces the run and a restored state
  resumes it. (The paper and LibMTL use Python's global `random.shuffle`; LibMTL's order also
  includes i itself, which the paper excludes and so do we.) A zero g_j projects nothing.

  Modes: "jacobian" (the paper: gradients of the shared parameters) and "rep" (gradients at the
  shared representation; LibMTL refuses rep_grad for PCGrad). Task-specific parameters get their
  plain task gradients.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'pcgrad')
  key = _util.key_data(seed)

  def init_state():
    return PCGradState(key)

  def gramian_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'pcgrad')
    keep, use = _util.split_key_data(state.key)
    coef = pcgrad_coefficients(gramian, random_orders(use, num_tasks))
    return jnp.sum(coef, axis=0), PCGradState(keep)

  return gramian_weighting('pcgrad', init_state, gramian_weights)
