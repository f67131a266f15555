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


def delta_m(multi: dict, single: dict, tasks, metric: str) -> float:
  """Δm% (Maninis et al. 2019): mean over tasks of (-1)^l (M_mtl - M_stl) / M_stl * 100,
  l = 1 when lower is better."""
  sign = 1.0 if metrics_lib.HIGHER_IS_BETTER[metric] else -1.0
  changes = [sign * (multi[f'test/{t}/{metric}'] - single[t][f'test/{t}/{metric}'])
             / single[t][f'test/{t}/{metric}'] for t in tasks]
  return 100.0 * float(np.mean(changes))


def format_table(config, results: dict) -> str:
  metric = config.best_metric.split('/')[-1]
  multi, single = results['multi_task'], results['single_task']
  lines = [f'Test {metric} ({config.dataset}, arch={config.arch}, method={config.method}, '
           f'best checkpoint by {config.best_metric}):',
           f'  {"task":<16} {"multi-task":>11} {"single-task":>12} {"difference":>11}']
  for task in config.tasks:
    m = multi[f'test/{task}/{metric}']
    if task in single:
      s = single[task][f'test/{task}/{metric}']
      lines.append(f'  {task:<16} {m:>11.4f} {s:>12.4f} {m - s:>+11.4f}')
    else:
      lines.append(f'  {task:<16} {m:>11.4f} {"-":>12} {"-":>11}')
  if single and len(single) == len(config.tasks):
    lines.append(f'  Δm% (relative change over single-task, mean over tasks): '
                 f'{delta_m(multi, single, config.tasks, metric):+.3f}%')
  return '\n'.join(lines)
