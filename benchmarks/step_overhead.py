"""The framework's overhead: our train step against a hand-written pure-JAX step, side by side.

Both steps train the same Flax model (the default experiment's hard-shared MLP on Census-Income,
or a ~1M-parameter MLP on dense features) with Adam, on the same batch, for the same method:

* EW in "weighted" mode: one backward pass of the summed loss;
* MGDA in "jacobian" mode: per-task gradients of the shared parameters, the min-norm weights, their
  combination;
* MGDA in "rep" mode: per-task gradients at the trunk's output, the weights from their Gramian, one
  VJP through the trunk.

The hand-written step is what a researcher would write without mtl_jax: `jax.grad`/`jax.vjp`,
the two-task min-norm closed form, Adam written out. Ours adds what the framework promises (the
non-finite-step guard over the whole state, per-task losses and weights as metrics, gradient norm,
dropout keys, sharding annotations, donation). The two run alternately in rounds and the ratio of
their median times is printed, so machine noise hits both alike.

    python benchmarks/step_overhead.py [--rounds 30] [--steps 50] [--model census|mlp1m]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtl_jax import models, optim
from mtl_jax.tasks import Task
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib

TASKS = (Task('income', 'binary'), Task('never_married', 'binary'))
LEARNING_RATE = 1e-3
B1, B2, EPS = 0.9, 0.999, 1e-8


def census_like(batch_size, rng):
  """The default experiment's input shapes (32 categorical columns, 7 numeric) and model."""
  vocab = (10, 52, 48, 18, 4, 25, 16, 6, 11, 3, 4, 7, 9, 7, 7, 52, 37, 9, 11, 10, 11, 4, 5, 6, 44,
           44, 44, 6, 4, 4, 4, 3)
  inputs = {'categorical': np.stack([rng.integers(0, v, batch_size) for v in vocab], 1)
                             .astype(np.int32),
            'numeric': rng.normal(size=(batch_size, 7)).astype(np.float32)}
  model = models.build('hard', TASKS, models.inputs.Tabular(vocab, 8), 'mlp',
                       {'hidden_sizes': (128, 64)})
  return model, inputs


def mlp1m(batch_size, rng):
  """~1M parameters: 256 dense features -> 1024 -> 512 -> 256."""
  inputs = rng.normal(size=(batch_size, 256)).astype(np.float32)
  model = models.build('hard', TASKS, models.inputs.Identity(), 'mlp',
                       {'hidden_sizes': (1024, 512, 256)})
  return model, inputs


def make_batch(inputs, rng, batch_size):
  return {'inputs': inputs,
          'labels': {t.name: rng.integers(0, 2, batch_size).astype(np.int32) for t in TASKS},
          'label_mask': {t.name: np.ones(batch_size, bool) for t in TASKS}}


# ------------------------------------------------------------------ the hand-written steps


def _losses(model, params, inputs, labels):
  outputs = model.apply({'params': params}, inputs)
  return jnp.stack([optax.sigmoid_binary_cross_entropy(outputs[t.name],
                                                       labels[t.name].astype(jnp.float32)).mean()
                    for t in TASKS])


def _adam(params, grads, mu, nu, count):
  count = count + 1
  mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, mu, grads)
  nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, nu, grads)
  scale = LEARNING_RATE * jnp.sqrt(1 - B2 ** count) / (1 - B1 ** count)
  params = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + EPS), params, mu, nu)
  return params, mu, nu, count


def _two_task_min_norm(g1g1, g1g2, g2g2):
  """Sener & Koltun's closed form for K=2: the weight on task 1."""
  alpha = (g2g2 - g1g2) / jnp.maximum(g1g1 + g2g2 - 2 * g1g2, 1e-20)
  return jnp.clip(alpha, 0.0, 1.0)


def _dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def handwritten_step(model, method):
  def ew(carry, batch):
    params, mu, nu, count = carry
    grads = jax.grad(lambda p: _losses(model, p, batch['inputs'], batch['labels']).sum())(params)
    return _adam(params, grads, mu, nu, count)

  def mgda_jacobian(carry, batch):
    params, mu, nu, count = carry
    jac = jax.jacrev(lambda p: _losses(model, p, batch['inputs'], batch['labels']))(params)
    g1 = jax.tree.map(lambda x: x[0], jac['shared'])
    g2 = jax.tree.map(lambda x: x[1], jac['shared'])
    alpha = _two_task_min_norm(_dot(g1, g1), _dot(g1, g2), _dot(g2, g2))
    grads = {'shared': jax.tree.map(lambda a, b: alpha * a + (1 - alpha) * b, g1, g2),
             'tasks': jax.tree.map(lambda x: x.sum(0), jac['tasks'])}
    return _adam(params, grads, mu, nu, count)

  def mgda_rep(carry, batch):
    params, mu, nu, count = carry
    z, encode_vjp = jax.vjp(lambda s: model.encode({'params': {**params, 'shared': s}},
                                                   batch['inputs']), params['shared'])

    def head_losses(z, tasks):
      outputs = model.decode({'params': {'shared': params['shared'], 'tasks': tasks}}, z)
      return jnp.stack([optax.sigmoid_binary_cross_entropy(
          outputs[t.name], batch['labels'][t.name].astype(jnp.float32)).mean() for t in TASKS])

    jz, jtasks = jax.jacrev(head_losses, argnums=(0, 1))(z, params['tasks'])
    alpha = _two_task_min_norm(jnp.vdot(jz[0], jz[0]), jnp.vdot(jz[0], jz[1]),
                               jnp.vdot(jz[1], jz[1]))
    (shared,) = encode_vjp(alpha * jz[0] + (1 - alpha) * jz[1])
    grads = {'shared': shared, 'tasks': jax.tree.map(lambda x: x.sum(0), jtasks)}
    return _adam(params, grads, mu, nu, count)

  return {'ew': ew, 'mgda-jacobian': mgda_jacobian, 'mgda-rep': mgda_rep}[method]


# ------------------------------------------------------------------ timing


def time_steps(step, carry, batch, steps):
  start = time.perf_counter()
  for _ in range(steps):
    carry = step(carry, batch)
  jax.block_until_ready(carry)
  return (time.perf_counter() - start) / steps, carry


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=30)
  parser.add_argument('--steps', type=int, default=50, help='steps per timed round')
  parser.add_argument('--batch_size', type=int, default=512)
  parser.add_argument('--model', choices=('census', 'mlp1m'), default='census')
  args = parser.parse_args()

  rng = np.random.default_rng(0)
  model, inputs = (census_like if args.model == 'census' else mlp1m)(args.batch_size, rng)
  mesh = sharding.make_mesh()
  batch = sharding.put_batch(make_batch(inputs, rng, args.batch_size), mesh)
  params = model.init(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[:2], inputs))['params']
  num_params = sum(x.size for x in jax.tree.leaves(params))
  print(f'device: {jax.devices()[0].device_kind} x{len(jax.devices())}  jax {jax.__version__}  '
        f'model: {args.model} ({num_params:,} params)  batch: {args.batch_size}')
  print(f'{"method":<15} {"ours ms":>9} {"hand ms":>9} {"ratio":>7}')

  for name, method, mode in (('ew', optim.ew(), 'weighted'),
                             ('mgda-jacobian', optim.mgda(), 'jacobian'),
                             ('mgda-rep', optim.mgda(), 'rep')):
    tx = optax.adam(LEARNING_RATE)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(model, TASKS, method, tx, mode), mesh)
    state = sharding.put_replicated(
        step_lib.create_state(model, method, tx, jax.random.PRNGKey(0),
                              jax.tree.map(lambda x: x[:2], inputs)), mesh)
    ours = lambda carry, b: train_step(carry, b)[0]  # pylint: disable=cell-var-from-loop
    hand = jax.jit(handwritten_step(model, name), donate_argnums=0)
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # pylint: disable=unnecessary-lambda-assignment
    hand_carry = sharding.put_replicated(
        (jax.tree.map(jnp.copy, params), zeros(), zeros(), jnp.zeros((), jnp.int32)), mesh)
    _, state = time_steps(ours, state, batch, 3)  # compile
    _, hand_carry = time_steps(hand, hand_carry, batch, 3)
    ours_times, hand_times = [], []
    for _ in range(args.rounds):
      t, state = time_steps(ours, state, batch, args.steps)
      ours_times.append(t)
      t, hand_carry = time_steps(hand, hand_carry, batch, args.steps)
      hand_times.append(t)
    ours_ms, hand_ms = 1e3 * statistics.median(ours_times), 1e3 * statistics.median(hand_times)
    print(f'{name:<15} {ours_ms:>9.3f} {hand_ms:>9.3f} {ours_ms / hand_ms:>7.3f}', flush=True)


if __name__ == '__main__':
  main()
