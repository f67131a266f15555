"""Test-session setup: 8 fake CPU devices, so sharding is tested on any machine; the real
census_income dataset built once per session and shared by every test that needs it."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import time  # pylint: disable=g-import-not-at-top

import pytest  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope='session')
def census_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def census_builder(census_dir):
  from mtl_jax import data
  start = time.perf_counter()
  builder = data.prepare(data.get('census_income').builder_cls, census_dir)
  print(f'\ncensus_income prepared in {time.perf_counter() - start:.1f} s')
  return builder


@pytest.fixture(scope='session')
def census_columns(census_builder):
  from mtl_jax import data
  start = time.perf_counter()
  columns = {split: data.load_columns(census_builder, split)
             for split in ('train', 'validation', 'test')}
  print(f'\ncensus_income splits loaded in {time.perf_counter() - start:.1f} s')
  return columns


def pytest_collection_modifyitems(config, items):
  """The end-to-end tests (`@pytest.mark.slow`, up to ~90 s each) run first: with `-n 2`,
  one of them collected last would leave the other worker idle for its whole length."""
  del config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
