"""Training throughput of a hard-shared ResNet trunk: steps/s, examples/s, fraction of peak FLOP/s.

The model: a ResNet of basic blocks (`mtl_jax/models/resnet.py`; `--depth 18` or `34`, ImageNet
stem, batch norm) shared by K binary heads (`models.build('hard', ...)`), computing in `--dtype`
(default bfloat16; parameters, batch statistics and optimiser state stay float32), trained by the
real step: `mtl_jax.train.step.make_train_step` with Adam (lr 1e-3) under
`mtl_jax.train.sharding.jit_train_step` (one program over a mesh of every device, state replicated
and donated, batch sharded on `data`). The batch (random normal images [B, H, W, 3], random 0/1
labels, every label present) is put on the device once and reused, so the figures are those of
the step alone, without an input pipeline. `--batch_size` is the global batch over all devices.

Methods (`--methods`, default `ew`): each runs in "weighted" mode where it has it (one backward
pass of the weighted loss sum), else in "rep" mode (per-task gradients at the trunk's output), else
in its first mode; `name:mode` picks the mode (e.g. `mgda:jacobian`).

FLOPs per step come from XLA's cost analysis of the compiled step (`compiled.cost_analysis()
['flops']`). They are FLOPs, not MACs: a multiply-add counts as 2 (checked on CPU: a 1x1 conv
from C to C' channels over B x H x W costs exactly 2 * B * H * W * C * C'). They include the whole
step (forward, backward, batch norm, Adam), but XLA counts only the taps of a convolution that
fall inside the image, not those on its zero padding, so they are lower than the usual count
from conv shapes (2 * k * k * C * C' * H * W per example and conv): for a 3x3 SAME conv by
((3H - 2) / 3H)^2, 4% at 32x32, 31% at 4x4. Cross-checks printed per method: the forward pass
(`model.apply` with `train=True`) compiled alone (a training step costs about 3 times its
forward: the backward takes the gradients of both the inputs and the weights of each conv); the
shape count of the forward's convolutions and matrix products (from its jaxpr, padding taps
included) and, except in "jacobian" mode, the fraction of peak that 3 times it gives, the
convention of papers' "model FLOPs utilisation"; and the step's cost before XLA's optimisations
(`lowered.cost_analysis()`), which `--flops_source lowered` uses instead (e.g. if a backend's
compiled cost analysis does not count its library calls).

Achieved FLOP/s = FLOPs per step / median seconds per step; the fraction of peak divides it by the
device's dense (no sparsity) tensor-core peak for the compute dtype, from NVIDIA's datasheets
(`PEAK_TFLOPS` below, per device, times the number of devices), or `--peak_tflops`. float32
compares with the TF32 tensor-core peak: JAX's default matmul precision lets XLA use TF32 on
Ampere and later GPUs. On a CPU or an unknown device the fraction is left out.

Timing: compile (timed and printed), 2 warm-up steps, then `--rounds` rounds of `--steps` steps
each, `jax.block_until_ready` on the state at the end of each round; the table shows the median
over rounds of the seconds per step. Every figure is printed with the device it was measured on.

    python benchmarks/resnet_throughput.py            # GPU: ResNet-18, 224x224, batch 256, K = 8
    python benchmarks/resnet_throughput.py --depth 34 --methods ew,mgda
    nice -n 10 python benchmarks/resnet_throughput.py --image_size 32 --stem small \\
        --batch_size 8 --steps 2 --rounds 2 --dtype float32     # CPU smoke test, 30 s
"""

import argparse
import datetime
import statistics
import sys
import time

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
WARMUP_STEPS = 2
# Basic-block ResNets (resnet.py has no bottleneck blocks, so no ResNet-50 and beyond).
STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
# Dense (no sparsity) tensor-core peaks in TFLOP/s per device, from NVIDIA's datasheets (H100
# SXM / PCIe / NVL, H200 SXM, A100): BF16 tensor core, and for float32 the TF32 tensor core.
# The datasheets print the with-sparsity figures; these are half of them. Matched in order
# against `jax.devices()[0].device_kind` (e.g. 'NVIDIA H100 80GB HBM3' for the SXM part), first
# match wins, so the PCIe and NVL parts come before plain 'H100'; None: unknown, no fraction.
PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.0, 'float32': 378.0}),
    ('H100 NVL', None),  # not in this table: pass --peak_tflops
    ('H100', {'bfloat16': 989.4, 'float32': 494.7}),  # SXM
    ('H200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
)
TARGET_FRACTION = 0.35  # the target for ew in bfloat16


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def peak_flops(device_kind: str, dtype: str, override_tflops: float | None) -> float | None:
  """Peak FLOP/s of ONE device for `dtype`, or None where unknown."""
  if override_tflops:
    return override_tflops * 1e12
  for key, peaks in PEAK_TFLOPS:
    if key.lower() in device_kind.lower():
      return None if peaks is None else peaks[dtype] * 1e12
  return None


def cost_flops(cost) -> float | None:
  """The 'flops' of a cost analysis: a dict in some JAX versions, a list of dicts (one per
  program) in others, None where the backend gives none."""
  if cost is None:
    return None
  if isinstance(cost, dict):
    cost = [cost]
  total = [c.get('flops') for c in cost if c and c.get('flops') is not None]
  return float(sum(total)) if total else None


def memory_line(compiled) -> str:
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return ''
  if mem is None:
    return ''
  fields = [('arguments', 'argument_size_in_bytes'), ('outputs', 'output_size_in_bytes'),
            ('temporaries', 'temp_size_in_bytes'),
            ('generated code', 'generated_code_size_in_bytes')]
  parts = [f'{label} {getattr(mem, attr) / 2**20:.1f} MiB' for label, attr in fields
           if getattr(mem, attr, None) is not None]
  return ', '.join(parts)


def parse_methods(spec: str, num_tasks: int, model) -> list[tuple[str, object, str]]:
  """[(name, method, mode)] from 'ew,mgda,pcgrad:jacobian'."""
  out = []
  for item in (s.strip() for s in spec.split(',')):
    if not item:
      continue
    name, _, mode = item.partition(':')
    method = registry.get(name, num_tasks)
    if not mode:
      preferred = [m for m in ('weighted', 'rep') if m in method.modes]
      mode = preferred[0] if preferred else method.modes[0]
    out.append((name, method, step_lib.resolve_mode(mode, method, model)))
  return out


def make_batch(tasks, batch_size: int, image_size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
  return {'inputs': images,
          'labels': {t.name: rng.integers(0, 2, batch_size).astype(np.int32) for t in tasks},
          'label_mask': {t.name: np.ones(batch_size, bool) for t in tasks}}


def shape_count_flops(jaxpr) -> float:
  """2 x the multiply-adds of every convolution and matrix product in `jaxpr`, counted from
  shapes as papers do (padding taps included), sub-programs included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval.shape
      rhs_spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, *spatial)
      taps = np.prod([kernel[d] for d in rhs_spec[2:]]) * kernel[rhs_spec[1]]
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * taps
    elif name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, 'eqns'):
          total += shape_count_flops(sub)
  return total


def forward_flops(model, state, device_batch, mesh) -> dict:
  """FLOPs of the forward pass alone, as the step runs it (train=True): XLA's cost analysis,
  compiled and before optimisation, and the shape count of its convolutions and products."""
  def forward(state, batch):
    inputs = sharding.unpack(batch)['inputs']
    return model.apply(state.variables, inputs, train=True,
                       rngs={'dropout': jax.random.PRNGKey(0)}, mutable=True)
  jitted = jax.jit(forward, in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)))
  lowered = jitted.lower(state, device_batch)
  return {'compiled': cost_flops(lowered.compile().cost_analysis()),
          'lowered': cost_flops(lowered.cost_analysis()),
          'shape_count': shape_count_flops(jax.make_jaxpr(forward)(state, device_batch).jaxpr)}


def run_method(name, method, mode, model, tasks, args, mesh, device_batch, example) -> dict:
  tx = optax.adam(LEARNING_RATE)
  step = sharding.jit_train_step(step_lib.make_train_step(model, tasks, method, tx, mode), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example)
  state = sharding.put_replicated(state, mesh)

  start = time.perf_counter()
  lowered = step.lower(state, device_batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops_compiled = cost_flops(compiled.cost_analysis())
  flops_lowered = cost_flops(lowered.cost_analysis())
  fwd = forward_flops(model, state, device_batch, mesh)
  fwd_compiled = fwd['compiled']
  mem = memory_line(compiled)

  for _ in range(WARMUP_STEPS):
    state, metrics = compiled(state, device_batch)
  jax.block_until_ready(state)
  first_losses = np.asarray(metrics['losses'], np.float32)
  if not np.all(np.isfinite(first_losses)):
    raise SystemExit(f'{name}: non-finite losses after warm-up: {first_losses}')

  per_step = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, device_batch)
    jax.block_until_ready(state)
    per_step.append((time.perf_counter() - start) / args.steps)
  skipped = int(jax.device_get(state.skipped_steps))

  flops = flops_lowered if args.flops_source == 'lowered' else flops_compiled
  if flops is None:  # the other source, rather than nothing
    flops = flops_compiled if args.flops_source == 'lowered' else flops_lowered
  log(f'{name} ({mode}): compiled in {compile_s:.1f} s; {mem}')
  def fmt(x):
    return 'n/a' if x is None else f'{x / 1e9:.3f} GFLOP'
  log(f'  step: compiled {fmt(flops_compiled)}, lowered (before optimisation) '
      f'{fmt(flops_lowered)}; forward alone: compiled {fmt(fwd_compiled)}, lowered '
      f'{fmt(fwd["lowered"])}, shape count of convs and products {fmt(fwd["shape_count"])}')
  if flops_compiled and fwd_compiled:
    expected = ('one forward, K backward passes of the trunk' if mode == 'jacobian' else
                'about 3 expected: forward, then backward of inputs and weights')
    log(f'  step / forward (compiled): {flops_compiled / fwd_compiled:.2f} ({expected})')
  if flops_compiled and fwd['shape_count'] and mode != 'jacobian':
    log(f'  step (compiled) / (3 x forward shape count): '
        f'{flops_compiled / (3 * fwd["shape_count"]):.2f} (XLA skips the padding taps)')
  if flops_compiled and flops_lowered and abs(flops_compiled / flops_lowered - 1) > 0.25:
    log(f'  WARNING: compiled and lowered step FLOPs differ by '
        f'{abs(flops_compiled / flops_lowered - 1):.0%}; see --flops_source')
  log(f'  s/step by round: {", ".join(f"{s * 1e3:.2f} ms" for s in per_step)}; '
      f'skipped steps {skipped}')
  return {'name': name, 'mode': mode, 'seconds': statistics.median(per_step),
          'rounds': per_step, 'flops': flops, 'flops_compiled': flops_compiled,
          'flops_lowered': flops_lowered, 'forward_flops': fwd, 'compile_s': compile_s}


def table(results, batch_size, peak_total) -> str:
  lines = ['| method | mode | ms/step | steps/s | examples/s | GFLOP/step | TFLOP/s | % of peak |',
           '|---|---|---:|---:|---:|---:|---:|---:|']
  for r in results:
    s = r['seconds']
    achieved = r['flops'] / s if r['flops'] else None
    cells = [r['name'], r['mode'], f'{s * 1e3:.2f}', f'{1 / s:.2f}', f'{batch_size / s:,.0f}',
             'n/a' if r['flops'] is None else f'{r["flops"] / 1e9:.4g}',
             'n/a' if achieved is None else f'{achieved / 1e12:.2f}',
             f'{achieved / peak_total:.1%}' if achieved and peak_total else 'n/a']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--depth', type=int, default=18, choices=sorted(STAGE_SIZES),
                      help='ResNet-18 (2,2,2,2) or ResNet-34 (3,4,6,3) basic-block stages')
  parser.add_argument('--stage_sizes', default='',
                      help='blocks per stage, e.g. 1,1,1,1; overrides --depth')
  parser.add_argument('--num_filters', type=int, default=64, help='channels of the first stage')
  parser.add_argument('--stem', default='imagenet', choices=('imagenet', 'small'))
  parser.add_argument('--norm', default='batch', choices=('batch', 'group', 'layer'))
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=256, help='global, over all devices')
  parser.add_argument('--num_tasks', type=int, default=8, help='binary heads')
  parser.add_argument('--dtype', default='bfloat16', choices=('bfloat16', 'float32'),
                      help='computation dtype of the trunk (parameters stay float32)')
  parser.add_argument('--methods', default='ew',
                      help='comma-separated; name or name:mode (default mode: weighted, else rep)')
  parser.add_argument('--steps', type=int, default=20, help='steps per round')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help='peak TFLOP/s of one device, overriding the table')
  parser.add_argument('--flops_source', default='compiled', choices=('compiled', 'lowered'),
                      help="XLA cost analysis of the compiled step, or of the step before XLA's "
                           'optimisations')
  args = parser.parse_args(argv)

  stage_sizes = (tuple(int(s) for s in args.stage_sizes.split(',')) if args.stage_sizes
                 else STAGE_SIZES[args.depth])
  trunk = (f'ResNet-{args.depth}' if not args.stage_sizes
           else f'ResNet stages {",".join(map(str, stage_sizes))}')
  devices = jax.devices()
  device_kind = devices[0].device_kind
  device = f'{device_kind} x{len(devices)} ({jax.default_backend()})'
  mesh = sharding.make_mesh()
  sharding.check_batch_size(args.batch_size, mesh)
  tasks = tuple(Task(f't{k}', 'binary') for k in range(args.num_tasks))
  encoder_kwargs = {'stage_sizes': stage_sizes, 'num_filters': args.num_filters,
                    'stem': args.stem, 'norm': args.norm, 'dtype': jnp.dtype(args.dtype)}
  model = models.build('hard', tasks, models.inputs.Identity(), 'resnet', encoder_kwargs)
  method_specs = parse_methods(args.methods, args.num_tasks, model)

  host_batch = make_batch(tasks, args.batch_size, args.image_size)
  example = host_batch['inputs'][:2]
  device_batch = sharding.put_batch(host_batch, mesh)
  params = model.init(jax.random.PRNGKey(0), example)['params']
  count = sum(x.size for x in jax.tree.leaves(params))
  shared = sum(x.size for x in jax.tree.leaves(step_lib.shared_params(model, params)))

  peak_one = peak_flops(device_kind, args.dtype, args.peak_tflops)
  peak_total = peak_one * len(devices) if peak_one else None
  if peak_one:
    source = '--peak_tflops' if args.peak_tflops else 'NVIDIA datasheet, dense'
    peak_text = (f'{peak_one / 1e12:.1f} TFLOP/s {args.dtype} per device ({source}), '
                 f'{peak_total / 1e12:.1f} in all')
  else:
    peak_text = 'peak unknown (pass --peak_tflops)'
  log(f'device: {device}; {trunk}, {count:,} parameters ({shared:,} shared); {peak_text}')

  results = [run_method(name, method, mode, model, tasks, args, mesh, device_batch, example)
             for name, method, mode in method_specs]

  now = datetime.datetime.now(datetime.timezone.utc)
  flags = ' '.join(f'--{k}={v}' for k, v in sorted(vars(args).items()))
  print(f'date: {now:%Y-%m-%d %H:%M} UTC; device: {device}, device_kind {device_kind!r}, '
        f'{jax.device_count()} device(s); jax {jax.__version__}')
  print(f'model: {trunk} ({args.stem} stem, {args.norm} norm, {args.num_filters} filters), '
        f'{count:,} parameters ({shared:,} shared), {args.num_tasks} binary heads; '
        f'{args.image_size}x{args.image_size}x3 images, global batch {args.batch_size}; '
        f'{args.dtype} compute, float32 parameters; Adam; {args.rounds} rounds x {args.steps} '
        f'steps, median')
  print(f'peak: {peak_text}; FLOPs: XLA cost analysis ({args.flops_source}), '
        'multiply-add = 2 FLOPs, whole step')
  print(f'flags: {flags}')
  print()
  print(f'{device_kind} x{len(devices)}:')
  print(table(results, args.batch_size, peak_total))
  print()
  for r in (r for r in results if r['mode'] != 'jacobian'):  # one backward pass of the trunk
    model_flops = 3 * r['forward_flops']['shape_count']
    text = (f'{model_flops / r["seconds"] / peak_total:.1%} of peak'
            if peak_total else f'{model_flops / r["seconds"] / 1e12:.2f} TFLOP/s')
    print(f'{r["name"]} ({r["mode"]}) on {device_kind}: with 3 x the forward\'s shape count '
          f'({model_flops / 1e9:.1f} GFLOP/step, padding taps included) instead: {text}')
  for r in results:
    if r['name'] == 'ew' and args.dtype == 'bfloat16' and peak_total and r['flops']:
      fraction = r['flops'] / r['seconds'] / peak_total
      verdict = 'meets' if fraction >= TARGET_FRACTION else 'misses'
      print(f'ew bfloat16 on {device_kind}: {fraction:.1%} of peak, {verdict} the target of '
            f'{TARGET_FRACTION:.0%}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
