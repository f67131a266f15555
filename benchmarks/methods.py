"""Step time of every registered method, relative to equal weighting, side by side.

One model: a hard-shared MLP trunk of ~0.9M parameters (256 dense features -> 1024 -> 512 -> 256)
with K binary heads, batch 256 of random data, Adam. For each K and each gradient mode
("jacobian": per-task gradients of the trunk's parameters; "rep": per-task gradients at the trunk's
output), every method runs the real train step (`mtl_jax.train.step.make_train_step` +
`mtl_jax.train.sharding.jit_train_step`). A method whose `modes` lack a mode is n/a there.

Baselines, in the same rounds:

* `ew` in "weighted" mode (one backward of the summed loss): the denominator of every ratio;
* `K x grad (1 jit)`: one jitted step that takes K separate `jax.grad`s (one per task loss), sums
  them and applies Adam: what "jacobian" mode replaces;
* `K x grad (loop)`: the same with K jitted `jax.grad` calls from Python, then one jitted update;
* `K x grad (1 jit, kept)`: one jitted step with K `jax.grad`s that keeps them apart, as every
  gradient-aggregation method needs: stacks them, takes their Gramian, sums and applies Adam.
  The least work a "jacobian"-mode step can do, so the fair reference for it (the plain sum lets
  XLA add each gradient into one buffer and never hold K of them).

All configurations of one K are compiled first (`--jobs` threads), then timed in rounds: each
round runs every configuration for a few steps (about `--round_ms` of work, at least 1 step), one
after the other in a fresh random order, so that machine noise hits all of them alike; the table
shows the median time per step over the rounds.

    python benchmarks/methods.py                          # everything (about 10 minutes on 2 cores)
    python benchmarks/methods.py --ks 8 --modes rep --methods ew,mgda --rounds 3   # quick
"""

import argparse
import concurrent.futures
import datetime
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models
from mtl_jax.optim import registry
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

LEARNING_RATE = 1e-3
INPUT_DIM = 256
HIDDEN = (1024, 512, 256)
BASELINE = 'ew/weighted'
K_GRAD_JIT = 'K x grad (1 jit)'
K_GRAD_LOOP = 'K x grad (loop)'
K_GRAD_KEPT = 'K x grad (1 jit, kept)'


def method_kwargs(name: str, num_tasks: int) -> dict[str, Any]:
  """Hyperparameters where the registry's defaults cannot build a method."""
  if name == 'static':
    return {'weights': [1.0] * num_tasks}
  return {}


def make_problem(num_tasks: int, batch_size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tasks = tuple(Task(f't{k}', 'binary') for k in range(num_tasks))
  model = models.build('hard', tasks, models.inputs.Identity(), 'mlp',
                       {'hidden_sizes': HIDDEN})
  inputs = rng.normal(size=(batch_size, INPUT_DIM)).astype(np.float32)
  batch = {'inputs': inputs,
           'labels': {t.name: rng.integers(0, 2, batch_size).astype(np.int32) for t in tasks},
           'label_mask': {t.name: np.ones(batch_size, bool) for t in tasks}}
  return tasks, model, batch


class Config:
  """One timed configuration: `compile()` builds its executables ahead of time (thread-safe:
  XLA compiles without the GIL), `run(n)` takes n steps and blocks until they are done."""

  def __init__(self, name: str, compile_fn: Callable[[], None], run: Callable[[int], None]):
    self.name = name
    self.compile = compile_fn
    self.run = run
    self.steps_per_round = 1
    self.times: list[float] = []
    self.error = None


def train_step_config(name, model, tasks, method, mode, mesh, batch, example,
                      jacobian_chunk_size=0):
  tx = optax.adam(LEARNING_RATE)
  step = sharding.jit_train_step(
      step_lib.make_train_step(model, tasks, method, tx, mode, jacobian_chunk_size), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  # A copy of every leaf: a method's initial state may hold arrays built once in its factory (a
  # PRNG key), shared with the other mode's configuration, and the step donates its state.
  holder = {'state': sharding.put_replicated(jax.tree.map(jnp.copy, state), mesh)}

  def compile_fn():
    holder['step'] = step.lower(holder['state'], batch).compile()

  def run(n):
    state, compiled = holder['state'], holder['step']
    for _ in range(n):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    holder['state'] = state

  return Config(name, compile_fn, run)


def k_grad_configs(model, tasks, mesh, batch, example):
  """The per-task gradients as K separate `jax.grad`s: in one jit, and as a Python loop."""
  tx = optax.adam(LEARNING_RATE)
  params = model.init(jax.random.PRNGKey(0), example)['params']
  num_tasks = len(tasks)

  def task_loss(p, b, k):
    outputs = model.apply({'params': p}, b['inputs'])
    return step_lib.task_losses(tasks, outputs, b)[k]

  def one_jit(carry, b):
    p, opt_state = carry
    grads = [jax.grad(task_loss)(p, b, k) for k in range(num_tasks)]
    total = jax.tree.map(lambda *g: sum(g), *grads)
    updates, opt_state = tx.update(total, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  def one_jit_kept(carry, b):
    p, opt_state = carry
    grads = [jax.grad(task_loss)(p, b, k) for k in range(num_tasks)]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    flat = jnp.concatenate([x.reshape(num_tasks, -1) for x in jax.tree.leaves(stacked)], axis=1)
    gram = flat @ flat.T
    # The sum's scale reads the Gramian (x 1, but XLA cannot know it), so nothing is dropped.
    total = jax.tree.map(lambda g: jnp.sum(g, axis=0) * (1.0 + 0.0 * jnp.trace(gram)), stacked)
    updates, opt_state = tx.update(total, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  def apply(carry, grads):
    p, opt_state = carry
    total = jax.tree.map(lambda *g: sum(g), *grads)
    updates, opt_state = tx.update(total, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  ks = [jnp.asarray(k, jnp.int32) for k in range(num_tasks)]
  holders = {name: {'carry': sharding.put_replicated(
      (jax.tree.map(jnp.copy, params), tx.init(params)), mesh)}
             for name in ('jit', 'loop', 'kept')}

  def compile_jit():
    holders['jit']['step'] = jax.jit(one_jit, donate_argnums=0).lower(
        holders['jit']['carry'], batch).compile()

  def compile_kept():
    holders['kept']['step'] = jax.jit(one_jit_kept, donate_argnums=0).lower(
        holders['kept']['carry'], batch).compile()

  def compile_loop():
    carry = holders['loop']['carry']
    grad_k = jax.jit(jax.grad(task_loss)).lower(carry[0], batch, ks[0]).compile()
    grads = [jax.tree.map(jnp.zeros_like, carry[0])] * num_tasks  # shapes only
    holders['loop']['grad'] = grad_k  # k is traced: one program for every task
    holders['loop']['apply'] = jax.jit(apply, donate_argnums=0).lower(carry, grads).compile()

  def runner(name):
    def run(n):
      carry, step = holders[name]['carry'], holders[name]['step']
      for _ in range(n):
        carry = step(carry, batch)
      jax.block_until_ready(carry)
      holders[name]['carry'] = carry
    return run

  def run_loop(n):
    carry, grad_k, apply_c = (holders['loop'][k] for k in ('carry', 'grad', 'apply'))
    for _ in range(n):
      grads = [grad_k(carry[0], batch, k) for k in ks]
      carry = apply_c(carry, grads)
    jax.block_until_ready(carry)
    holders['loop']['carry'] = carry

  return [Config(K_GRAD_JIT, compile_jit, runner('jit')),
          Config(K_GRAD_KEPT, compile_kept, runner('kept')),
          Config(K_GRAD_LOOP, compile_loop, run_loop)]


def build_configs(num_tasks, batch_size, method_names, modes, mesh, log, chunk_sizes=(),
                  heavy=None):
  """The configurations of one K. `heavy`: if not None, the methods timed in "jacobian" mode
  (the others are reported as skipped)."""
  tasks, model, batch = make_problem(num_tasks, batch_size)
  example = jax.tree.map(lambda x: x[:2], batch['inputs'])
  device_batch = sharding.put_batch(batch, mesh)
  params = model.init(jax.random.PRNGKey(0), example)['params']
  num_params = sum(x.size for x in jax.tree.leaves(params))
  shared = sum(x.size for x in jax.tree.leaves(step_lib.shared_params(model, params)))
  ew = registry.get('ew', num_tasks)
  configs = [train_step_config(BASELINE, model, tasks, ew, 'weighted', mesh, device_batch,
                               example)]
  if 'jacobian' in modes:
    configs += k_grad_configs(model, tasks, mesh, device_batch, example)
    for chunk in chunk_sizes:
      configs.append(train_step_config(f'ew/jacobian chunk={chunk}', model, tasks, ew, 'jacobian',
                                       mesh, device_batch, example, jacobian_chunk_size=chunk))
  unavailable: dict[str, str] = {}
  for name in method_names:
    try:
      method = registry.get(name, num_tasks, **method_kwargs(name, num_tasks))
    except Exception as e:  # pylint: disable=broad-except
      for mode in modes:
        unavailable[f'{name}/{mode}'] = f'does not build: {e}'
      continue
    for mode in modes:
      if mode not in method.modes:
        unavailable[f'{name}/{mode}'] = 'n/a'
      elif mode == 'jacobian' and heavy is not None and name not in heavy:
        unavailable[f'{name}/{mode}'] = 'not timed'
      else:
        configs.append(train_step_config(f'{name}/{mode}', model, tasks, method, mode, mesh,
                                         device_batch, example))
  log(f'K={num_tasks}: {num_params:,} parameters ({shared:,} shared), batch {batch_size}, '
      f'{len(configs)} configurations')
  return configs, unavailable


def time_configs(configs, rounds, round_ms, jobs, log):
  """Compiles everything (`jobs` threads), calibrates steps per round, then times in rounds."""
  start = time.perf_counter()

  def compile_one(config):
    t0 = time.perf_counter()
    try:
      config.compile()
    except Exception as e:  # pylint: disable=broad-except
      config.error = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
    return time.perf_counter() - t0

  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    compile_seconds = list(pool.map(compile_one, configs))
  log(f'  compiled {len(configs)} in {time.perf_counter() - start:.1f} s')
  alive = []
  for config, compiled in zip(configs, compile_seconds):
    if config.error:
      log(f'  {config.name}: failed: {config.error}')
      continue
    config.run(1)  # first run: allocations, caches
    t0 = time.perf_counter()
    config.run(1)
    one = time.perf_counter() - t0
    config.steps_per_round = int(min(50, max(1, round(round_ms / 1e3 / max(one, 1e-6)))))
    log(f'  {config.name:<24} compile {compiled:6.2f} s, 1 step {1e3 * one:8.2f} ms, '
        f'{config.steps_per_round} steps/round')
    alive.append(config)
  rng = random.Random(0)
  for r in range(rounds):
    start = time.perf_counter()
    # A fresh order every round: interference that recurs within a round (another process's
    # periodic work) does not always hit the same configurations.
    for config in rng.sample(alive, len(alive)):
      t0 = time.perf_counter()
      config.run(config.steps_per_round)
      config.times.append((time.perf_counter() - t0) / config.steps_per_round)
    log(f'  round {r + 1}/{rounds}: {time.perf_counter() - start:.1f} s')
  return {c.name: 1e3 * statistics.median(c.times) for c in alive}


def table(results, method_names, modes, ks, chunk_sizes=()):
  """Markdown: one row per method, ms/step and ratio to ew/weighted per (K, mode)."""
  header = '| method |' + ''.join(f' K={k} {m} ms | ratio |' for k in ks for m in modes)
  lines = [header, '|---|' + '---:|---:|' * (len(ks) * len(modes))]

  def row(label, key_of):
    cells = []
    for k in ks:
      res = results[k]
      base = res['ms'].get(BASELINE)
      for m in modes:
        key = key_of(m)
        if key is None:
          cells.append(' | |')
        elif key in res['ms']:
          ms = res['ms'][key]
          cells.append(f' {ms:.1f} | {ms / base:.2f} |' if base else f' {ms:.1f} | |')
        elif key in res['unavailable']:
          reason = res['unavailable'][key]
          cells.append({'n/a': ' n/a | |', 'not timed': ' - | |'}.get(reason, ' fails | |'))
        else:
          cells.append(' | |')
    lines.append(f'| {label} |' + ''.join(cells))

  row('**ew, weighted mode (baseline)**', lambda m: BASELINE)
  row(K_GRAD_JIT, lambda m: K_GRAD_JIT if m == 'jacobian' else None)
  row(K_GRAD_KEPT, lambda m: K_GRAD_KEPT if m == 'jacobian' else None)
  row(K_GRAD_LOOP, lambda m: K_GRAD_LOOP if m == 'jacobian' else None)
  for chunk in chunk_sizes:
    name = f'ew/jacobian chunk={chunk}'
    row(f'ew, jacobian_chunk_size={chunk}', lambda m, name=name: name if m == 'jacobian' else None)
  for name in method_names:
    row(name, lambda m, name=name: f'{name}/{m}')
  return '\n'.join(lines)


def targets(results, ks):
  """The issue's targets, checked where measured."""
  out = []
  if 8 in results:
    res = results[8]
    base = res['ms'].get(BASELINE)
    rep = {k.split('/')[0]: v / base for k, v in res['ms'].items()
           if k.endswith('/rep') and base}
    if rep:
      over = {n: round(r, 2) for n, r in rep.items() if r > 1.5}
      out.append(f'- "rep" mode <= 1.5x ew at K=8: {len(rep) - len(over)}/{len(rep)} methods '
                 f'meet it' + (f'; over: {over}' if over else ''))
  for k in ks:
    res = results[k]['ms']
    jac = res.get('ew/jacobian')
    if jac is not None:
      verdicts = []
      for key in (K_GRAD_JIT, K_GRAD_KEPT, K_GRAD_LOOP):
        if key in res:
          verdicts.append(f'{key} {res[key]:.1f} ms: {"met" if jac <= res[key] else "NOT met"} '
                          f'({jac / res[key]:.2f}x)')
      out.append(f'- "jacobian" no slower than K separate grads, K={k}: ew "jacobian" {jac:.1f} ms '
                 'vs ' + '; '.join(verdicts))
  for k in ks:
    res = results[k]['ms']
    for mode in ('jacobian', 'rep'):
      nash, pc = res.get(f'nash_mtl/{mode}'), res.get(f'pcgrad/{mode}')
      if nash is not None and pc is not None:
        out.append(f'- Nash-MTL <= 1.5x PCGrad, K={k} {mode}: {nash:.1f} / {pc:.1f} ms = '
                   f'{nash / pc:.2f} ({"met" if nash <= 1.5 * pc else "NOT met"})')
  return '\n'.join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--methods', default='', help='comma-separated (default: every registered)')
  parser.add_argument('--ks', default='2,8,40')
  parser.add_argument('--modes', default='jacobian,rep')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--round_ms', type=float, default=150.0,
                      help='target work per configuration per round (steps = this / 1 step, '
                           'between 1 and 50)')
  parser.add_argument('--heavy_k', type=int, default=40,
                      help='from this K on, "jacobian" mode gets --heavy_rounds and --heavy_methods')
  parser.add_argument('--heavy_rounds', type=int, default=3)
  parser.add_argument('--heavy_methods', default='',
                      help='comma-separated methods timed in "jacobian" mode at K >= --heavy_k '
                           '(default: all of --methods)')
  parser.add_argument('--chunk_sizes', default='',
                      help='also time ew in "jacobian" mode with these jacobian_chunk_size values')
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                      help='threads compiling at once (timing is always one at a time)')
  args = parser.parse_args(argv)

  method_names = [n for n in args.methods.split(',') if n] or registry.METHODS.names()
  unknown = [n for n in method_names if n not in registry.METHODS]
  if unknown:
    raise SystemExit(f'unknown method(s) {unknown}; registered: {registry.METHODS.names()}')
  ks = [int(k) for k in args.ks.split(',') if k]
  modes = [m for m in args.modes.split(',') if m]
  chunk_sizes = [int(c) for c in args.chunk_sizes.split(',') if c]
  heavy = [n for n in args.heavy_methods.split(',') if n] or None
  log = lambda *a: print(*a, file=sys.stderr, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  mesh = sharding.make_mesh()
  device = f'{jax.devices()[0].device_kind} x{len(jax.devices())}'
  started, cpu_started = time.perf_counter(), time.process_time()
  results = {}
  for k in ks:
    is_heavy = k >= args.heavy_k and 'jacobian' in modes
    configs, unavailable = build_configs(k, args.batch_size, method_names, modes, mesh, log,
                                         chunk_sizes, heavy if is_heavy else None)
    rounds = args.heavy_rounds if is_heavy else args.rounds
    ms = time_configs(configs, rounds, args.round_ms, args.jobs, log)
    for config in configs:
      if config.error:
        unavailable[config.name] = config.error
    results[k] = {'ms': ms, 'unavailable': unavailable, 'rounds': rounds}
  seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
  print(f'date: {datetime.date.today().isoformat()}; device: {device} ({os.cpu_count()} cores); '
        f'jax {jax.__version__}; batch {args.batch_size}; MLP '
        f'{INPUT_DIM}->{"->".join(map(str, HIDDEN))} + K binary heads; Adam; rounds: '
        + ', '.join(f'K={k}: {results[k]["rounds"]}' for k in ks)
        + f'; whole run {seconds:.0f} s wall, {cpu:.0f} s CPU')
  print()
  print(table(results, method_names, modes, ks, chunk_sizes))
  print()
  print('Targets:')
  print(targets(results, ks))
  failed = {f'K={k} {n}': r for k in ks for n, r in results[k]['unavailable'].items()
            if r not in ('n/a', 'not timed')}
  if failed:
    print()
    print('Not timed (errors):')
    for key, reason in failed.items():
      print(f'- {key}: {reason}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
