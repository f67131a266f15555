"""Is training ever input-bound? Each dataset's input pipeline against its config's train step.

For each dataset (or mixture) the experiment config that trains on it is built with
`mtl_jax.train.setup`, exactly as `mtl_jax.train.loop.train_and_evaluate` does, and four things
are timed in alternating rounds (pipeline, pipeline + device transfer, step, loop, then again),
so that machine noise hits all of them alike; the medians over rounds are reported:

* pipeline: `next(it)` on the trainer's own training iterator (`loop.train_iterator`: for a dataset
  `data.train_iterator(columns, batch_size, seed, ..., transform=spec.to_batch)`, for a mixture
  `mixtures.train_iterator`), N batches after a warm-up, batch size of the config;
* pipeline + put: the same plus `sharding.put_batch` (the host-to-device transfer the loop does
  before each step: one array per dtype, see `sharding.PackedBatch`), blocked until the arrays
  are on the device;
* step: the config's train step (`step.make_train_step` under `sharding.jit_train_step`, state from
  `step.create_state` jitted with replicated output, as the loop builds them) on a few batches
  drawn from the same iterator and already on the device (cycled, so a token dataset's several
  bucket shapes all occur), after compilation, `block_until_ready` at the end of each round;
* loop: the loop's own body, `train_step(state, put_batch(next(it)))`, N times: what training
  actually runs at (loop / step well below 1 means the step waits for the host).

The ratio pipeline / step is the headroom (issue 5's target: >= 5x). Examples are rows of the
dataset: sentences for UD English-EWT, molecules for QM9, digit pairs for MultiMNIST.

    python benchmarks/input_pipeline.py [--datasets census_income,ud_english_ewt,...]
        [--rounds 7] [--seconds 0.4] [--data_dir DIR]

`--data_dir` defaults to $TFDS_DATA_DIR, else a new temporary folder (every dataset is then
built first: UD English-EWT takes about a minute, MultiMNIST longer); pass a folder that already
holds them to reuse it.
"""

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import jax
import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/
from experiments.configs import census_mixture
from experiments.configs import default
from experiments.configs import gradnorm_toy as gradnorm_toy_config
from experiments.configs import mmoe_synthetic as mmoe_synthetic_config
from experiments.configs import multi_mnist as multi_mnist_config
from experiments.configs import ud_ewt as ud_ewt_config
from mtl_jax import data as data_lib  # registers the datasets and mixtures
from mtl_jax import train
from mtl_jax.data import qm9
from mtl_jax.train import loop
from mtl_jax.train import sharding


def qm9_config() -> ml_collections.ConfigDict:
  """QM9 has no experiment config; a tiny one sized to the data: the default experiment's keys,
  all 12 targets, one hidden layer of 64 ReLU units (no dropout) on the 144 dense features, and
  batch 32 (the train split has only 399 molecules: 12 batches an epoch; 512 would not fit)."""
  config = default.get_config()
  config.dataset = 'qm9_subset'
  config.tasks = qm9.TARGETS
  config.batch_size = 32
  config.encoder_kwargs = ml_collections.ConfigDict({'hidden_sizes': (64,), 'dropout': 0.0})
  config.best_metric = 'val/avg/rmse'
  config.single_task_baselines = False
  return config


# dataset -> (its config as `launch.py --config=...` names it, the config)
CONFIGS = {
    'census_income': ('default.py', default.get_config),
    'ud_english_ewt': ('ud_ewt.py:hard', lambda: ud_ewt_config.get_config('hard')),
    'mmoe_synthetic_p05': ('mmoe_synthetic.py:mmoe,p=0.5',
                           lambda: mmoe_synthetic_config.get_config('mmoe,p=0.5')),
    'multi_mnist': ('multi_mnist.py', multi_mnist_config.get_config),
    'qm9_subset': ('qm9_config() here', qm9_config),
    'census_income_split': ('census_mixture.py', census_mixture.get_config),
    'gradnorm_toy_t2': ('gradnorm_toy.py', gradnorm_toy_config.get_config),
}


class Bench:
  """One dataset's setup, iterator, device batches, state and jitted step."""

  def __init__(self, name: str, data_dir: str, step_batches: int):
    self.config_name, make_config = CONFIGS[name]
    config = make_config()
    assert config.dataset == name, (config.dataset, name)
    config.data_dir = data_dir
    start = time.perf_counter()
    s = train.setup(config)
    self.setup_s = time.perf_counter() - start
    self.s = s
    self.batch_size = config.batch_size // jax.process_count()
    self.iterator = loop.train_iterator(s)  # what the loop reads
    # The step's batches: from a second copy of the trainer's iterator, on the device already.
    source = loop.train_iterator(s)
    self.device_batches = [sharding.put_batch(next(source), s.mesh) for _ in range(step_batches)]
    # One more batch of each shape the first ones lack (a token dataset's length buckets), only
    # to compile it before anything is timed.
    shape = lambda batch: tuple(x.shape for x in jax.tree.leaves(batch))
    seen, other_shapes = {shape(b) for b in self.device_batches}, []
    for _ in range(200):
      batch = next(source)
      if shape(batch) not in seen:
        seen.add(shape(batch))
        other_shapes.append(sharding.put_batch(batch, s.mesh))
    example = s.spec.to_batch(data_lib.first_rows(s.columns['train'], 2))
    replicated = sharding.replicated(s.mesh)
    self.state = jax.jit(
        lambda rng: train.create_state(s.model, s.method, s.optimizer, rng, example['inputs']),
        out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.train_step = sharding.jit_train_step(
        train.make_train_step(s.model, s.tasks, s.method, s.optimizer, s.mode,
                              config.get('jacobian_chunk_size', 0),
                              config.get('per_task_gradients', 'auto')), s.mesh)
    self._next_batch = 0
    start = time.perf_counter()
    self.steps(len(self.device_batches))  # compiles; then the shapes they lack
    for batch in other_shapes:
      self.state, _ = self.train_step(self.state, batch)
    jax.block_until_ready(self.state)
    self.compile_s = time.perf_counter() - start
    self.pipeline(10)  # warm-up
    self.loop(3)

  def pipeline(self, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
      next(self.iterator)
    return time.perf_counter() - start

  def pipeline_put(self, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
      jax.block_until_ready(sharding.put_batch(next(self.iterator), self.s.mesh))
    return time.perf_counter() - start

  def loop(self, count: int) -> float:
    """The loop's own body: `put_batch(next(it))` then the step, `count` times."""
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    state = self.state
    for _ in range(count):
      state, _ = self.train_step(state, sharding.put_batch(next(self.iterator), self.s.mesh))
    jax.block_until_ready(state)
    self.state = state
    return time.perf_counter() - start

  def steps(self, count: int) -> float:
    jax.block_until_ready(self.state)
    start = time.perf_counter()
    state = self.state
    for _ in range(count):
      batch = self.device_batches[self._next_batch]
      self._next_batch = (self._next_batch + 1) % len(self.device_batches)
      state, _ = self.train_step(state, batch)
    jax.block_until_ready(state)
    self.state = state
    return time.perf_counter() - start


def calibrate(timed, seconds: float, minimum: int) -> int:
  """How many calls of `timed(n)` units fill `seconds`, from a short trial."""
  trial = minimum
  elapsed = timed(trial)
  return max(minimum, int(seconds * trial / max(elapsed, 1e-9)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default=','.join(CONFIGS),
                      help=f'comma-separated, from: {", ".join(CONFIGS)}')
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--seconds', type=float, default=0.4,
                      help='target duration of each timed measurement (sets N batches / steps)')
  parser.add_argument('--step_batches', type=int, default=8,
                      help='distinct device batches the step cycles through')
  parser.add_argument('--data_dir', default=os.environ.get('TFDS_DATA_DIR', ''),
                      help='tfds data folder (default $TFDS_DATA_DIR, else a new temporary one)')
  args = parser.parse_args()
  names = [n.strip() for n in args.datasets.split(',') if n.strip()]
  unknown = [n for n in names if n not in CONFIGS]
  if unknown:
    parser.error(f'unknown dataset(s) {", ".join(unknown)}; valid: {", ".join(CONFIGS)}')
  data_dir = args.data_dir or tempfile.mkdtemp(prefix='mtl_jax_input_pipeline_')
  load_before = os.getloadavg()
  started = datetime.datetime.now(datetime.timezone.utc)
  print(f'data_dir: {data_dir}', flush=True)

  rows = []
  for name in names:
    bench = Bench(name, data_dir, args.step_batches)
    n_pipe = calibrate(bench.pipeline, args.seconds, 20)
    n_put = calibrate(bench.pipeline_put, args.seconds, 20)
    n_step = calibrate(bench.steps, args.seconds, 3)
    n_loop = calibrate(bench.loop, args.seconds, 3)
    pipe, put, step, whole = [], [], [], []
    for _ in range(args.rounds):
      pipe.append(n_pipe * bench.batch_size / bench.pipeline(n_pipe))
      put.append(n_put * bench.batch_size / bench.pipeline_put(n_put))
      step.append(n_step * bench.batch_size / bench.steps(n_step))
      whole.append(n_loop * bench.batch_size / bench.loop(n_loop))
    pipe, put, step, whole = (statistics.median(x) for x in (pipe, put, step, whole))
    row = dict(name=name, config=bench.config_name, batch=bench.batch_size,
               params=bench.num_params, mode=bench.s.mode, n_pipe=n_pipe, n_step=n_step,
               pipe=pipe, put=put, step=step, loop=whole, setup_s=bench.setup_s,
               compile_s=bench.compile_s)
    rows.append(row)
    print(f'{name}: pipeline {pipe:,.0f} ex/s, +put {put:,.0f} ex/s, step {step:,.0f} ex/s, '
          f'loop {whole:,.0f} ex/s, ratio {pipe / step:.1f} (setup {bench.setup_s:.1f} s, '
          f'compile + first steps {bench.compile_s:.1f} s)', flush=True)
    del bench

  device = jax.devices()[0]
  print()
  print(f'Date: {started:%Y-%m-%d %H:%M} UTC. Device: {device.platform.upper()} '
        f'({device.device_kind}) x{len(jax.devices())}, {os.cpu_count()} CPU cores visible. '
        f'JAX {jax.__version__}. Load average (1 min) before/after: {load_before[0]:.1f} / '
        f'{os.getloadavg()[0]:.1f}.')
  print(f'Command: `python {" ".join(sys.argv)}`; {args.rounds} rounds, medians.')
  print()
  print('| dataset | config | batch | params | pipeline ex/s | pipeline + put ex/s | '
        'step ex/s | loop ex/s | pipeline / step (target ≥ 5) | (pipeline + put) / step | '
        'loop / step |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    ratio = r['pipe'] / r['step']
    ratio = f'{ratio:.1f}' if ratio >= 5 else f'**{ratio:.1f} (not met)**'
    print(f'| {r["name"]} | {r["config"]} | {r["batch"]} | {r["params"]:,} | {r["pipe"]:,.0f} | '
          f'{r["put"]:,.0f} | {r["step"]:,.0f} | {r["loop"]:,.0f} | {ratio} | '
          f'{r["put"] / r["step"]:.1f} | {r["loop"] / r["step"]:.2f} |')


if __name__ == '__main__':
  main()
