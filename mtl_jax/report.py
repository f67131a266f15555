"""Collates finished runs into one table and plots: `python -m mtl_jax.report WORKDIR... [--out DIR]
[--baseline WORKDIR] [--metric NAME]`.

A run is a directory with a `final_metrics.json` (found anywhere under the WORKDIRs, so a sweep's
directory works; the `single_task/` runs inside a workdir are its baselines, not runs). Written to
`--out` (default `<first WORKDIR>/report`):

* `report.md` and `report.csv`: per run, the test metric of each task, Δm% against the single-task
  runs (`<run>/single_task/<task>`, else `--baseline`), the rank on each task among the runs and
  the mean rank; with several seeds of the same overrides, also their mean ± std.
* `learning_curves.png` (train loss and validation metric per task, from `metrics.jsonl`),
  `task_weights.png` (the method's per-task weights, `train/weights/<task>`) and `pareto.png` (test
  metric of the first two tasks, non-dominated runs joined).
"""

import argparse
import csv
import glob
import json
import math
import os
import sys

import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.sweep import short_keys

# Same table as mtl_jax.metrics.HIGHER_IS_BETTER (not imported: that module pulls in JAX).
HIGHER_IS_BETTER = {'auc': True, 'accuracy': True, 'f1': True, 'miou': True, 'rmse': False, 'mae': False,
                    'loss': False}
METRIC_PREFERENCE = ('auc', 'accuracy', 'f1', 'miou', 'rmse', 'mae', 'loss')
_SKIP_DIRS = {'checkpoints', 'tensorboard', 'single_task', 'report'}


def higher_is_better(metric: str) -> bool:
  if metric not in HIGHER_IS_BETTER:
    raise UserError(f'metric {metric!r} has no known direction; known: '
                    f'{", ".join(HIGHER_IS_BETTER)}')
  return HIGHER_IS_BETTER[metric]


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def run_config(path: str) -> dict | None:
  """The run's config: from the sweep's trial record, else its latest checkpoint."""
  record = _read_json(os.path.join(path, 'sweep_trial.json'))
  if record and record.get('config'):
    return record['config']
  steps = sorted((int(os.path.basename(p)) for p in glob.glob(os.path.join(path, 'checkpoints', '*'))
                  if os.path.basename(p).isdigit()), reverse=True)
  for step in steps:
    config = _read_json(os.path.join(path, 'checkpoints', str(step), 'config', 'metadata'))
    if isinstance(config, dict):
      return config
  return None


def read_metrics_jsonl(path: str) -> dict:
  """{key: (steps, values)} of every scalar in `metrics.jsonl`; a step logged twice (a run killed
  and resumed) keeps its last value; `final/...` records are left out."""
  series = {}
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      step = record.get('step')
      for key, value in record.items():
        if key in ('step', 'time') or key.startswith('final/'):
          continue
        try:
          series.setdefault(key, {})[step] = float(value)
        except (TypeError, ValueError):
          continue
  return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in series.items()}


def tasks_of(final: dict, config: dict | None) -> list[str]:
  tasks = []
  for key in final:
    parts = key.split('/')
    if len(parts) == 3 and parts[0] == 'test' and parts[1] != 'avg' and parts[1] not in tasks:
      tasks.append(parts[1])
  if config and config.get('tasks'):
    order = [t for t in config['tasks'] if t in tasks]
    tasks = order + [t for t in tasks if t not in order]
  return tasks


class Run:
  """One finished run: its directory, label, overrides, config, final metrics and baselines."""

  def __init__(self, path: str, label: str):
    self.path, self.label = path, label
    self.final = _read_json(os.path.join(path, 'final_metrics.json')) or {}
    self.config = run_config(path)
    record = _read_json(os.path.join(path, 'sweep_trial.json'))
    self.overrides = (record or {}).get('overrides', {})
    self.index = (record or {}).get('index')  # the trial's index in its sweep
    self.tasks = tasks_of(self.final, self.config)
    self.baseline = {}  # task -> final metrics of its single-task run
    self.baseline_source = None

  def find_baselines(self, baseline_dir: str | None) -> None:
    for source in [os.path.join(self.path, 'single_task')] + (
        [os.path.join(baseline_dir, 'single_task'), baseline_dir] if baseline_dir else []):
      found = {t: _read_json(os.path.join(source, t, 'final_metrics.json')) for t in self.tasks}
      found = {t: v for t, v in found.items() if v}
      if found:
        self.baseline, self.baseline_source = found, source
        return


def find_runs(workdirs) -> list[Run]:
  """Every directory with a final_metrics.json under the workdirs, single-task baselines aside."""
  runs, seen = [], set()
  for root in workdirs:
    if not os.path.isdir(root):
      raise UserError(f'{root!r} is not a directory')
    for path, dirs, files in os.walk(root):
      dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
      if 'final_metrics.json' in files and os.path.realpath(path) not in seen:
        seen.add(os.path.realpath(path))
        rel = os.path.relpath(path, root)
        label = os.path.basename(os.path.abspath(root)) if rel == '.' else rel
        runs.append(Run(path, label))
  labels = [r.label for r in runs]
  for r in runs:  # The same relative path under two roots: say which root.
    if labels.count(r.label) > 1:
      r.label = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(r.path))), r.label)
  if not runs:
    raise UserError(f'no finished runs (directories with final_metrics.json) under '
                    f'{", ".join(workdirs)}')
  return runs


def task_metric(runs, task: str, metric: str | None) -> str:
  """The metric reported for `task`: `metric` if every run has it, else the runs' best_metric,
  else the first of METRIC_PREFERENCE that every run has."""
  have = [{k.split('/')[2] for k in r.final if k.startswith(f'test/{task}/')} for r in runs
          if task in r.tasks]
  common = set.intersection(*have) if have else set()
  if metric:
    if metric not in common:
      raise UserError(f'--metric {metric}: not a test metric of task {task!r} in every run '
                      f'(common: {", ".join(sorted(common))})')
    return metric
  for r in runs:
    best = ((r.config or {}).get('best_metric') or '').split('/')[-1]
    if best in common and best in HIGHER_IS_BETTER:
      return best
  for name in METRIC_PREFERENCE:
    if name in common:
      return name
  raise UserError(f'task {task!r}: no test metric shared by every run')


def ranks(values, higher: bool) -> list[float]:
  """1 = best; ties share the mean of their ranks; NaN ranks last."""
  keyed = [(-v if higher else v) if v is not None and math.isfinite(v) else math.inf
           for v in values]
  order = sorted(range(len(keyed)), key=lambda i: keyed[i])
  out = [0.0] * len(keyed)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and keyed[order[j + 1]] == keyed[order[i]]:
      j += 1
    for k in range(i, j + 1):
      out[order[k]] = (i + j) / 2 + 1
    i = j + 1
  return out


def delta_m(values: dict, baselines: dict, metrics: dict) -> float | None:
  """Δm% (Maninis et al. 2019): mean over tasks of ±(M_mtl - M_stl) / M_stl * 100, minus where
  lower is better; None unless every task has a baseline."""
  if not values or any(t not in baselines for t in values):
    return None
  changes = []
  for task, value in values.items():
    base = baselines[task]
    sign = 1.0 if higher_is_better(metrics[task]) else -1.0
    changes.append(sign * (value - base) / base)
  return 100.0 * float(np.mean(changes))


def collate(runs, metric=None, baseline_dir=None) -> dict:
  """The numbers of the report: tasks, metric per task, one row per run (sorted by mean rank)."""
  tasks = []
  for r in runs:
    tasks += [t for t in r.tasks if t not in tasks]
  metrics = {t: task_metric(runs, t, metric) for t in tasks}
  rows = []
  for r in runs:
    r.find_baselines(baseline_dir)
    values = {t: r.final.get(f'test/{t}/{metrics[t]}') for t in tasks}
    stl = {t: r.baseline[t].get(f'test/{t}/{metrics[t]}') for t in tasks if t in r.baseline}
    stl = {t: v for t, v in stl.items() if v is not None}
    present = {t: v for t, v in values.items() if v is not None}
    rows.append({'run': r.label, 'path': r.path, 'overrides': r.overrides, 'values': values,
                 'baseline': stl, 'baseline_source': r.baseline_source,
                 'delta_m': delta_m(present, stl, metrics) if len(present) == len(tasks) else None,
                 'best_step': r.final.get('best_step'), 'index': r.index})
  for t in tasks:
    for row, rank in zip(rows, ranks([row['values'][t] for row in rows],
                                     higher_is_better(metrics[t]))):
      row.setdefault('ranks', {})[t] = rank
  for row in rows:
    row['mean_rank'] = float(np.mean(list(row['ranks'].values()))) if tasks else math.nan
  rows.sort(key=lambda row: (row['mean_rank'], row['run']))
  override_keys = []
  for row in rows:
    override_keys += [k for k in row['overrides'] if k not in override_keys]
  return {'tasks': tasks, 'metrics': metrics, 'rows': rows, 'override_keys': override_keys,
          'groups': _groups(rows, tasks, override_keys)}


def _groups(rows, tasks, override_keys) -> list[dict]:
  """Mean ± std over seeds of the runs that share every other override (if seeds vary)."""
  if 'seed' not in override_keys or len({r['overrides'].get('seed') for r in rows}) < 2:
    return []
  groups = {}
  for row in rows:
    key = json.dumps({k: v for k, v in row['overrides'].items() if k != 'seed'}, sort_keys=True,
                     default=repr)
    groups.setdefault(key, []).append(row)
  out = []
  for members in groups.values():
    stats = {}
    for name, values in [(t, [m['values'][t] for m in members]) for t in tasks] + [
        ('delta_m', [m['delta_m'] for m in members]), ('mean_rank', [m['mean_rank'] for m in members])]:
      values = [v for v in values if v is not None]
      stats[name] = (float(np.mean(values)), float(np.std(values))) if values else None
    out.append({'overrides': {k: v for k, v in members[0]['overrides'].items() if k != 'seed'},
                'count': len(members), 'stats': stats})
  out.sort(key=lambda g: g['stats']['mean_rank'][0])
  return out


def _fmt(value, digits=4, signed=False) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return '-'
  return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def to_markdown(report: dict, workdirs) -> str:
  tasks, metrics, keys = report['tasks'], report['metrics'], report['override_keys']
  short = short_keys(keys)
  lines = [f'# Runs under {", ".join(workdirs)}', '',
           f'Test metrics of the best checkpoint; Δm% against each run\'s single-task baselines '
           f'(higher is better); rank per task among these {len(report["rows"])} runs (1 = best, '
           f'ties share), sorted by mean rank.', '']
  header = ['run'] + [short[k] for k in keys] + [f'{t} {metrics[t]}' for t in tasks] + [
      'Δm%', 'mean rank'] + [f'rank {t}' for t in tasks] + ['best step']
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in report['rows']:
    cells = [f'`{row["run"]}`'] + [str(row['overrides'].get(k, '')) for k in keys]
    cells += [_fmt(row['values'][t]) for t in tasks]
    cells += [_fmt(row['delta_m'], 3, signed=True), _fmt(row['mean_rank'], 2)]
    cells += [_fmt(row['ranks'][t], 1) for t in tasks] + [str(row['best_step'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if report['groups']:
    lines += ['', f'Mean ± std over seeds:', '']
    group_keys = [k for k in keys if k != 'seed']
    header = [short[k] for k in group_keys] + ['seeds'] + [f'{t} {metrics[t]}' for t in tasks] + [
        'Δm%', 'mean rank']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for g in report['groups']:
      cells = [str(g['overrides'].get(k, '')) for k in group_keys] + [str(g['count'])]
      for name, digits, signed in [(t, 4, False) for t in tasks] + [('delta_m', 3, True),
                                                                     ('mean_rank', 2, False)]:
        s = g['stats'][name]
        cells.append('-' if s is None else f'{_fmt(s[0], digits, signed)} ± {s[1]:.{digits}f}')
      lines.append('| ' + ' | '.join(cells) + ' |')
  used = {}  # the same baseline numbers (e.g. one set per seed) listed once, with their runs
  for row in report['rows']:
    if row['baseline']:
      used.setdefault(json.dumps(row['baseline'], sort_keys=True), []).append(row)
  missing = [row['run'] for row in report['rows'] if row['delta_m'] is None]
  lines += ['', 'Single-task baselines:', '']
  for values, users in sorted(used.items()):
    values = json.loads(values)
    sources = sorted({u['baseline_source'] for u in users})
    names = ', '.join(f'`{u["run"]}`' for u in users)
    where = f'`{sources[0]}`' if len(sources) == 1 else f'the single_task/ runs of {names}'
    lines.append('* ' + ', '.join(f'{t} {metrics[t]} {_fmt(values[t])}' for t in tasks
                                  if t in values) + f': {where}')
  if missing:
    lines.append(f'* none (no Δm%) for: {", ".join(f"`{m}`" for m in missing)} '
                 f'(pass --baseline WORKDIR)')
  return '\n'.join(lines) + '\n'


def write_csv(report: dict, path: str) -> None:
  tasks, metrics, keys = report['tasks'], report['metrics'], report['override_keys']
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['run', 'path'] + keys + [f'test/{t}/{metrics[t]}' for t in tasks]
                    + [f'single_task/{t}/{metrics[t]}' for t in tasks] + ['delta_m_percent',
                    'mean_rank'] + [f'rank/{t}' for t in tasks] + ['best_step'])
    for row in report['rows']:
      writer.writerow([row['run'], row['path']] + [row['overrides'].get(k, '') for k in keys]
                      + [row['values'][t] for t in tasks]
                      + [row['baseline'].get(t, '') for t in tasks]
                      + [row['delta_m'] if row['delta_m'] is not None else '', row['mean_rank']]
                      + [row['ranks'][t] for t in tasks] + [row['best_step']])


# ---------------------------------------------------------------------------------------------
# Plots.

def _plot_order(rows) -> list:
  """Sweep order (trial index), then name: the legend reads like `--sweep_list`."""
  return sorted(rows, key=lambda r: (r['index'] is None, r['index'] or 0, r['run']))


def _styles(rows) -> dict:
  """run -> (color, linestyle, marker): one color per group of overrides without the seed, one
  line style and marker per seed (one color per run when there are no overrides)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  groups = []
  for row in _plot_order(rows):
    group = json.dumps({k: v for k, v in row['overrides'].items() if k != 'seed'},
                       sort_keys=True, default=repr) if row['overrides'] else row['run']
    groups += [group] if group not in groups else []
  seeds = sorted({row['overrides'].get('seed') for row in rows}, key=repr)
  cmap = matplotlib.colormaps['tab10' if len(groups) <= 10 else 'tab20']
  lines, markers = ['-', '--', ':', '-.'], ['o', 's', '^', 'D', 'v', 'P']
  out = {}
  for row in rows:
    group = json.dumps({k: v for k, v in row['overrides'].items() if k != 'seed'},
                       sort_keys=True, default=repr) if row['overrides'] else row['run']
    seed = seeds.index(row['overrides'].get('seed'))
    out[row['run']] = (cmap(groups.index(group) % cmap.N), lines[seed % len(lines)],
                       markers[seed % len(markers)])
  return out


def _legend(fig, axes, count):
  handles, labels = axes[0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, loc='outside lower center', ncols=min(4, max(1, count)),
               fontsize=9, frameon=False)


def _plot_runs(ax, rows, series, styles, key: str, title: str, ylabel: str) -> None:
  """One panel: the scalar `key` of every run that logged it, in the run's colour and style."""
  for row in rows:
    if key in series[row['run']]:
      steps, values = series[row['run']][key]
      color, style, _ = styles[row['run']]
      ax.plot(steps, values, color=color, linestyle=style, label=row['run'], linewidth=1.5)
  ax.set_title(title, fontsize=12)
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)


def plot_learning_curves(report: dict, path: str) -> bool:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks, metrics, rows = report['tasks'], report['metrics'], _plot_order(report['rows'])
  styles = _styles(rows)
  series = {row['run']: read_metrics_jsonl(os.path.join(row['path'], 'metrics.jsonl'))
            for row in rows}
  if not any(series.values()):
    return False
  fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7.5 + 0.25 * len(rows)),
                           squeeze=False, layout='constrained')
  for j, task in enumerate(tasks):
    for i, (key, ylabel) in enumerate([(f'train/{task}/loss', 'train loss'),
                                       (f'val/{task}/{metrics[task]}', f'validation {metrics[task]}')]):
      _plot_runs(axes[i][j], rows, series, styles, key, f'{task}: {ylabel}', ylabel)
  fig.suptitle('Learning curves', fontsize=14)
  _legend(fig, axes.ravel(), len(rows))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def plot_task_weights(report: dict, path: str) -> bool:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks, rows = report['tasks'], _plot_order(report['rows'])
  styles = _styles(rows)
  series = {row['run']: read_metrics_jsonl(os.path.join(row['path'], 'metrics.jsonl'))
            for row in rows}
  if not any(f'train/weights/{t}' in s for s in series.values() for t in tasks):
    return False
  fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.5 + 0.25 * len(rows)),
                           squeeze=False, layout='constrained')
  for j, task in enumerate(tasks):
    _plot_runs(axes[0][j], rows, series, styles, f'train/weights/{task}', f'{task}: task weight',
               'weight (mean since the last log)')
  fig.suptitle('Per-task weights of the method over training', fontsize=14)
  _legend(fig, axes.ravel(), len(rows))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def pareto_front(points, higher: tuple) -> list[int]:
  """Indices of the non-dominated points (no other point at least as good on both and better
  on one), in order of the first coordinate."""
  signs = [1.0 if h else -1.0 for h in higher]
  front = []
  for i, p in enumerate(points):
    a = [s * v for s, v in zip(signs, p)]
    dominated = False
    for k, q in enumerate(points):
      b = [s * v for s, v in zip(signs, q)]
      if k != i and all(y >= x for x, y in zip(a, b)) and any(y > x for x, y in zip(a, b)):
        dominated = True
        break
    if not dominated:
      front.append(i)
  return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: dict, path: str) -> bool:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  tasks, metrics, rows = report['tasks'], report['metrics'], _plot_order(report['rows'])
  if len(tasks) < 2:
    return False
  t1, t2 = tasks[:2]
  rows = [r for r in rows if r['values'][t1] is not None and r['values'][t2] is not None]
  if not rows:
    return False
  styles = _styles(rows)
  points = [(r['values'][t1], r['values'][t2]) for r in rows]
  front = pareto_front(points, (higher_is_better(metrics[t1]), higher_is_better(metrics[t2])))
  fig, ax = plt.subplots(figsize=(7.5, 6.5 + 0.2 * len(rows)), layout='constrained')
  for row, (x, y) in zip(rows, points):
    ax.scatter([x], [y], color=styles[row['run']][0], marker=styles[row['run']][2], s=55,
               zorder=3, label=row['run'],
               edgecolors='black' if rows.index(row) in front else 'none')
  ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color='black',
          linewidth=1.2, zorder=2, label='Pareto front (ringed points)')
  baselines = {json.dumps(r['baseline'], sort_keys=True) for r in rows
               if t1 in r['baseline'] and t2 in r['baseline']}
  for k, b in enumerate(sorted(baselines)):
    b = json.loads(b)
    ax.scatter([b[t1]], [b[t2]], marker='*', s=160, color='gray', zorder=4,
               label='single-task' if k == 0 else None)
  title = f'Test {metrics[t1]} of {t1} vs {metrics[t2]} of {t2}'
  if len(tasks) > 2:
    title += f' (first 2 of {len(tasks)} tasks)'
  arrows = lambda t: '→ better' if higher_is_better(metrics[t]) else '← better'
  ax.set_title(title, fontsize=12)
  ax.set_xlabel(f'{t1} test {metrics[t1]}  ({arrows(t1)})')
  ax.set_ylabel(f'{t2} test {metrics[t2]}  ({arrows(t2).replace("→", "↑").replace("←", "↓")})')
  ax.grid(alpha=0.3)
  fig.legend(*ax.get_legend_handles_labels(), loc='outside lower center',
             ncols=min(3, len(rows) + 2), fontsize=9, frameon=False)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mtl_jax.report', description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='run or sweep directories (searched for final_metrics.json)')
  parser.add_argument('--out', help='output directory (default: <first WORKDIR>/report)')
  parser.add_argument('--baseline', help='a workdir whose single_task/<task> runs are the '
                      'baselines of the runs that have none of their own')
  parser.add_argument('--metric', help='the test metric to report for every task (default: the '
                      "runs' best_metric, else auc, accuracy, ..., loss)")
  args = parser.parse_args(argv)
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    runs = find_runs(args.workdirs)
    report = collate(runs, args.metric, args.baseline)
    out = args.out or os.path.join(args.workdirs[0], 'report')
    os.makedirs(out, exist_ok=True)
    markdown = to_markdown(report, args.workdirs)
    with open(os.path.join(out, 'report.md'), 'w') as f:
      f.write(markdown)
    write_csv(report, os.path.join(out, 'report.csv'))
    written = ['report.md', 'report.csv']
    for name, plot in [('learning_curves.png', plot_learning_curves),
                       ('task_weights.png', plot_task_weights), ('pareto.png', plot_pareto)]:
      if plot(report, os.path.join(out, name)):
        written.append(name)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(markdown)
  print(f'Wrote {", ".join(written)} to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
