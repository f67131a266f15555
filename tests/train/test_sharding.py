"""`sharding.put_batch` packs a batch into one byte array (one transfer); the step unpacks it
exactly."""

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


def test_pack_makes_one_byte_buffer_and_unpack_restores_every_leaf():
  batch = _mixed_batch()
  data, _ = sharding.pack(batch)
  assert data.dtype == np.uint8
  # float32 dense 3*2 + reg 1, int32 tokens 7 + tag 7 (4 bytes each), bool masks 7 + 1.
  assert data.shape == (16, 4 * (6 + 1) + 4 * (7 + 7) + (7 + 1))
  mesh = sharding.make_mesh()
  packed = sharding.put_batch(batch, mesh)
  assert len(jax.tree.leaves(packed)) == 1
  unpacked = jax.device_get(jax.jit(sharding.unpack)(packed))
  assert jax.tree.structure(unpacked) == jax.tree.structure(batch)
  for got, want in zip(jax.tree.leaves(unpacked), jax.tree.leaves(batch)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_other_dtypes_round_trip_and_64_bit_leaves_become_what_jax_makes_of_them():
  rng = np.random.default_rng(1)
  batch = {'u8': rng.integers(0, 255, (8, 3)).astype(np.uint8),
           'i8': rng.integers(-100, 100, (8,)).astype(np.int8),
           'f16': rng.normal(size=(8, 2, 2)).astype(np.float16),
           'f64': rng.normal(size=(8,)),
           'i64': rng.integers(-2**20, 2**20, (8, 1)),
           'nan': np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40, 3.0, 0.0, -1.0], np.float32)}
  unpacked = jax.device_get(jax.jit(sharding.unpack)(
      sharding.put_batch(batch, sharding.make_mesh())))
  for key, want in batch.items():
    want = np.asarray(jax.numpy.asarray(want))  # The dtype JAX gives it (no x64: 32-bit).
    assert unpacked[key].dtype == want.dtype, key
    np.testing.assert_array_equal(unpacked[key], want)  # Bit patterns kept: NaN, -0, subnormal.
  assert np.signbit(unpacked['nan'][3])


def test_the_packed_array_is_sharded_on_the_batch_axis():
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8, 'tests/conftest.py asks for 8 fake CPU devices'
  packed = sharding.put_batch(_mixed_batch(batch_size=16), mesh)
  assert packed.data.sharding.is_equivalent_to(sharding.data_sharded(mesh), packed.data.ndim)
  assert {shard.data.shape[0] for shard in packed.data.addressable_shards} == {2}


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
