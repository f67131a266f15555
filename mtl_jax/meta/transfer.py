"""Transfer learning: a new task on the shared trunk of a trained model.

Three pure pieces, which `mtl_jax.train.loop` wires to `config.transfer`:

* `options(config)`: the validated `config.transfer` (defaults when the config has none).
* `restore_shared(checkpoint_dir, abstract_shared, step=None)`: reads only the shared subtrees
  of a checkpoint's `state` item (orbax partial restore), after checking that they match the new
  model's leaf for leaf; a mismatch is a `UserError` naming the paths, raised before any array
  is read (and, in the loop, before anything compiles).
* `transfer_optimizer(base_optimizer_factory, shared_keys, ...)`: the trunk frozen, trained with
  a scaled learning rate, or frozen for the first N updates, by `optax.multi_transform` over the
  labels 'shared' and 'tasks'.

"Shared" is the model's own definition (`model.shared_keys()`, its `param_groups` of group
'shared'): `shared` for most architectures, plus e.g. `columns`/`stitch` for cross-stitch. The
trunk's non-trainable collections under those keys (batch-norm statistics) travel with it.

    python launch.py --config=experiments/configs/transfer_census.py \
        --config.transfer.init_from=runs/pretrain/checkpoints --config.transfer.trunk=frozen
"""

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from mtl_jax import metrics as metrics_lib
from mtl_jax.errors import UserError

PyTree = Any

TRUNK_MODES = ('train', 'frozen')
# How many paths of each kind a mismatch message lists before "and N more".
_LISTED = 8


@dataclasses.dataclass(frozen=True)
class TransferOptions:
  """`config.transfer`. Each knob is one flag; all default to "no transfer, train everything".

  Attributes:
    init_from: a checkpoint directory (`<workdir>/checkpoints`, or the workdir itself) whose
      shared parameters initialise the model; '' trains from scratch.
    step: the checkpoint step to read; 0 takes the pretraining run's best checkpoint by its own
      `best_metric` (the model its final metrics describe), or its latest when it has no metrics.
    trunk: 'train' (updated, at `trunk_lr_scale` times the learning rate) or 'frozen'.
    trunk_lr_scale: the trunk's learning rate as a fraction of `config.learning_rate`.
    unfreeze_after_steps: > 0 freezes the trunk for that many updates, whatever `trunk` says,
      then trains it (at `trunk_lr_scale`).
  """

  init_from: str = ''
  step: int = 0
  trunk: str = 'train'
  trunk_lr_scale: float = 1.0
  unfreeze_after_steps: int = 0

  @property
  def changes_optimizer(self) -> bool:
    return self.trunk != 'train' or self.trunk_lr_scale != 1.0 or self.unfreeze_after_steps > 0


def options(config) -> TransferOptions:
  """`config.transfer` checked (a UserError saying what to change), defaults where absent."""
  given = dict(config.get('transfer', None) or {})
  fields = [f.name for f in dataclasses.fields(TransferOptions)]
  unknown = sorted(set(given) - set(fields))
  if unknown:
    raise UserError(f'config.transfer has unknown option(s) {", ".join(unknown)}; valid: '
                    f'{", ".join(fields)}')
  result = TransferOptions(**given)
  if result.trunk not in TRUNK_MODES:
    raise UserError(f'config.transfer.trunk is {result.trunk!r}; valid: {", ".join(TRUNK_MODES)}')
  if not result.trunk_lr_scale >= 0:
    raise UserError(f'config.transfer.trunk_lr_scale must be >= 0, got {result.trunk_lr_scale}')
  if result.unfreeze_after_steps < 0 or result.step < 0:
    raise UserError('config.transfer.unfreeze_after_steps and config.transfer.step must be >= 0, '
                    f'got {result.unfreeze_after_steps} and {result.step}')
  return result


# ----------------------------------------------------------------------------------------------
# The optimiser.


class FrozenForState(NamedTuple):
  count: jax.Array  # updates seen, frozen ones included
  inner: PyTree


def frozen_for(steps: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Zero updates for the first `steps` calls, then `inner`, whose state starts fresh there.

  `inner` does not see the frozen updates: its moments and its schedule count begin at the
  unfreezing, as if the trunk's training started then (a warm-up in `inner` warms the trunk up).
  """
  def init(params):
    return FrozenForState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    def frozen(inner_state):
      return jax.tree.map(jnp.zeros_like, updates), inner_state

    def thawed(inner_state):
      return inner.update(updates, inner_state, params)

    new_updates, inner_state = jax.lax.cond(state.count < steps, frozen, thawed, state.inner)
    return new_updates, FrozenForState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformation(init, update)


def param_labels(shared_keys: Sequence[str]) -> Callable[[PyTree], dict]:
  """params -> {top-level key: 'shared' | 'tasks'}, a prefix tree for `optax.multi_transform`."""
  shared_keys = frozenset(shared_keys)
  return lambda params: {key: 'shared' if key in shared_keys else 'tasks' for key in params}


def transfer_optimizer(base_optimizer_factory: Callable[[], optax.GradientTransformation],
                       shared_keys: Sequence[str] = ('shared',), *, trunk: str = 'train',
                       trunk_lr_scale: float = 1.0,
                       unfreeze_after_steps: int = 0) -> optax.GradientTransformation:
  """The base optimiser on the task parameters; on the trunk, frozen, scaled or frozen-then-trained.

  Args:
    base_optimizer_factory: () -> the learning-rate-bearing transform (e.g. `optax.adam(lr)`).
      Called once per group, so the trunk and the heads keep separate moments and schedule
      counts. Put transforms that need the whole tree (global-norm clipping, an architecture's
      penalty) before this one in the chain, not in the factory: inside a group they see only
      that group's leaves.
    shared_keys: the top-level params keys of the trunk (`model.shared_keys()`).
    trunk: 'train' or 'frozen' (zero updates: `optax.set_to_zero`, no optimiser state).
    trunk_lr_scale: the trunk's updates are the base optimiser's times this factor: for an
      optimiser whose update is proportional to its learning rate (SGD, Adam), the learning rate
      times it.
    unfreeze_after_steps: > 0: zero trunk updates for that many steps, then trained (see
      `frozen_for`); overrides `trunk='frozen'`. Counted in applied updates: a step the train
      step skips as non-finite does not reach the optimiser.

  Returns:
    `base_optimizer_factory()` itself when nothing differs from plain training (so such a run is
    unchanged bit for bit), else an `optax.multi_transform` over 'shared' and 'tasks'.
  """
  checked = options({'transfer': {'trunk': trunk, 'trunk_lr_scale': trunk_lr_scale,
                                  'unfreeze_after_steps': unfreeze_after_steps}})
  if not checked.changes_optimizer:
    return base_optimizer_factory()
  trained = base_optimizer_factory()
  if trunk_lr_scale != 1.0:
    trained = optax.chain(trained, optax.scale(trunk_lr_scale))
  if unfreeze_after_steps > 0:
    trunk_tx = frozen_for(unfreeze_after_steps, trained)
  elif trunk == 'frozen':
    trunk_tx = optax.set_to_zero()
  else:
    trunk_tx = trained
  return optax.multi_transform({'shared': trunk_tx, 'tasks': base_optimizer_factory()},
                               param_labels(shared_keys))


# ----------------------------------------------------------------------------------------------
# The trunk from a checkpoint.


def shared_subtree(state: PyTree, shared_keys: Sequence[str]) -> dict:
  """The trunk's part of a TrainState (concrete or abstract), in the checkpoint's layout:
  {'params': {k: ...}, 'collections': {c: {k: ...}}} for k in `shared_keys`, empty parts
  left out (orbax has nothing to restore into an empty dict)."""
  params = {k: state.params[k] for k in shared_keys
            if k in state.params and jax.tree.leaves(state.params[k])}
  collections = {}
  for name, collection in state.collections.items():
    part = {k: collection[k] for k in shared_keys
            if k in collection and jax.tree.leaves(collection[k])}
    if part:
      collections[name] = part
  tree = {'params': params}
  if collections:
    tree['collections'] = collections
  return tree


def with_shared(state, shared: dict):
  """`state` with its trunk replaced by `shared` (a `shared_subtree` layout)."""
  collections = {name: {**state.collections[name], **part}
                 for name, part in shared.get('collections', {}).items()}
  return state.replace(params={**state.params, **shared['params']},
                       collections={**state.collections, **collections})


def checkpoint_directory(path: str) -> str:
  """The orbax directory of `path`: the path itself, or its `checkpoints/` (a run's workdir)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise UserError(f'config.transfer.init_from={path!r} is not a directory; give the '
                    'pretraining run\'s workdir or its checkpoints/ folder')
  steps = [name for name in os.listdir(path) if name.isdigit()]
  if not steps and os.path.isdir(os.path.join(path, 'checkpoints')):
    return checkpoint_directory(os.path.join(path, 'checkpoints'))
  if not steps:
    raise UserError(f'config.transfer.init_from={path!r} holds no checkpoint (no step '
                    'folders); give the pretraining run\'s workdir or its checkpoints/ folder')
  return path


@contextlib.contextmanager
def _quiet():
  """Orbax warns, at every read-only open, that the directory is read-only and that the
  items we do not read (data iterator, metrics) were not restored: expected here, so hidden."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(max(level, logging.ERROR))
  try:
    yield
  finally:
    logger.setLevel(level)


def _manager(directory: str, best_metric: str | None = None) -> ocp.CheckpointManager:
  options_ = {'read_only': True}
  if best_metric:
    options_.update(best_fn=lambda metrics: metrics[best_metric],
                    best_mode='max' if metrics_lib.HIGHER_IS_BETTER.get(
                        best_metric.split('/')[-1], True) else 'min')
  return ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(**options_),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})


def resolve_step(directory: str, step: int | None = None) -> int:
  """`step` if the directory holds it; for None or 0, the best step by the saved run's own
  `best_metric` (read from its saved config), or the latest when no step has metrics."""
  directory = checkpoint_directory(directory)
  with _quiet():
    return _resolve_step(directory, step)


def _resolve_step(directory: str, step: int | None) -> int:
  manager = _manager(directory)
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise UserError(f'config.transfer.init_from={directory!r} holds no finished checkpoint')
    if step:
      if step not in steps:
        raise UserError(f'config.transfer.step={step} is not in {directory!r}; its steps: '
                        f'{", ".join(map(str, steps))} (0 = the best one)')
      return step
    latest = manager.latest_step()
    try:
      saved = manager.restore(latest, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
      best_metric = saved['config'].get('best_metric')
    except (KeyError, ValueError, FileNotFoundError):
      best_metric = None  # A checkpoint written by other code: no saved config.
  finally:
    manager.close()
  if best_metric:
    manager = _manager(directory, best_metric)
    try:
      best = manager.best_step()
    except KeyError:  # Steps whose metrics lack `best_metric`.
      best = None
    finally:
      manager.close()
    if best is not None:
      return best
  return latest


def _paths(tree: PyTree) -> dict[str, Any]:
  """{'params/shared/encoder/Dense_0/kernel': leaf} for every leaf."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): leaf
          for path, leaf in flat}


def _listed(paths: list[str]) -> str:
  more = f' and {len(paths) - _LISTED} more' if len(paths) > _LISTED else ''
  return ', '.join(paths[:_LISTED]) + more


def check_shared(saved: PyTree, abstract_shared: dict, where: str) -> None:
  """UserError unless the checkpoint's trunk (`saved`: its state metadata) has exactly the
  paths and shapes of `abstract_shared`. Only the top-level groups the new model has are
  compared; dtypes may differ (orbax casts on restore, e.g. a float32 trunk into bfloat16)."""
  wanted = _paths(abstract_shared)
  have = {}
  for top, groups in abstract_shared.items():
    saved_top = saved.get(top, {}) if isinstance(saved, dict) else {}
    if top == 'params':
      have.update(_paths({top: {k: saved_top[k] for k in groups if k in saved_top}}))
    else:  # collections: {name: {group: ...}}
      have.update(_paths({top: {name: {k: saved_top.get(name, {})[k] for k in part
                                       if k in saved_top.get(name, {})}
                                for name, part in groups.items()}}))
  missing = sorted(set(wanted) - set(have))
  extra = sorted(set(have) - set(wanted))
  shapes = sorted(f'{p} (checkpoint {tuple(have[p].shape)}, model {tuple(wanted[p].shape)})'
                  for p in set(wanted) & set(have)
                  if tuple(have[p].shape) != tuple(wanted[p].shape))
  if not (missing or extra or shapes):
    return
  problems = []
  if missing:
    problems.append(f'missing from the checkpoint: {_listed(missing)}')
  if extra:
    problems.append(f'in the checkpoint but not in the model: {_listed(extra)}')
  if shapes:
    problems.append(f'different shapes: {_listed(shapes)}')
  raise UserError(f'{where}: the checkpoint\'s shared parameters do not match the new model\'s; '
                  + '; '.join(problems) + '. Build the new model with the pretraining run\'s '
                  'arch, arch_kwargs, encoder, encoder_kwargs and input options (dataset columns, '
                  'embed_dim)')


def restore_shared(checkpoint_dir: str, abstract_shared: dict, step: int | None = None) -> dict:
  """Reads the trunk of a checkpoint: only the `abstract_shared` subtrees of its `state` item.

  Args:
    checkpoint_dir: a `Checkpointer` directory (or the run's workdir holding `checkpoints/`).
    abstract_shared: `shared_subtree` of the new model's abstract state: jax.ShapeDtypeStruct
      leaves carrying the shardings to restore onto.
    step: the checkpoint step; None or 0: the best one (`resolve_step`).

  Returns:
    A tree like `abstract_shared` of arrays, for `with_shared`.

  Raises:
    UserError: no checkpoint there, no such step, or a trunk whose paths or shapes differ from
      the new model's (naming the paths, up to 8 of each kind), before any array is read.
  """
  if not jax.tree.leaves(abstract_shared):
    raise UserError('the model has no shared parameters to transfer (e.g. arch "soft"); '
                    'leave config.transfer.init_from empty')
  directory = checkpoint_directory(checkpoint_dir)
  step = resolve_step(directory, step)
  with _quiet():
    return _restore(directory, abstract_shared, step)


def _restore(directory: str, abstract_shared: dict, step: int) -> dict:
  manager = _manager(directory)
  try:
    saved = manager.item_metadata(step)['state']
    saved = getattr(saved, 'tree', saved)
    check_shared(saved, abstract_shared,
                 f'config.transfer.init_from={directory!r} (step {step})')
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=abstract_shared,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_shared),
        partial_restore=True)))
  finally:
    manager.close()
  return restored['state']
