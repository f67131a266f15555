"""Transfer: partial restore of the trunk, frozen / scaled / unfrozen trunk optimisers, the loop's
hooks (fresh run, resume, errors) and the few-label cap, on qm9_subset (prepared in seconds)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mtl_jax import models
from mtl_jax.errors import UserError
from mtl_jax.meta import transfer
from mtl_jax.train import loop
from mtl_jax.train import step as step_lib

PRETRAIN_TASKS = ('mu', 'alpha')
NEW_TASKS = ('homo', 'mu')  # a new task, and a task the source model had (its head is not kept)


@pytest.fixture(scope='module')
def qm9_dir(tmp_path_factory):
  from mtl_jax import data
  directory = str(tmp_path_factory.mktemp('tfds_qm9'))
  data.prepare(data.get('qm9_subset').builder_cls, directory)
  return directory


def make_config(data_dir, tasks=NEW_TASKS, steps=20, hidden=(16,), **transfer_options):
  from experiments.configs import default
  config = default.get_config()
  config.dataset = 'qm9_subset'
  config.tasks = tasks
  config.best_metric = 'val/avg/rmse'
  config.data_dir = data_dir
  config.encoder_kwargs.hidden_sizes = hidden
  config.encoder_kwargs.dropout = 0.0
  config.batch_size = 32
  config.num_train_steps = steps
  config.eval_every_steps = config.checkpoint_every_steps = config.log_every_steps = 10
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  config.single_task_baselines = False
  config.keep_best = 2  # with the latest, both checkpoints (10 and 20) stay
  for key, value in transfer_options.items():
    config.transfer[key] = value
  return config


def read_state(workdir, step=None):
  """A run's checkpointed train state (the latest, or `step`) as NumPy, with plain orbax."""
  directory = os.path.join(workdir, 'checkpoints')
  step = step or max(int(name) for name in os.listdir(directory) if name.isdigit())
  path = os.path.join(directory, str(step), 'state')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_some_leaf_differs(a, b):
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def pretrained(qm9_dir, tmp_path_factory):
  """A source model on two other tasks: (checkpoints directory, its final trunk)."""
  workdir = str(tmp_path_factory.mktemp('pretrain'))
  loop.train_and_evaluate(make_config(qm9_dir, tasks=PRETRAIN_TASKS), workdir)
  return os.path.join(workdir, 'checkpoints'), read_state(workdir, 20)


# ---------------------------------------------------------------------------------------------
# The optimiser, on its own.

PARAMS = {'shared': {'w': jnp.array([1.0, -2.0, 3.0])}, 'tasks': {'a': {'w': jnp.array([0.5, 4.0])}}}
GRADS = {'shared': {'w': jnp.array([0.3, -1.0, 2.0])}, 'tasks': {'a': {'w': jnp.array([1.0, -1.5])}}}


def run_steps(tx, steps, params=PARAMS):
  state, history = tx.init(params), [params]
  update = jax.jit(tx.update)
  for _ in range(steps):
    updates, state = update(GRADS, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history


def test_frozen_trunk_does_not_move_and_the_heads_do():
  history = run_steps(transfer.transfer_optimizer(lambda: optax.adam(0.1), trunk='frozen'), 5)
  for params in history[1:]:
    assert_trees_equal(params['shared'], PARAMS['shared'])
  assert_some_leaf_differs(history[-1]['tasks'], PARAMS['tasks'])


def test_scaled_trunk_moves_by_the_factor_on_a_step_of_sgd():
  lr, scale = 0.5, 0.1
  after = run_steps(transfer.transfer_optimizer(lambda: optax.sgd(lr), trunk_lr_scale=scale), 1)[1]
  np.testing.assert_allclose(after['shared']['w'] - PARAMS['shared']['w'],
                             -lr * scale * GRADS['shared']['w'], rtol=1e-6)
  np.testing.assert_allclose(after['tasks']['a']['w'] - PARAMS['tasks']['a']['w'],
                             -lr * GRADS['tasks']['a']['w'], rtol=1e-6)


@pytest.mark.parametrize('trunk', ['train', 'frozen'])
def test_unfreezing_happens_exactly_after_n_steps(trunk):
  n, lr, scale = 3, 0.5, 0.1
  history = run_steps(transfer.transfer_optimizer(
      lambda: optax.sgd(lr), trunk=trunk, trunk_lr_scale=scale, unfreeze_after_steps=n), n + 2)
  for params in history[:n + 1]:
    assert_trees_equal(params['shared'], PARAMS['shared'])
  for k in (n + 1, n + 2):  # then plain (scaled) SGD steps
    np.testing.assert_allclose(history[k]['shared']['w'] - history[k - 1]['shared']['w'],
                               -lr * scale * GRADS['shared']['w'], rtol=1e-6)
  for k in range(1, n + 3):  # the heads train from the first step
    np.testing.assert_allclose(history[k]['tasks']['a']['w'] - history[k - 1]['tasks']['a']['w'],
                               -lr * GRADS['tasks']['a']['w'], rtol=1e-6)


def test_unfrozen_adam_starts_fresh_at_n():
  """The trunk's Adam sees no frozen-phase gradient: its first update is Adam's first update."""
  history = run_steps(transfer.transfer_optimizer(lambda: optax.adam(0.1),
                                                  unfreeze_after_steps=2), 3)
  first = run_steps(optax.adam(0.1), 1)[1]
  np.testing.assert_allclose(history[3]['shared']['w'] - history[2]['shared']['w'],
                             first['shared']['w'] - PARAMS['shared']['w'], rtol=1e-6)


def test_plain_training_keeps_the_base_optimizer_itself():
  """No transfer option set: the same transform, so old checkpoints' optimiser states fit."""
  base = optax.adam(1e-3)
  assert transfer.transfer_optimizer(lambda: base) is base


def test_loop_optimizer_scales_only_the_trunk_and_keeps_whole_tree_parts(qm9_dir):
  """`make_optimizer` with trunk_lr_scale: trunk updates are exactly the factor times plain
  training's (Adam's step is invariant to the gradient's scale), head updates identical."""
  plain_config = make_config(qm9_dir)
  plain_config.grad_clip_norm = 1.0  # global clipping stays before the per-group Adam
  scaled_config = make_config(qm9_dir, trunk_lr_scale=0.25)
  scaled_config.grad_clip_norm = 1.0
  from mtl_jax import tasks as tasks_lib
  model = models.build('hard', tuple(tasks_lib.Task(name, 'regression') for name in NEW_TASKS),
                       models.inputs.Identity(), 'mlp', {'hidden_sizes': (16,)}, ())
  params = model.init(jax.random.PRNGKey(0), jnp.ones((2, 144)))['params']
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  updates = {}
  for name, config in (('plain', plain_config), ('scaled', scaled_config)):
    tx = loop.make_optimizer(config, model)
    updates[name], _ = jax.jit(tx.update)(grads, tx.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 0.25 * b, rtol=1e-6),
               updates['scaled']['shared'], updates['plain']['shared'])
  assert_trees_equal(updates['scaled']['tasks'], updates['plain']['tasks'])


def test_shared_subtree_follows_the_models_param_groups():
  """Cross-stitch keeps its columns and stitch units in groups declared 'shared'."""
  from mtl_jax import tasks as tasks_lib
  tasks = tuple(tasks_lib.Task(name, 'regression') for name in ('a', 'b'))
  model = models.build('cross_stitch', tasks, models.inputs.Identity(), 'mlp',
                       {'hidden_sizes': (4,)}, ())
  state = jax.eval_shape(lambda: step_lib.create_state(
      model, __import__('mtl_jax').optim.get('ew', num_tasks=2), optax.adam(1e-3),
      jax.random.PRNGKey(0), jnp.ones((2, 3))))
  subtree = transfer.shared_subtree(state, model.shared_keys())
  # `shared` holds the input layer, which has no parameters here: an empty group is left out.
  assert set(model.shared_keys()) == {'shared', 'columns', 'stitch'}
  assert not jax.tree.leaves(state.params['shared'])
  assert set(subtree['params']) == {'columns', 'stitch'}
  assert_trees_equal(jax.tree.map(lambda x: x.shape, subtree['params']['columns']),
                     jax.tree.map(lambda x: x.shape, state.params['columns']))


# ---------------------------------------------------------------------------------------------
# The loop: restore, frozen run, resume, errors.


def fresh_and_transferred(config, checkpoints):
  """The run's freshly initialised state, and the same state with the checkpoint's trunk."""
  from mtl_jax import data as data_lib
  from mtl_jax.train import checkpoint as checkpoint_lib
  s = loop.setup(config)
  example = s.spec.to_batch(data_lib.first_rows(s.columns['train'], 2))['inputs']
  replicated = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
  init = lambda rng: step_lib.create_state(s.model, s.method, s.optimizer, rng, example)
  rng = jax.random.PRNGKey(config.seed)
  trunk = transfer.restore_shared(checkpoints, transfer.shared_subtree(
      checkpoint_lib.abstract(jax.eval_shape(init, rng), replicated), s.model.shared_keys()))
  fresh = jax.jit(init, out_shardings=replicated)(rng)
  return fresh, trunk, transfer.with_shared(fresh, trunk)


def test_only_the_shared_params_are_restored_and_heads_are_fresh(qm9_dir, pretrained):
  checkpoints, source = pretrained
  fresh, trunk, state = fresh_and_transferred(make_config(qm9_dir, init_from=checkpoints),
                                              checkpoints)
  assert list(trunk) == ['params'] and list(trunk['params']) == ['shared']
  assert_trees_equal(trunk['params']['shared'], source['params']['shared'])
  assert_trees_equal(state.params['shared'], source['params']['shared'])
  assert_some_leaf_differs(fresh.params['shared'], source['params']['shared'])
  # Every head is the fresh run's, the source's own task `mu` included.
  assert set(state.params['tasks']) == set(NEW_TASKS)
  assert_trees_equal(state.params['tasks'], fresh.params['tasks'])
  assert_some_leaf_differs(state.params['tasks']['mu'], source['params']['tasks']['mu'])
  # Nothing else comes from the source: step, optimiser state and key are the fresh run's.
  assert int(state.step) == 0
  assert_trees_equal(state.opt_state, fresh.opt_state)
  assert_trees_equal(state.rng, fresh.rng)


def test_frozen_trunk_does_not_move_in_the_loop(qm9_dir, pretrained, tmp_path):
  checkpoints, source = pretrained
  workdir = str(tmp_path / 'frozen')
  config = make_config(qm9_dir, steps=10, init_from=checkpoints, trunk='frozen')
  loop.train_and_evaluate(config, workdir)
  state = read_state(workdir, 10)
  assert_trees_equal(state['params']['shared'], source['params']['shared'])
  assert int(state['step']) == 10 and int(state['skipped_steps']) == 0  # ten applied updates


def test_step_zero_reads_the_source_runs_best_checkpoint(pretrained):
  checkpoints, _ = pretrained
  steps = sorted(int(name) for name in os.listdir(checkpoints) if name.isdigit())
  best = transfer.resolve_step(checkpoints)
  assert best in steps
  with open(os.path.join(os.path.dirname(checkpoints), 'final_metrics.json')) as f:
    assert best == __import__('json').load(f)['best_step']
  assert transfer.resolve_step(os.path.dirname(checkpoints), steps[0]) == steps[0]  # the workdir


def test_resuming_a_transfer_run_is_exact_and_does_not_reload_the_trunk(qm9_dir, pretrained,
                                                                         tmp_path):
  checkpoints, source = pretrained
  copy = str(tmp_path / 'source')
  shutil.copytree(checkpoints, copy)
  # Frozen for the first 10 steps, then trained at half the rate.
  options = dict(init_from=copy, unfreeze_after_steps=10, trunk_lr_scale=0.5)
  straight = str(tmp_path / 'straight')
  loop.train_and_evaluate(make_config(qm9_dir, steps=20, **options), straight)
  assert_trees_equal(read_state(straight, 10)['params']['shared'], source['params']['shared'])
  assert_some_leaf_differs(read_state(straight, 20)['params']['shared'],
                           source['params']['shared'])
  resumed = str(tmp_path / 'resumed')
  loop.train_and_evaluate(make_config(qm9_dir, steps=10, **options), resumed)
  shutil.rmtree(copy)  # a resumed run reads its own checkpoint, never the source again
  loop.train_and_evaluate(make_config(qm9_dir, steps=20, **options), resumed)
  assert_trees_equal(read_state(resumed, 20), read_state(straight, 20))


def test_mismatching_trunk_is_a_clear_error_before_compiling(qm9_dir, pretrained, tmp_path,
                                                             monkeypatch):
  checkpoints, _ = pretrained
  compiled = []
  real_jit = jax.jit
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: compiled.append(a) or real_jit(*a, **k))
  config = make_config(qm9_dir, hidden=(16, 8), init_from=checkpoints)
  with pytest.raises(UserError) as error:
    loop.train_and_evaluate(config, str(tmp_path / 'bad'))
  message = str(error.value)
  assert 'params/shared/encoder/Dense_1/kernel' in message and 'missing from the checkpoint' in message
  assert 'params/shared/encoder/Dense_1/bias' in message
  # The heads differ (source: mu, alpha; new: homo, mu) but are never compared.
  assert 'params/tasks' not in message
  assert not compiled
  wider = make_config(qm9_dir, hidden=(32,), init_from=checkpoints)
  with pytest.raises(UserError, match=r'different shapes: params/shared/encoder/Dense_0/bias '
                                      r'\(checkpoint \(16,\), model \(32,\)\)'):
    loop.train_and_evaluate(wider, str(tmp_path / 'wider'))
  assert not compiled


@pytest.mark.parametrize('transfer_options, match', [
    ({'trunk': 'thawed'}, r"config.transfer.trunk is 'thawed'; valid: train, frozen"),
    ({'trunk_lr_scale': -1.0}, r'trunk_lr_scale must be >= 0'),
    ({'unfreeze_after_steps': -2}, r'must be >= 0'),
])
def test_bad_transfer_options_are_user_errors_in_setup(qm9_dir, transfer_options, match):
  with pytest.raises(UserError, match=match):
    loop.setup(make_config(qm9_dir, **transfer_options))


def test_unknown_transfer_option_is_a_user_error():
  with pytest.raises(UserError, match=r'unknown option\(s\) lr_scale; valid: init_from, step'):
    transfer.options({'transfer': {'lr_scale': 0.1}})


def test_missing_or_empty_checkpoint_directory_is_a_user_error(qm9_dir, pretrained, tmp_path):
  config = make_config(qm9_dir, init_from=str(tmp_path / 'nowhere'))
  with pytest.raises(UserError, match='is not a directory'):
    loop.train_and_evaluate(config, str(tmp_path / 'a'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(UserError, match='holds no checkpoint'):
    loop.train_and_evaluate(make_config(qm9_dir, init_from=str(tmp_path / 'empty')),
                            str(tmp_path / 'b'))
  with pytest.raises(UserError, match=r'config.transfer.step=7 is not in .*; its steps: 10, 20'):
    loop.train_and_evaluate(make_config(qm9_dir, init_from=pretrained[0], step=7),
                            str(tmp_path / 'c'))


def test_train_examples_draws_nested_subsets_by_seed(qm9_dir):
  def rows(count, seed=0):
    config = make_config(qm9_dir)
    config.train_examples, config.seed = count, seed
    return loop.setup(config).columns['train']['row']
  small, large = rows(40), rows(120)
  assert len(small) == 40 and len(large) == 120
  assert set(small) <= set(large)
  np.testing.assert_array_equal(small, rows(40))
  assert set(small) != set(rows(40, seed=1))
  assert len(rows(0)) == 399
  with pytest.raises(UserError, match=r'train_examples=400, but the training split has 399 rows'):
    rows(400)
