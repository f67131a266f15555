"""Hyperparameter sweeps: a small DSL for trial lists, trial names, and the runner behind
`launch.py --sweep=FILE`.

A sweep file (`experiments/sweeps/NAME.py`) defines `get_hyper(hyper)` and returns a list of
override dicts, built with the functions below (the big_vision convention):

    def get_hyper(hyper):
      return hyper.product([
          hyper.sweep('config.method', ['ew', 'mgda']),
          hyper.sweep('config.seed', [0, 1, 2]),
      ])

`product` varies its first factor slowest (like `itertools.product`); `zip` pairs its factors
element by element (equal lengths); `chain` concatenates; `fixed` repeats one value. Each trial
runs in `<workdir>/<trial name>`, the name made from its overrides (`method=mgda,seed=1`).
Overrides are applied like `--config.key=value`: nested keys, the field's type kept, an unknown
key refused (new keys are accepted only inside the open option dicts `*_kwargs`, whose keys the
method, encoder or architecture checks itself, and not when they look like a typo of a key there).
"""

import ast
import builtins
import copy
import difflib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
import types

from mtl_jax.errors import UserError

TRIAL_RECORD = 'sweep_trial.json'  # In each trial's workdir: its overrides, config, finished.
SWEEP_RECORD = 'sweep.json'  # In the sweep's workdir: every trial's index, name and overrides.
MAX_NAME_LENGTH = 120
_SAFE = set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-')


# ---------------------------------------------------------------------------------------------
# The DSL: every function returns a list of override dicts.

def _key(name) -> str:
  if not isinstance(name, str) or not name.strip('.'):
    raise UserError(f'sweep key {name!r} must be a string like "config.method"')
  return name[len('config.'):] if name.startswith('config.') else name


def sweep(name: str, values) -> list[dict]:
  """One trial per value of `name` (a config key, 'config.' prefix optional)."""
  values = list(values)
  if not values:
    raise UserError(f'hyper.sweep({name!r}, ...) has no values')
  key = _key(name)
  return [{key: v} for v in values]


def fixed(name: str, value, length: int = 1) -> list[dict]:
  """`length` trials with `name` set to `value` (a constant factor of a product or zip)."""
  return [{_key(name): value} for _ in range(length)]


def _merge(a: dict, b: dict, what: str) -> dict:
  shared = sorted(set(a) & set(b))
  if shared:
    raise UserError(f'hyper.{what}: key(s) {", ".join("config." + k for k in shared)} set by '
                    f'more than one factor')
  return {**a, **b}


def product(factors) -> list[dict]:
  """Every combination of the factors' trials; the first factor varies slowest."""
  trials = [{}]
  for factor in factors:
    factor = _check_trials(factor, 'hyper.product')
    trials = [_merge(t, f, 'product') for t in trials for f in factor]
  return trials


def zip(factors) -> list[dict]:  # pylint: disable=redefined-builtin
  """The i-th trials of every factor merged into one; the factors must have equal lengths."""
  factors = [_check_trials(f, 'hyper.zip') for f in factors]
  if not factors:
    return [{}]
  lengths = [len(f) for f in factors]
  if len(set(lengths)) > 1:
    raise UserError(f'hyper.zip needs factors of equal length; got lengths {lengths}')
  trials = []
  for parts in builtins.zip(*factors):
    merged = {}
    for part in parts:
      merged = _merge(merged, part, 'zip')
    trials.append(merged)
  return trials


def chain(factors) -> list[dict]:
  """The factors' trials one list after another."""
  return [t for f in factors for t in _check_trials(f, 'hyper.chain')]


def _check_trials(trials, where: str) -> list[dict]:
  if isinstance(trials, dict):
    trials = [trials]
  if not isinstance(trials, (list, tuple)) or not all(isinstance(t, dict) for t in trials):
    raise UserError(f'{where} takes lists of override dicts (from hyper.sweep, hyper.fixed, ...); '
                    f'got {type(trials).__name__}')
  return [{_key(k): v for k, v in t.items()} for t in trials]


# What a sweep file's get_hyper receives (big_vision's names zipit/chainit work too).
hyper = types.SimpleNamespace(sweep=sweep, fixed=fixed, product=product, zip=zip, zipit=zip,
                              chain=chain, chainit=chain)


def load(path: str) -> list[dict]:
  """The trials of a sweep file: its `get_hyper(hyper)`, checked; names unique."""
  if not os.path.isfile(path):
    raise UserError(f'sweep file {path!r} does not exist (sweep files live in experiments/sweeps/)')
  spec = importlib.util.spec_from_file_location(
      f'_sweep_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_hyper'):
    raise UserError(f'sweep file {path} defines no get_hyper(hyper)')
  trials = _check_trials(module.get_hyper(hyper), f'get_hyper of {path}')
  if not trials:
    raise UserError(f'sweep file {path} gives no trials')
  names = [trial_name(t) for t in trials]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise UserError(f'sweep file {path}: trials with the same overrides (and so the same '
                    f'workdir): {", ".join(duplicates)}')
  return trials


# ---------------------------------------------------------------------------------------------
# Trial names.

def _format_value(value) -> str:
  if isinstance(value, float):
    text = repr(value)
  elif isinstance(value, (list, tuple)):
    text = '+'.join(_format_value(v) for v in value) if value else 'empty'
  elif isinstance(value, dict) or hasattr(value, 'to_dict'):
    value = value.to_dict() if hasattr(value, 'to_dict') else value
    text = '+'.join(f'{k}-{_format_value(v)}' for k, v in value.items()) if value else 'empty'
  else:
    text = str(value)
  return ''.join(c if c in _SAFE else '_' for c in text) or 'empty'


def short_keys(keys) -> dict:
  """key -> its last component, or the whole dotted key where two keys share a last part."""
  keys = list(keys)
  last = [k.split('.')[-1] for k in keys]
  return {k: (l if last.count(l) == 1 else k) for k, l in builtins.zip(keys, last)}


def trial_name(overrides: dict) -> str:
  """`key=value,key=value` in the sweep's key order: filesystem-safe, the same on every launch.
  Names longer than MAX_NAME_LENGTH are cut and end with a hash of the full overrides."""
  if not overrides:
    return 'base'
  shorts = short_keys(overrides)
  name = ','.join(f'{_format_value(shorts[k])}={_format_value(v)}' for k, v in overrides.items())
  if len(name) > MAX_NAME_LENGTH:
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=repr).encode()).hexdigest()
    name = f'{name[:MAX_NAME_LENGTH - 9]}-{digest[:8]}'
  return name


# ---------------------------------------------------------------------------------------------
# Overrides.

def _flat_keys(config, prefix='') -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if hasattr(v, 'items') and hasattr(v, 'unlocked'):
      keys.extend(_flat_keys(v, f'{prefix}{k}.'))
  return keys


def _unknown_key(config, key: str, holder, missing: str) -> UserError:
  close = difflib.get_close_matches(key, _flat_keys(config), n=4, cutoff=0.6)
  close += [k for k in difflib.get_close_matches(missing, _flat_keys(config), n=4, cutoff=0.6)
            if k not in close]
  here = ', '.join(sorted(holder.keys())) or '(none)'
  hint = f'; did you mean {", ".join("config." + k for k in close[:4])}?' if close else ''
  return UserError(f'unknown config key config.{key}{hint} (keys at that level: {here})')


def _parse_string(text: str, current, key: str):
  """A string for a non-string field, read the way `--config.key=text` reads it."""
  if isinstance(current, bool):
    if text.lower() in ('true', 'false', '1', '0'):
      return text.lower() in ('true', '1')
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f'config.{key}={text!r}: cannot read it as a {type(current).__name__} '
                    f'(the field holds {current!r})') from None


def apply_overrides(config, overrides: dict):
  """A copy of `config` with `overrides` ({'a.b': value}) set, as `--config.a.b=value` would."""
  config = copy.deepcopy(config)
  locked = config.is_locked
  for key, value in overrides.items():
    *path, last = key.split('.')
    holder = config
    for depth, part in enumerate(path):
      if not hasattr(holder, 'keys') or part not in holder:
        raise _unknown_key(config, key, holder, part)
      holder = holder[part]
      if not hasattr(holder, 'unlocked'):
        raise UserError(f'config.{".".join(path[:depth + 1])} is a {type(holder).__name__}, '
                        f'not a nested config; config.{key} cannot be set')
    if last not in holder:
      # An open option dict (its owner checks the keys) takes new keys, unless one looks like a
      # typo of a key it has.
      if path and path[-1].endswith('_kwargs') and not difflib.get_close_matches(
          last, list(holder.keys()), n=1, cutoff=0.8):
        with holder.unlocked():
          holder[last] = value
        continue
      raise _unknown_key(config, key, holder, last)
    current = holder[last]
    if isinstance(value, str) and current is not None and not isinstance(current, str):
      value = _parse_string(value, current, key)
    if isinstance(value, list) and isinstance(current, tuple):
      value = tuple(value)
    if isinstance(value, bool) and current is not None and not isinstance(current, bool):
      raise UserError(f'config.{key}={value!r}: the field holds a {type(current).__name__} '
                      f'({current!r}), not a bool')
    try:
      holder[last] = value
    except (TypeError, ValueError) as e:
      raise UserError(f'config.{key}={value!r}: the field holds a {type(current).__name__} '
                      f'({current!r}); {e}') from None
  if locked:
    config.unlock().lock()  # again, recursively: a dict set above became an unlocked ConfigDict
  return config


# ---------------------------------------------------------------------------------------------
# The runner.

def _config_json(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=repr))


def _write_json(path: str, value) -> None:
  """Atomically (array jobs may write the same file at once)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(value, f, indent=1, default=repr)
  os.replace(tmp, path)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def expected_finals(config, trial_dir: str) -> list[str]:
  """The final_metrics.json files a finished trial has: its own and its single-task baselines'."""
  paths = [os.path.join(trial_dir, 'final_metrics.json')]
  if config.get('single_task_baselines', False) and len(config.tasks) > 1:
    paths += [os.path.join(trial_dir, 'single_task', t, 'final_metrics.json') for t in config.tasks]
  return paths


def is_finished(config, trial_dir: str) -> bool:
  """Finished with this very config: the record says so, the config matches, the metrics exist.
  (A changed config, e.g. more steps, re-runs the trial, which resumes from its checkpoint.)"""
  record = _read_json(os.path.join(trial_dir, TRIAL_RECORD))
  return bool(record and record.get('finished') and record.get('config') == _config_json(config)
              and all(os.path.exists(p) for p in expected_finals(config, trial_dir)))


class Trial(types.SimpleNamespace):
  """index, name, overrides, config, workdir."""


def trials_of(config, workdir: str, sweep_file: str) -> list[Trial]:
  """Every trial with its config (all overrides applied and checked before anything runs)."""
  out = []
  for index, overrides in enumerate(load(sweep_file)):
    name = trial_name(overrides)
    try:
      trial_config = apply_overrides(config, overrides)
    except UserError as e:
      raise UserError(f'{sweep_file}, trial {index} ({name}): {e}') from None
    out.append(Trial(index=index, name=name, overrides=overrides, config=trial_config,
                     workdir=os.path.join(workdir, name)))
  return out


def list_trials(trials: list[Trial], sweep_file: str) -> str:
  """A header, then one line per trial starting with its index (so scripts can count the trials
  with `grep -c '^\\s*[0-9]'`)."""
  width = max(len(t.name) for t in trials)
  lines = [f'Sweep {sweep_file}: {len(trials)} trials (--sweep_index=0..{len(trials) - 1}):']
  for t in trials:
    status = 'finished' if is_finished(t.config, t.workdir) else (
        'started' if os.path.exists(os.path.join(t.workdir, TRIAL_RECORD)) else 'not started')
    lines.append(f'  {t.index:>3}  {t.name:<{width}}  {status:<11}  {t.workdir}')
  return '\n'.join(lines)


def run_trial(trial: Trial, total: int, run_fn) -> None:
  """Runs one trial in its workdir unless it is finished; records its config and completion."""
  import jax  # pylint: disable=g-import-not-at-top
  header = f'[sweep trial {trial.index}/{total - 1}: {trial.name}]'
  if is_finished(trial.config, trial.workdir):
    print(f'{header} finished already (in {trial.workdir}); skipped', flush=True)
    return
  print(f'{header} running in {trial.workdir}', flush=True)
  record = {'index': trial.index, 'name': trial.name, 'overrides': trial.overrides,
            'config': _config_json(trial.config), 'finished': False}
  record_path = os.path.join(trial.workdir, TRIAL_RECORD)
  if jax.process_index() == 0:
    _write_json(record_path, record)
  run_fn(trial.config, trial.workdir)
  if jax.process_index() == 0:
    _write_json(record_path, {**record, 'finished': True, 'finished_at': time.time()})


def _run_parallel(trials: list[Trial], total: int, parallel: int, argv: list[str]) -> int:
  """Each pending trial in its own `launch.py ... --sweep_index=I` process, `parallel` at once;
  each one's output goes to `<trial workdir>/launch.log`. Returns the number that failed."""
  pending = [t for t in trials if not is_finished(t.config, t.workdir)]
  for t in trials:
    if t.index not in {p.index for p in pending}:
      print(f'[sweep trial {t.index}/{total - 1}: {t.name}] finished already; skipped', flush=True)
  env = dict(os.environ)
  # N processes on one accelerator: without this, the first one takes most of its memory.
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  running, failed = [], []
  while pending or running:
    while pending and len(running) < parallel:
      t = pending.pop(0)
      os.makedirs(t.workdir, exist_ok=True)
      log = open(os.path.join(t.workdir, 'launch.log'), 'a')
      command = [sys.executable, *argv, '--sweep_parallel=1', f'--sweep_index={t.index}']
      running.append((t, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env),
                      log))
      print(f'[sweep trial {t.index}/{total - 1}: {t.name}] started (log: {log.name})', flush=True)
    time.sleep(0.2)
    for item in list(running):
      t, process, log = item
      if process.poll() is not None:
        running.remove(item)
        log.close()
        ok = process.returncode == 0
        if not ok:
          failed.append(t)
        print(f'[sweep trial {t.index}/{total - 1}: {t.name}] '
              f'{"done" if ok else f"FAILED (exit code {process.returncode}; see {log.name})"}',
              flush=True)
  return len(failed)


def launch(config, workdir: str, sweep_file: str, *, index=None, parallel: int = 1,
           list_only: bool = False, argv=None, init=None, run_fn=None) -> int:
  """What `launch.py --sweep=FILE` does. Returns the process exit code (0: all trials done).

  `init()` prepares JAX (called before the first trial in this process); `run_fn(config,
  workdir)` runs one trial (default: `train.run`, the multi-task run and its baselines); `argv`
  is the launch command, re-run with `--sweep_index=I` per trial when `parallel > 1`.
  """
  trials = trials_of(config, workdir, sweep_file)
  if list_only:
    print(list_trials(trials, sweep_file), flush=True)
    return 0
  if index is not None and not 0 <= index < len(trials):
    raise UserError(f'--sweep_index={index} is out of range: {sweep_file} has {len(trials)} '
                    f'trials (0..{len(trials) - 1}; --sweep_list prints them)')
  if parallel < 1:
    raise UserError(f'--sweep_parallel={parallel}: must be at least 1')
  _write_json(os.path.join(workdir, SWEEP_RECORD),
              {'sweep_file': os.path.abspath(sweep_file),
               'trials': [{'index': t.index, 'name': t.name, 'overrides': t.overrides}
                          for t in trials]})
  if index is None and parallel > 1:
    if argv is None:
      raise UserError('--sweep_parallel needs the launch command line')
    failed = _run_parallel(trials, len(trials), parallel, list(argv))
    print(f'Sweep: {len(trials) - failed} of {len(trials)} trials done; results: '
          f'python -m mtl_jax.report {workdir}', flush=True)
    return 1 if failed else 0
  if init is not None:
    init()
  if run_fn is None:
    from mtl_jax import train  # pylint: disable=g-import-not-at-top
    run_fn = train.run
  chosen = trials if index is None else [trials[index]]
  if len(chosen) > 1:
    # Every trial's config checked (method, architecture, tasks, data) before any trains.
    from mtl_jax import train  # pylint: disable=g-import-not-at-top
    for t in chosen:
      if not is_finished(t.config, t.workdir):
        try:
          train.setup(t.config)
        except UserError as e:
          raise UserError(f'{sweep_file}, trial {t.index} ({t.name}): {e}') from None
  failed = []
  for t in chosen:
    try:
      run_trial(t, len(trials), run_fn)
    except UserError as e:
      if len(chosen) == 1:
        raise
      print(f'[sweep trial {t.index}: {t.name}] error: {e}', file=sys.stderr, flush=True)
      failed.append(t)
    except Exception:  # pylint: disable=broad-except
      if len(chosen) == 1:
        raise
      traceback.print_exc()
      print(f'[sweep trial {t.index}: {t.name}] FAILED; continuing with the next trial',
            file=sys.stderr, flush=True)
      failed.append(t)
  if len(chosen) > 1:
    print(f'Sweep: {len(chosen) - len(failed)} of {len(chosen)} trials done'
          + (f'; failed: {", ".join(t.name for t in failed)}' if failed else '')
          + f'; results: python -m mtl_jax.report {workdir}', flush=True)
  return 1 if failed else 0
