"""Shared-bottom vs MMoE on the MMoE paper's synthetic data, for several task correlations p.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts",
KDD 2018, §5.1 / Figure 4: the paper's finding is that every model does worse as the tasks get
less related (smaller p), shared-bottom most, so MMoE's advantage over shared-bottom grows as p
falls. The paper repeats every (model, p) 200 times with a fresh data draw and a fresh
initialisation and shows the average.

    python -m experiments.mmoe_synthetic.run --out runs/mmoe_synthetic
    python -m experiments.mmoe_synthetic.run --out runs/x --archs hard,mmoe,cgc --seeds 3
    python -m experiments.mmoe_synthetic.run --out runs/mmoe_synthetic_nl --regime nonlinear

`--regime` picks the data regime (`paper`, the default, or `nonlinear`: see
`mtl_jax/data/mmoe_synthetic.py`); the models and training settings are the same for both.

Replicate r (r = 0 .. seeds-1) trains every architecture on the data of data seed r (so the
models of one replicate see the same examples, and so do the p of one replicate except for p
itself: see `mtl_jax/data/mmoe_synthetic.py`) with model seed r (initialisation and batch order).
Each run is `train_and_evaluate` on
`experiments/configs/mmoe_synthetic.py:<arch>,p=..,data_seed=r[,regime=..]` in
`<out>/p<tag>/seed<r>/<arch>` (`p<tag>_nl` for the regime `nonlinear`); the reported model is the last step's. Writes to `--out`:

* `results.md`: test MSE per task per model per p (mean ± std over replicates), parameter
  counts, seconds per run, and MMoE's advantage over shared-bottom per p (paired by replicate);
  a reference row per p: ordinary least squares fitted per task on the same training split;
* `results.json`: every run (final metrics, curves) and the settings;
* `mmoe_synthetic.png`: validation-loss curves per p (mean over replicates) and final test MSE
  against p (matplotlib).

Runs share one persistent XLA compilation cache (`--jax_cache`, default `<out>/jax_cache`): the
programs of one architecture are the same for every p and replicate, so only the first run of
each architecture compiles. A run whose `record.json` matches its config is not run again.
"""

import argparse
import json
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from experiments.configs import mmoe_synthetic as config_lib
from mtl_jax import data as data_lib
from mtl_jax import train
from mtl_jax.data import mmoe_synthetic

ARCH_LABELS = {'hard': 'shared-bottom', 'mmoe': 'MMoE', 'cgc': 'CGC', 'ple': 'PLE'}
TASKS = tuple(t.name for t in mmoe_synthetic.TASKS)


def describe(config: ml_collections.ConfigDict) -> tuple[int, float]:
  """(trainable parameters of the model `config` builds, Pearson correlation of the two labels on
  its training split). Shapes only: nothing is initialised or computed on the model."""
  s = train.setup(config)
  example = s.spec.to_batch(data_lib.first_rows(s.columns['train'], 2))['inputs']
  shapes = jax.eval_shape(lambda: s.model.init(jax.random.PRNGKey(0), example))
  params = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(shapes['params'])))
  names = [t.name for t in s.tasks]
  correlation = float('nan')
  if len(names) == 2:
    correlation = float(np.corrcoef(s.columns['train'][names[0]],
                                    s.columns['train'][names[1]])[0, 1])
  return params, correlation


def read_curves(workdir: str) -> dict[str, list]:
  """Validation and (running mean) training loss, mean over the tasks, from metrics.jsonl."""
  curves = {'val_step': [], 'val_loss': [], 'train_step': [], 'train_loss': []}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if all(f'val/{t}/loss' in record for t in TASKS):
        curves['val_step'].append(record['step'])
        curves['val_loss'].append(float(np.mean([record[f'val/{t}/loss'] for t in TASKS])))
      if all(f'train/{t}/loss' in record for t in TASKS):
        curves['train_step'].append(record['step'])
        curves['train_loss'].append(float(np.mean([record[f'train/{t}/loss'] for t in TASKS])))
  return curves


def run_one(arch: str, p: float, seed: int, steps: int | None, data_dir: str, out: str,
            log=print, regime: str = mmoe_synthetic.DEFAULT_REGIME,
            learning_rate: float | None = None) -> dict[str, Any]:
  """One training run; its record (reused when `record.json` has the same config)."""
  config = config_lib.get_config(f'{arch},p={p},data_seed={seed},regime={regime}')
  if learning_rate is not None:
    config.learning_rate = learning_rate
  config.seed = seed
  config.data_dir = data_dir
  if steps is not None:
    config.num_train_steps = steps
    config.checkpoint_every_steps = steps
    config.eval_every_steps = max(1, min(config.eval_every_steps, steps))
    config.log_every_steps = max(1, min(config.log_every_steps, steps))
  config.log_prefix = f'[{arch} p={p} seed={seed}] '
  tag = f'p{mmoe_synthetic.p_tag(p)}{mmoe_synthetic.get_regime(regime).tag}'
  workdir = os.path.join(out, tag, f'seed{seed}', arch)
  path = os.path.join(workdir, 'record.json')
  settings = json.loads(json.dumps(config.to_dict()))
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record['config'] == settings:
      log(f'{arch} p={p} seed={seed}: reused {path}')
      return record
  start = time.perf_counter()
  final = train.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  params, correlation = describe(config)
  record = {'arch': arch, 'p': p, 'seed': seed, 'regime': regime, 'seconds': seconds,
            'params': params,
            'label_correlation': correlation,
            'final': final, 'curves': read_curves(workdir), 'config': settings}
  with open(path, 'w') as f:
    json.dump(record, f, indent=1)
  log(f'{arch} p={p} seed={seed}: test MSE '
      + ', '.join(f'{t} {final[f"test/{t}/loss"]:.5f}' for t in TASKS) + f' ({seconds:.1f} s)')
  return record


def least_squares(p: float, seed: int,
                  regime: str = mmoe_synthetic.DEFAULT_REGIME) -> dict[str, float]:
  """Test MSE per task of ordinary least squares (with intercept) fitted on the training split.

  A reference: for the regime `paper`, what the nearly linear labels allow; for `nonlinear`, how
  much of the labels is not linear. Not a multi-task model. The splits are regenerated with
  `mmoe_synthetic.generate` and rounded to float32 as the builder stores them
  (tests/data/test_mmoe_synthetic.py checks the builder's arrays equal these).
  """
  sizes = mmoe_synthetic.get_regime(regime).split_sizes
  columns = {k: v.astype(np.float32).astype(np.float64) for k, v in
             mmoe_synthetic.generate(p, sum(sizes.values()), seed, regime=regime).items()}
  train_stop = sizes['train']
  test_start = train_stop + sizes['validation']
  design = np.concatenate([columns['x'], np.ones((len(columns['x']), 1))], axis=1)
  out = {}
  for task in TASKS:
    coef, *_ = np.linalg.lstsq(design[:train_stop], columns[task][:train_stop], rcond=None)
    out[task] = float(np.mean((design[test_start:] @ coef - columns[task][test_start:]) ** 2))
  out['avg'] = float(np.mean([out[task] for task in TASKS]))
  return out


def reference(ps: Sequence[float], seeds: int,
              regime: str = mmoe_synthetic.DEFAULT_REGIME) -> dict[float, dict]:
  """Per p: mean and std over the replicates' data seeds of `least_squares`."""
  out = {}
  for p in ps:
    runs = [least_squares(p, seed, regime) for seed in range(seeds)]
    out[p] = {name: (float(np.mean([r[name] for r in runs])),
                     float(np.std([r[name] for r in runs], ddof=1)) if seeds > 1 else 0.0)
              for name in TASKS + ('avg',)}
  return out


def summarise(records: Sequence[dict], archs: Sequence[str], ps: Sequence[float]) -> dict:
  """Per (p, arch): mean and std over replicates of the test MSE of each task and their mean, and
  of the training MSE (mean of the tasks, running mean over the last logging interval)."""
  table = {}
  for p in ps:
    for arch in archs:
      rows = [r for r in records if r['p'] == p and r['arch'] == arch]
      if not rows:
        continue
      entry = {'n': len(rows), 'params': rows[0]['params'],
               'seconds': float(np.mean([r['seconds'] for r in rows])),
               'label_correlation': float(np.mean([r['label_correlation'] for r in rows]))}
      for name in TASKS + ('avg', 'train'):
        values = np.array([r['curves']['train_loss'][-1] if name == 'train' else
                           r['final'][f'test/{name}/loss'] for r in rows])
        entry[name] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
      table[(p, arch)] = entry
  return table


def advantage(records: Sequence[dict], ps: Sequence[float], baseline: str = 'hard',
              other: str = 'mmoe') -> dict:
  """Per p: the paired differences baseline - other of the mean test MSE (positive: `other` is
  better) over the replicates both ran; mean, std, and in how many `other` is better."""
  out = {}
  for p, diffs in _paired_differences(records, ps, baseline, other).items():
    values = np.array(list(diffs.values()))
    out[p] = {'n': len(values), 'mean': float(values.mean()),
              'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              'wins': int((values > 0).sum())}
  return out


def _paired_differences(records, ps, baseline, other) -> dict[float, dict[int, float]]:
  """{p: {seed: baseline's mean test MSE - other's}} for the replicates both ran."""
  out = {}
  for p in ps:
    by_seed = {}
    for r in records:
      if r['p'] == p and r['arch'] in (baseline, other):
        by_seed.setdefault(r['seed'], {})[r['arch']] = r['final']['test/avg/loss']
    diffs = {seed: v[baseline] - v[other] for seed, v in by_seed.items() if len(v) == 2}
    if diffs:
      out[p] = diffs
  return out


def trend(records: Sequence[dict], ps: Sequence[float], baseline: str = 'hard',
          other: str = 'mmoe') -> dict | None:
  """How `other`'s advantage changes from the largest p to the smallest, paired by replicate
  (one data seed gives the same u1, u2, alpha, beta, x and noise at every p): per replicate,
  advantage at min p - advantage at max p (positive: the advantage grows as the tasks become
  less related, the paper's finding); mean, std, and in how many it is positive."""
  diffs = _paired_differences(records, ps, baseline, other)
  if len(diffs) < 2:
    return None
  low, high = diffs[min(diffs)], diffs[max(diffs)]
  values = np.array([low[seed] - high[seed] for seed in low if seed in high])
  if not len(values):
    return None
  return {'from_p': max(diffs), 'to_p': min(diffs), 'n': len(values),
          'mean': float(values.mean()),
          'std': float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          'grows': int((values > 0).sum())}


def markdown(records: Sequence[dict], archs: Sequence[str], ps: Sequence[float],
             settings: dict, ols: dict | None = None) -> str:
  """The results table; `ols` (from `reference`) adds a least-squares row per p."""
  table = summarise(records, archs, ps)
  n = max(e['n'] for e in table.values())
  regime = settings.get('regime', mmoe_synthetic.DEFAULT_REGIME)
  lines = [f'Data regime `{regime}`. '
           f'Test MSE (last step), mean ± std over {n} replicates (data seed = model seed); '
           f'{settings["steps"]} steps. Noise floor: {mmoe_synthetic.NOISE_VARIANCE}. Train MSE: '
           f'mean of the tasks\' minibatch losses over the last logging interval.', '',
           '| p | label corr. | model | params | y1 MSE | y2 MSE | mean MSE | train MSE | '
           's / run |',
           '|---:|---:|---|---:|---:|---:|---:|---:|---:|']
  for (p, arch), e in table.items():
    cells = ' | '.join(f'{e[name][0]:.5f} ± {e[name][1]:.5f}'
                       for name in TASKS + ('avg', 'train'))
    lines.append(f'| {p} | {e["label_correlation"]:.3f} | {ARCH_LABELS.get(arch, arch)} | '
                 f'{e["params"]:,} | {cells} | {e["seconds"]:.1f} |')
    if ols and p in ols and arch == archs[-1]:
      cells = ' | '.join(f'{ols[p][name][0]:.5f} ± {ols[p][name][1]:.5f}'
                         for name in TASKS + ('avg',))
      lines.append(f'| {p} | {e["label_correlation"]:.3f} | least squares per task (reference) | '
                   f'{len(TASKS) * (mmoe_synthetic.D + 1)} | {cells} | - | - |')
  for other in [a for a in archs if a != 'hard']:
    adv = advantage(records, ps, 'hard', other)
    if not adv or 'hard' not in archs:
      continue
    label = ARCH_LABELS.get(other, other)
    lines += ['', f'{label}\'s advantage over shared-bottom (mean MSE of shared-bottom minus '
              f'{label}\'s, paired by replicate; positive: {label} better):', '',
              f'| p | advantage | std | {label} better in |', '|---:|---:|---:|---:|']
    lines += [f'| {p} | {a["mean"]:+.5f} | {a["std"]:.5f} | {a["wins"]}/{a["n"]} |'
              for p, a in adv.items()]
    change = trend(records, ps, 'hard', other)
    if change:
      lines += ['', f'Change of the advantage from p = {change["from_p"]} to p = '
                f'{change["to_p"]}, paired by replicate: {change["mean"]:+.5f} ± '
                f'{change["std"]:.5f} (std); it grows in {change["grows"]}/{change["n"]}.']
  return '\n'.join(lines) + '\n'


def plot(records: Sequence[dict], archs: Sequence[str], ps: Sequence[float], path: str,
         ols: dict | None = None, regime: str = mmoe_synthetic.DEFAULT_REGIME) -> bool:
  """Validation-loss curves per p and final test MSE against p (with `ols`, the least-squares
  reference). False without matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  colors = dict(zip(config_lib.ARCHS, ('tab:blue', 'tab:red', 'tab:green', 'tab:purple')))
  panels = len(ps) + 1
  cols = 2 if panels > 2 else panels
  rows = -(-panels // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.2 * rows), squeeze=False)
  for ax, p in zip(axes.flat, ps):
    for arch in archs:
      runs = [r['curves'] for r in records if r['p'] == p and r['arch'] == arch]
      if not runs:
        continue
      steps = np.array(runs[0]['val_step'])
      losses = np.array([c['val_loss'] for c in runs])
      mean, std = losses.mean(0), losses.std(0)
      label = ARCH_LABELS.get(arch, arch)
      ax.plot(steps, mean, color=colors[arch], label=f'{label} validation', linewidth=2)
      ax.fill_between(steps, mean - std, mean + std, color=colors[arch], alpha=0.2)
      train_loss = np.array([c['train_loss'] for c in runs]).mean(0)
      ax.plot(runs[0]['train_step'], train_loss, color=colors[arch], linestyle='--',
              linewidth=1, label=f'{label} train')
    ax.axhline(mmoe_synthetic.NOISE_VARIANCE, color='gray', linestyle=':', label='noise floor')
    ax.set_yscale('log')
    ax.set_title(f'p = {p}: MSE (mean of the 2 tasks)')
    ax.set_xlabel('step')
    ax.set_ylabel('MSE (mean ± std over replicates)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  ax = axes.flat[len(ps)]
  table = summarise(records, archs, ps)
  for arch in archs:
    xs = [p for p in ps if (p, arch) in table]
    ax.errorbar(xs, [table[(p, arch)]['avg'][0] for p in xs],
                yerr=[table[(p, arch)]['avg'][1] for p in xs], color=colors[arch], marker='o',
                capsize=4, linewidth=2, label=ARCH_LABELS.get(arch, arch))
  if ols:
    xs = [p for p in ps if p in ols]
    ax.plot(xs, [ols[p]['avg'][0] for p in xs], color='gray', linestyle='--', marker='s',
            label='least squares per task')
    models_max = max((e['avg'][0] + e['avg'][1] for e in table.values()), default=0.0)
    if models_max > 0 and max(ols[p]['avg'][0] for p in xs) > 5 * models_max:
      ax.set_yscale('log')  # Least squares far above the networks (non-linear labels).
  ax.set_title('final test MSE (mean of the 2 tasks) vs task correlation p')
  ax.set_xlabel('p = cos(w1, w2)')
  ax.set_ylabel('test MSE (mean ± std over replicates)')
  ax.set_xticks(list(ps))
  ax.grid(True, alpha=0.3)
  ax.legend()
  for ax in list(axes.flat)[panels:]:
    ax.axis('off')
  spec = mmoe_synthetic.get_regime(regime)
  fig.suptitle(f'MMoE synthetic data (Ma et al. 2018, §4.2), regime {spec.name}: d = 100, '
               f'α, β ~ N(0, {spec.alpha_beta_variance:g}), c = {spec.c:g}, '
               f'{spec.split_sizes["train"] // 1000}k train examples', fontsize=12)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/mmoe_synthetic')
  parser.add_argument('--archs', default='hard,mmoe')
  parser.add_argument('--p', default=','.join(str(p) for p in mmoe_synthetic.PAPER_P),
                      help='comma-separated correlation scores')
  parser.add_argument('--seeds', type=int, default=8, help='replicates (data and model seeds)')
  parser.add_argument('--steps', type=int, default=None, help='default: the config\'s')
  parser.add_argument('--regime', default=mmoe_synthetic.DEFAULT_REGIME,
                      help=f'data regime: {", ".join(mmoe_synthetic.REGIMES)}')
  parser.add_argument('--learning_rate', type=float, default=None,
                      help='Adam learning rate; default: the config\'s')
  parser.add_argument('--data_dir', default='', help='tfds data dir; default $TFDS_DATA_DIR '
                      'or ~/tensorflow_datasets')
  parser.add_argument('--jax_cache', default=None,
                      help='persistent XLA compilation cache; default <out>/jax_cache, "" off')
  args = parser.parse_args(argv)
  archs = [a for a in args.archs.split(',') if a]
  ps = [float(p) for p in args.p.split(',') if p]
  regime = mmoe_synthetic.get_regime(args.regime).name  # A UserError naming the valid ones.
  for arch in archs:
    config_lib.parse_arg(arch)  # Fails before any training on an unknown arch.
  os.makedirs(args.out, exist_ok=True)
  cache = os.path.join(args.out, 'jax_cache') if args.jax_cache is None else args.jax_cache
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()

  start = time.perf_counter()
  records = []
  for seed in range(args.seeds):
    for p in ps:
      for arch in archs:
        records.append(run_one(arch, p, seed, args.steps, args.data_dir, args.out,
                               regime=regime, learning_rate=args.learning_rate))
  total = time.perf_counter() - start
  steps = records[0]['config']['num_train_steps']
  settings = {'archs': archs, 'p': ps, 'seeds': args.seeds, 'steps': steps, 'regime': regime,
              'learning_rate': records[0]['config']['learning_rate'],
              'data_dir': args.data_dir, 'seconds_total': total}
  ols = reference(ps, args.seeds, regime)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'settings': settings, 'runs': records,
               'least_squares': {str(p): v for p, v in ols.items()}}, f, indent=1)
  trained = sum(r['seconds'] for r in records)
  table = (markdown(records, archs, ps, settings, ols)
           + f'\nWall time of this invocation: {total:.0f} s (runs found done are reused); '
           f'sum of the runs\' own times: {trained:.0f} s.\n')
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(table)
  print(table)
  png = os.path.join(args.out, 'mmoe_synthetic.png')
  if plot(records, archs, ps, png, ols, regime):
    print(f'wrote {png}')
  else:
    print('matplotlib is not installed: no mmoe_synthetic.png (pip install matplotlib)')
  return {'settings': settings, 'runs': records, 'least_squares': ols}


if __name__ == '__main__':
  main()
