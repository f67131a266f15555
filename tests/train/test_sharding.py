"""`sharding.put_batch` packs a batch into one transfer per dtype; the step unpacks it exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import optim
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from tests import helpers


def _mixed_batch(batch_size=16, length=7, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'inputs': {'dense': rng.normal(size=(batch_size, 3, 2)).astype(np.float32),
                 'tokens': rng.integers(0, 50, size=(batch_size, length)).astype(np.int32)},
      'labels': {'tag': rng.integers(0, 5, size=(batch_size, length)).astype(np.int32),
                 'reg': rng.normal(size=batch_size).astype(np.float32)},
      'label_mask': {'tag': rng.random((batch_size, length)) < 0.5,
                     'reg': rng.random(batch_size) < 0.5},
  }


def test_pack_makes_one_buffer_per_dtype_and_unpack_restores_every_leaf():
  batch = _mixed_batch()
  buffers, _ = sharding.pack(batch)
  widths = {str(b.dtype): b.shape[1] for b in buffers}
  assert len(buffers) == 3
  assert widths == {'float32': 3 * 2 + 1, 'int32': 7 + 7, 'bool': 7 + 1}
  mesh = sharding.make_mesh()
  packed = sharding.put_batch(batch, mesh)
  assert len(jax.tree.leaves(packed)) == 3
  unpacked = jax.device_get(jax.jit(sharding.unpack)(packed))
  assert jax.tree.structure(unpacked) == jax.tree.structure(batch)
  for got, want in zip(jax.tree.leaves(unpacked), jax.tree.leaves(batch)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_packed_buffers_are_sharded_on_the_batch_axis():
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8, 'tests/conftest.py asks for 8 fake CPU devices'
  packed = sharding.put_batch(_mixed_batch(batch_size=16), mesh)
  for buffer in packed.buffers:
    assert buffer.sharding.is_equivalent_to(sharding.data_sharded(mesh), buffer.ndim)
    assert {shard.data.shape[0] for shard in buffer.addressable_shards} == {2}


def test_leaves_without_a_common_batch_dimension_are_refused():
  with pytest.raises(ValueError, match='same leading'):
    sharding.pack({'a': np.zeros((4, 2)), 'b': np.zeros((3,))})
  with pytest.raises(ValueError, match='same leading'):
    sharding.pack({'a': np.zeros((4, 2)), 'scalar': np.float32(1.0)})


def test_step_on_a_packed_batch_equals_the_step_on_the_tree_and_compiles_once_per_layout():
  model = helpers.model()
  example = helpers.batch(num_examples=16)
  tx = optim.mgda()
  optimizer = optax.sgd(0.1)
  state = step_lib.create_state(model, tx, optimizer, jax.random.PRNGKey(0), example['inputs'])
  train_step = step_lib.make_train_step(model, list(helpers.TASKS), tx, optimizer, 'jacobian')
  mesh = sharding.make_mesh()
  jitted = sharding.jit_train_step(train_step, mesh)
  on_tree = jax.jit(train_step)(jax.tree.map(jnp.copy, state), example)[0]
  on_packed = jitted(sharding.put_replicated(jax.tree.map(jnp.copy, state), mesh),
                     sharding.put_batch(example, mesh))[0]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(on_tree.params), jax.device_get(on_packed.params))
  again = jitted(on_packed, sharding.put_batch(helpers.batch(num_examples=16, seed=1), mesh))[0]
  jax.block_until_ready(again)
  assert jitted._cache_size() == 1
