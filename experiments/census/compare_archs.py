"""Census-Income with each mixture-of-experts architecture (and the shared-bottom of the same
budget), one run each, and a markdown table of test AUC, parameters and wall time.

    python -m experiments.census.compare_archs --out runs/census_archs [--archs hard,mmoe]
                                               [--seeds 3]

Every run is `train_and_evaluate` on `experiments/configs/census_archs.py:<arch>` (the default
experiment's data, schedule and 3,000 steps; see that file for the sizes) with `config.seed` =
0 .. seeds-1, in `<out>/<arch>/seed<s>`; its test metrics are those of the checkpoint with the
best mean validation AUC. Writes `results.md` and `results.json` to `--out`.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from experiments.configs import census_archs
from mtl_jax import data as data_lib
from mtl_jax import train

TASKS = ('income', 'never_married')


def parameter_counts(config) -> tuple[int, int]:
  """(all trainable parameters, those outside the input layer's embedding table)."""
  s = train.setup(config)
  example = s.spec.to_batch(data_lib.first_rows(s.columns['train'], 2))['inputs']
  shapes = jax.eval_shape(lambda: s.model.init(jax.random.PRNGKey(0), example))
  leaves = jax.tree_util.tree_leaves_with_path(shapes['params'])
  total = sum(int(np.prod(leaf.shape)) for _, leaf in leaves)
  embedding = sum(int(np.prod(leaf.shape)) for path, leaf in leaves
                  if 'embedding' in jax.tree_util.keystr(path))
  return total, total - embedding


def _cell(values) -> str:
  values = np.asarray(values, np.float64)
  if len(values) == 1:
    return f'{values[0]:.4f}'
  return f'{values.mean():.4f} ± {values.std(ddof=1):.4f}'


def markdown(rows) -> str:
  """One line per arch: test AUCs (mean ± std over seeds when several), parameters, best steps,
  seconds per run."""
  archs = list(dict.fromkeys(r['arch'] for r in rows))
  seeds = sorted({r['seed'] for r in rows})
  lines = [f'Test AUC of the best checkpoint by mean validation AUC; seeds {seeds}'
           + (' (mean ± std)' if len(seeds) > 1 else '') + '.', '',
           '| arch | income AUC | never-married AUC | mean | params (w/o embeddings) | '
           'best steps | s / run |',
           '|---|---:|---:|---:|---:|---|---:|']
  for arch in archs:
    runs = [r for r in rows if r['arch'] == arch]
    lines.append(
        f'| `{arch}` | {_cell([r["income"] for r in runs])} | '
        f'{_cell([r["never_married"] for r in runs])} | {_cell([r["mean"] for r in runs])} | '
        f'{runs[0]["params"]:,} ({runs[0]["params_above_input"]:,}) | '
        f'{", ".join(str(r["best_step"]) for r in runs)} | '
        f'{np.mean([r["seconds"] for r in runs]):.0f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/census_archs')
  parser.add_argument('--archs', default=','.join(census_archs.ARCHS))
  parser.add_argument('--seeds', type=int, default=1, help='runs per arch, seeds 0..seeds-1 '
                      '(initialisation, dropout and batch order; the split is fixed)')
  parser.add_argument('--steps', type=int, default=None, help='default: the config\'s (3000)')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for seed in range(args.seeds):
    for arch in args.archs.split(','):
      config = census_archs.get_config(arch)
      config.seed = seed
      if args.steps is not None:
        config.num_train_steps = args.steps
        config.eval_every_steps = min(config.eval_every_steps, args.steps)
        config.checkpoint_every_steps = min(config.checkpoint_every_steps, args.steps)
      config.log_every_steps = config.num_train_steps
      config.log_prefix = f'[{arch} seed {seed}] '
      start = time.perf_counter()
      final = train.train_and_evaluate(config, os.path.join(args.out, arch, f'seed{seed}'))
      seconds = time.perf_counter() - start
      total, above_input = parameter_counts(config)
      rows.append({'arch': arch, 'seed': seed, 'income': final['test/income/auc'],
                   'never_married': final['test/never_married/auc'],
                   'mean': final['test/avg/auc'], 'params': total,
                   'params_above_input': above_input, 'best_step': final['best_step'],
                   'seconds': seconds, 'config': json.loads(json.dumps(config.to_dict()))})
      with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=1)
  table = markdown(rows)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(table)
  print(table)
  return rows


if __name__ == '__main__':
  main()
