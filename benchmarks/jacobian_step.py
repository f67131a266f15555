"""Where a "jacobian"-mode step's time goes: the step against the arithmetic it cannot avoid.

    python benchmarks/jacobian_step.py                 # vs_pytorch.py's MLP at K = 8
    python benchmarks/jacobian_step.py --model cnn     # its CNN (no GEMM floor printed)

On `benchmarks/vs_pytorch.py`'s model and batch, side by side in alternating rounds (median
ms/step, and the ratio to the "weighted" EW step):

* EW "weighted": one backward pass of the summed loss;
* EW and UPGrad in "jacobian" mode, the K per-task backward passes unrolled in one program (the
  CPU default up to K = 16) and vmapped;
* UPGrad in "rep" mode;
* MLP only: the GEMMs of K backward passes through the trunk, alone (weight gradients of both
  layers and the cotangent through the second), batched over the K tasks: the floor under any
  "jacobian" step of this model, and its GFLOP/s.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from mtl_jax.train import sharding

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_pytorch  # pylint: disable=wrong-import-position


def timed_step(model, tasks, mesh, device_batch, example, method_name, mode, **step_kwargs):
  """`run(n)`: n steps of `vs_pytorch`'s jitted step; seconds per step."""
  config = vs_pytorch.jax_config(f'{method_name}/{mode}', method_name, mode, model, tasks, mesh,
                                 device_batch, example, **step_kwargs)
  return lambda n: config.run(n) / n


def trunk_gemms(num_tasks: int, batch_size: int):
  """`run(n)` of the MLP trunk's K backward GEMMs alone, and their FLOPs."""
  d_in, (d_hidden, d_out) = vs_pytorch.MLP_INPUT, vs_pytorch.MLP_HIDDEN
  ones = lambda *shape: jnp.ones(shape, jnp.float32)  # pylint: disable=unnecessary-lambda-assignment
  args = (ones(batch_size, d_in), ones(batch_size, d_hidden), ones(d_hidden, d_out),
          ones(num_tasks, batch_size, d_out), ones(num_tasks, batch_size, d_hidden))

  @jax.jit
  def gemms(x, hidden, kernel, out_cotangent, hidden_cotangent):
    second = jnp.einsum('bi,kbo->kio', hidden, out_cotangent)
    back = jnp.einsum('kbo,io->kbi', out_cotangent, kernel)
    first = jnp.einsum('bi,kbo->kio', x, hidden_cotangent + back)
    return first, second

  def run(n):
    start = time.perf_counter()
    for _ in range(n):
      out = gemms(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n

  run(2)
  flops = 2 * num_tasks * batch_size * (2 * d_hidden * d_out + d_in * d_hidden)
  return run, flops


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='mlp', choices=('mlp', 'cnn'))
  parser.add_argument('--k', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=7)
  parser.add_argument('--steps', type=int, default=10, help='steps per configuration per round')
  args = parser.parse_args(argv)

  tasks, model, batch = vs_pytorch.make_problem(args.model, args.k)
  mesh = sharding.make_mesh()
  common = (model, tasks, mesh, sharding.put_batch(batch, mesh), batch['inputs'][:2])
  configs = {
      'ew weighted': timed_step(*common, 'ew', 'weighted'),
      'ew jacobian (unrolled)': timed_step(*common, 'ew', 'jacobian',
                                           per_task_gradients='unrolled'),
      'ew jacobian (vmap)': timed_step(*common, 'ew', 'jacobian', per_task_gradients='vmap'),
      'upgrad jacobian (unrolled)': timed_step(*common, 'upgrad', 'jacobian',
                                               per_task_gradients='unrolled'),
      'upgrad jacobian (vmap)': timed_step(*common, 'upgrad', 'jacobian',
                                           per_task_gradients='vmap'),
      'upgrad rep': timed_step(*common, 'upgrad', 'rep'),
  }
  flops = None
  if args.model == 'mlp':
    configs['K backward GEMMs alone'], flops = trunk_gemms(args.k, len(batch['inputs']))

  times = {name: [] for name in configs}
  for _ in range(args.rounds):
    for name, run in configs.items():
      times[name].append(run(args.steps))
  medians = {name: statistics.median(t) for name, t in times.items()}
  base = medians['ew weighted']
  print(f'{args.model}, K = {args.k}, batch {len(batch["inputs"])}; {jax.devices()[0].device_kind}'
        f' x{jax.device_count()}, jax {jax.__version__}; {args.rounds} rounds of {args.steps} steps')
  print('| configuration | ms/step | ÷ ew weighted |\n|---|---:|---:|')
  for name, seconds in medians.items():
    print(f'| {name} | {seconds * 1e3:.2f} | {seconds / base:.2f} |')
  if flops:
    seconds = medians['K backward GEMMs alone']
    print(f'K backward GEMMs: {flops / 1e9:.2f} GFLOP, {flops / seconds / 1e9:.0f} GFLOP/s')


if __name__ == '__main__':
  main()
