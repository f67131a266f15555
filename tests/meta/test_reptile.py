"""Reptile: the direction against its definition, its one-step reduction to joint training, the
outer update, and the jitted step sharded over 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import meta
from mtl_jax.train import sharding
from tests import meta as problems


def _joint_gradient(loss_fn, params, support):
  mean_loss = lambda p: jax.vmap(loss_fn, in_axes=(None, 0))(p, support).mean()
  return jax.jit(jax.grad(mean_loss))(params)


def test_one_inner_step_is_the_joint_gradient_step():
  """k = 1: θ − φ_t = α ∇L_t(θ), so g = α ∇[(1/T) Σ_t L_t](θ), joint training's gradient."""
  params, loss_fn, support, _ = problems.mlp_problem(num_tasks=4)
  lr = 0.05
  direction, _ = jax.jit(lambda p: meta.reptile_direction(loss_fn, p, support, lr, 1))(params)
  problems.assert_close(direction,
                        jax.tree.map(lambda g: lr * g, _joint_gradient(loss_fn, params, support)))


def test_direction_is_theta_minus_the_mean_of_k_step_sgd_solutions():
  params, loss_fn, support, _ = problems.mlp_problem(num_tasks=3)
  lr, steps = 0.3, 3
  direction, losses = jax.jit(
      lambda p: meta.reptile_direction(loss_fn, p, support, lr, steps))(params)
  grad = jax.jit(jax.grad(loss_fn))
  solutions = []
  for t in range(3):
    phi = params
    for _ in range(steps):
      phi = jax.tree.map(lambda p, g: p - lr * g, phi, grad(phi, problems.task(support, t)))
    solutions.append(phi)
  mean = jax.tree.map(lambda *xs: sum(xs) / 3, *solutions)
  problems.assert_close(direction, jax.tree.map(lambda p, m: p - m, params, mean), rtol=1e-4)
  assert losses.shape == (3, steps)
  # k = 3 is not joint training: the direction is no longer parallel to the joint gradient.
  joint = _joint_gradient(loss_fn, params, support)
  d, j = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)]) for t in (direction, joint))
  assert float(jnp.dot(d, j) / jnp.linalg.norm(d) / jnp.linalg.norm(j)) < 1 - 1e-4


def test_outer_sgd_moves_theta_toward_the_mean_solution():
  """optax.sgd(ε) on g: θ' = θ + ε (mean_t φ_t − θ), the paper's batched update."""
  params, loss_fn, support, _ = problems.mlp_problem(num_tasks=4)
  eps = 0.5
  tx = optax.sgd(eps)
  state, metrics = jax.jit(meta.make_reptile_step(loss_fn, tx, 0.1, 2))(
      meta.init_state(params, tx), support)
  direction, losses = jax.jit(
      lambda p: meta.reptile_direction(loss_fn, p, support, 0.1, 2))(params)
  problems.assert_close(state.params, jax.tree.map(lambda p, g: p - eps * g, params, direction))
  np.testing.assert_allclose(metrics['support_loss_before'], losses[:, 0].mean(), rtol=1e-6)
  with pytest.raises(ValueError, match='inner_steps >= 1'):
    meta.make_reptile_step(loss_fn, tx, 0.1, 0)


def test_sharded_reptile_step_equals_single_device_and_does_not_recompile():
  assert len(jax.devices()) == 8
  model = problems.model('hard')
  tx = optax.adam(1e-2)
  step = meta.make_reptile_step(meta.model_loss(model, problems.TASKS), tx, 0.1, 3)
  params, support = problems.init(model), problems.meta_batch(8)
  one_mesh = sharding.make_mesh(jax.devices()[:1])
  one, _ = meta.jit_meta_step(step, one_mesh, num_batches=1)(
      meta.init_state(params, tx), meta.put_tasks(support, one_mesh))
  mesh = sharding.make_mesh()
  sharded = meta.jit_meta_step(step, mesh, num_batches=1)
  eight, _ = sharded(sharding.put_replicated(meta.init_state(params, tx), mesh),
                     meta.put_tasks(support, mesh))
  problems.assert_close(jax.device_get(one.params), jax.device_get(eight.params))
  again, metrics = sharded(eight, meta.put_tasks(problems.meta_batch(8, seed=1), mesh))
  jax.block_until_ready(again)
  assert np.isfinite(float(metrics['direction_norm']))
  assert sharded._cache_size() == 1
