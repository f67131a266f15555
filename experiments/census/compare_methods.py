"""Every registered method on the default experiment (Census-Income, hard-shared MLP), one run
each in its preferred gradient mode, and a markdown table of test AUC.

    python -m experiments.census.compare_methods --out runs/census_methods [--methods ew,mgda]
"""

import argparse
import json
import os

from experiments.configs import default
from mtl_jax import optim, train

REQUIRED = {'static': {'weights': (1.0, 1.0)}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/census_methods')
  parser.add_argument('--methods', default=','.join(optim.METHODS.names()))
  parser.add_argument('--mode', default='auto')
  args = parser.parse_args()
  rows = []
  for name in args.methods.split(','):
    config = default.get_config()
    config.single_task_baselines = False
    config.method = name
    config.mode = args.mode
    config.method_kwargs.update(REQUIRED.get(name, {}))
    config.log_every_steps = config.num_train_steps
    final = train.train_and_evaluate(config, os.path.join(args.out, name))
    mode = optim.get(name, 2, **REQUIRED.get(name, {})).modes[0] if args.mode == 'auto' else args.mode
    rows.append((name, mode, final['test/income/auc'], final['test/never_married/auc'],
                 final['test/avg/auc'], final['best_step'], final['skipped_steps']))
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
      json.dump(rows, f, indent=1)
  lines = ['| method | mode | income AUC | never-married AUC | mean | best step | skipped |',
           '|---|---|---:|---:|---:|---:|---:|']
  lines += [f'| `{n}` | {m} | {a:.4f} | {b:.4f} | {c:.4f} | {s} | {k} |'
            for n, m, a, b, c, s, k in rows]
  table = '\n'.join(lines)
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(table + '\n')
  print(table)


if __name__ == '__main__':
  main()
