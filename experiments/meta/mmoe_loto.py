"""Leave-one-task-out meta-learning on the MMoE synthetic family: MAML vs joint pre-training vs
a random initialisation, each fine-tuned on a held-out task with the same k SGD steps.

The family (Ma et al., KDD 2018 §4.2, `mtl_jax/data/mmoe_synthetic.py`): one data seed fixes
orthonormal u1, u2 in R^100 and the sinusoids' alpha, beta (regime `paper` by default: labels
nearly linear in wᵀx; `--regime nonlinear` for clearly non-linear ones); the paper's second
task w2 = c (p u1 + sqrt(1 − p²) u2) is the point θ = arccos p of the circle

    w(θ) = c (cos θ u1 + sin θ u2),   cos(w(θ), w(θ')) = cos(θ − θ'),
    y = w(θ)ᵀx + Σ_i sin(α_i w(θ)ᵀx + β_i) + ε,   x ~ N(0, I_100),  ε ~ N(0, 0.01)

(the data module's `mmoe_synthetic.label`, written in jnp here and checked against it at start).
A pool of T tasks at angles θ_t = t · θ_max / (T − 1), t = 0..T−1, has correlations from 1 down
to cos θ_max between its tasks. The default, T = 6 over θ_max = 300°, puts them 60° apart
around the circle: neighbours correlate 0.5 (the paper's p = 0.5), the others −0.5 and −1, so no
single function fits the family and a held-out task must be adapted to. (With T = 6 over 90°,
neighbours at 0.95, the held-out task is close to the mean of the others and nothing needs
adapting: tried, every method's un-adapted MSE was already ~0.04, noise 0.01.)

Fold h holds out task h; the methods train on the other T − 1 tasks only, with examples drawn
afresh every step:

* `maml`: second-order MAML, a meta-batch of 8 tasks drawn from the T − 1 (with replacement),
  K support + K query examples each, `--inner_steps` SGD steps of `--inner_lr`, Adam(1e-3);
* `pretrained`: plain multi-task training of the same architecture with T − 1 heads (one per
  training task), the sum of the task losses (equal weighting), 2K examples of every training
  task per step, Adam(1e-3), as many steps; the held-out task's head starts as the mean of the
  trained heads (every task-specific parameter group averaged: heads, MMoE's gates);
* `random`: the architecture's initialisation (one head), untrained.

Evaluation on the held-out task: episodes of K support examples (fresh draws, never seen in
training) and 200 query examples; from each method's parameters, SGD on the support set, query
MSE after 0..10 steps. The step size is chosen per method, fold and step count from
`--eval_lrs` on 100 validation episodes, and reported on 100 other test episodes.

    python -m experiments.meta.mmoe_loto --out runs/meta_loto --seeds 3 --steps 1000 \
        --plot docs/img/meta_mmoe_loto.png

Writes `<out>/results.md`, `<out>/results.json` and the plot.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.meta import common
from mtl_jax import meta
from mtl_jax import models
from mtl_jax.data import mmoe_synthetic
from mtl_jax.tasks import Task

META_BATCH = 8
QUERY = 200
EPISODES = 100
EVAL_STEPS = 10
TARGET = (Task('y', 'regression'),)


def family(data_seed: int, regime: str):
  """(u1, u2, alpha, beta, c) of the family as float32 arrays, from the data module."""
  params = mmoe_synthetic.draw_parameters(data_seed, regime=regime)
  c = mmoe_synthetic.get_regime(regime).c
  return tuple(jnp.asarray(v, jnp.float32) for v in
               (params.u1, params.u2, params.alpha, params.beta)) + (c, params)


def make_sampler(fam):
  u1, u2, alpha, beta, c, _ = fam
  noise_std = float(np.sqrt(mmoe_synthetic.NOISE_VARIANCE))

  def sample(key, angles, n):
    """x [A, n, d] and y [A, n] for tasks at `angles` [A]."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, angles.shape + (n, u1.shape[0]))
    w = c * (jnp.cos(angles)[:, None] * u1 + jnp.sin(angles)[:, None] * u2)
    z = jnp.einsum('and,ad->an', x, w)
    y = z + jnp.sin(z[..., None] * alpha + beta).sum(-1)
    return x, y + noise_std * jax.random.normal(ke, y.shape)

  return sample


def check_labels_match_the_data_module(fam):
  """The jnp labels above are `mmoe_synthetic.label` (noise aside)."""
  *_, params = fam
  z = np.linspace(-4, 4, 101)
  u1, u2, alpha, beta, c, _ = fam
  ours = z + np.sin(z[:, None] * np.asarray(alpha) + np.asarray(beta)).sum(-1)
  np.testing.assert_allclose(ours, mmoe_synthetic.label(z, params), rtol=1e-5, atol=1e-5)


def build(arch: str, tasks, hidden):
  kwargs = {'num_experts': 4} if arch in ('mmoe', 'cgc') else {}
  return models.build(arch, tasks, models.inputs.Identity(), 'mlp', {'hidden_sizes': hidden},
                      **kwargs)


def batch(x, y, name='y'):
  return {'inputs': x, 'labels': {name: y}}


def train_maml(args, sample, train_angles, key):
  model = build(args.arch, TARGET, args.hidden)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, mmoe_synthetic.D)))['params']
  optimizer = optax.adam(1e-3)
  step = meta.make_maml_step(meta.model_loss(model, TARGET), optimizer, args.inner_lr,
                             args.inner_steps)

  def draw(key):
    pick, data = jax.random.split(key)
    angles = train_angles[jax.random.randint(pick, (META_BATCH,), 0, train_angles.shape[0])]
    x, y = sample(data, angles, 2 * args.shots)
    return batch(x[:, :args.shots], y[:, :args.shots]), batch(x[:, args.shots:],
                                                                y[:, args.shots:])

  return common.train(step, draw, params, optimizer, train_key, args.steps)


def train_pretrained(args, sample, train_angles, key):
  """Joint multi-task training with one head per training task, then the single-head model with
  the mean of the trained task-specific parameters."""
  names = [f'y{i}' for i in range(train_angles.shape[0])]
  tasks = tuple(Task(name, 'regression') for name in names)
  model = build(args.arch, tasks, args.hidden)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, mmoe_synthetic.D)))['params']
  optimizer = optax.adam(1e-3)
  loss_fn = meta.model_loss(model, tasks)
  # A "meta-batch" of one: the joint step is MAML's with 0 inner steps on a batch of all tasks.
  step = meta.make_maml_step(loss_fn, optimizer, 0.0, 0)

  def draw(key):
    x, y = sample(key, train_angles, 2 * args.shots)  # [T-1, 2K, d]: every task's examples
    joint = {'inputs': x.reshape(-1, x.shape[-1]),
             'labels': {n: y.reshape(-1) for n in names},
             # Example j of task t carries only task t's label.
             'label_mask': {n: jnp.repeat(jnp.arange(len(names)) == i, 2 * args.shots)
                            for i, n in enumerate(names)}}
    one = jax.tree.map(lambda v: v[None], joint)
    return one, one

  trained, history, seconds = common.train(step, draw, params, optimizer, train_key, args.steps)
  single = {key: value for key, value in trained.items() if key != 'tasks'}
  single['tasks'] = {'y': common.jnp_tree_mean([trained['tasks'][n] for n in names])}
  return single, history, seconds


def evaluate(args, sample, angle, key, params_by_method, curves_fn):
  """{method: {'val' / 'test': {lr: [steps + 1]}}}: mean query MSE over the episodes."""
  out = {m: {} for m in params_by_method}
  for split, offset in (('val', 0), ('test', 1)):
    x, y = sample(jax.random.fold_in(key, offset), jnp.full((EPISODES,), angle),
                  args.shots + QUERY)
    support = batch(x[:, :args.shots], y[:, :args.shots])
    query = batch(x[:, args.shots:], y[:, args.shots:])
    for method, params in params_by_method.items():
      out[method][split] = {lr: np.asarray(curves_fn(params, support, query, lr)).mean(0).tolist()
                            for lr in args.eval_lrs}
  return out


def chosen(run, steps, lrs):
  lr = min(lrs, key=lambda lr: run['val'][str(lr)][steps])
  return run['test'][str(lr)][steps], lr


def write_report(args, results, angles, seconds):
  methods = list(results[0]['eval'])
  cmd = (f'python -m experiments.meta.mmoe_loto --out {args.out} --seeds {args.seeds} '
         f'--steps {args.steps} --arch {args.arch} --tasks {args.tasks} --theta_max_deg '
         f'{args.theta_max_deg} --shots {args.shots} --inner_steps {args.inner_steps} '
         f'--inner_lr {args.inner_lr} --regime {args.regime}'
         + (f' --plot {args.plot}' if args.plot else ''))
  corr = np.cos(angles[1] - angles[0])
  lines = [f'# Leave-one-task-out on the MMoE synthetic family ({args.arch})', '',
           f'Command: `{cmd}` ({seconds:.0f} s)', '',
           f'{args.tasks} tasks at angles {", ".join(f"{np.degrees(a):.0f}°" for a in angles)} '
           f'(neighbours correlate {corr:.3f}, the least related pair '
           f'{np.cos(angles[:, None] - angles[None, :]).min():.3f}); regime '
           f'{args.regime}, data seed = seed. Every fold trains on {args.tasks - 1} tasks and '
           f'adapts to the held-out one from K = {args.shots} examples. Seeds '
           f'0..{args.seeds - 1} (data family, initialisation, examples). Query MSE on the '
           f'held-out task, mean over {EPISODES} test episodes; the step size of each cell '
           f'chosen on {EPISODES} validation episodes from {list(args.eval_lrs)}. Mean ± std '
           'over seeds of the mean over folds.', '']
  header = '| method | ' + ' | '.join(f'{k} steps' for k in (0, 1, 5, 10)) + ' |'
  lines += ['## All folds', '', header, '|---' * 5 + '|']
  for method in methods:
    cells = []
    for k in (0, 1, 5, 10):
      per_seed = [np.mean([chosen(r['eval'][method], k, args.eval_lrs)[0] for r in results
                           if r['seed'] == s]) for s in range(args.seeds)]
      cells.append(common.mean_std(per_seed))
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  lines += ['', '## Paired: MAML against each baseline on the same (seed, held-out task)', '',
            '| against | ' + ' | '.join(f'{k} steps: MAML lower in / MSE ratio' for k in
                                        (1, 5, 10)) + ' |', '|---' * 4 + '|']
  for method in [m for m in methods if m != 'maml']:
    cells = []
    for k in (1, 5, 10):
      ratios = np.array([chosen(r['eval']['maml'], k, args.eval_lrs)[0]
                         / chosen(r['eval'][method], k, args.eval_lrs)[0] for r in results])
      cells.append(f'{int((ratios < 1).sum())}/{ratios.size} / {common.mean_std(ratios)}')
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  k = args.inner_steps
  lines += ['', f'## Per held-out task, {k} steps (the meta-training inner steps)', '',
            '| held out | angle | ' + ' | '.join(methods) + ' | MAML best in |',
            '|---' * (len(methods) + 3) + '|']
  for fold in sorted({r['fold'] for r in results}):
    runs = [r for r in results if r['fold'] == fold]
    cells = [common.mean_std([chosen(r['eval'][m], k, args.eval_lrs)[0] for r in runs])
             for m in methods]
    wins = sum(all(chosen(r['eval']['maml'], k, args.eval_lrs)[0]
                   < chosen(r['eval'][m], k, args.eval_lrs)[0] for m in methods if m != 'maml')
               for r in runs)
    lines.append(f'| task {fold} | {np.degrees(angles[fold]):.0f}° | ' + ' | '.join(cells)
                 + f' | {wins}/{len(runs)} seeds |')
  lines += ['', f'## At the meta-training step size α = {args.inner_lr} for every method', '',
            header, '|---' * 5 + '|']
  for method in methods:
    cells = []
    for kk in (0, 1, 5, 10):
      per_seed = [np.mean([r['eval'][method]['test'][str(args.inner_lr)][kk] for r in results
                           if r['seed'] == s]) for s in range(args.seeds)]
      cells.append(common.mean_std(per_seed))
    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write(text)
  return text


def plot(args, results, angles):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = list(results[0]['eval'])
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  steps = np.arange(EVAL_STEPS + 1)
  for method in methods:
    per_seed = np.array([[np.mean([chosen(r['eval'][method], k, args.eval_lrs)[0]
                                   for r in results if r['seed'] == s])
                          for k in steps] for s in range(args.seeds)])
    mean, std = per_seed.mean(0), per_seed.std(0)
    left.plot(steps, mean, marker='o', ms=3, label=method)
    left.fill_between(steps, mean - std, mean + std, alpha=0.2)
    k = args.inner_steps
    folds = sorted({r['fold'] for r in results})
    per_fold = np.array([[chosen(r['eval'][method], k, args.eval_lrs)[0]
                          for r in results if r['fold'] == f] for f in folds])
    right.errorbar(np.degrees(angles[folds]), per_fold.mean(1), yerr=per_fold.std(1), marker='o',
                   capsize=3, label=method)
  left.set(title=f'held-out task query MSE (mean of {args.tasks} folds), K = {args.shots}',
           xlabel='SGD steps on the support set (step size chosen on validation)',
           ylabel='MSE', yscale='log')
  right.set(title=f'per held-out task after {args.inner_steps} steps',
            xlabel='held-out task angle θ (cos θ = correlation with task 0)', ylabel='MSE',
            yscale='log')
  left.legend()
  right.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.plot) or '.', exist_ok=True)
  fig.savefig(args.plot, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/meta_loto')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--arch', default='hard')
  parser.add_argument('--hidden', type=lambda s: tuple(int(v) for v in s.split(',')),
                      default=(40, 40))
  parser.add_argument('--tasks', type=int, default=6)
  parser.add_argument('--theta_max_deg', type=float, default=300.0)
  parser.add_argument('--shots', type=int, default=10)
  parser.add_argument('--inner_steps', type=int, default=5)
  parser.add_argument('--inner_lr', type=float, default=0.01)
  parser.add_argument('--eval_lrs', type=lambda s: tuple(float(v) for v in s.split(',')),
                      default=(0.001, 0.003, 0.01, 0.03, 0.1))
  parser.add_argument('--regime', default='paper')
  parser.add_argument('--folds', default='', help='comma-separated held-out tasks (default all)')
  parser.add_argument('--plot', default='')
  parser.add_argument('--replot', action='store_true',
                      help='only redraw the tables and the plot from <out>/results.json')
  args = parser.parse_args()
  if args.replot:
    with open(os.path.join(args.out, 'results.json')) as f:
      saved = json.load(f)
    for key in ('eval_lrs', 'folds', 'seeds', 'steps', 'arch', 'tasks', 'theta_max_deg',
                'shots', 'inner_steps', 'inner_lr', 'regime'):
      setattr(args, key, saved['settings'][key])
    args.eval_lrs = tuple(args.eval_lrs)
    print(write_report(args, saved['results'], np.asarray(saved['angles']),
                       saved.get('seconds', float('nan'))))
    if args.plot:
      plot(args, saved['results'], np.asarray(saved['angles']))
    return
  if args.inner_lr not in args.eval_lrs:
    args.eval_lrs = tuple(sorted(args.eval_lrs + (args.inner_lr,)))
  os.makedirs(args.out, exist_ok=True)
  angles = np.radians(args.theta_max_deg) * np.arange(args.tasks) / (args.tasks - 1)
  folds = [int(f) for f in args.folds.split(',')] if args.folds else range(args.tasks)
  target_model = build(args.arch, TARGET, args.hidden)
  curves_fn = common.make_curves(meta.model_loss(target_model, TARGET), EVAL_STEPS)
  start, results = time.perf_counter(), []
  log = lambda msg: print(msg, flush=True)
  for seed in range(args.seeds):
    fam = family(seed, args.regime)
    check_labels_match_the_data_module(fam)
    sample = make_sampler(fam)
    for fold in folds:
      key = jax.random.fold_in(jax.random.PRNGKey(seed), fold)
      train_angles = jnp.asarray(np.delete(angles, fold), jnp.float32)
      log(f'seed {seed} fold {fold} (held out θ = {np.degrees(angles[fold]):.0f}°)')
      maml_params, maml_hist, maml_s = train_maml(args, sample, train_angles,
                                                  jax.random.fold_in(key, 0))
      pre_params, pre_hist, pre_s = train_pretrained(args, sample, train_angles,
                                                     jax.random.fold_in(key, 1))
      random_params = target_model.init(jax.random.fold_in(key, 2),
                                        jnp.zeros((1, mmoe_synthetic.D)))['params']
      ev = evaluate(args, sample, float(angles[fold]), jax.random.fold_in(key, 3),
                    {'maml': maml_params, 'pretrained': pre_params, 'random': random_params},
                    curves_fn)
      ev = {m: {s: {str(lr): c for lr, c in v.items()} for s, v in e.items()}
            for m, e in ev.items()}
      results.append({'seed': seed, 'fold': fold, 'eval': ev,
                      'seconds': {'maml': maml_s, 'pretrained': pre_s},
                      'history': {'maml': maml_hist, 'pretrained': pre_hist}})
      log('  ' + ', '.join(
          f'{m} {chosen(ev[m], k, args.eval_lrs)[0]:.3f}' for m in ev
          for k in (args.inner_steps,)) + f'  (after {args.inner_steps} steps; train '
          f'{maml_s:.0f} s / {pre_s:.0f} s)')
  seconds = time.perf_counter() - start
  args.folds = list(folds)
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'settings': vars(args), 'angles': angles.tolist(), 'results': results,
               'seconds': seconds}, f)
  print(write_report(args, results, angles, seconds))
  if args.plot:
    plot(args, results, angles)
  print(f'total {seconds:.0f} s')


if __name__ == '__main__':
  main()
