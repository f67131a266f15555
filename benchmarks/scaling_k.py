"""Step time against the number of tasks K, side by side: hard sharing and soft sharing.

    nice -n 5 python benchmarks/scaling_k.py     # K = 2..64: 20 min on 2 cores at load 5-16, mostly compiling
    python benchmarks/scaling_k.py --ks 2,8 --rounds 3            # quick
    python benchmarks/scaling_k.py --dtype bfloat16               # e.g. on a GPU

For every K, the real train step (`mtl_jax.train.step.make_train_step` under
`mtl_jax.train.sharding.jit_train_step`, Adam, batch of random data) of:

* `hard ew`: a hard-shared MLP trunk (64 -> 256 -> 256) with K binary heads, equal weighting in
  "weighted" mode (one backward pass of the summed loss). The denominator of every ratio.
* `hard <method> rep` / `hard <method> jacobian`: the same model with a Gramian method (`--methods`,
  default MGDA): per-task gradients at the trunk's output, or of the trunk's parameters. On CPU the
  "jacobian" mode unrolls the K backward passes up to K = 16 and vmaps them beyond (the step's
  `per_task_gradients='auto'`), so its curve has a seam between K = 16 and K = 32.
* `soft ew (vmap)`: soft sharing, one such MLP tower per task, the towers' stacked parameters run
  with `jax.vmap` as `mtl_jax.models.soft` does.
* `soft ew (loop)`: the same model, the same stacked parameters, but the K towers applied one after
  the other in a Python for-loop inside the jitted step (`LoopedTowers` below): what one writes
  without vmap, K copies of the tower in one program.

All configurations of one K are compiled first, then timed in rounds: each round runs every
configuration for about `--round_ms` of steps, in a fresh random order, so that machine noise hits
all alike; the table shows the median ms/step and the ratio to `hard ew` at the same K. The
figure (ms/step and ratio against K) goes to `--plot`.
"""

import argparse
import dataclasses
import datetime
import os
import json
import platform
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models
from mtl_jax.models import base
from mtl_jax.models import soft
from mtl_jax.optim import registry
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import methods as methods_bench  # pylint: disable=wrong-import-position

LEARNING_RATE = 1e-3
BASELINE = 'hard ew'
SOFT_VMAP = 'soft ew (vmap)'
SOFT_LOOP = 'soft ew (loop)'


@dataclasses.dataclass(frozen=True)
class LoopedTowers(soft.SoftSharing):
  """Soft sharing with the towers applied in a Python loop instead of `jax.vmap`.

  Same parameters (stacked along the task axis), same per-tower dropout keys, same outputs as
  `SoftSharing`: only how the K towers become a program differs, which is what is measured.
  """

  def towers(self, variables, inputs, *, train=False, rngs=None, mutable=False):
    tower_vars = base.subtree(variables, 'towers')
    num_tasks = len(self.task_names)
    per_tower_rngs = None
    if rngs:
      per_tower_rngs = {name: jax.random.split(jax.random.fold_in(key, 0), num_tasks)
                        for name, key in rngs.items()}
    features, updates = [], []
    for k in range(num_tasks):
      v = jax.tree.map(lambda x, k=k: x[k], tower_vars)
      r = None if per_tower_rngs is None else {n: keys[k] for n, keys in per_tower_rngs.items()}
      f, u = base.call(self.tower, v, inputs, train=train, rngs=r, mutable=mutable)
      features.append(f)
      updates.append(u)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *updates) if updates[0] else {}
    return jnp.stack(features), (base.nest({('towers',): stacked}) if stacked else {})


def make_batch(tasks, batch_size, input_dim, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return {'inputs': rng.normal(size=(batch_size, input_dim)).astype(dtype),
          'labels': {t.name: rng.integers(0, 2, batch_size).astype(np.int32) for t in tasks},
          'label_mask': {t.name: np.ones(batch_size, bool) for t in tasks}}


def cast_floats(tree, dtype):
  """Every floating leaf in `dtype` (for --dtype bfloat16: parameters and optimiser state)."""
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def step_config(name, model, tasks, method, mode, mesh, batch, example, dtype):
  """One configuration for `methods_bench.time_configs`: the real step, compiled ahead of time."""
  tx = optax.adam(LEARNING_RATE)
  step = sharding.jit_train_step(step_lib.make_train_step(model, tasks, method, tx, mode), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  state = state.replace(params=cast_floats(state.params, dtype),
                        opt_state=cast_floats(state.opt_state, dtype))
  # A copy of every leaf: a method's initial state may hold arrays shared with another
  # configuration's, and the step donates its state.
  holder = {'state': sharding.put_replicated(jax.tree.map(jnp.copy, state), mesh)}

  def compile_fn():
    holder['step'] = step.lower(holder['state'], batch).compile()

  def run(n):
    state, compiled = holder['state'], holder['step']
    for _ in range(n):
      state, metrics = compiled(state, batch)
      holder.setdefault('first_losses', metrics['losses'])
    jax.block_until_ready(state)
    holder['state'] = state

  config = methods_bench.Config(name, compile_fn, run)
  config.holder = holder
  return config


def build_configs(num_tasks, args, method_names, mesh, log):
  tasks = tuple(Task(f't{k}', 'binary') for k in range(num_tasks))
  hidden = tuple(int(h) for h in args.hidden.split(','))
  batch = make_batch(tasks, args.batch_size, args.input_dim, args.dtype)
  example = jax.tree.map(lambda x: x[:2], batch['inputs'])
  device_batch = sharding.put_batch(batch, mesh)
  encoder_kwargs = {'hidden_sizes': hidden}
  hard = models.build('hard', tasks, models.inputs.Identity(), 'mlp', encoder_kwargs)
  vmapped = models.build('soft', tasks, models.inputs.Identity(), 'mlp', encoder_kwargs)
  looped = LoopedTowers(task_names=vmapped.task_names, tower=vmapped.tower, heads=vmapped.heads)
  ew = registry.get('ew', num_tasks)
  common = (mesh, device_batch, example, args.dtype)
  configs = [step_config(BASELINE, hard, tasks, ew, 'weighted', *common)]
  for name in method_names:
    method = registry.get(name, num_tasks)
    for mode in ('rep', 'jacobian'):
      configs.append(step_config(f'hard {name} {mode}', hard, tasks, method, mode, *common))
  configs.append(step_config(SOFT_VMAP, vmapped, tasks, ew, 'weighted', *common))
  configs.append(step_config(SOFT_LOOP, looped, tasks, ew, 'weighted', *common))
  params = hard.init(jax.random.PRNGKey(0), example)['params']
  soft_params = vmapped.init(jax.random.PRNGKey(0), example)['params']
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # pylint: disable=unnecessary-lambda-assignment
  log(f'K={num_tasks}: hard {count(params):,} parameters '
      f'({count(step_lib.shared_params(hard, params)):,} shared), soft {count(soft_params):,}; '
      f'{len(configs)} configurations')
  return configs


def check_soft_equal(configs, log):
  """The loop-of-towers baseline computes what the vmapped towers do: same first-step losses."""
  by_name = {c.name: c for c in configs if not c.error}
  if SOFT_VMAP in by_name and SOFT_LOOP in by_name:
    a, b = (np.asarray(by_name[n].holder['first_losses'], np.float32)
            for n in (SOFT_VMAP, SOFT_LOOP))
    if not np.allclose(a, b, rtol=1e-2, atol=1e-3):
      raise SystemExit(f'soft loop and vmap disagree: {a} vs {b}')
    log(f'  soft loop == soft vmap (losses agree to {np.max(np.abs(a - b)):.1e})')


def table(results, names, ks):
  lines = ['| configuration |' + ''.join(f' K={k} ms | ratio |' for k in ks),
           '|---|' + '---:|---:|' * len(ks)]
  for name in names:
    cells = []
    for k in ks:
      ms, base_ms = results[k].get(name), results[k].get(BASELINE)
      cells.append(' fails | |' if ms is None else
                   f' {ms:.1f} | {ms / base_ms:.2f} |' if base_ms else f' {ms:.1f} | |')
    label = f'**{name} (baseline)**' if name == BASELINE else name
    lines.append(f'| {label} |' + ''.join(cells))
  cells = []
  for k in ks:
    loop, vmap = results[k].get(SOFT_LOOP), results[k].get(SOFT_VMAP)
    cells.append(f' | {loop / vmap:.2f} |' if loop and vmap else ' | |')
  lines.append('| soft loop / soft vmap |' + ''.join(cells))
  return '\n'.join(lines)


def plot(results, names, ks, path, title):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name in names:
    points = [(k, results[k][name], results[k][name] / results[k][BASELINE]) for k in ks
              if name in results[k] and BASELINE in results[k]]
    if not points:
      continue
    x, ms, ratio = zip(*points)
    style = {'linestyle': '--'} if name.startswith('soft') else {}
    left.plot(x, ms, marker='o', label=name, **style)
    right.plot(x, ratio, marker='o', label=name, **style)
  for ax in (left, right):
    ax.set_xscale('log', base=2)
    ax.set_yscale('log')
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel('number of tasks K')
    ax.grid(True, which='both', alpha=0.3)
  left.set_ylabel('ms / step (median of rounds)')
  right.set_ylabel(f'ratio to {BASELINE} at the same K')
  right.legend(fontsize=8)
  fig.suptitle(textwrap.fill(title, 160), fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ks', default='2,4,8,16,32,64')
  parser.add_argument('--methods', default='mgda', help='Gramian methods, comma-separated')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--round_ms', type=float, default=120.0,
                      help='target work per configuration per round (1 to 50 steps)')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--input_dim', type=int, default=64)
  parser.add_argument('--hidden', default='256,256', help='the MLP trunk / tower')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='inputs, parameters and optimiser state')
  parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                      help='threads compiling at once (timing is always one at a time)')
  parser.add_argument('--plot', default='docs/img/scaling_k.png', help='"" for none')
  args = parser.parse_args(argv)
  args.dtype = jnp.dtype(args.dtype)

  ks = [int(k) for k in args.ks.split(',') if k]
  method_names = [n for n in args.methods.split(',') if n]
  names = [BASELINE] + [f'hard {n} {m}' for n in method_names for m in ('rep', 'jacobian')] + [
      SOFT_VMAP, SOFT_LOOP]
  log = lambda *a: print(*a, file=sys.stderr, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  mesh = sharding.make_mesh()
  device = f'{jax.devices()[0].device_kind} x{len(jax.devices())}'
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  log(f'device: {device} ({jax.default_backend()}; host {cpu}, {os.cpu_count()} cores)')
  started, cpu_started = time.perf_counter(), time.process_time()
  results = {}
  for k in ks:
    configs = build_configs(k, args, method_names, mesh, log)
    results[k] = methods_bench.time_configs(configs, args.rounds, args.round_ms, args.jobs, log)
    check_soft_equal(configs, log)
  seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
  summary = (f'date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: '
             f'{device} (host {cpu}, {os.cpu_count()} cores); jax {jax.__version__}; '
             f'{args.dtype.name}; batch {args.batch_size}; MLP {args.input_dim}->'
             f'{args.hidden.replace(",", "->")}; Adam; {args.rounds} rounds; whole run '
             f'{seconds:.0f} s wall, {cpu_s:.0f} s CPU')
  print(summary)
  print()
  print(table(results, names, ks))
  if args.plot:
    plot(results, names, ks, args.plot, summary)
    print(f'\nplot: {args.plot}')
  print('\nraw: ' + json.dumps({'summary': summary, 'names': names, 'results': results}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
