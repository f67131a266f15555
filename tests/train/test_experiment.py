"""The multi-task run beside its single-task baselines: baseline configs and the Δm% table."""

import ml_collections
import pytest

from experiments.configs import census_archs
from experiments.configs import ud_ewt
from mtl_jax import train
from mtl_jax.train import experiment


@pytest.mark.parametrize('get_config', [
    lambda: ud_ewt.get_config('hierarchical'),
    lambda: census_archs.get_config('mmoe'),
])
def test_single_task_config_is_plain_hard_sharing_whatever_the_architecture(get_config):
  config = get_config()
  assert config.arch != 'hard' and dict(config.arch_kwargs)
  single = experiment.single_task_config(config, config.tasks[0])
  assert single.arch == 'hard' and dict(single.arch_kwargs) == {}
  assert tuple(single.tasks) == (config.tasks[0],) and single.method == 'ew'
  assert single.best_metric == f'val/{config.tasks[0]}/{config.best_metric.split("/")[-1]}'
  # The multi-task config is left as it was.
  assert config.arch != 'hard' and dict(config.arch_kwargs)


def test_single_task_baseline_of_a_non_hard_architecture_builds(census_builder, census_dir):
  """hard used to receive the multi-task architecture's options (here mmoe's) and refuse them."""
  config = census_archs.get_config('mmoe')
  config.data_dir = census_dir
  single = experiment.single_task_config(config, 'income')
  s = train.setup(single)
  assert [t.name for t in s.tasks] == ['income']
  assert type(s.model).__name__ != type(train.setup(config).model).__name__


def test_delta_m_signs_follow_the_metric_direction():
  multi = {'test/a/auc': 0.9, 'test/b/rmse': 1.1}
  single = {'a': {'test/a/auc': 0.8}, 'b': {'test/b/rmse': 1.0}}
  assert experiment.delta_m(multi, {'a': single['a']}, ['a'], 'auc') == pytest.approx(12.5)
  assert experiment.delta_m(multi, {'b': single['b']}, ['b'], 'rmse') == pytest.approx(-10.0)


def test_table_of_tasks_with_different_metrics():
  """A regression task beside binary ones, best_metric on a binary task: each row shows a metric
  the task reports (this raised KeyError 'test/price/auc')."""
  config = ml_collections.ConfigDict({
      'dataset': 'shop', 'arch': 'hard', 'method': 'ew', 'best_metric': 'val/sold/auc',
      'tasks': ('sold', 'price')})
  multi = {'test/sold/auc': 0.9, 'test/sold/accuracy': 0.8, 'test/price/rmse': 2.0,
           'test/price/mae': 1.5}
  single = {'sold': {'test/sold/auc': 0.8}, 'price': {'test/price/rmse': 2.5}}
  assert experiment.table_metrics(config, multi) == {'sold': 'auc', 'price': 'rmse'}
  table = experiment.format_table(config, {'multi_task': multi, 'single_task': single})
  assert 'price            rmse' in table and 'sold             auc' in table
  # Δm%: (0.9 - 0.8) / 0.8 = +12.5% and -(2.0 - 2.5) / 2.5 = +20%: mean +16.25%.
  assert '+16.250%' in table
  no_baselines = experiment.format_table(config, {'multi_task': multi, 'single_task': {}})
  assert 'Δm%' not in no_baselines and '2.0000' in no_baselines
