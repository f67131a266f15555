"""mtl_jax against the PyTorch packages LibMTL and TorchJD: steps/s of the same training step.

The same model (a hard-shared MLP trunk 256 -> 512 -> 256 with K linear binary heads, batch 256;
or a small CNN: two 3x3 conv + 2x2 max-pool blocks (16, 32 channels) and a dense layer of 128 on
28x28x1 images, batch 128), the same initial weights (mtl_jax initialises them, the PyTorch side
loads them, transposed to its layouts), the same batch of random data, the same optimiser (Adam,
lr 1e-3) and the same method, trained:

* in mtl_jax: `mtl_jax.train.step.make_train_step` under `sharding.jit_train_step`, the registered
  method in "jacobian" mode (per-task gradients of the shared parameters, what LibMTL's default
  `rep_grad=False` computes with K backward passes) and, as an extra column, "rep" mode (per-task
  gradients at the trunk's output); EW also in "weighted" mode (one backward pass, like LibMTL's
  EW);
* in LibMTL 1.1.5 (EW, PCGrad, MGDA, CAGrad), as its `Trainer` does: the model is the class
  `Trainer._prepare_model` builds (`HPS` + the weighting class), and a step is the body of
  `Trainer.train`'s loop: `optimizer.zero_grad()`, the forward pass, the loss vector,
  `model.backward(losses, **weight_args)`, `optimizer.step()`;
* in TorchJD 0.18 (UPGrad, Nash-MTL, and the others as an extra column) as its README's
  multi-task example: `mtl_backward(losses, features=features)`,
  `jac_to_grad(trunk.parameters(), aggregator)`, `optimizer.step()`.

What could not be used as shipped, and what stands in (printed with the results):

* LibMTL 1.1.5, the only LibMTL release on PyPI, has no Nash-MTL (it came later, on GitHub only):
  Nash-MTL is compared with TorchJD's `NashMTL`, which, like LibMTL's later `Nash_MTL`, adapts the
  authors' cvxpy/ECOS code (same defaults: 20 iterations, max_norm 1, weights every step).
* LibMTL 1.1.5's `CAGrad.backward` writes its SLSQP objective for exactly 3 tasks
  (`x.reshape(1,3)`), so it raises at any other K. The benchmark replaces the `minimize` that module
  calls by one that rebuilds the same objective for K tasks from the original's closure (A = G,
  b = 1/K, c) and calls scipy's `minimize` with the original arguments; nothing else changes.
* `import LibMTL` imports its model zoo, which imports `torchvision.models.utils` (removed from
  torchvision in 2022): a stub module satisfies that import; the zoo is not used.
* `Trainer` itself hard-codes `torch.device('cuda:0')`, so the benchmark builds the same model class
  and optimiser that `Trainer.__init__` builds, on the CPU, and runs its loop body.

The PyTorch side runs in its own virtual environment (created once, cached: `--torch_venv`,
default ~/.cache/mtl_jax/bench-torch-venv; `pip install torch==2.13.0 numpy scipy cvxpy ecos
quadprog qpsolvers`, then `pip install --no-deps torchjd==0.18.0 libmtl==1.1.5` so that neither
can move torch), as a worker process that this one drives over stdin/stdout (JSON lines: "build
configuration X", "run N steps of X" -> seconds). Neither mtl_jax nor its tests need torch.

Timing: every configuration (JAX and PyTorch) is built and warmed up first, its steps per round
calibrated to about `--round_ms`; then each round runs every configuration once, in a fresh random
order, one process at a time (the worker blocks on stdin while JAX runs, and JAX is idle while the
worker runs). Tables show the median steps/s over rounds, and for each ratio the median over
rounds of the per-round ratio (the two were measured seconds apart). Threads: torch uses
`torch.set_num_threads(os.cpu_count())` (intra-op; 1 inter-op thread); JAX uses XLA:CPU's default
thread pool, one thread per core.

Correctness: from the same initial weights and batch, one step of each method's combined gradient of
the shared parameters (JAX: SGD with lr 1, the parameter change; PyTorch: the `.grad` fields after
the backward) is compared by cosine and norm ratio.

    python benchmarks/vs_pytorch.py               # K = 8, MLP and CNN (14 min on 2 loaded cores)
    python benchmarks/vs_pytorch.py --ks 2,8,16 --models mlp --rounds 5
"""

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

METHODS = ('ew', 'pcgrad', 'mgda', 'cagrad', 'nash_mtl', 'upgrad')
LEARNING_RATE = 1e-3
MLP_INPUT, MLP_HIDDEN = 256, (512, 256)
CNN_INPUT, CNN_CHANNELS, CNN_HIDDEN = (28, 28, 1), (16, 32), (128,)
BATCH = {'mlp': 256, 'cnn': 128}
# The PyTorch packages that implement each method (the first is the one the targets name).
IMPLEMENTATIONS = {'ew': ('libmtl', 'torchjd'), 'pcgrad': ('libmtl', 'torchjd'),
                   'mgda': ('libmtl', 'torchjd'), 'cagrad': ('libmtl', 'torchjd'),
                   'nash_mtl': ('torchjd',), 'upgrad': ('torchjd',)}
# Issue 8's targets: mtl_jax steps/s over the package's, at K = 8.
TARGETS = {'pcgrad': ('libmtl', 3.0), 'mgda': ('libmtl', 3.0), 'cagrad': ('libmtl', 3.0),
           'nash_mtl': ('torchjd', 10.0), 'upgrad': ('torchjd', 1.5)}
LIBMTL_WEIGHT_ARGS = {'ew': {}, 'pcgrad': {}, 'mgda': {'mgda_gn': 'none'},
                      'cagrad': {'calpha': 0.5, 'rescale': 1}}
DEFAULT_VENV = os.path.expanduser('~/.cache/mtl_jax/bench-torch-venv')
TORCH_REQUIREMENTS = ('torch==2.13.0', 'numpy', 'scipy', 'cvxpy', 'ecos', 'quadprog', 'qpsolvers')
NO_DEPS_REQUIREMENTS = ('torchjd==0.18.0', 'libmtl==1.1.5')


def log(*args):
  print(*args, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ layouts shared by both sides


def torch_layout(model: str, shared: dict, heads: list) -> tuple[list, list]:
  """mtl_jax's parameters as numpy arrays in PyTorch's layouts and `parameters()` order.

  `shared`: the trunk's params (`params['shared']['encoder']`); `heads`: each task's head params.
  Returns (trunk arrays, head arrays as [weight, bias] per task). Dense kernels [in, out] become
  weights [out, in]; conv kernels [kh, kw, in, out] become [out, in, kh, kw]; the dense layer after
  the CNN's flatten has its inputs reordered from (h, w, c) to PyTorch's (c, h, w).
  """
  np_ = lambda x: np.asarray(x, np.float32)  # pylint: disable=unnecessary-lambda-assignment
  trunk = []
  if model == 'mlp':
    for i in range(len(MLP_HIDDEN)):
      layer = shared[f'Dense_{i}']
      trunk += [np_(layer['kernel']).T, np_(layer['bias'])]
  else:
    for i in range(len(CNN_CHANNELS)):
      layer = shared[f'Conv_{i}']
      trunk += [np_(layer['kernel']).transpose(3, 2, 0, 1), np_(layer['bias'])]
    side = CNN_INPUT[0] // 2 ** len(CNN_CHANNELS)
    for i in range(len(CNN_HIDDEN)):
      kernel = np_(shared[f'Dense_{i}']['kernel'])
      if i == 0:
        kernel = kernel.reshape(side, side, CNN_CHANNELS[-1], -1).transpose(3, 2, 0, 1)
        kernel = kernel.reshape(kernel.shape[0], -1)
      else:
        kernel = kernel.T
      trunk += [kernel, np_(shared[f'Dense_{i}']['bias'])]
  head_arrays = [[np_(h['Dense_0']['kernel']).T, np_(h['Dense_0']['bias'])] for h in heads]
  return [np.ascontiguousarray(a) for a in trunk], head_arrays


def flat(arrays) -> np.ndarray:
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


# ------------------------------------------------------------------ the PyTorch worker


def worker_main(threads: int) -> None:
  """Runs in the torch venv: one JSON request per stdin line, one JSON answer per stdout line."""
  out = sys.stdout
  sys.stdout = sys.stderr  # libraries that print must not corrupt the protocol
  import types  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  torch.set_num_interop_threads(1)
  # LibMTL's package __init__ imports its model zoo, which needs `torchvision.models.utils` (gone
  # from torchvision since 0.13). Only the weighting and architecture classes are used here.
  for name in ('torchvision', 'torchvision.models', 'torchvision.models.utils'):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules['torchvision.models.utils'].load_state_dict_from_url = None
  import LibMTL  # pylint: disable=import-outside-toplevel,unused-import
  import scipy.optimize  # pylint: disable=import-outside-toplevel
  import torchjd  # pylint: disable=import-outside-toplevel,unused-import
  from importlib import metadata  # pylint: disable=import-outside-toplevel

  def minimize_any_k(fun, x0, **kwargs):
    """LibMTL 1.1.5's CAGrad objective, `x.reshape(1,3)...`, works for 3 tasks only: the same
    objective x^T A b + c sqrt(x^T A x + 1e-8) for any K, from the original's closure."""
    cells = dict(zip(fun.__code__.co_freevars, (c.cell_contents for c in fun.__closure__)))
    a, b, c = cells['A'], cells['b'], cells['c']
    return scipy.optimize.minimize(lambda x: x @ a @ b + c * np.sqrt(x @ a @ x + 1e-8), x0,
                                   **kwargs)

  # The module, not `LibMTL.weighting.CAGrad` (the package's attribute of that name is the class).
  sys.modules['LibMTL.weighting.CAGrad'].minimize = minimize_any_k
  configs = {}

  def handle(req):
    cmd = req['cmd']
    if cmd == 'versions':
      return {'torch': torch.__version__, 'torchjd': metadata.version('torchjd'),
              'libmtl': metadata.version('LibMTL'), 'scipy': metadata.version('scipy'),
              'cvxpy': metadata.version('cvxpy'), 'threads': torch.get_num_threads(),
              'interop_threads': torch.get_num_interop_threads()}
    if cmd == 'build':
      step, probe, num_params = torch_config(torch, req)
      configs[req['key']] = (step, probe)
      step()  # first step: allocations, lazy initialisation (cvxpy builds its problem here)
      return {'params': num_params}
    if cmd == 'run':
      step = configs[req['key']][0]
      start = time.perf_counter()
      for _ in range(req['steps']):
        step()
      return {'seconds': time.perf_counter() - start}
    if cmd == 'direction':
      _, probe, _ = torch_config(torch, req)
      np.save(req['out'], probe())
      return {}
    if cmd == 'drop':
      configs.pop(req['key'], None)
      return {}
    raise ValueError(f'unknown command {cmd!r}')

  for line in sys.stdin:
    req = json.loads(line)
    try:
      answer = handle(req)
    except Exception as e:  # pylint: disable=broad-except
      answer = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'}
    out.write(json.dumps(answer) + '\n')
    out.flush()


def torch_config(torch, req):
  """Builds one PyTorch configuration from the arrays in req['npz']: returns (step, probe,
  parameter count); `probe()` runs the step's backward part once and returns the trunk's combined
  gradient, flattened in `parameters()` order."""
  from torch import nn  # pylint: disable=import-outside-toplevel
  data = np.load(req['npz'])
  model, method, impl, k = req['model'], req['method'], req['impl'], req['num_tasks']
  if model == 'mlp':
    layers, width = [], MLP_INPUT
    for size in MLP_HIDDEN:
      layers += [nn.Linear(width, size), nn.ReLU()]
      width = size
    x = torch.from_numpy(data['x'])
  else:
    layers, channels = [], CNN_INPUT[2]
    for size in CNN_CHANNELS:
      layers += [nn.Conv2d(channels, size, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
      channels = size
    layers.append(nn.Flatten())
    width = channels * (CNN_INPUT[0] // 2 ** len(CNN_CHANNELS)) ** 2
    for size in CNN_HIDDEN:
      layers += [nn.Linear(width, size), nn.ReLU()]
      width = size
    x = torch.from_numpy(np.ascontiguousarray(data['x'].transpose(0, 3, 1, 2)))  # NHWC -> NCHW
  trunk = nn.Sequential(*layers)
  heads = nn.ModuleDict({f't{i}': nn.Linear(width, 1) for i in range(k)})
  with torch.no_grad():
    for i, p in enumerate(trunk.parameters()):
      p.copy_(torch.from_numpy(data[f'trunk_{i}']))
    for i in range(k):
      heads[f't{i}'].weight.copy_(torch.from_numpy(data[f'head_{i}_w']))
      heads[f't{i}'].bias.copy_(torch.from_numpy(data[f'head_{i}_b']))
  y = torch.from_numpy(data['y'])  # [K, B] float 0/1
  bce = nn.functional.binary_cross_entropy_with_logits
  names = [f't{i}' for i in range(k)]
  num_params = sum(p.numel() for p in trunk.parameters()) + sum(
      p.numel() for p in heads.parameters())
  shared = list(trunk.parameters())

  def trunk_grad():
    return np.concatenate([p.grad.detach().numpy().astype(np.float64).ravel() for p in shared])

  if impl == 'libmtl':
    from LibMTL import weighting as libmtl_weighting  # pylint: disable=import-outside-toplevel
    from LibMTL.architecture import HPS  # pylint: disable=import-outside-toplevel
    weighting = {'ew': libmtl_weighting.EW, 'pcgrad': libmtl_weighting.PCGrad,
                 'mgda': libmtl_weighting.MGDA, 'cagrad': libmtl_weighting.CAGrad}[method]

    # What `Trainer._prepare_model` builds, on the CPU (Trainer hard-codes cuda:0).
    class MTLmodel(HPS, weighting):  # pylint: disable=abstract-method

      def __init__(self):
        super().__init__(task_name=names, encoder_class=lambda: trunk, decoders=heads,
                         rep_grad=False, multi_input=False, device=torch.device('cpu'))
        self.init_param()

      def zero_grad_share_params(self):
        # LibMTL 1.1.5 predates torch 2.0, whose `zero_grad` sets `.grad` to None by default; its
        # `_reset_grad` then writes into `param.grad.data` of None. Zeros, as torch 1.x did.
        self.encoder.zero_grad(set_to_none=False)

    mtl = MTLmodel()
    optimizer = torch.optim.Adam(mtl.parameters(), lr=LEARNING_RATE)
    weight_args = LIBMTL_WEIGHT_ARGS[method]

    def backward():
      preds = mtl(x)
      losses = torch.zeros(k)  # as Trainer._compute_loss
      for i, name in enumerate(names):
        losses[i] = bce(preds[name][:, 0], y[i])
      mtl.backward(losses, **weight_args)

    def step():  # the body of Trainer.train's loop
      optimizer.zero_grad()
      backward()
      optimizer.step()

    def probe():
      optimizer.zero_grad()
      backward()
      return trunk_grad()

    return step, probe, num_params

  from torchjd import aggregation  # pylint: disable=import-outside-toplevel
  from torchjd.autojac import jac_to_grad, mtl_backward  # pylint: disable=import-outside-toplevel
  aggregator = {'ew': aggregation.Sum, 'pcgrad': aggregation.PCGrad, 'mgda': aggregation.MGDA,
                'cagrad': lambda: aggregation.CAGrad(c=0.5),
                'nash_mtl': lambda: aggregation.NashMTL(n_tasks=k), 'upgrad': aggregation.UPGrad,
                }[method]()
  optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=LEARNING_RATE)

  def backward():
    features = trunk(x)
    losses = [bce(heads[name](features)[:, 0], y[i]) for i, name in enumerate(names)]
    mtl_backward(losses, features=features)
    jac_to_grad(trunk.parameters(), aggregator)

  def step():  # TorchJD's README: Jacobian descent in a multi-task loop
    backward()
    optimizer.step()
    optimizer.zero_grad()

  def probe():
    optimizer.zero_grad()
    backward()
    return trunk_grad()

  return step, probe, num_params


# ------------------------------------------------------------------ the driver (JAX side)


def ensure_torch_venv(path: str) -> str:
  """The PyTorch environment's python, creating the venv on first use."""
  python = os.path.join(path, 'bin', 'python')
  # LibMTL is not imported here: its package import needs the worker's torchvision stub.
  probe = [python, '-c', 'import torch, torchjd, scipy, cvxpy; from importlib import metadata; '
           'metadata.version("LibMTL")']
  env = {**os.environ, 'PYTHONPATH': ''}
  if os.path.exists(python) and subprocess.run(probe, capture_output=True, check=False,
                                               env=env).returncode == 0:
    return python
  log(f'creating the PyTorch environment in {path} (once)')
  subprocess.run([sys.executable, '-m', 'venv', path], check=True)
  pip = [python, '-m', 'pip', 'install', '--quiet']
  # Pinned torch: the CPU wheel; torchjd and LibMTL without their dependencies, so that neither
  # upgrades torch (LibMTL asks for torchvision, which only its unused model zoo imports).
  subprocess.run(pip + list(TORCH_REQUIREMENTS), check=True)
  subprocess.run(pip + ['--no-deps'] + list(NO_DEPS_REQUIREMENTS), check=True)
  return python


class Worker:
  """The PyTorch worker process and its request/answer protocol."""

  def __init__(self, python: str, threads: int, omp_wait_policy: str):
    # GNU OpenMP's default (active) waiting spins torch's threads between parallel regions; on a
    # machine whose cores are shared with other processes that made torch's steps 10-40x slower
    # here (load 10 on 2 cores), which would measure the machine rather than the packages.
    env = {**os.environ, 'PYTHONPATH': '', 'OMP_WAIT_POLICY': omp_wait_policy}
    self.proc = subprocess.Popen(
        [python, os.path.abspath(__file__), '--worker', '--threads', str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

  def ask(self, **req):
    self.proc.stdin.write(json.dumps(req) + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError('the PyTorch worker exited (its stderr is above)')
    answer = json.loads(line)
    if 'error' in answer:
      raise RuntimeError(answer['error'])
    return answer

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)


class Config:
  """One timed configuration: `run(n)` takes n steps, blocks until done, returns seconds."""

  def __init__(self, name, method, side, run):
    self.name, self.method, self.side, self.run = name, method, side, run
    self.steps = 1
    self.times: list[float] = []


def make_problem(model_name: str, num_tasks: int, seed: int = 0):
  """(tasks, model, host batch) for mtl_jax; labels are random 0/1, inputs standard normal."""
  from mtl_jax import models  # pylint: disable=import-outside-toplevel
  from mtl_jax.tasks import Task  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  tasks = tuple(Task(f't{k}', 'binary') for k in range(num_tasks))
  batch_size = BATCH[model_name]
  if model_name == 'mlp':
    model = models.build('hard', tasks, models.inputs.Identity(), 'mlp',
                         {'hidden_sizes': MLP_HIDDEN})
    inputs = rng.normal(size=(batch_size, MLP_INPUT)).astype(np.float32)
  else:
    model = models.build('hard', tasks, models.inputs.Identity(), 'cnn',
                         {'channels': CNN_CHANNELS, 'hidden_sizes': CNN_HIDDEN})
    inputs = rng.normal(size=(batch_size,) + CNN_INPUT).astype(np.float32)
  batch = {'inputs': inputs,
           'labels': {t.name: rng.integers(0, 2, batch_size).astype(np.int32) for t in tasks},
           'label_mask': {t.name: np.ones(batch_size, bool) for t in tasks}}
  return tasks, model, batch


def jax_method(name, num_tasks, seed=0):
  from mtl_jax.optim import registry  # pylint: disable=import-outside-toplevel
  return registry.get(name, num_tasks, **({'seed': seed} if name == 'pcgrad' else {}))


def export_problem(path, model_name, tasks, model, batch):
  """Writes the initial weights (as `create_state` draws them) and the batch for the worker;
  returns the number of parameters."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  example = batch['inputs'][:2]
  state = step_lib.create_state(model, jax_method('ew', len(tasks)), optax.adam(LEARNING_RATE),
                                jax.random.PRNGKey(0), example)
  params = jax.device_get(state.params)
  trunk, heads = torch_layout(model_name, params['shared']['encoder'],
                              [params['tasks'][t.name] for t in tasks])
  arrays = {'x': batch['inputs'],
            'y': np.stack([batch['labels'][t.name] for t in tasks]).astype(np.float32)}
  arrays.update({f'trunk_{i}': a for i, a in enumerate(trunk)})
  for i, (w, b) in enumerate(heads):
    arrays[f'head_{i}_w'], arrays[f'head_{i}_b'] = w, b
  np.savez(path, **arrays)
  return sum(x.size for x in jax.tree.leaves(params))


def jax_config(name, method_name, mode, model, tasks, mesh, device_batch, example,
               **step_kwargs):
  """The jitted, state-donating mtl_jax step as a `Config` (`step_kwargs` go to
  `make_train_step`, e.g. `per_task_gradients`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import sharding  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  method = jax_method(method_name, len(tasks))
  tx = optax.adam(LEARNING_RATE)
  step = sharding.jit_train_step(
      step_lib.make_train_step(model, tasks, method, tx, mode, **step_kwargs), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  holder = {'state': sharding.put_replicated(jax.tree.map(jnp.copy, state), mesh)}
  holder['step'] = step.lower(holder['state'], device_batch).compile()

  def run(n):
    state, compiled = holder['state'], holder['step']
    start = time.perf_counter()
    for _ in range(n):
      state, _ = compiled(state, device_batch)
    jax.block_until_ready(state)
    holder['state'] = state
    return time.perf_counter() - start

  run(1)
  return Config(name, method_name, f'jax/{mode}', run)


def jax_direction(method_name, model_name, model, tasks, batch, example, seed=0):
  """One step's combined gradient of the trunk, in PyTorch's layout (SGD, lr 1: the change)."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import sharding  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  method = jax_method(method_name, len(tasks), seed)
  tx = optax.sgd(1.0)
  step = jax.jit(step_lib.make_train_step(model, tasks, method, tx, 'jacobian'))
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  before = jax.device_get(state.params['shared']['encoder'])
  after = jax.device_get(step(state, batch)[0].params['shared']['encoder'])
  change = jax.tree.map(lambda a, b: a - b, before, after)
  trunk, _ = torch_layout(model_name, change, [])
  return flat(trunk)


def cosine(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def run_problem(model_name, num_tasks, worker, args, tmpdir):
  """Builds, checks and times every configuration of one (model, K)."""
  import jax  # pylint: disable=import-outside-toplevel
  from mtl_jax.train import sharding  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh()
  tasks, model, batch = make_problem(model_name, num_tasks)
  example = batch['inputs'][:2]
  device_batch = sharding.put_batch(batch, mesh)
  npz = os.path.join(tmpdir, f'{model_name}_{num_tasks}.npz')
  num_params = export_problem(npz, model_name, tasks, model, batch)
  methods = [m for m in args.methods.split(',') if m]
  common = {'npz': npz, 'model': model_name, 'num_tasks': num_tasks}
  result = {'params': num_params, 'checks': [], 'errors': {}}

  # Correctness: the same step's direction on both sides.
  for method in methods:
    if method == 'ew' or args.skip_checks:
      continue
    ours = jax_direction(method, model_name, model, tasks, batch, example)
    line = f'{method}:'
    if method == 'pcgrad':  # the task order is random on every side: our own spread first
      other = jax_direction(method, model_name, model, tasks, batch, example, seed=1)
      line += f' mtl_jax seed 0 vs seed 1 cos {cosine(ours, other):.4f};'
    for impl in IMPLEMENTATIONS[method]:
      out = os.path.join(tmpdir, 'direction.npy')
      try:
        worker.ask(cmd='direction', method=method, impl=impl, out=out, **common)
      except RuntimeError as e:
        line += f' {impl}: fails ({e});'
        continue
      theirs = np.load(out)
      line += (f' vs {impl} cos {cosine(ours, theirs):.4f}, norm ratio '
               f'{np.linalg.norm(ours) / (np.linalg.norm(theirs) + 1e-30):.3f};')
    result['checks'].append(line)
    log(f'  check {model_name} K={num_tasks} {line}')

  configs = []
  for method in methods:
    modes = (['weighted'] if method == 'ew' else []) + ['jacobian'] + (['rep'] if args.rep else [])
    for mode in modes:
      t0 = time.perf_counter()
      configs.append(jax_config(f'{method}/jax/{mode}', method, mode, model, tasks, mesh,
                                device_batch, example))
      log(f'  built {method}/jax/{mode} ({time.perf_counter() - t0:.1f} s)')
    for impl in IMPLEMENTATIONS[method]:
      if impl not in args.impls.split(','):
        continue
      key = f'{model_name}/{num_tasks}/{method}/{impl}'
      t0 = time.perf_counter()
      try:
        built = worker.ask(cmd='build', key=key, method=method, impl=impl, **common)
      except RuntimeError as e:
        result['errors'][f'{method}/{impl}'] = str(e)
        log(f'  {method}/{impl}: fails: {e}')
        continue
      if built['params'] != num_params:
        raise SystemExit(f'parameter count differs: mtl_jax {num_params}, torch {built["params"]}')
      run = lambda n, key=key: worker.ask(cmd='run', key=key, steps=n)['seconds']
      configs.append(Config(f'{method}/{impl}', method, impl, run))
      log(f'  built {method}/{impl} ({time.perf_counter() - t0:.1f} s)')

  for config in configs:
    one = config.run(1)
    config.steps = int(min(50, max(1, round(args.round_ms / 1e3 / max(one, 1e-6)))))
  rng = random.Random(0)
  for r in range(args.rounds):
    t0 = time.perf_counter()
    for config in rng.sample(configs, len(configs)):
      config.times.append(config.run(config.steps) / config.steps)
    log(f'  {model_name} K={num_tasks} round {r + 1}/{args.rounds}: '
        f'{time.perf_counter() - t0:.1f} s')
  for config in configs:
    if config.side not in ('jax/weighted', 'jax/jacobian', 'jax/rep'):
      worker.ask(cmd='drop', key=f'{model_name}/{num_tasks}/{config.name}')
  result['configs'] = {c.name: c.times for c in configs}
  return result


def summarize(result, methods):
  """Markdown table: steps/s (median over rounds) and per-round ratios (median)."""
  times = result['configs']
  sps = {name: 1.0 / statistics.median(t) for name, t in times.items()}

  def ratio(ours, theirs):
    if ours not in times or theirs not in times:
      return None
    return statistics.median(b / a for a, b in zip(times[ours], times[theirs]))

  def fmt(value, spec='.2f'):
    return '' if value is None else format(value, spec)

  lines = ['| method | mtl_jax jacobian | mtl_jax rep | LibMTL | TorchJD | jacobian / LibMTL '
           '| rep / LibMTL | jacobian / TorchJD | rep / TorchJD | target |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  verdicts = []
  for method in methods:
    jac = 'ew/jax/weighted' if method == 'ew' else f'{method}/jax/jacobian'
    rep = f'{method}/jax/rep'
    cells = [fmt(sps.get(jac), '.1f') + (' (weighted)' if method == 'ew' else ''),
             fmt(sps.get(rep), '.1f'),
             fmt(sps.get(f'{method}/libmtl'), '.1f') or ('fails' if f'{method}/libmtl' in
                                                         result['errors'] else '-'),
             fmt(sps.get(f'{method}/torchjd'), '.1f') or ('fails' if f'{method}/torchjd' in
                                                          result['errors'] else '-')]
    ratios = [ratio(jac, f'{method}/libmtl'), ratio(rep, f'{method}/libmtl'),
              ratio(jac, f'{method}/torchjd'), ratio(rep, f'{method}/torchjd')]
    target = ''
    if method in TARGETS:
      impl, want = TARGETS[method]
      got = ratio(jac, f'{method}/{impl}')
      if got is not None:
        met = 'met' if got >= want else 'NOT met'
        target = f'>= {want:g}x {impl}: {met}'
        verdicts.append(f'{method}: {got:.2f}x {impl} (target {want:g}x, jacobian mode): {met}')
    lines.append(f'| {method} | ' + ' | '.join(cells + [fmt(r) for r in ratios] + [target]) + ' |')
  return '\n'.join(lines), verdicts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1,
                      help='torch.set_num_threads for the PyTorch side (JAX uses every core)')
  parser.add_argument('--omp_wait_policy', default='PASSIVE',
                      help="OMP_WAIT_POLICY of the PyTorch worker ('' for OpenMP's default)")
  parser.add_argument('--torch_venv', default=DEFAULT_VENV)
  parser.add_argument('--models', default='mlp,cnn')
  parser.add_argument('--ks', default='8')
  parser.add_argument('--cnn_ks', default='8', help='the K values for the CNN (subset of --ks)')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--impls', default='libmtl,torchjd')
  parser.add_argument('--no_rep', dest='rep', action='store_false', help='skip the "rep" column')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--round_ms', type=float, default=250.0,
                      help='work per configuration per round (steps = this / 1 step, 1 to 50)')
  parser.add_argument('--skip_checks', action='store_true')
  args = parser.parse_args(argv)
  if args.worker:
    worker_main(args.threads)
    return 0

  import jax  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  python = ensure_torch_venv(args.torch_venv)
  worker = Worker(python, args.threads, args.omp_wait_policy)
  versions = worker.ask(cmd='versions')
  methods = [m for m in args.methods.split(',') if m]
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo', encoding='utf-8')
              if line.startswith('model name')), platform.processor())
  header = (f'date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; cpu: {cpu} '
            f'({os.cpu_count()} cores); load average before: {os.getloadavg()[0]:.1f}; '
            f'jax {jax.__version__} ({jax.devices()[0].device_kind} x{len(jax.devices())}); '
            f'torch {versions["torch"]} ({versions["threads"]} threads, '
            f'{versions["interop_threads"]} inter-op); torchjd {versions["torchjd"]}; '
            f'LibMTL {versions["libmtl"]}; scipy {versions["scipy"]}; cvxpy {versions["cvxpy"]}; '
            f'Adam lr {LEARNING_RATE}; rounds {args.rounds}')
  log(header)
  results = {}
  with tempfile.TemporaryDirectory() as tmpdir:
    for model_name in [m for m in args.models.split(',') if m]:
      ks = args.ks if model_name == 'mlp' else args.cnn_ks
      for k in [int(k) for k in ks.split(',') if k]:
        t0 = time.perf_counter()
        results[model_name, k] = run_problem(model_name, k, worker, args, tmpdir)
        log(f'{model_name} K={k}: {time.perf_counter() - t0:.0f} s')
  worker.close()
  print(header + f'; load average after: {os.getloadavg()[0]:.1f}; whole run '
        f'{time.perf_counter() - started:.0f} s')
  all_verdicts = []
  for (model_name, k), result in results.items():
    desc = (f'MLP {MLP_INPUT}->{"->".join(map(str, MLP_HIDDEN))}' if model_name == 'mlp' else
            f'CNN {"x".join(map(str, CNN_INPUT))} conv{CNN_CHANNELS} dense{CNN_HIDDEN}')
    print(f'\n### {desc} + {k} binary heads, batch {BATCH[model_name]}, '
          f'{result["params"]:,} parameters: steps/s, ratio = mtl_jax / PyTorch steps/s\n')
    table, verdicts = summarize(result, methods)
    print(table)
    for name, error in result['errors'].items():
      print(f'- {name}: fails: {error}')
    if result['checks']:
      print('\nSame step, combined trunk gradient, mtl_jax ("jacobian") against the package:')
      for line in result['checks']:
        print(f'- {line}')
    all_verdicts += [f'{model_name} K={k}: {v}' for v in verdicts if k == 8]
  if all_verdicts:
    print('\nTargets (K = 8):')
    for v in all_verdicts:
      print(f'- {v}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
