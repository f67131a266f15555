"""MAML and FOMAML: the meta-gradient against finite differences and against its closed form on a
quadratic, vmap against a loop over tasks, the jitted step sharded over 8 devices on two
architectures."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import meta
from mtl_jax.errors import UserError
from mtl_jax.train import sharding
from tests import meta as problems


@pytest.mark.parametrize('mask', [None, {'w1': False, 'b1': False, 'w2': True, 'b2': True}])
def test_maml_meta_gradient_equals_finite_differences(mask):
  """float64, central differences of F(θ) = mean_t L(φ_t(θ); Q_t) along random directions: MAML's
  gradient matches to ~1e-8 relative; FOMAML's does not (it drops the Hessian term)."""
  with jax.enable_x64(True):
    params, loss_fn, support, query = problems.mlp_problem(dtype=jnp.float64)
    lr, steps = 0.3, 2

    def checks(params, directions, eps=1e-5):
      """Per direction v: (∇F·v for MAML, for FOMAML, central difference of F along v)."""
      meta_loss = lambda p: meta.meta_gradient(loss_fn, p, support, query, lr, steps,
                                               mask=mask)[0]
      grads = jax.grad(meta_loss)(params)
      fo_grads = meta.meta_gradient(loss_fn, params, support, query, lr, steps, mask=mask,
                                    first_order=True)[1]
      dot = lambda g, v: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g),
                                                             jax.tree.leaves(v)))
      out = []
      for v in directions:
        shift = lambda s, v=v: jax.tree.map(lambda p, d: p + s * d, params, v)
        numeric = (meta_loss(shift(eps)) - meta_loss(shift(-eps))) / (2 * eps)
        out.append((dot(grads, v), dot(fo_grads, v), numeric))
      return out, grads, fo_grads

    leaves, treedef = jax.tree.flatten(params)
    directions = [treedef.unflatten([jax.random.normal(k, l.shape, l.dtype) for k, l in zip(
        jax.random.split(jax.random.PRNGKey(100 + i), len(leaves)), leaves)]) for i in range(2)]
    out, grads, fo_grads = jax.jit(checks)(params, directions)
    for maml_dot, fo_dot, numeric in out:
      np.testing.assert_allclose(maml_dot, numeric, rtol=1e-7, atol=1e-9)
      assert abs(fo_dot - numeric) > 1e-4 * abs(numeric)
    if mask is not None:
      # ANIL-style: the first layer does not adapt, yet the last layer's inner gradient depends
      # on it, so MAML's meta-gradient reaches it beyond FOMAML's (checked exact above).
      assert float(jnp.abs(grads['w1'] - fo_grads['w1']).sum()) > 1e-4


@pytest.mark.parametrize('steps', [1, 3])
def test_fomaml_differs_from_maml_exactly_by_the_hessian_term(steps):
  """Quadratic tasks L(φ; S) = ½ (φ − c)ᵀ A (φ − c): φ_k = c_S + M^k (θ − c_S) with
  M = I − α A_S, so ∇F_MAML = (M^k)ᵀ A_Q (φ_k − c_Q) and ∇F_FOMAML = A_Q (φ_k − c_Q)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)

    def spd(n):
      b = rng.normal(size=(n, n))
      return b @ b.T / n + np.eye(n)

    loss_fn = lambda p, batch: 0.5 * (p['w'] - batch['c']) @ batch['a'] @ (p['w'] - batch['c'])
    num_tasks, dim, lr = 4, 3, 0.2
    support = {'a': jnp.stack([spd(dim) for _ in range(num_tasks)]),
               'c': jnp.asarray(rng.normal(size=(num_tasks, dim)))}
    query = {'a': jnp.stack([spd(dim) for _ in range(num_tasks)]),
             'c': jnp.asarray(rng.normal(size=(num_tasks, dim)))}
    theta = jnp.asarray(rng.normal(size=dim))
    maml_g = meta.meta_gradient(loss_fn, {'w': theta}, support, query, lr, steps)[1]['w']
    fo_g = meta.meta_gradient(loss_fn, {'w': theta}, support, query, lr, steps,
                              first_order=True)[1]['w']
    expected_maml, expected_fo = np.zeros(dim), np.zeros(dim)
    for t in range(num_tasks):
      a_s, c_s = np.asarray(support['a'][t]), np.asarray(support['c'][t])
      a_q, c_q = np.asarray(query['a'][t]), np.asarray(query['c'][t])
      power = np.linalg.matrix_power(np.eye(dim) - lr * a_s, steps)
      query_grad = a_q @ (c_s + power @ (np.asarray(theta) - c_s) - c_q)
      expected_maml += power.T @ query_grad / num_tasks
      expected_fo += query_grad / num_tasks
    np.testing.assert_allclose(maml_g, expected_maml, rtol=1e-12)
    np.testing.assert_allclose(fo_g, expected_fo, rtol=1e-12)
    # The difference is exactly the dropped Hessian term, and it is not negligible here.
    assert np.linalg.norm(expected_maml - expected_fo) > 1e-2


def test_vmap_over_tasks_equals_a_loop_over_tasks():
  """MAML's vmapped meta-gradient is the mean of per-task `maml` gradients; FOMAML's (here with
  only the last layer adapting) is the mean of the query gradients at the adapted parameters."""
  params, loss_fn, support, query = problems.mlp_problem(num_tasks=3)
  mask = {'w1': False, 'b1': False, 'w2': True, 'b2': True}

  @jax.jit
  def vmapped(p):
    loss, grads, support_losses = meta.meta_gradient(loss_fn, p, support, query, 0.3, 2)
    fo = meta.meta_gradient(loss_fn, p, support, query, 0.3, 2, mask=mask, first_order=True)[1]
    return loss, grads, support_losses, fo

  @jax.jit
  def one_task(p, s, q):
    loss, grads = jax.value_and_grad(meta.maml(loss_fn, 0.3, 2))(p, s, q)
    return loss, grads, jax.grad(loss_fn)(meta.adapt(loss_fn, p, s, 0.3, 2, mask=mask), q)

  loss, grads, support_losses, fo = vmapped(params)
  per_task = [one_task(params, problems.task(support, t), problems.task(query, t))
              for t in range(3)]
  mean = lambda trees: jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)
  np.testing.assert_allclose(loss, np.mean([l for l, _, _ in per_task]), rtol=1e-5)
  problems.assert_close(grads, mean([g for _, g, _ in per_task]))
  problems.assert_close(fo, mean([g for _, _, g in per_task]))
  assert support_losses.shape == (3, 2)


@pytest.mark.parametrize('arch,first_order', [('hard', False), ('mmoe', True)])
def test_sharded_meta_step_equals_single_device_and_does_not_recompile(arch, first_order):
  """The registry architectures through `model_loss`, 8 tasks over 8 devices against 1 device."""
  assert len(jax.devices()) == 8, 'tests/conftest.py asks for 8 fake CPU devices'
  model = problems.model(arch)
  tx = optax.adam(1e-2)
  step = meta.make_maml_step(meta.model_loss(model, problems.TASKS), tx, 0.1, 2,
                             first_order=first_order)
  params = problems.init(model)
  support, query = problems.meta_batch(8, seed=0), problems.meta_batch(8, seed=1)
  one_mesh = sharding.make_mesh(jax.devices()[:1])
  one, one_metrics = meta.jit_meta_step(step, one_mesh)(
      meta.init_state(params, tx), meta.put_tasks(support, one_mesh),
      meta.put_tasks(query, one_mesh))
  mesh = sharding.make_mesh()
  sharded = meta.jit_meta_step(step, mesh)
  eight, eight_metrics = sharded(sharding.put_replicated(meta.init_state(params, tx), mesh),
                                 meta.put_tasks(support, mesh), meta.put_tasks(query, mesh))
  problems.assert_close(jax.device_get(one.params), jax.device_get(eight.params))
  np.testing.assert_allclose(one_metrics['meta_loss'], eight_metrics['meta_loss'], rtol=1e-5)
  assert all(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(eight.params), jax.tree.leaves(params)))
  again, metrics = sharded(eight, meta.put_tasks(problems.meta_batch(8, seed=2), mesh),
                           meta.put_tasks(problems.meta_batch(8, seed=3), mesh))
  jax.block_until_ready(again)
  assert np.isfinite(float(metrics['meta_loss']))
  assert sharded._cache_size() == 1


def test_a_meta_batch_that_does_not_split_over_the_devices_is_a_clear_error():
  with pytest.raises(UserError, match='3 tasks does not split over the 8 devices'):
    meta.put_tasks(problems.meta_batch(3), sharding.make_mesh())
