"""MMoE: g_k(x) = softmax(W_k x), task k's head reads Σ_e g_k(x)_e f_e(x) (Ma et al., KDD 2018).

Also holds what the other mixture-of-experts tests (cgc, ple, dselect_k, esmm) share: the contract
setting (`contract_setup`: two tasks, embeddings, dropout), an encoder with batch statistics
(`BatchNormMLP`, `batch_norm_setup`), and the checks of the encode/decode split, of training-mode
collections and of decoding one task at a time.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtl_jax import models
from mtl_jax import optim
from mtl_jax.errors import UserError
from mtl_jax.models import base
from mtl_jax.models import mmoe
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from tests import helpers
from tests.models import arch_checks

TASKS = helpers.TASKS
VOCAB_SIZES = (5, 4, 3)


class BatchNormMLP(nn.Module):
  """Dense -> BatchNorm -> relu -> dropout: an encoder with batch statistics and dropout."""

  features: int = 6

  @nn.compact
  def __call__(self, x, *, train=False):
    x = nn.Dense(self.features)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dropout(0.25, deterministic=not train)(nn.relu(x))


def tabular_batch(num_examples=16, seed=0, tasks=TASKS):
  """helpers.batch's labels with inputs {'categorical', 'numeric'} for an `inputs.Tabular`."""
  example = helpers.batch(num_examples, seed=seed, tasks=tasks)
  rng = np.random.default_rng(seed + 1)
  categorical = np.stack([rng.integers(0, v, num_examples) for v in VOCAB_SIZES], 1)
  return {**example, 'inputs': {'categorical': categorical.astype(np.int32),
                                'numeric': example['inputs'][:, :2]}}


def tabular():
  return models.inputs.Tabular(VOCAB_SIZES, embed_dim=3)


def init(model, example, seed=0):
  """Like helpers.init, for any inputs pytree (the tabular batch is a dict)."""
  return model.init(jax.random.PRNGKey(seed), jax.tree.map(jnp.asarray, example['inputs']))


def nonzero(tree) -> bool:
  return all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(tree))


def all_zero(tree) -> bool:
  return all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(tree))


def check_encode_decode(model, tasks, variables, example) -> None:
  """The split the "rep" mode relies on, checked on a model with parameters in every part:

  * decode(encode(x)) == apply(x), and decode(task_names=[k]) computes task k alone, the same;
  * encode reads only `shared` and decode only the rest (zero gradient to the other side);
  * the representation carries every path from `shared` to the losses: encode's VJP of
    Σ_k ∇_z L_k equals ∇_shared Σ_k L_k (a path missing from z, e.g. a gate reading the input
    features, would make them differ).
  """
  inputs = example['inputs']
  params = variables['params']
  direct = model.apply(variables, inputs)
  features = model.encode(variables, inputs)
  composed = model.decode(variables, features)
  assert set(composed) == set(direct)
  for task in tasks:
    alone = model.decode(variables, features, task_names=[task.name])
    assert set(alone) == {task.name}
    np.testing.assert_allclose(alone[task.name], direct[task.name], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(composed[task.name], direct[task.name], rtol=1e-5, atol=1e-6)

  def total_loss(outputs):
    return step_lib.task_losses(tasks, outputs, example).sum()

  def with_params(p):
    return {**variables, 'params': p}

  @jax.jit  # one compiled program: cheaper than these gradients op by op
  def gradients(params):
    encode_grads = jax.grad(lambda p: sum(
        jnp.sum(z) for z in jax.tree.leaves(model.encode(with_params(p), inputs))))(params)
    features = model.encode(variables, inputs)
    decode_grads = jax.grad(lambda p: total_loss(model.decode(with_params(p), features)))(params)
    reference = jax.grad(lambda p: total_loss(model.apply(with_params(p), inputs)))(params)
    z, encode_vjp = jax.vjp(
        lambda s: model.encode(with_params({**params, 'shared': s}), inputs), params['shared'])
    dz = jax.grad(lambda z: total_loss(model.decode(variables, z)))(z)
    (via_representation,) = encode_vjp(dz)
    return encode_grads, decode_grads, reference['shared'], via_representation

  encode_grads, decode_grads, reference, via_representation = gradients(params)
  assert all_zero({k: v for k, v in encode_grads.items() if k != 'shared'})
  assert nonzero(encode_grads['shared'])
  assert all_zero(decode_grads['shared'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               via_representation, reference)


def check_decode_alone_in_training(model, variables, example) -> None:
  """In training mode (dropout, batch statistics) decode(task_names=[k]) gives task k what the
  full decode gives it, and the same collection updates: the "rep" step decodes task by task."""
  rngs = {'dropout': jax.random.PRNGKey(7)}
  features, _ = model.encode(variables, example['inputs'], train=True, rngs=rngs, mutable=True)
  full, full_updates = model.decode(variables, features, train=True, rngs=rngs, mutable=True)
  merged = {}
  for name in model.task_names:
    alone, updates = model.decode(variables, features, train=True, rngs=rngs, mutable=True,
                                  task_names=[name])
    np.testing.assert_allclose(alone[name], full[name], rtol=1e-5, atol=1e-6)
    merged = base.merge(merged, updates)
  assert jax.tree.structure(merged) == jax.tree.structure(full_updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               merged, full_updates)


def check_batch_stats_and_dropout(model, variables, example, task) -> None:
  """Training mode updates every batch statistic (same tree as the variables') and draws dropout
  masks from `rngs`; evaluation is deterministic and updates nothing."""
  inputs = example['inputs']
  rngs = {'dropout': jax.random.PRNGKey(3)}
  outputs, updates = model.apply(variables, inputs, train=True, rngs=rngs, mutable=True)
  assert set(updates) == {'batch_stats'}
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(
      variables['batch_stats'])
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         updates['batch_stats'], variables['batch_stats'])
  assert all(jax.tree.leaves(changed)), changed
  eval_out = model.apply(variables, inputs)
  np.testing.assert_array_equal(eval_out[task], model.apply(variables, inputs)[task])
  assert not np.allclose(eval_out[task], outputs[task])
  again, _ = model.apply(variables, inputs, train=True, rngs=rngs, mutable=True)
  np.testing.assert_array_equal(outputs[task], again[task])


def _model(num_experts=3, input_layer=None, encoder='mlp', tasks=TASKS, dropout=0.0):
  return models.build('mmoe', tasks, input_layer or models.inputs.Identity(), encoder,
                      {'hidden_sizes': (8,), 'dropout': dropout}, num_experts=num_experts)


# The contract tests of every MoE architecture share this setting: two tasks, parameters
# everywhere (embeddings in the input layer) and dropout in the experts. Its traces and compiled
# steps are what the time budget of a test file goes to. Batch statistics are checked on a second,
# small model (`check_batch_stats_and_dropout`, `check_decode_alone_in_training`) in every file,
# and through the compiled step once, here: a batch norm costs the step's compilation twice as
# much, and what the step does with the collections is the same for every architecture.
CONTRACT_TASKS = TASKS[:2]
CONTRACT_ENCODER_KWARGS = {'hidden_sizes': (8,), 'dropout': 0.25}


def contract_setup(arch, **arch_kwargs):
  """(model, example, variables) of `arch` in the contract setting."""
  model = models.build(arch, CONTRACT_TASKS, tabular(), 'mlp', CONTRACT_ENCODER_KWARGS,
                       **arch_kwargs)
  example = tabular_batch(tasks=CONTRACT_TASKS)
  return model, example, init(model, example)


def batch_norm_setup(arch, **arch_kwargs):
  """(model, example, variables) of `arch` with BatchNormMLP experts (dense inputs)."""
  model = models.build(arch, CONTRACT_TASKS, models.inputs.Identity(), BatchNormMLP(),
                       **arch_kwargs)
  example = helpers.batch(tasks=CONTRACT_TASKS)
  return model, example, helpers.init(model, example)


@pytest.fixture(scope='module')
def setup():
  return contract_setup('mmoe', num_experts=3)


def test_contract(setup):
  model, example, variables = setup
  arch_checks.check_partition(model, variables, [t.name for t in CONTRACT_TASKS])
  assert set(variables['params']['shared']) == {'input', 'experts'}
  assert set(variables['params']['tasks']['bin']) == {'gate', 'head'}
  arch_checks.check_task_isolation(model, CONTRACT_TASKS, variables, example)
  check_decode_alone_in_training(model, variables, example)
  arch_checks.check_train_steps(model, CONTRACT_TASKS, example)


def test_batch_stats_and_dropout():
  model, example, variables = batch_norm_setup('mmoe', num_experts=3)
  assert variables['batch_stats']['shared']['experts']['BatchNorm_0']['mean'].shape == (3, 6)
  check_batch_stats_and_dropout(model, variables, example, 'cls')
  check_decode_alone_in_training(model, variables, example)
  # Through the real step, in its most involved mode ("rep": encode's collections, then each
  # task's decode's, merged), the batch statistics move.
  mesh = sharding.make_mesh()
  tx = optax.adam(1e-2)
  method = optim.get('mgda', num_tasks=len(CONTRACT_TASKS))
  train_step = sharding.jit_train_step(
      step_lib.make_train_step(model, CONTRACT_TASKS, method, tx, 'rep'), mesh)
  state = step_lib.create_state(model, method, tx, jax.random.PRNGKey(0), example['inputs'])
  before = jax.tree.map(np.asarray, state.collections)
  state, metrics = train_step(sharding.put_replicated(state, mesh),
                              sharding.put_batch(example, mesh))
  assert bool(metrics['finite'])
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state.collections, before)
  assert jax.tree.leaves(moved) and all(jax.tree.leaves(moved)), moved


def test_encode_decode_split(setup):
  check_encode_decode(setup[0], CONTRACT_TASKS, setup[2], setup[1])


def test_experts_are_stacked_and_vmapped(setup):
  model, example, variables = setup
  for leaf in jax.tree.leaves(variables['params']['shared']['experts']):
    assert leaf.shape[0] == 3
  # One vmapped expert, not a Python loop: one dot_general for the experts' single dense layer.
  jaxpr = jax.make_jaxpr(lambda v: model.encode(v, example['inputs']))(variables)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'dot_general']
  assert len(dots) == 1, len(dots)
  assert model.encode(variables, example['inputs'])['experts'].shape == (16, 3, 8)


def test_gate_weights_are_a_distribution_per_example(setup):
  model, example, variables = setup
  weights = model.gate_weights(variables, model.encode(variables, example['inputs']))
  for w in weights.values():
    assert w.shape == (16, 3)
    assert np.all(np.asarray(w) > 0)
    np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)
  # Different tasks, different gates: the mixtures differ.
  assert not np.allclose(weights['bin'], weights['cls'])


def test_one_expert_is_the_shared_bottom_model():
  example = helpers.batch()
  hard = helpers.model('hard')
  hard_vars = helpers.init(hard, example)
  model = _model(num_experts=1)
  variables = helpers.init(model, example)
  params = variables['params']
  params['shared']['experts'] = jax.tree.map(lambda a: a[None],
                                             hard_vars['params']['shared']['encoder'])
  for name in params['tasks']:
    params['tasks'][name]['head'] = hard_vars['params']['tasks'][name]
  expected = hard.apply(hard_vars, example['inputs'])
  got = model.apply(variables, example['inputs'])
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_mixture_is_the_gate_weighted_sum_of_experts():
  model = _model(num_experts=3, tasks=TASKS[3:])
  example = helpers.batch()
  variables = helpers.init(model, example)
  x = jnp.asarray(example['inputs'])
  experts = variables['params']['shared']['experts']['Dense_0']
  f = [jax.nn.relu(x @ experts['kernel'][e] + experts['bias'][e]) for e in range(3)]
  gate = jax.nn.softmax(x @ variables['params']['tasks']['reg']['gate']['dense']['kernel'], -1)
  mixed = sum(gate[:, e:e + 1] * f[e] for e in range(3))
  head = variables['params']['tasks']['reg']['head']['Dense_0']
  expected = (mixed @ head['kernel'] + head['bias'])[:, 0]
  np.testing.assert_allclose(model.apply(variables, x)['reg'], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs', [{'num_experts': 0}, {'num_experts': -2},
                                    {'num_experts': 2.5}, {'num_experts': True},
                                    {'num_expert': 4}])
def test_bad_arch_kwargs(kwargs):
  with pytest.raises(UserError, match='num_experts'):
    models.build('mmoe', TASKS, models.inputs.Identity(), 'mlp', {}, **kwargs)


def test_run_experts_groups_match_separate_runs():
  """Groups batched into one program give each group what it gets alone (outputs, batch
  statistics, dropout masks), with one input for all or one input per group."""
  expert = BatchNormMLP()
  x = jnp.asarray(helpers.batch()['inputs'])
  groups = [mmoe.init_experts(expert, jax.random.PRNGKey(i), x, n) for i, n in enumerate((2, 3))]
  rngs = [{'dropout': jax.random.PRNGKey(5)}, {'dropout': jax.random.PRNGKey(6)}]

  @jax.jit
  def run(groups, rngs, x):
    def go(gs, rs, inputs):
      return mmoe.run_experts(expert, gs, inputs, train=True, rngs=rs, mutable=True)
    per_group_inputs = (x, 2 * x)
    return ((go(groups, rngs, x), [go([g], [r], x) for g, r in zip(groups, rngs)]),
            (go(groups, rngs, list(per_group_inputs)),
             [go([g], [r], xi) for g, r, xi in zip(groups, rngs, per_group_inputs)]))

  for (together, updates), alone in run(groups, rngs, x):
    assert together[0].shape == (16, 2, 6) and together[1].shape == (16, 3, 6)
    for out, update, ((alone_out,), (alone_update,)) in zip(together, updates, alone):
      np.testing.assert_allclose(out, alone_out, rtol=1e-6, atol=1e-7)
      jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), update,
                   alone_update)
