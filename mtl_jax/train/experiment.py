"""A multi-task run beside its single-task baselines, and the table that compares them."""

import copy
import os

import jax
import ml_collections
import numpy as np

from mtl_jax import metrics as metrics_lib
from mtl_jax.train.loop import train_and_evaluate


def single_task_config(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
  """The same input layer, encoder and budget, one task, one head, plain loss.

  The architecture becomes `hard` (one trunk and one head), so the multi-task architecture's own
  options (`arch_kwargs`, e.g. hierarchical's `task_depths`) are dropped with it.
  """
  single = copy.deepcopy(config)
  with single.unlocked():
    single.tasks = (task,)
    single.method = 'ew'
    single.method_kwargs = ml_collections.ConfigDict()
    single.mode = 'auto'
    single.arch = 'hard'
    single.arch_kwargs = ml_collections.ConfigDict()
    single.best_metric = f'val/{task}/{config.best_metric.split("/")[-1]}'
    single.log_prefix = f'[single-task {task}] '
  return single


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the multi-task model and, if `config.single_task_baselines`, one model per task.

  Returns {'multi_task': final metrics, 'single_task': {task: final metrics}}; each run lives in
  its own workdir, so re-running resumes (or skips) each of them.
  """
  results = {'multi_task': train_and_evaluate(config, workdir), 'single_task': {}}
  if config.get('single_task_baselines', False) and len(config.tasks) > 1:
    for task in config.tasks:
      results['single_task'][task] = train_and_evaluate(
          single_task_config(config, task), os.path.join(workdir, 'single_task', task))
  if jax.process_index() == 0:
    print(format_table(config, results), flush=True)
  return results


def delta_m(multi: dict, single: dict, tasks, metric) -> float:
  """Δm% (Maninis et al. 2019): mean over tasks of (-1)^l (M_mtl - M_stl) / M_stl * 100,
  l = 1 when lower is better. `metric`: one metric name for every task, or {task: metric}."""
  changes = []
  for t in tasks:
    name = metric[t] if isinstance(metric, dict) else metric
    sign = 1.0 if metrics_lib.HIGHER_IS_BETTER[name] else -1.0
    stl = single[t][f'test/{t}/{name}']
    changes.append(sign * (multi[f'test/{t}/{name}'] - stl) / stl)
  return 100.0 * float(np.mean(changes))


def table_metrics(config, multi: dict) -> dict:
  """{task: the metric its row shows}: the metric of `best_metric` where the task has it, else
  the task's first reported test metric (tasks of other kinds, e.g. rmse beside auc)."""
  wanted = config.best_metric.split('/')[-1]
  chosen = {}
  for task in config.tasks:
    prefix = f'test/{task}/'
    reported = [k[len(prefix):] for k in multi if k.startswith(prefix)]
    chosen[task] = wanted if wanted in reported else (reported[0] if reported else wanted)
  return chosen


def format_table(config, results: dict) -> str:
  multi, single = results['multi_task'], results['single_task']
  metrics = table_metrics(config, multi)
  names = sorted(set(metrics.values()))
  lines = [f'Test {", ".join(names)} ({config.dataset}, arch={config.arch}, '
           f'method={config.method}, best checkpoint by {config.best_metric}):',
           f'  {"task":<16} {"metric":<8} {"multi-task":>11} {"single-task":>12} '
           f'{"difference":>11}']
  for task in config.tasks:
    metric = metrics[task]
    m = multi.get(f'test/{task}/{metric}', float('nan'))
    if task in single:
      s = single[task][f'test/{task}/{metric}']
      lines.append(f'  {task:<16} {metric:<8} {m:>11.4f} {s:>12.4f} {m - s:>+11.4f}')
    else:
      lines.append(f'  {task:<16} {metric:<8} {m:>11.4f} {"-":>12} {"-":>11}')
  if single and len(single) == len(config.tasks):
    lines.append(f'  Δm% (relative change over single-task, mean over tasks): '
                 f'{delta_m(multi, single, config.tasks, metrics):+.3f}%')
  return '\n'.join(lines)
