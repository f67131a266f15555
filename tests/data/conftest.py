"""Builds the real census_income dataset once per test session."""

import time

import pytest

from mtl_jax import data


@pytest.fixture(scope='session')
def census_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def census_builder(census_dir):
  start = time.perf_counter()
  builder = data.prepare(data.get('census_income').builder_cls, census_dir)
  print(f'\ncensus_income prepared in {time.perf_counter() - start:.1f} s')
  return builder


@pytest.fixture(scope='session')
def census_columns(census_builder):
  start = time.perf_counter()
  columns = {split: data.load_columns(census_builder, split)
             for split in ('train', 'validation', 'test')}
  print(f'\ncensus_income splits loaded in {time.perf_counter() - start:.1f} s')
  return columns
