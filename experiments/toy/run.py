"""Every registered method on the CAGrad toy problem: all starts at once, one `jit` per method.

    python -m experiments.toy.run --out runs/toy [--steps 100000] [--scale 1.0] [--methods a,b]
                                  [--hp famo.weight_decay=0.0]

For each method of `mtl_jax.optim.METHODS` whose modes include "jacobian" (x in R^2 is all shared
parameters; the per-task gradients are `jax.jacrev` of the 2-vector of losses), the optax chain
`[method, adam(1e-3)]` runs `--steps` steps from every start: `jax.lax.scan` over steps,
`jax.vmap` over starts, one `jax.jit` per method. Writes to `--out`:

* `results.md`: per method and start, the final point, the final losses, their average, the
  distance to the Pareto set and to the average-loss optimum, and whether each is reached;
* `results.json`: the same, with the settings, timings and skipped methods (and why);
* `trajectories.npz`: the trajectories, one point every `--record_every` steps;
* `trajectories.png`: one panel per method, trajectories over contours of the average loss
  (only if matplotlib is installed; everything else is written without it).

See experiments/toy/README.md for the settings of the papers and the definitions.
"""

import argparse
import ast
import concurrent.futures
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.toy import problem
from mtl_jax import optim
from mtl_jax.optim import registry

LEARNING_RATE = 1e-3  # Adam, as in all three papers' toy code
STEPS = 100_000  # CAGrad's toy.py (n_iter); Nash-MTL's trainer.py uses 35,000, FAMO's 50,000
RECORD_EVERY = 100
# "Reached" tolerances (Euclidean distance in the x plane). Adam at lr 1e-3 keeps moving by about
# 1e-3 per step, and a method that stalls stays units away, so the verdicts are not sensitive to
# these values (the distances are in the table).
PARETO_TOL = 0.05
OPTIMUM_TOL = 0.05

# Hyperparameters this experiment sets where the registry's defaults cannot build a method.
# static: the papers' baseline is the *mean* of the two gradients (CAGrad's `mean_grad`); ew sums
# them. Under Adam a constant factor on the gradient changes nothing up to Adam's eps, so the rows
# agree until the trajectories zig-zag in a valley's crease, which amplifies rounding (README).
TOY_HYPERPARAMETERS: dict[str, dict[str, Any]] = {'static': {'weights': (0.5, 0.5)}}


def parse_hp(items: Sequence[str]) -> dict[str, dict[str, Any]]:
  """['famo.weight_decay=0.0', ...] -> {'famo': {'weight_decay': 0.0}} (values as Python literals)."""
  out: dict[str, dict[str, Any]] = {}
  for item in items:
    key, sep, value = item.partition('=')
    name, dot, hp = key.partition('.')
    if not sep or not dot or not name or not hp:
      raise SystemExit(f'--hp expects METHOD.NAME=VALUE, got {item!r}')
    try:
      parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed = value
    out.setdefault(name, {})[hp] = parsed
  return out


def build_methods(names: Sequence[str], hyperparameters: dict[str, dict[str, Any]]):
  """(built {name: (method, kwargs)}, skipped {name: reason}) for the methods that can run here."""
  built, skipped = {}, {}
  for name in names:
    kwargs = hyperparameters.get(name, {})
    try:
      method = registry.get(name, num_tasks=2, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      skipped[name] = f'does not build with num_tasks=2{_describe_kwargs(kwargs)}: {e}'
      continue
    if 'jacobian' not in method.modes:
      skipped[name] = f'modes {method.modes} do not include "jacobian"'
      continue
    built[name] = (method, kwargs)
  return built, skipped


def _describe_kwargs(kwargs):
  return ''.join(f', {k}={v!r}' for k, v in kwargs.items())


def make_runner(method, steps: int, record_every: int, scale: float, learning_rate: float):
  """jit(vmap(run one start)): starts [S, 2] -> (final points [S, 2], trajectory [S, T, 2]).

  The trajectory holds the start and then the point after every `record_every` steps (and the
  final point). The method sees the losses minus their floor (FAMO's toy `min_losses`), so that
  methods that use the loss values (FAMO, DWA, UW, GLS, ...) get positive losses; the gradients
  are those of the losses themselves.
  """
  tx = optax.chain(method, optax.adam(learning_rate))
  floor = jnp.asarray(problem.loss_floor(scale))
  num_chunks, rest = divmod(steps, record_every)

  def step(carry, _):
    x, state = carry
    values, jac = problem.losses_and_jacobian(x, scale)
    updates, state = tx.update(jac, state, x, losses=values - floor)
    return (optax.apply_updates(x, updates), state), None

  def chunk(carry, _):
    carry, _ = jax.lax.scan(step, carry, None, length=record_every)
    return carry, carry[0]

  def run_one(x0):
    carry = (x0, tx.init(x0))
    carry, traj = jax.lax.scan(chunk, carry, None, length=num_chunks)
    if rest:
      carry, _ = jax.lax.scan(step, carry, None, length=rest)
      traj = jnp.concatenate([traj, carry[0][None]], 0)
    return carry[0], jnp.concatenate([x0[None], traj], 0)

  return jax.jit(jax.vmap(run_one))


def evaluate(final: np.ndarray, scale: float, pareto_tol: float = PARETO_TOL,
             optimum_tol: float = OPTIMUM_TOL) -> list[dict[str, Any]]:
  """Per start: the final point, losses, their average, distances to the reference sets, verdicts."""
  ref = problem.reference_sets(scale)
  values, jac = jax.vmap(lambda x: problem.losses_and_jacobian(x, scale))(jnp.asarray(final))
  values, jac = np.asarray(values, np.float64), np.asarray(jac, np.float64)
  d_pareto = problem.distance_to_polyline(final, ref.pareto)
  d_opt = np.linalg.norm(np.asarray(final, np.float64) - ref.optimum, axis=-1)
  cos = problem.anti_parallel_cosine(jac)
  rows = []
  for i in range(final.shape[0]):
    rows.append({
        'final': [float(v) for v in final[i]],
        'losses': [float(v) for v in values[i]],
        'average_loss': float(values[i].mean()),
        'distance_to_pareto': float(d_pareto[i]),
        'pareto': bool(d_pareto[i] <= pareto_tol),
        'distance_to_optimum': float(d_opt[i]),
        'optimum': bool(d_opt[i] <= optimum_tol),
        'gradient_cosine': float(cos[i]),
        'finite': bool(np.all(np.isfinite(final[i]))),
    })
  return rows


def run_methods(names: Optional[Sequence[str]] = None, *, steps: int = STEPS,
                starts: Sequence[Sequence[float]] = problem.STARTS, scale: float = 1.0,
                learning_rate: float = LEARNING_RATE, record_every: int = RECORD_EVERY,
                hyperparameters: Optional[dict[str, dict[str, Any]]] = None,
                jobs: int = 1, log=print) -> dict[str, Any]:
  """Runs the methods (default: every registered one) and returns the results as a dict.

  Methods that do not build with `num_tasks=2` (and the hyperparameters given), that cannot run in
  "jacobian" mode, or that fail when traced are listed under 'skipped' with the reason.
  """
  names = list(registry.METHODS.names() if names is None else names)
  hps = {**TOY_HYPERPARAMETERS, **(hyperparameters or {})}
  built, skipped = build_methods(names, hps)
  for name, reason in skipped.items():
    log(f'skip {name}: {reason}')
  x0 = jnp.asarray(np.asarray(starts, np.float32))
  results: dict[str, Any] = {}
  trajectories: dict[str, np.ndarray] = {}

  def run_one(name):
    method, _ = built[name]
    start = time.perf_counter()
    final, traj = make_runner(method, steps, record_every, scale, learning_rate)(x0)
    return np.asarray(final), np.asarray(traj), time.perf_counter() - start

  total_start, cpu_start = time.perf_counter(), time.process_time()
  # XLA compiles and runs without the GIL: `jobs` threads keep that many cores busy (compiling
  # dominates the cheap methods, the solver loops the others). Results do not depend on `jobs`.
  with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
    # Gramian methods first: their solver loops make them the long ones.
    order = sorted(built, key=lambda n: built[n][0].family != 'gramian')
    futures = {name: pool.submit(run_one, name) for name in order}
    futures = {name: futures[name] for name in built}
    for name, future in futures.items():
      try:
        final, traj, seconds = future.result()
      except Exception as e:  # pylint: disable=broad-except
        skipped[name] = f'failed when run: {type(e).__name__}: {str(e).splitlines()[0][:300]}'
        log(f'skip {name}: {skipped[name]}')
        continue
      rows = evaluate(final, scale)
      for row, s in zip(rows, starts):
        row['start'] = [float(v) for v in s]
      kwargs = built[name][1]
      results[name] = {'hyperparameters': {k: _jsonable(v) for k, v in kwargs.items()},
                       'seconds': seconds, 'starts': rows}
      trajectories[name] = traj
      log(f'{name:<14} {seconds:6.2f} s  optimum {sum(r["optimum"] for r in rows)}/{len(rows)}  '
          f'pareto {sum(r["pareto"] for r in rows)}/{len(rows)}')
  total, cpu = time.perf_counter() - total_start, time.process_time() - cpu_start
  ref = problem.reference_sets(scale)
  return {
      'settings': {'steps': steps, 'scale': scale, 'learning_rate': learning_rate,
                   'optimizer': 'adam', 'starts': [list(map(float, s)) for s in starts],
                   'record_every': record_every, 'pareto_tol': PARETO_TOL,
                   'optimum_tol': OPTIMUM_TOL, 'loss_offset': (-problem.loss_floor(scale)).tolist(),
                   'optimum': ref.optimum.tolist(), 'optimum_average_loss': ref.optimum_loss,
                   'device': f'{jax.devices()[0].device_kind} x{len(jax.devices())}',
                   'jobs': jobs,
                   'jax': jax.__version__},
      'seconds_total': total,
      'cpu_seconds_total': cpu,
      'methods': results,
      'skipped': skipped,
      'trajectories': trajectories,
  }


def _jsonable(v):
  if isinstance(v, (tuple, list)):
    return [_jsonable(a) for a in v]
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


def _fmt_point(p):
  return f'({p[0]:.3f}, {p[1]:.3f})'


def markdown(out: dict[str, Any]) -> str:
  s = out['settings']
  lines = [
      '# CAGrad toy problem: every method',
      '',
      f'Adam lr {s["learning_rate"]}, {s["steps"]:,} steps, L1 scale {s["scale"]}, '
      f'{len(s["starts"])} starts; {s["device"]}, jax {s["jax"]}; all methods (compile + run): '
      f'{out["seconds_total"]:.1f} s wall, {out["cpu_seconds_total"]:.1f} s CPU, {s["jobs"]} '
      'thread(s).',
      f'Average-loss optimum x* = {_fmt_point(s["optimum"])} (average loss '
      f'{s["optimum_average_loss"]:.4f}). Pareto: distance to the Pareto set <= {s["pareto_tol"]}; '
      f'x*: distance to x* <= {s["optimum_tol"]}. cos: cosine of the two task gradients at the '
      'final point (-1 on the Pareto set).',
      '',
      '| method | start | final x | L1 | L2 | average | d(Pareto) | Pareto | d(x*) | x* | cos |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for name, res in out['methods'].items():
    label = name + (f' {res["hyperparameters"]}' if res['hyperparameters'] else '')
    for i, r in enumerate(res['starts']):
      lines.append(
          f'| {label if i == 0 else ""} | {_fmt_point(r["start"])} | {_fmt_point(r["final"])} | '
          f'{r["losses"][0]:.3f} | {r["losses"][1]:.3f} | {r["average_loss"]:.3f} | '
          f'{r["distance_to_pareto"]:.3g} | {"yes" if r["pareto"] else "no"} | '
          f'{r["distance_to_optimum"]:.3g} | {"yes" if r["optimum"] else "no"} | '
          f'{r["gradient_cosine"]:.3f} |')
  lines += ['', '| method | reached x* | reached Pareto set | seconds (wall, compile + run) |',
            '|---|---|---|---|']
  for name, res in out['methods'].items():
    rows = res['starts']
    lines.append(f'| {name} | {sum(r["optimum"] for r in rows)}/{len(rows)} | '
                 f'{sum(r["pareto"] for r in rows)}/{len(rows)} | {res["seconds"]:.2f} |')
  if out['skipped']:
    lines += ['', 'Skipped:', '']
    lines += [f'- `{name}`: {reason}' for name, reason in out['skipped'].items()]
  return '\n'.join(lines) + '\n'


def plot(out: dict[str, Any], path: str) -> bool:
  """Trajectories over contours of the average loss, one panel per method. False without
  matplotlib."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  s = out['settings']
  ref = problem.reference_sets(s['scale'])
  grid = np.linspace(-10, 10, 301)
  xx, yy = np.meshgrid(grid, grid)
  zz = np.asarray(problem.losses(jnp.asarray(np.stack([xx, yy], -1), jnp.float32),
                                 s['scale'])).mean(-1)
  names = list(out['methods'])
  cols = min(4, max(1, len(names)))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, name in zip(axes.flat, names):
    ax.contour(xx, yy, zz, levels=20, cmap='viridis', linewidths=0.7)
    ax.plot(ref.pareto[:, 0], ref.pareto[:, 1], color='gray', linewidth=4, alpha=0.6, zorder=1)
    ax.plot(*ref.optimum, marker='*', color='k', markersize=12, zorder=5)
    for i, traj in enumerate(out['trajectories'][name]):
      color = colors[i % len(colors)]
      ax.plot(traj[:, 0], traj[:, 1], color=color, linewidth=1.5, zorder=3)
      ax.plot(*traj[0], marker='o', color=color, markersize=5, zorder=4)
      ax.plot(*traj[-1], marker='x', color=color, markersize=7, zorder=4)
    res = out['methods'][name]['starts']
    ax.set_title(f'{name}: x* {sum(r["optimum"] for r in res)}/{len(res)}', fontsize=10)
    ax.set_xlim(-10, 10)
    ax.set_ylim(-10, 10)
    ax.set_aspect('equal')
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  fig.suptitle(f'average loss, Adam lr {s["learning_rate"]}, {s["steps"]:,} steps, '
               f'scale {s["scale"]}; o start, x end, * optimum, gray: Pareto set', fontsize=11)
  fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * rows)))
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return True


def write(out: dict[str, Any], directory: str, log=print) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'results.md'), 'w') as f:
    f.write(markdown(out))
  with open(os.path.join(directory, 'results.json'), 'w') as f:
    json.dump({k: v for k, v in out.items() if k != 'trajectories'}, f, indent=1)
  np.savez_compressed(os.path.join(directory, 'trajectories.npz'), **out['trajectories'])
  png = os.path.join(directory, 'trajectories.png')
  if plot(out, png):
    log(f'wrote {png}')
  else:
    log('matplotlib is not installed: no trajectories.png (pip install matplotlib)')
  log(f'wrote {directory}/results.md, results.json, trajectories.npz')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/toy')
  parser.add_argument('--steps', type=int, default=STEPS)
  parser.add_argument('--scale', type=float, default=1.0,
                      help="factor on L1: 1 is CAGrad's toy, 0.1 Nash-MTL's and FAMO's")
  parser.add_argument('--starts', choices=('all', 'cagrad', 'nash_mtl'), default='all',
                      help="all: the union of CAGrad's 3 and Nash-MTL/FAMO's 5 starts (6)")
  parser.add_argument('--methods', default='', help='comma-separated names (default: all)')
  parser.add_argument('--hp', action='append', default=[],
                      help='METHOD.NAME=VALUE, e.g. famo.weight_decay=0.0 (repeatable)')
  parser.add_argument('--record_every', type=int, default=RECORD_EVERY)
  parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1,
                      help='methods compiled and run at once (threads; default: the CPU count)')
  args = parser.parse_args(argv)
  starts = {'all': problem.STARTS, 'cagrad': problem.CAGRAD_STARTS,
            'nash_mtl': problem.NASH_MTL_STARTS}[args.starts]
  names = [n for n in args.methods.split(',') if n] or None
  if names:
    unknown = [n for n in names if n not in registry.METHODS.names()]
    if unknown:
      raise SystemExit(f'unknown method(s) {unknown}; registered: {registry.METHODS.names()}')
  out = run_methods(names, steps=args.steps, starts=starts, scale=args.scale,
                    record_every=args.record_every, hyperparameters=parse_hp(args.hp),
                    jobs=args.jobs)
  print(f'total {out["seconds_total"]:.1f} s wall, {out["cpu_seconds_total"]:.1f} s CPU for '
        f'{len(out["methods"])} methods ({args.jobs} thread(s))')
  write(out, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
