"""MAML's sinusoid regression (Finn et al. 2017, §5.1): meta-learning vs pre-training vs scratch.

A task is y = A sin(x − b) with amplitude A ~ U[0.1, 5], phase b ~ U[0, π], inputs x ~ U[−5, 5]
(a family generated on the fly: every meta-step draws fresh tasks). The model is the paper's MLP
(two hidden layers of 40, ReLU), built through the models registry as a `hard` network with one
regression head. Methods, each trained for K-shot tasks (K support + K query points per task):

* `maml`: second-order MAML, 1 inner SGD step of α = 0.01, meta-batch 25, Adam(1e-3) outside;
* `fomaml`: the same, first order;
* `reptile`: Reptile with 5 inner SGD steps of α = 0.01 on the task's 2K points, Adam(1e-3) on
  its direction (the paper's sine setting uses inner Adam and more steps; ours is the plain form);
* `pretrained`: joint training on the pooled tasks (the paper's "pretrained" baseline: MAML with
  0 inner steps, i.e. the mean loss of the 2K points of each of the 25 tasks at θ);
* `random`: the untrained initialisation.

Evaluation: 1,000 new tasks (never trained on), each with K support points and 100 query points;
from each method's parameters, SGD with α = 0.01 on the support points (the same fine-tuning for
every method), query MSE after 0..10 steps. A second table picks each method's fine-tuning step
size from {0.001, 0.003, 0.01, 0.02, 0.05, 0.1} on 1,000 separate validation tasks (the paper
tuned the pretrained baseline's step size), then reports the test tasks.

    python -m experiments.meta.sinusoid --out runs/meta_sinusoid --seeds 3 --steps 10000 \
        --plot docs/img/meta_sinusoid.png

Writes `<out>/results.md` (tables), `<out>/results.json` (every number) and the plot.
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
from mtl_jax.tasks import Task

TASKS = (Task('y', 'regression'),)
METHODS = ('maml', 'fomaml', 'reptile', 'pretrained', 'random')
INNER_LR = 0.01
META_BATCH = 25
EVAL_TASKS = 1000
QUERY_POINTS = 100
EVAL_STEPS = 10
LR_GRID = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1)
REPTILE_STEPS = 5


def build_model():
  return models.build('hard', TASKS, models.inputs.Identity(), 'mlp',
                      {'hidden_sizes': (40, 40)})


def sample_tasks(key, num_tasks: int, sizes):
  """Per size n in `sizes`, a batch {'inputs' [T, n, 1], 'labels': {'y': [T, n]}} of the same T
  tasks (amplitude, phase), and the tasks' (amplitude, phase)."""
  amp_key, phase_key, *x_keys = jax.random.split(key, 2 + len(sizes))
  amplitude = jax.random.uniform(amp_key, (num_tasks, 1), minval=0.1, maxval=5.0)
  phase = jax.random.uniform(phase_key, (num_tasks, 1), minval=0.0, maxval=jnp.pi)
  batches = []
  for x_key, n in zip(x_keys, sizes):
    x = jax.random.uniform(x_key, (num_tasks, n), minval=-5.0, maxval=5.0)
    batches.append({'inputs': x[..., None], 'labels': {'y': amplitude * jnp.sin(x - phase)}})
  return batches, (amplitude[:, 0], phase[:, 0])


def concat(a, b):
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)


def meta_train(method: str, k_shot: int, seed: int, num_steps: int, log):
  model = build_model()
  loss_fn = meta.model_loss(model, TASKS)
  key = jax.random.PRNGKey(seed)
  init_key, train_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1, 1)))['params']
  if method == 'random':
    return params, [], 0.0
  optimizer = optax.adam(1e-3)
  if method in ('maml', 'fomaml'):
    step = meta.make_maml_step(loss_fn, optimizer, INNER_LR, 1, first_order=method == 'fomaml')
    sample = lambda k: sample_tasks(k, META_BATCH, (k_shot, k_shot))[0]
  elif method == 'pretrained':
    step = meta.make_maml_step(loss_fn, optimizer, INNER_LR, 0)
    sample = lambda k: (lambda s, q: (s, concat(s, q)))(*sample_tasks(k, META_BATCH,
                                                                      (k_shot, k_shot))[0])
  elif method == 'reptile':
    step = meta.make_reptile_step(loss_fn, optimizer, INNER_LR, REPTILE_STEPS)
    sample = lambda k: (concat(*sample_tasks(k, META_BATCH, (k_shot, k_shot))[0]),)
  else:
    raise ValueError(method)
  return common.train(step, sample, params, optimizer, train_key, num_steps, log=log)


_CURVES = common.make_curves(meta.model_loss(build_model(), TASKS), EVAL_STEPS)


def evaluate(params, k_shot: int, seed: int):
  """{'val' / 'test': {lr: [steps + 1] query MSE, mean over the split's tasks}}."""
  out = {}
  for split, offset in (('val', 1), ('test', 2)):
    (support, query), _ = sample_tasks(jax.random.PRNGKey(10_000 * offset + seed), EVAL_TASKS,
                                       (k_shot, QUERY_POINTS))
    out[split] = {lr: np.asarray(_CURVES(params, support, query, lr)).mean(0)
                  for lr in LR_GRID}
  return out


def example_fits(params_by_method, k_shot: int, seed: int):
  """One test task: the true curve, its support points, each method's fit after 1 and 10 steps."""
  model = build_model()
  loss_fn = meta.model_loss(model, TASKS)
  (support,), (amplitude, phase) = sample_tasks(jax.random.PRNGKey(777 + seed), 1, (k_shot,))
  support = jax.tree.map(lambda x: x[0], support)
  grid = jnp.linspace(-5, 5, 200)[:, None]
  fits = {}
  for method, params in params_by_method.items():
    fits[method] = {}
    for steps in (0, 1, 10):
      adapted = meta.adapt(loss_fn, params, support, INNER_LR, steps)
      fits[method][steps] = np.asarray(model.apply({'params': adapted}, grid)['y'])
  return {'x': np.asarray(grid[:, 0]), 'truth': np.asarray(amplitude[0] * jnp.sin(grid[:, 0] -
                                                                                   phase[0])),
          'support_x': np.asarray(support['inputs'][:, 0]),
          'support_y': np.asarray(support['labels']['y']), 'fits': fits}


def write_report(results, args, out):
  lines = ['# Sinusoid regression (Finn et al. 2017 §5.1)', '',
           f'Command: `python -m experiments.meta.sinusoid --out {args.out} --seeds {args.seeds} '
           f'--steps {args.steps}{" --plot " + args.plot if args.plot else ""}`', '',
           f'{args.steps} meta-steps of {META_BATCH} tasks per method and K; seeds '
           f'0..{args.seeds - 1} (initialisation, training tasks and evaluation tasks); '
           f'{EVAL_TASKS} test tasks per seed, {QUERY_POINTS} query points each. '
           'Query MSE, mean ± std over seeds of the mean over test tasks.', '']
  for k_shot in args.shots:
    lines += [f'## K = {k_shot}, fine-tuning SGD α = {INNER_LR} (the same for every method)', '',
              '| method | 0 steps | 1 step | 10 steps | train s |', '|---|---|---|---|---|']
    for method in results[str(k_shot)]:
      runs = results[str(k_shot)][method]
      curve = np.array([r['test'][str(INNER_LR)] for r in runs])
      lines.append(f'| {method} | {common.mean_std(curve[:, 0])} | '
                   f'{common.mean_std(curve[:, 1])} | {common.mean_std(curve[:, 10])} | '
                   f'{np.mean([r["seconds"] for r in runs]):.0f} |')
    lines += ['', f'## K = {k_shot}, fine-tuning α chosen per method and step count on '
              'validation tasks from ' + ', '.join(map(str, LR_GRID)), '',
              '| method | 1 step | (α) | 10 steps | (α) |', '|---|---|---|---|---|']
    for method in results[str(k_shot)]:
      runs = results[str(k_shot)][method]
      cells = []
      for steps in (1, 10):
        chosen = [min(LR_GRID, key=lambda lr: r['val'][str(lr)][steps]) for r in runs]
        test = [r['test'][str(lr)][steps] for r, lr in zip(runs, chosen)]
        cells += [common.mean_std(test), '/'.join(str(lr) for lr in chosen)]
      lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  with open(os.path.join(out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return '\n'.join(lines)


def plot(results, fits, args):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  shots = args.shots
  fig, axes = plt.subplots(1, len(shots) + 2, figsize=(5 * (len(shots) + 2), 4))
  for ax, k_shot in zip(axes, shots):
    for method in results[str(k_shot)]:
      runs = results[str(k_shot)][method]
      # Each step count at the step size chosen on validation tasks (table 2): at α = 0.01 the
      # pretrained and random networks diverge on some tasks, which would hide the rest.
      curve = np.array([[r['test'][str(min(LR_GRID, key=lambda lr: r['val'][str(lr)][k]))][k]
                         for k in range(EVAL_STEPS + 1)] for r in runs])
      # A mean over tasks that diverged on some seed is left out of the line (a gap), and the
      # legend says so; the tables give the counts.
      bad = ~np.all(np.isfinite(curve) & (curve < 1e3), axis=0)
      mean = np.where(bad, np.nan, curve.mean(0))
      std = np.where(bad, np.nan, curve.std(0))
      steps = np.arange(curve.shape[1])
      label = method + (f' (diverged from step {int(np.argmax(bad))} on some seed)'
                        if bad.any() else '')
      ax.plot(steps, mean, marker='o', ms=3, label=label)
      ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set(title=f'K = {k_shot}: test-task query MSE', xlabel='SGD steps (α chosen on '
           'validation tasks)', ylabel='MSE', yscale='log')
    ax.legend(fontsize=8)
  for ax, steps in zip(axes[len(shots):], (1, 10)):
    ax.plot(fits['x'], fits['truth'], 'k-', lw=2, label='true task')
    ax.plot(fits['support_x'], fits['support_y'], 'k^', ms=8, label=f'{len(fits["support_x"])} '
            'support points')
    for method in [m for m in ('maml', 'pretrained', 'random') if m in fits['fits']]:
      ax.plot(fits['x'], fits['fits'][method][str(steps)], label=f'{method}, {steps} step(s)')
    ax.set(title=f'one test task, K = {len(fits["support_x"])}, after {steps} step(s)',
           xlabel='x', ylim=(-6, 6))
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.plot) or '.', exist_ok=True)
  fig.savefig(args.plot, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/meta_sinusoid')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10000)
  parser.add_argument('--shots', type=lambda s: [int(v) for v in s.split(',')], default=[5, 10])
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--plot', default='')
  parser.add_argument('--replot', action='store_true',
                      help='only redraw the tables and the plot from <out>/results.json')
  args = parser.parse_args()
  if args.replot:
    with open(os.path.join(args.out, 'results.json')) as f:
      saved = json.load(f)
    print(write_report(saved['results'], args, args.out))
    plot(saved['results'], saved['fits'], args)
    return
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  results, fit_params = {}, {}
  log = lambda msg: print(msg, flush=True)
  for k_shot in args.shots:
    results[str(k_shot)] = {}
    for method in args.methods.split(','):
      runs = []
      for seed in range(args.seeds):
        log(f'K={k_shot} {method} seed {seed}')
        params, history, seconds = meta_train(method, k_shot, seed, args.steps, log)
        ev = evaluate(params, k_shot, seed)
        runs.append({'seed': seed, 'seconds': seconds, 'history': history,
                     **{split: {str(lr): c.tolist() for lr, c in ev[split].items()}
                        for split in ('val', 'test')}})
        log(f'  test MSE after 0/1/10 steps: ' + ' / '.join(
            f'{ev["test"][INNER_LR][s]:.3f}' for s in (0, 1, 10)) + f'  ({seconds:.0f} s)')
        if k_shot == max(args.shots) and seed == 0:
          fit_params[method] = params
      results[str(k_shot)][method] = runs
  fits = example_fits(fit_params, max(args.shots), 0)
  fits = jax.tree.map(lambda v: np.asarray(v).tolist(), fits)
  fits['fits'] = {m: {str(k): v for k, v in f.items()} for m, f in fits['fits'].items()}
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'settings': vars(args), 'results': results, 'fits': fits}, f)
  print(write_report(results, args, args.out))
  if args.plot:
    plot(results, fits, args)
  print(f'total {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
  main()
