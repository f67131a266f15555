"""A transferred trunk against training from scratch, with few labels of the new task.

Census-Income: the source model learns `never_married` on the whole train split (69,833 rows);
the new task, `income` (6.2% positive), then trains on N = 50, 200, 1000 labelled rows, from
scratch (at two learning rates) or from the source model's trunk (frozen, fine-tuned,
fine-tuned at a tenth of the learning rate, or frozen for half the steps then fine-tuned at a
tenth), over several seeds (`experiments/configs/transfer_census.py` has the settings).

    python -m experiments.transfer.run --out runs/transfer
    python -m experiments.transfer.run --out runs/x --examples 50,200 --seeds 2

Seed s draws the N training rows (nested: the 50 rows are among the 200), the new head's (and
the scratch trunk's) initialisation and the batch order; every variant of one (N, s) sees the
same rows. One source model (seed 0) serves every run. Runs whose `final_metrics.json` exists
are reused (with the seconds they took, from `seconds.json`). Writes to `--out`:
`results.json` (every run), `results.md` (test AUC of `income`, mean ± std over seeds, and each
variant's paired difference to the better scratch run) and `transfer.png`.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.configs import transfer_census
from mtl_jax import train

LABELS = {'scratch': 'from scratch', 'scratch_slow': 'from scratch, lr 1e-3', 'frozen': 'frozen trunk', 'finetune': 'fine-tuned',
          'scaled': 'fine-tuned, trunk lr x0.1', 'unfreeze': 'frozen 200 steps, then x0.1'}
METRIC = 'test/income/auc'


def run_config(variant: str, examples: int, seed: int, data_dir: str, pretrain_dir: str):
  config = transfer_census.get_config(variant)
  config.seed = seed
  config.data_dir = data_dir
  config.train_examples = examples
  config.batch_size = min(config.batch_size, examples)
  if config.transfer.init_from:
    config.transfer.init_from = pretrain_dir
  config.log_prefix = f'[{variant} N={examples} seed={seed}] '
  return config


def finished(workdir: str, train_fn):
  """(final metrics, seconds): read back if the run finished before, else trained now."""
  path = os.path.join(workdir, 'final_metrics.json')
  timing = os.path.join(workdir, 'seconds.json')
  if os.path.exists(path):
    with open(path) as f:
      final = json.load(f)
    seconds = None
    if os.path.exists(timing):
      with open(timing) as f:
        seconds = json.load(f)['seconds']
    return final, seconds
  start = time.perf_counter()
  final = train_fn()
  seconds = time.perf_counter() - start
  with open(timing, 'w') as f:
    json.dump({'seconds': seconds}, f)
  return final, seconds


def summarise(runs: list[dict], variants, examples) -> str:
  by = {(r['variant'], r['examples'], r['seed']): r['final'][METRIC] for r in runs}
  seeds = sorted({r['seed'] for r in runs})
  lines = ['| variant | ' + ' | '.join(f'N = {n}' for n in examples) + ' |',
           '|---|' + '---|' * len(examples)]
  for variant in variants:
    cells = []
    for n in examples:
      values = np.array([by[variant, n, s] for s in seeds])
      cells.append(f'{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}')
    lines.append(f'| {LABELS[variant]} | ' + ' | '.join(cells) + ' |')
  # The baseline at each N is the scratch variant with the higher mean test AUC: chosen on the
  # test set, so it flatters scratch, which is the conservative side for a transfer claim.
  scratch = [v for v in variants if v.startswith('scratch')]
  baseline = {n: max(scratch, key=lambda v: np.mean([by[v, n, s] for s in seeds]))
              for n in examples}
  lines += ['', 'Paired difference to the better scratch run at each N (same rows, same seed; '
            + ', '.join(f'N = {n}: {LABELS[baseline[n]]}' for n in examples)
            + '), mean ± std over seeds, and the seeds where the variant is better:', '',
            '| variant | ' + ' | '.join(f'N = {n}' for n in examples) + ' |',
            '|---|' + '---|' * len(examples)]
  for variant in variants:
    if variant in scratch:
      continue
    cells = []
    for n in examples:
      diff = np.array([by[variant, n, s] - by[baseline[n], n, s] for s in seeds])
      cells.append(f'{diff.mean():+.4f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.4f} '
                   f'({int((diff > 0).sum())}/{len(diff)})')
    lines.append(f'| {LABELS[variant]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(runs: list[dict], variants, examples, path: str) -> None:
  """Left: test AUC per variant (mean ± std over seeds). Right: the paired difference to the
  better scratch run (mean ± standard error), which removes the variation between row draws."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  by = {(r['variant'], r['examples'], r['seed']): r['final'][METRIC] for r in runs}
  seeds = sorted({r['seed'] for r in runs})
  scratch = [v for v in variants if v.startswith('scratch')]
  baseline = {n: max(scratch, key=lambda v: np.mean([by[v, n, s] for s in seeds]))
              for n in examples}
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, variant in enumerate(variants):
    offset = 1 + 0.03 * (i - (len(variants) - 1) / 2)  # spread the error bars on the log axis
    style = dict(marker='o', capsize=3, label=LABELS[variant],
                 linestyle='--' if variant in scratch else '-', color=f'C{i}')
    values = np.array([[by[variant, n, s] for s in seeds] for n in examples])
    left.errorbar(np.array(examples) * offset, values.mean(1),
                  yerr=values.std(1, ddof=1) if len(seeds) > 1 else None, **style)
    if variant not in scratch:
      diff = values - np.array([[by[baseline[n], n, s] for s in seeds] for n in examples])
      right.errorbar(np.array(examples) * offset, diff.mean(1),
                     yerr=diff.std(1, ddof=1) / np.sqrt(len(seeds)) if len(seeds) > 1 else None,
                     **style)
  right.axhline(0.0, color='gray', linewidth=1)
  left.set_ylabel('test AUC (income), mean ± std over seeds')
  right.set_ylabel('AUC − better scratch run (paired), mean ± s.e.')
  for ax in (left, right):
    ax.set_xscale('log')
    ax.set_xticks(examples)
    ax.set_xticklabels([str(n) for n in examples])
    ax.minorticks_off()
    ax.set_xlabel('labelled examples of the new task (income)')
    ax.grid(alpha=0.3)
  left.legend(fontsize=8)
  fig.suptitle(f'Census-Income: a trunk pretrained on never_married, {len(seeds)} seeds')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/transfer')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--examples', default='50,200,1000')
  parser.add_argument('--seeds', type=int, default=10)
  parser.add_argument('--variants', default=','.join(transfer_census.VARIANTS))
  parser.add_argument('--pretrain_steps', type=int, default=None,
                      help='source model steps (default: the config\'s 3000)')
  parser.add_argument('--jax_cache', default=None,
                      help='persistent XLA compilation cache; default <out>/jax_cache, "" off')
  args = parser.parse_args()
  cache = os.path.join(args.out, 'jax_cache') if args.jax_cache is None else args.jax_cache
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  examples = [int(n) for n in args.examples.split(',')]
  variants = args.variants.split(',')
  start = time.perf_counter()

  pretrain = transfer_census.get_config('pretrain')
  pretrain.data_dir = args.data_dir
  if args.pretrain_steps:
    pretrain.num_train_steps = args.pretrain_steps
  pretrain.log_prefix = '[pretrain never_married] '
  pretrain_dir = os.path.join(args.out, 'pretrain')
  source, seconds = finished(pretrain_dir, lambda: train.train_and_evaluate(pretrain, pretrain_dir))
  print(f'source model: test never_married AUC {source["test/never_married/auc"]:.4f}, '
        f'best step {source["best_step"]}' + (f' ({seconds:.0f} s)' if seconds else ''),
        flush=True)

  runs = []
  for n in examples:
    for seed in range(args.seeds):
      for variant in variants:
        config = run_config(variant, n, seed, args.data_dir,
                            os.path.join(pretrain_dir, 'checkpoints'))
        workdir = os.path.join(args.out, f'n{n}', f'seed{seed}', variant)
        final, seconds = finished(workdir, lambda: train.train_and_evaluate(config, workdir))
        runs.append({'variant': variant, 'examples': n, 'seed': seed, 'seconds': seconds,
                     'final': final, 'workdir': workdir})
        print(f'{variant:>12} N={n:<5} seed={seed}: {METRIC} {final[METRIC]:.4f}'
              + (f' ({seconds:.1f} s)' if seconds else ''), flush=True)

  table = summarise(runs, variants, examples)
  wall = time.perf_counter() - start
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'source': source, 'runs': runs, 'wall_seconds': wall}, f, indent=1)
  timed = [r['seconds'] for r in runs if r['seconds']]
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(f'Test AUC of income (mean ± std over {args.seeds} seeds); source model test '
            f'never_married AUC {source["test/never_married/auc"]:.4f}\n\n{table}\n')
    if timed:
      f.write(f'\nSeconds per run (train_and_evaluate, {len(timed)} timed runs): median '
              f'{np.median(timed):.1f}, total {sum(timed):.0f}\n')
  plot(runs, variants, examples, os.path.join(args.out, 'transfer.png'))
  print(table, flush=True)
  print(f'wall time {wall:.0f} s', flush=True)


if __name__ == '__main__':
  main()
