"""Gradient Vaccine (GradVac), Wang et al. (ICLR 2021)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, gramian_weighting
from mtl_jax.optim.pcgrad import normalized_gramian, random_orders


class GradVacState(NamedTuple):
  """`key`: raw (uint32) PRNG key data for the visiting orders; `targets`: the EMA similarity
  targets phi_hat_ij (K x K, float32; row i, column j; the diagonal is unused)."""
  key: jax.Array
  targets: jax.Array


def gradvac_step(gramian, orders, targets, beta):
  """One GradVac pass on the Gramian: (C with g_i^PC = sum_k C_ik g_k, updated targets)."""
  g = normalized_gramian(gramian)
  num = g.shape[0]
  rows = jnp.arange(num)
  targets = jnp.asarray(targets, g.dtype)

  def step(s, carry):
    coef, phi_hat = carry
    j = orders[:, s]
    other = j != rows
    dot = jnp.sum(coef * g[j], axis=1)  # <g_i^PC, g_j>
    norm_i = jnp.sqrt(jnp.maximum(jnp.einsum('ik,kl,il->i', coef, g, coef), 0.0))
    norm_j = jnp.sqrt(jnp.maximum(g[j, j], 0.0))
    denom = norm_i * norm_j
    phi = jnp.where(denom > 0, jnp.clip(dot / jnp.where(denom > 0, denom, 1.0), -1.0, 1.0), 0.0)
    target = phi_hat[rows, j]
    sin_target2 = 1.0 - target * target
    vaccinate = other & (phi < target) & (norm_j > 0) & (sin_target2 > 0)
    safe_sin_target = jnp.sqrt(jnp.where(vaccinate, sin_target2, 1.0))
    sin_phi = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
    amount = (norm_i * (target * sin_phi - phi * safe_sin_target)
              / (jnp.where(vaccinate, norm_j, 1.0) * safe_sin_target))
    amount = jnp.where(vaccinate, amount, 0.0)
    coef = coef + amount[:, None] * jax.nn.one_hot(j, num, dtype=coef.dtype)
    ema = (1.0 - beta) * target + beta * phi
    phi_hat = phi_hat.at[rows, j].set(jnp.where(other, ema, target))
    return coef, phi_hat

  return jax.lax.fori_loop(0, num, step, (jnp.eye(num, dtype=g.dtype), targets))


def gradvac(num_tasks: int, beta: float = 0.01, seed: int = 0) -> MultiTaskTransformation:
  """Gradient Vaccine: raise the cosine similarity of task gradients towards an EMA target.

  "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual
  Models", Wang et al., ICLR 2021, Algorithm 1. With targets phi_hat_ij (EMA, initially 0): for each
  task i (from g_i^PC = g_i), for each other task j in a random order, with
  phi_ij = cos(g_i^PC, g_j),

      if phi_ij < phi_hat_ij:
          g_i^PC <- g_i^PC + ||g_i^PC|| (phi_hat_ij sqrt(1 - phi_ij^2)
                                         - phi_ij sqrt(1 - phi_hat_ij^2))
                             / (||g_j|| sqrt(1 - phi_hat_ij^2)) g_j
      phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij

  (the correction makes cos(g_i^PC, g_j) exactly phi_hat_ij), and the update is sum_i g_i^PC.
  Like PCGrad, every g_i^PC is a combination sum_k C_ik g_k whose norms and cosines come from the
  Gramian, so the update is sum_k w_k g_k with w = 1^T C (`gramian_weights`).

  Output scale: the sum of the (corrected) task gradients, like equal weighting.

  Granularity: the paper can keep separate targets per layer group; we use the whole shared
  gradient vector as one group (LibMTL's default, `GradVac_group_type=0`), so the targets are one
  K x K matrix. In "rep" mode the vectors are the gradients at the shared representation (LibMTL
  refuses rep_grad for GradVac; the paper uses parameters).

  Differences from LibMTL, following the paper: the EMA is updated for every visited pair (LibMTL
  updates it only when the correction is applied, so its targets can only move down from 0); the
  default beta is the paper's 1e-2 (LibMTL's is 0.5); cosines are exact (no 1e-8 in the
  denominators, which makes LibMTL's scale dependent). The cosine with a zero vector is taken as 0;
  a zero g_j, or a target that rounded to +-1 (no finite coefficient reaches it), applies no
  correction.

  Randomness: each task's order is a fresh permutation at every update, from a key in the state
  (raw uint32), so a fixed `seed` reproduces the run and a restored state resumes it.

  Args:
    num_tasks: K.
    beta: the EMA rate of the targets, in [0, 1].
    seed: the PRNG seed of the visiting orders.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'gradvac')
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
    raise UserError(f'gradvac(beta=...) must be a number in [0, 1], got {beta!r}')
  beta = float(beta)
  key = _util.key_data(seed)

  def init_state():
    return GradVacState(key, jnp.zeros((num_tasks, num_tasks), jnp.float32))

  def gramian_weights(gramian, losses, state):
    _util.check_losses_shape(losses, num_tasks, 'gradvac')
    keep, use = _util.split_key_data(state.key)
    coef, targets = gradvac_step(gramian, random_orders(use, num_tasks), state.targets, beta)
    return jnp.sum(coef, axis=0), GradVacState(keep, targets.astype(state.targets.dtype))

  return gramian_weighting('gradvac', init_state, gramian_weights)
