"""Peak memory of the "jacobian" gradient mode against K, with and without task chunking.

    nice -n 5 python benchmarks/jacobian_memory.py   # K = 2..64: 15 min on 2 cores at load 7-11
    python benchmarks/jacobian_memory.py --ks 8,40 --real_ks 40 --time_ks ''   # quick
    python benchmarks/jacobian_memory.py --dtype bfloat16          # e.g. on a GPU

The model is built so that the K simultaneous vector-Jacobian products dominate: a hard-shared
trunk of one wide layer (32 -> 1024, 33,792 shared parameters) at a large batch (8,192), K binary
heads, MGDA in "jacobian" mode, Adam. Each VJP through the trunk carries a [batch, 1024] cotangent
(32 MiB per task in float32), while the K x P Jacobian it produces is only K x 0.13 MiB. (A trunk
whose K x P Jacobian dominates instead, e.g. `--input_dim 256 --hidden 1024,512,256 --batch_size
256`, gains little from chunking: the Jacobian is the step's output and is held whole either way.)
For every K and every way of computing the K VJPs (`make_train_step(..., jacobian_chunk_size,
per_task_gradients)`), where it compiles a program of its own ("= auto" in the table otherwise):

* `unchunked (auto)`: the default (on CPU: K backward passes unrolled in one program up to K = 16,
  vmapped beyond; on GPU/TPU: vmapped);
* `unchunked (vmap)`: all K VJPs vmapped at once (what the default does on GPU/TPU, at every K);
* `chunk=C`: `lax.map` over chunks of C tasks, each chunk's VJPs vmapped.

Two measurements:

1. **Compiled**: the real train step (`sharding.jit_train_step`) lowered for the state's and batch's
   shapes and compiled; `memory_analysis()` gives the program's argument, output, aliased (donated
   state reused for the output) and temporary buffer sizes. Peak = argument + output - alias +
   temp: what XLA's buffer assignment needs at once (on CPU the temp figure is one allocation per
   run). No step runs.
2. **Real run** (`--real_ks`): a subprocess builds the state and batch, compiles, resets its peak
   RSS (`/proc/self/clear_refs`), runs one step, and reports the growth of its peak resident set
   (VmHWM minus VmRSS before the step: what the step itself touched); then `--child_steps` more
   steps for a per-step time. `--enforce_ks`: one more subprocess per configuration caps its address
   space at its size before the step plus `--budget_mib` (`resource.setrlimit(RLIMIT_AS)`) and
   reports whether the step completes.

The step-time cost of chunking (`--time_ks`) is measured in this process, side by side: the
configurations of one K in alternating rounds (fresh random order), median ms/step.

`--fix_prototype K` instead compiles, outside the train step, three ways to get the combined
gradient (J stored as now; the combination as one more VJP; the Gramian over pairs of task
chunks) and prints their temp memory: what a step could do where the K x P Jacobian is what does
not fit. E.g. `--fix_prototype 40 --input_dim 256 --hidden 1024,512,256 --batch_size 256`.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models
from mtl_jax.optim import base as optim_base
from mtl_jax.optim import registry
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

LEARNING_RATE = 1e-3
MIB = 2 ** 20


def configurations(chunks, backend):
  """(label, jacobian_chunk_size, per_task_gradients); the vmapped row only where auto differs."""
  out = [('unchunked (auto)', 0, 'auto')]
  if backend == 'cpu':
    out.append(('unchunked (vmap)', 0, 'vmap'))
  out += [(f'chunk={c}', c, 'auto') for c in chunks]
  return out


def distinct(num_tasks, config):
  """Whether `config` compiles a program of its own at this K (not the unchunked default's)."""
  _, chunk, per_task = config
  if chunk >= num_tasks:
    return False  # the step ignores a chunk of K or more
  return not (per_task == 'vmap' and jax.default_backend() == 'cpu' and num_tasks > 16)


def problem(num_tasks, args):
  """The model, the method, the optimiser and a batch of random data (NumPy)."""
  tasks = tuple(Task(f't{k}', 'binary') for k in range(num_tasks))
  hidden = tuple(int(h) for h in args.hidden.split(','))
  model = models.build('hard', tasks, models.inputs.Identity(), 'mlp', {'hidden_sizes': hidden})
  rng = np.random.default_rng(0)
  batch = {'inputs': rng.normal(size=(args.batch_size, args.input_dim)).astype(args.dtype),
           'labels': {t.name: rng.integers(0, 2, args.batch_size).astype(np.int32)
                      for t in tasks},
           'label_mask': {t.name: np.ones(args.batch_size, bool) for t in tasks}}
  return tasks, model, registry.get(args.method, num_tasks), optax.adam(LEARNING_RATE), batch


def cast_floats(tree, dtype):
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def make_state(model, method, tx, batch, dtype):
  example = jax.tree.map(lambda x: x[:2], batch['inputs'])
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  return state.replace(params=cast_floats(state.params, dtype),
                       opt_state=cast_floats(state.opt_state, dtype))


def jitted_step(num_tasks, args, chunk, per_task, mesh):
  tasks, model, method, tx, batch = problem(num_tasks, args)
  step = sharding.jit_train_step(
      step_lib.make_train_step(model, tasks, method, tx, 'jacobian', jacobian_chunk_size=chunk,
                               per_task_gradients=per_task), mesh)
  return step, model, method, tx, batch


def compiled_memory(num_tasks, args, chunk, per_task, mesh):
  """`memory_analysis()` of the compiled step, from shapes alone (no state is materialised)."""
  step, model, method, tx, batch = jitted_step(num_tasks, args, chunk, per_task, mesh)
  state = jax.eval_shape(lambda: make_state(model, method, tx, batch, args.dtype))
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  start = time.perf_counter()
  stats = step.lower(state, shapes).compile().memory_analysis()
  seconds = time.perf_counter() - start
  out = {name: getattr(stats, f'{name}_size_in_bytes')
         for name in ('argument', 'output', 'alias', 'temp')}
  out['peak'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  out['compile_s'] = seconds
  return out


def proc_status(field):
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise KeyError(field)


def child(args):
  """One real step in this (fresh) process; prints one JSON line."""
  mesh = sharding.make_mesh()
  step, model, method, tx, batch = jitted_step(args.child_k, args, args.child_chunk,
                                               args.child_per_task, mesh)
  state = sharding.put_replicated(make_state(model, method, tx, batch, args.dtype), mesh)
  batch = sharding.put_batch(batch, mesh)
  compiled = step.lower(state, batch).compile()
  jax.block_until_ready((state, batch))
  result = {}
  if args.child_limit_mib:
    # Address space rather than RSS: the kernel enforces it at allocation, so an over-budget
    # step fails there instead of being measured after the fact.
    limit = proc_status('VmSize') + args.child_limit_mib * MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM to the current RSS
  before = proc_status('VmRSS')
  start = time.perf_counter()
  try:
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  except Exception as e:  # pylint: disable=broad-except
    result['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}'
    print(json.dumps(result), flush=True)
    return 0
  result['first_step_s'] = time.perf_counter() - start
  result['rss_before'] = before
  result['hwm'] = proc_status('VmHWM')
  result['delta'] = result['hwm'] - before
  result['finite'] = bool(metrics['finite'])
  times = []
  for _ in range(args.child_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  result['step_ms'] = 1e3 * statistics.median(times) if times else None
  print(json.dumps(result), flush=True)
  return 0


def run_child(args, num_tasks, chunk, per_task, limit_mib=0):
  cmd = [sys.executable, os.path.abspath(__file__), '--child_k', str(num_tasks), '--child_chunk',
         str(chunk), '--child_per_task', per_task, '--child_limit_mib', str(limit_mib),
         '--child_steps', str(0 if limit_mib else args.child_steps), '--batch_size',
         str(args.batch_size), '--input_dim', str(args.input_dim), '--hidden', args.hidden,
         '--method', args.method, '--dtype', jnp.dtype(args.dtype).name]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ['?'])[-1][:160]
    return {'error': f'exit {proc.returncode}: {tail}'}
  return json.loads(lines[-1])


def time_side_by_side(num_tasks, args, configs, mesh, log):
  """ms/step of each configuration at one K, alternating rounds, median."""
  runs = {}
  for label, chunk, per_task in configs:
    step, model, method, tx, batch = jitted_step(num_tasks, args, chunk, per_task, mesh)
    state = sharding.put_replicated(make_state(model, method, tx, batch, args.dtype), mesh)
    batch = sharding.put_batch(batch, mesh)
    compiled = step.lower(state, batch).compile()
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    runs[label] = {'step': compiled, 'state': state, 'batch': batch, 'times': []}
  rng = random.Random(0)
  for r in range(args.time_rounds):
    for label in rng.sample(list(runs), len(runs)):
      run = runs[label]
      start = time.perf_counter()
      run['state'], _ = run['step'](run['state'], run['batch'])
      jax.block_until_ready(run['state'])
      run['times'].append(time.perf_counter() - start)
    log(f'  K={num_tasks} timing round {r + 1}/{args.time_rounds}')
  return {label: 1e3 * statistics.median(run['times']) for label, run in runs.items()}


def fix_prototype(num_tasks, args):
  """Compiled temp memory of the per-task gradients and their MGDA-style combination, three ways.

  Outside the train step, to show what the step could do where the K x P Jacobian itself does
  not fit: (a) J stored and combined by `tensordot(w, J)` (what the step does); (b) J stored for
  the Gramian only, the combination as one more VJP with cotangent w; (c) the Gramian accumulated
  over pairs of task chunks (J_a kept, J_b recomputed), then the VJP with w: no K x P array.
  """
  tasks, model, _, _, batch = problem(num_tasks, args)
  batch = jax.tree.map(jnp.asarray, batch)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch['inputs'][:2]))['params']
  shared, rest = params['shared'], {k: v for k, v in params.items() if k != 'shared'}
  chunk = args.prototype_chunk
  if num_tasks % chunk:
    raise SystemExit(f'--prototype_chunk {chunk} must divide K={num_tasks}')

  def weights(gram):  # any function of G stands in for the method
    return jax.nn.softmax(-jnp.diag(gram) / (jnp.trace(gram) + 1e-9))

  def vjp_of(shared, rest, batch):
    def losses(s):
      outputs = model.apply({'params': {**rest, 'shared': s}}, batch['inputs'])
      return step_lib.task_losses(tasks, outputs, batch)
    return jax.vjp(losses, shared)[1]

  def stored(shared, rest, batch, by_vjp):
    vjp = vjp_of(shared, rest, batch)
    (jac,) = jax.vmap(vjp)(jnp.eye(num_tasks))
    w = jax.lax.stop_gradient(weights(optim_base.gramian(jac)))
    return vjp(w)[0] if by_vjp else optim_base.combine(w, jac)

  def chunk_pairs(shared, rest, batch):
    vjp = vjp_of(shared, rest, batch)
    n = num_tasks // chunk
    basis = jnp.eye(num_tasks).reshape(n, chunk, num_tasks)

    def chunk_jac(e):
      (j,) = jax.vmap(vjp)(e)
      return jnp.concatenate([x.reshape(chunk, -1) for x in jax.tree.leaves(j)], axis=1)

    def row(ea):
      ja = chunk_jac(ea)
      return jax.lax.map(lambda eb: ja @ chunk_jac(eb).T, basis)

    gram = jax.lax.map(row, basis).transpose(0, 2, 1, 3).reshape(num_tasks, num_tasks)
    return vjp(jax.lax.stop_gradient(weights(gram)))[0]

  num_shared = sum(x.size for x in jax.tree.leaves(shared))
  print(f'K={num_tasks}, batch {args.batch_size}, MLP {args.input_dim}->'
        f'{args.hidden.replace(",", "->")} ({num_shared:,} shared parameters; K x P = '
        f'{mib(num_tasks * num_shared * 4)} MiB): compiled temp memory of the gradient part\n')
  print('| per-task gradients and combination | temp MiB |')
  print('|---|---:|')
  for label, fn in (('J stored, `tensordot(w, J)` (as the step does)',
                     lambda *a: stored(*a, by_vjp=False)),
                    ('J stored for G only, combination by `vjp(w)`',
                     lambda *a: stored(*a, by_vjp=True)),
                    (f'G over pairs of task chunks (C = {chunk}), then `vjp(w)`', chunk_pairs)):
    stats = jax.jit(fn).lower(shared, rest, batch).compile().memory_analysis()
    print(f'| {label} | {mib(stats.temp_size_in_bytes)} |', flush=True)
  return 0


def mib(x):
  return f'{x / MIB:,.0f}'


def plot(ks, labels, analysis, real, budget_mib, path, title):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(9, 5.2))
  for index, label in enumerate(labels):
    color = f'C{index}'
    points = [(k, analysis[k][label]['peak'] / MIB) for k in ks if label in analysis[k]]
    if points:
      ax.plot(*zip(*points), marker='o', color=color, label=f'{label}: compiled peak')
    measured = [(k, real[k][label]['delta'] / MIB) for k in ks
                if label in real.get(k, {}) and 'delta' in real[k][label]]
    if measured:
      ax.plot(*zip(*measured), marker='x', markersize=9, linestyle='none', color=color,
              label=f'{label}: real run, peak RSS growth')
  ax.axhline(budget_mib, color='k', linestyle=':', label=f'budget {budget_mib:,} MiB')
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xticks(ks)
  ax.set_xticklabels([str(k) for k in ks])
  ax.set_xlabel('number of tasks K')
  ax.set_ylabel('MiB')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_title(textwrap.fill(title, 130), fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=110)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ks', default='2,4,8,16,32,40,64')
  parser.add_argument('--chunks', default='4,8', help='jacobian_chunk_size values')
  parser.add_argument('--budget_mib', type=int, default=1024)
  parser.add_argument('--real_ks', default='8,40',
                      help='Ks also run for real in a subprocess (peak RSS); "" for none')
  parser.add_argument('--enforce_ks', default='40',
                      help='Ks run under an address-space cap of --budget_mib; "" for none')
  parser.add_argument('--time_ks', default='40', help='Ks whose step times are compared '
                      'side by side in this process; "" for none')
  parser.add_argument('--time_rounds', type=int, default=3)
  parser.add_argument('--child_steps', type=int, default=0,
                      help='steps timed in each real-run subprocess after the measured one')
  parser.add_argument('--batch_size', type=int, default=8192)
  parser.add_argument('--input_dim', type=int, default=32)
  parser.add_argument('--hidden', default='1024')
  parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                      help='threads compiling at once for the compiled-memory figures')
  parser.add_argument('--method', default='mgda')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--plot', default='docs/img/jacobian_memory.png', help='"" for none')
  parser.add_argument('--fix_prototype', type=int, default=0, help='only print, at this K, the '
                      'compiled memory of three ways to get the combined gradient (see '
                      '`fix_prototype`)')
  parser.add_argument('--prototype_chunk', type=int, default=4)
  parser.add_argument('--child_k', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--child_chunk', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--child_per_task', default='auto', help=argparse.SUPPRESS)
  parser.add_argument('--child_limit_mib', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.dtype = jnp.dtype(args.dtype)
  if args.child_k:
    return child(args)
  if args.fix_prototype:
    return fix_prototype(args.fix_prototype, args)

  parse = lambda s: [int(x) for x in s.split(',') if x]  # pylint: disable=unnecessary-lambda-assignment
  ks, real_ks, enforce_ks, time_ks = (parse(s) for s in (args.ks, args.real_ks, args.enforce_ks,
                                                         args.time_ks))
  log = lambda *a: print(*a, file=sys.stderr, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  mesh = sharding.make_mesh()
  configs = configurations(parse(args.chunks), jax.default_backend())
  labels = [c[0] for c in configs]
  device = f'{jax.devices()[0].device_kind} x{len(jax.devices())}'
  log(f'device: {device} ({jax.default_backend()}, {os.cpu_count()} host cores)')
  started = time.perf_counter()

  analysis, real, enforced = {k: {} for k in ks}, {}, {}

  def analyse(job):
    k, (label, chunk, per_task) = job
    analysis[k][label] = a = compiled_memory(k, args, chunk, per_task, mesh)
    log(f'K={k:>3} {label:<18} peak {mib(a["peak"]):>7} MiB (temp {mib(a["temp"])}), '
        f'compile {a["compile_s"]:.1f} s')

  # The step ignores a chunk of K or more, and on CPU vmaps above K = 16 by default: those would
  # compile the unchunked (auto) program again.
  jobs = [(k, c) for k in ks for c in configs if distinct(k, c)]
  with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
    list(pool.map(analyse, jobs))  # XLA compiles without the GIL
  for k in real_ks:
    real[k] = {}
    for label, chunk, per_task in configs:
      if not distinct(k, (label, chunk, per_task)):
        continue
      real[k][label] = run_child(args, k, chunk, per_task)
      log(f'K={k:>3} {label:<18} real run: {real[k][label]}')
  for k in enforce_ks:
    enforced[k] = {}
    for label, chunk, per_task in configs:
      if not distinct(k, (label, chunk, per_task)):
        continue
      enforced[k][label] = run_child(args, k, chunk, per_task, limit_mib=args.budget_mib)
      log(f'K={k:>3} {label:<18} under {args.budget_mib} MiB: {enforced[k][label]}')
  timing = {}
  for k in time_ks:
    timing[k] = time_side_by_side(
        k, args, [c for c in configs if distinct(k, c)], mesh, log)

  tasks, model, method, tx, batch = problem(2, args)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch['inputs'][:2]))
  shared = sum(x.size for x in jax.tree.leaves(step_lib.shared_params(model, params['params'])))
  width = max(int(h) for h in args.hidden.split(','))
  item = args.dtype.itemsize
  summary = (f'date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; device: '
             f'{device} ({os.cpu_count()} host cores); jax {jax.__version__}; {args.dtype.name}; '
             f'batch {args.batch_size}; MLP {args.input_dim}->{args.hidden.replace(",", "->")} '
             f'({shared:,} shared parameters); {args.method} "jacobian" mode; Adam; budget '
             f'{args.budget_mib:,} MiB; whole run {time.perf_counter() - started:.0f} s')
  print(summary)
  print()
  print(f'Compiled peak (argument + output - alias + temp), MiB; in brackets the real run\'s peak '
        f'RSS growth over the step. For scale: the K x P Jacobian is K x {shared * item / MIB:.2f}'
        f' MiB; one layer\'s cotangents for all K VJPs, K x batch x {width}, are K x '
        f'{args.batch_size * width * item / MIB:.0f} MiB.')
  print()
  print('| K |' + ''.join(f' {label} |' for label in labels) + ' K x P Jacobian |')
  print('|---:|' + '---:|' * (len(labels) + 1))
  for k in ks:
    cells = []
    for label in labels:
      a = analysis[k].get(label)
      if a is None:
        cells.append(' = auto |')
        continue
      cell = mib(a['peak'])
      r = real.get(k, {}).get(label)
      if r:
        cell += f' [{mib(r["delta"])}]' if 'delta' in r else f' [{r["error"]}]'
      over = a['peak'] > args.budget_mib * MIB
      cells.append(f' **{cell}** |' if over else f' {cell} |')
    print(f'| {k} |' + ''.join(cells) + f' {mib(k * shared * item)} |')
  print(f'\nBold: over the {args.budget_mib:,} MiB budget.')
  if enforced:
    print(f'\nReal step under an address-space cap of +{args.budget_mib:,} MiB '
          '(`RLIMIT_AS` set after compilation):\n')
    for k, rows in enforced.items():
      for label, r in rows.items():
        verdict = ('completes' if 'error' not in r else f'fails ({r["error"]})')
        print(f'- K={k}, {label}: {verdict}')
  if timing:
    print('\nStep time, side by side in this process '
          f'({args.time_rounds} alternating rounds, median), ms:\n')
    print('| K |' + ''.join(f' {label} |' for label in labels))
    print('|---:|' + '---:|' * len(labels))
    for k, row in timing.items():
      base = row.get('unchunked (auto)')
      print(f'| {k} |' + ''.join(
          f' {row[l]:,.0f} ({row[l] / base:.2f}x) |' if l in row and base else ' |'
          for l in labels))
  if args.plot:
    plot(ks, labels, analysis, real, args.budget_mib, args.plot, summary)
    print(f'\nplot: {args.plot}')
  print('\nraw: ' + json.dumps({'analysis': analysis, 'real': real, 'enforced': enforced,
                                'timing': timing}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
