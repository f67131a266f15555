"""`train_and_evaluate(config, workdir)`: the flat, resumable training loop.

Everything that can be wrong with the config or the data is checked in `setup` before anything is
compiled; the loop itself reads top to bottom: restore, then step / log / evaluate / checkpoint.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mtl_jax import data as data_lib
from mtl_jax.data import mixtures
from mtl_jax import metrics as metrics_lib
from mtl_jax import models
from mtl_jax import optim
from mtl_jax import tasks as tasks_lib
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.meta import transfer
from mtl_jax.train import checkpoint as checkpoint_lib
from mtl_jax.train import sharding
from mtl_jax.train import step as step_lib
from mtl_jax.train import writers


SPLIT_PREFIX = {'validation': 'val'}


@dataclasses.dataclass
class Setup:
  """Everything a run is made of, built and validated before the first compile."""

  config: ml_collections.ConfigDict
  mesh: Any
  tasks: tuple
  spec: Any
  columns: dict  # split -> column arrays
  model: models.MultiTaskModel
  method: Any  # optim.MultiTaskTransformation
  optimizer: optax.GradientTransformation
  mode: str
  # A mixture (`config.dataset` names one of `mixtures.MIXTURES`): its spec, the members' splits
  # (split -> [LoadedMember], members without a selected task left out) and the rate function.
  # For a plain dataset these are None, and `spec`/`columns` are the dataset's; for a mixture they
  # are the first member's (its inputs stand for every member's).
  mixture: Any = None
  members: dict | None = None
  rate: Any = None
  per_batch: bool = False


@functools.lru_cache(maxsize=8)
def _load_split(dataset: str, data_dir: str, split: str):
  spec = data_lib.get(dataset)
  builder = data_lib.prepare(spec.builder_cls, data_dir or None)
  return builder, data_lib.load_columns(builder, split)


def make_optimizer(config, model: models.MultiTaskModel) -> optax.GradientTransformation:
  """[soft-sharing penalty] -> [architecture penalty] -> [weight decay] -> [clipping] ->
  adam(schedule)."""
  parts = []
  if config.arch == 'soft' and config.get('soft_sharing_strength', 0.0):
    parts.append(optim.soft_sharing(
        config.soft_sharing_strength,
        mask=lambda params: {k: jax.tree.map(lambda _: k == 'towers', v)
                             for k, v in params.items()}))
  if type(model).penalty is not models.MultiTaskModel.penalty:
    parts.append(optim.penalty(model.penalty))
  if config.get('weight_decay', 0.0):
    parts.append(optax.add_decayed_weights(config.weight_decay))
  if config.get('grad_clip_norm', 0.0):
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.get('lr_schedule', 'constant') == 'cosine':
    learning_rate = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.get('warmup_steps', 0), config.num_train_steps)
  elif config.get('lr_schedule', 'constant') == 'constant':
    learning_rate = config.learning_rate
  else:
    raise UserError(f'unknown lr_schedule {config.lr_schedule!r}; valid: constant, cosine')
  # config.transfer may freeze or slow the trunk: Adam per group, after the whole-tree parts.
  adam = lambda: optax.adam(learning_rate)
  options = transfer.options(config)
  parts.append(transfer.transfer_optimizer(
      adam, model.shared_keys(), trunk=options.trunk, trunk_lr_scale=options.trunk_lr_scale,
      unfreeze_after_steps=options.unfreeze_after_steps))
  return optax.chain(*parts)


def _check_best_metric(config, tasks) -> None:
  parts = config.best_metric.split('/')
  metric_names = {m for t in tasks for m in t.metrics} | {'loss'}
  valid = [t.name for t in tasks] + ['avg']
  if len(parts) != 3 or parts[0] != 'val' or parts[1] not in valid or parts[2] not in metric_names:
    raise UserError(f'best_metric {config.best_metric!r} must look like val/<task or avg>/<metric> '
                    f'with a task in {valid} and a metric in {sorted(metric_names)}')


def _dataset_or_mixture(name: str):
  """(DatasetSpec, None) or (None, MixtureSpec) for `config.dataset`."""
  if name in mixtures.MIXTURES:
    return None, mixtures.get(name)
  try:
    return data_lib.get(name), None
  except UnknownNameError as e:
    raise UnknownNameError(f'{e}; valid mixture names: {", ".join(mixtures.MIXTURES.names())}'
                           ) from None


def setup(config: ml_collections.ConfigDict) -> Setup:
  """Builds and checks everything; raises UserError with a fix for anything wrong."""
  data_lib.custom.register_from_config(config)  # config.custom_data: the user's own files
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  spec, mixture = _dataset_or_mixture(config.dataset)
  available = spec.tasks if mixture is None else mixture.tasks()
  tasks = tasks_lib.select(available, list(config.tasks), config.dataset)
  method = optim.get(config.method, num_tasks=len(tasks), **dict(config.get('method_kwargs', {})))
  models.ARCHS.get(config.arch)
  _check_best_metric(config, tasks)
  columns, members, rate, per_batch = {}, None, None, False
  if mixture is None:
    for split in ('train', 'validation', 'test'):
      builder, columns[split] = _load_split(config.dataset, config.get('data_dir', ''), split)
      data_lib.check_columns(columns[split], tasks, split)
    columns['train'] = _training_subset(columns['train'], config.get('train_examples', 0),
                                        config.seed)
    train_labels = {t.name: [columns['train'][t.name]] for t in tasks}
  else:
    if config.get('train_examples', 0):
      raise UserError('config.train_examples caps a dataset\'s training split; for a mixture, '
                      'leave it 0')
    builder, members, rate, per_batch = _setup_mixture(config, mixture, tasks)
    spec = members['train'][0].spec
    columns = {split: loaded[0].columns for split, loaded in members.items()}
    train_labels = {t.name: [m.columns[t.name] for m in members['train']
                             if t.name in {u.name for u in m.tasks}] for t in tasks}
  tasks = tasks_lib.with_class_weights(tasks, dict(config.get('class_weights', {})), train_labels)
  input_layer = models.inputs.for_dataset(spec, builder, config)
  model = models.build(config.arch, tasks, input_layer, config.encoder,
                       config.get('encoder_kwargs', {}), config.get('head_hidden_sizes', ()),
                       **dict(config.get('arch_kwargs', {})))
  mode = step_lib.resolve_mode(config.get('mode', 'auto'), method, model)
  return Setup(config, mesh, tasks, spec, columns, model, method, make_optimizer(config, model),
               mode, mixture, members, rate, per_batch)


def _training_subset(columns, count: int, seed: int):
  """`count` training rows drawn with `seed` (all for 0): the few-label regime. The draws are
  nested (a larger count keeps a smaller one's rows), on a stream apart from the epochs'."""
  total = data_lib.num_rows(columns)
  if not count:
    return columns
  if not 0 < count <= total:
    raise UserError(f'config.train_examples={count}, but the training split has {total} rows; '
                    f'give 1..{total}, or 0 for all')
  order = np.random.default_rng([seed, 0x7E5]).permutation(total)
  return data_lib.gather(columns, np.sort(order[:count]))


MIXTURE_OPTIONS = ('rate', 'rate_kwargs', 'per_batch')


def _mixture_options(config, mixture) -> dict:
  """The mixture's rate, rate_kwargs and per_batch, overridden by `config.mixture` (optional)."""
  given = dict(config.get('mixture', {}))
  unknown = sorted(set(given) - set(MIXTURE_OPTIONS))
  if unknown:
    raise UserError(f'config.mixture has unknown option(s) {", ".join(unknown)}; valid: '
                    f'{", ".join(MIXTURE_OPTIONS)}')
  rate = given.get('rate', mixture.rate)
  # The registered rate_kwargs belong to the registered rate; another rate starts from none.
  kwargs = dict(mixture.rate_kwargs) if rate == mixture.rate else {}
  kwargs.update(dict(given.get('rate_kwargs', {})))
  return {'rate': rate, 'rate_kwargs': kwargs,
          'per_batch': bool(given.get('per_batch', mixture.per_batch))}


def _setup_mixture(config, mixture, tasks):
  """(builder of the first member, {split: [LoadedMember]}, rate, per_batch): every member with
  a selected task, its splits loaded and checked, inputs checked to match, and the rate built."""
  selected = {t.name for t in tasks}
  loader = lambda dataset, split: _load_split(dataset, config.get('data_dir', ''), split)
  members, builders = {}, []
  for split in ('train', 'validation', 'test'):
    members[split] = []
    for member in mixture.members:
      if not selected & set(member.tasks):
        continue  # It would only add unlabelled examples.
      builder, loaded = mixtures.load_member(member, split, loader)
      loaded.tasks = tuple(t for t in loaded.tasks if t.name in selected)
      data_lib.check_columns(loaded.columns, loaded.tasks, f'{split} of member {member.name!r}')
      members[split].append(loaded)
      if split == 'train':
        builders.append(builder)
  kinds = {m.spec.input_kind for m in members['train']}
  if len(kinds) > 1:
    raise UserError(f'mixture {mixture.name!r}: members have different input kinds {sorted(kinds)}')
  mixtures.check_inputs(members['train'],
                        [m.spec.input_info(b) for m, b in zip(members['train'], builders)])
  options = _mixture_options(config, mixture)
  rate = mixtures.make_rate(options['rate'],
                            [data_lib.num_rows(m.columns) for m in members['train']],
                            config.num_train_steps, **options['rate_kwargs'])
  return builders[0], members, rate, options['per_batch']


def train_iterator(s: Setup):
  """This process's endless training batches (a grain iterator, checkpointed with the state)."""
  if s.mixture is None:
    return data_lib.train_iterator(
        s.columns['train'], s.config.batch_size, s.config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        transform=s.spec.to_batch)
  return mixtures.train_iterator(
      s.members['train'], s.tasks, s.config.batch_size, s.config.seed, s.rate,
      jax.process_index(), jax.process_count(),
      per_batch=s.per_batch)


def _eval_sources(s: Setup, split: str) -> list:
  """[(spec, columns, task names)] to evaluate on `split`: the dataset with every task, or each
  distinct split of the mixture's members with the tasks of the members reading it."""
  if s.mixture is None:
    return [(s.spec, s.columns[split], [t.name for t in s.tasks])]
  sources = {}
  for loaded in s.members[split]:
    _, _, names = sources.setdefault(loaded.source, (loaded.spec, loaded.columns, []))
    names.extend(t.name for t in loaded.tasks if t.name not in names)
  return list(sources.values())


def evaluate(s: Setup, variables, split: str, predict) -> dict:
  """Per-task metrics on a whole split as `<prefix>/<task>/<metric>`, plus `<prefix>/avg/<metric>`
  over the tasks that share the metric; prefix 'val' for the validation split."""
  prefix = SPLIT_PREFIX.get(split, split)
  outputs = {t.name: [] for t in s.tasks}
  labels = {t.name: [] for t in s.tasks}
  masks = {t.name: [] for t in s.tasks}
  batch_size = s.config.get('eval_batch_size', 4096)
  batch_size -= batch_size % s.mesh.devices.size
  by_name = {t.name: t for t in s.tasks}
  for spec, columns, names in _eval_sources(s, split):
    for batch, valid in data_lib.eval_batches(columns, batch_size):
      batch = spec.to_batch(batch, [by_name[name] for name in names])
      local = _local_slice(batch)
      out = jax.device_get(predict(variables, sharding.put_tree(local['inputs'], s.mesh)))
      for name in names:
        outputs[name].append(np.asarray(out[name])[valid])
        labels[name].append(np.asarray(batch['labels'][name])[valid])
        masks[name].append(np.asarray(batch['label_mask'][name])[valid])
  results, per_metric = {}, {}
  for t in s.tasks:
    out, lab, mask = (_concatenate(x[t.name]) for x in (outputs, labels, masks))
    scores = t.evaluate(out, lab, mask)
    scores['loss'] = float(t.loss(jnp.asarray(out), jnp.asarray(lab), jnp.asarray(mask)))
    for name, value in scores.items():
      results[f'{prefix}/{t.name}/{name}'] = value
      per_metric.setdefault(name, []).append(value)
  for name, values in per_metric.items():
    if len(values) == len(s.tasks):
      results[f'{prefix}/avg/{name}'] = float(np.mean(values))
  return results


def _concatenate(parts: list) -> np.ndarray:
  """Batches joined on axis 0; per-token arrays whose token axis differs between batches (a
  dataset's `to_batch` may cut it to the batch's longest sentence) are first zero-padded on it:
  the padding has a False label mask, so it never counts."""
  longest = max(part.shape[1] if part.ndim > 1 else 0 for part in parts)
  if all(part.ndim < 2 or part.shape[1] == longest for part in parts):
    return np.concatenate(parts)
  return np.concatenate([
      np.pad(part, [(0, 0), (0, longest - part.shape[1])] + [(0, 0)] * (part.ndim - 2))
      for part in parts])


def _local_slice(batch):
  """This process's rows of a batch every process holds whole."""
  count, index = jax.process_count(), jax.process_index()
  return jax.tree.map(lambda x: np.split(np.asarray(x), count)[index], batch)


def _summarise(task_names, history) -> dict:
  """Host-side means of the step metrics since the last log."""
  stacked = jax.device_get(history)
  losses = np.mean([m['losses'] for m in stacked], axis=0)
  weights = np.mean([m['weights'] for m in stacked], axis=0)
  out = {}
  for i, name in enumerate(task_names):
    out[f'train/{name}/loss'] = losses[i]
    out[f'train/weights/{name}'] = weights[i]
  out['train/grad_norm'] = float(np.mean([m['grad_norm'] for m in stacked]))
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` if a checkpoint is there) and returns the final metrics:
  validation and test metrics of the best checkpoint by `config.best_metric`."""
  s = setup(config)
  higher = metrics_lib.HIGHER_IS_BETTER[config.best_metric.split('/')[-1]]
  task_names = [t.name for t in s.tasks]
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), config.best_metric,
                                     higher, config.get('keep_best', 2))
  # Closed on the way out of an exception too: pending checkpoint writes finish and the event
  # file is flushed.
  with contextlib.closing(ckpt), contextlib.closing(writers.MetricWriter(workdir)) as writer:
    replicated = sharding.replicated(s.mesh)

    train_iter = train_iterator(s)
    example = s.spec.to_batch(data_lib.first_rows(s.columns['train'], 2))  # any member's inputs
    init = lambda rng: step_lib.create_state(s.model, s.method, s.optimizer, rng, example['inputs'])
    rng = jax.random.PRNGKey(config.seed)
    start = ckpt.latest_step()
    trunk, transfer_options = None, transfer.options(config)
    if start is None and transfer_options.init_from:
      # Only a fresh run reads the pretrained trunk (a resumed one has it in its own checkpoint),
      # checked against the model's shapes before anything compiles.
      trunk = transfer.restore_shared(transfer_options.init_from, transfer.shared_subtree(
          checkpoint_lib.abstract(jax.eval_shape(init, rng), replicated), s.model.shared_keys()),
          transfer_options.step)
    state = jax.jit(init, out_shardings=replicated)(rng)
    if trunk is not None:
      state = transfer.with_shared(state, trunk)

    if start is not None:
      state, train_iter, saved_config = ckpt.restore(
          start, checkpoint_lib.abstract(state, replicated), train_iter)
      _warn_config_changes(saved_config, config)
      print(f'Resumed from step {start} in {workdir}', flush=True)
    start = int(state.step)

    train_step = sharding.jit_train_step(
        step_lib.make_train_step(s.model, s.tasks, s.method, s.optimizer, s.mode,
                                 config.get('jacobian_chunk_size', 0),
                                 config.get('per_task_gradients', 'auto')), s.mesh)
    predict = jax.jit(lambda variables, inputs: s.model.apply(variables, inputs, train=False),
                      out_shardings=replicated)
    progress = writers.Progress(config.num_train_steps, start, prefix=config.get('log_prefix', ''))

    history, best, evals_without_improvement = [], None, 0
    log_every = config.get('log_every_steps', 100)
    patience = config.get('early_stopping_patience', 0)
    for step in range(start + 1, config.num_train_steps + 1):
      batch = sharding.put_batch(next(train_iter), s.mesh)
      state, step_metrics = train_step(state, batch)
      history.append(step_metrics)

      is_last = step == config.num_train_steps
      if step % log_every == 0 or is_last:
        scalars = _summarise(task_names, history)
        scalars['train/skipped_steps'] = int(state.skipped_steps)
        history = []
        writer.write(step, scalars)
        progress.update(step, {k.split('/')[1]: v for k, v in scalars.items()
                               if k.endswith('/loss')} | {'skipped': scalars['train/skipped_steps']})

      val = None
      if step % config.eval_every_steps == 0 or step % config.checkpoint_every_steps == 0 or is_last:
        val = evaluate(s, state.variables, 'validation', predict)
        writer.write(step, val)
        metric = val[config.best_metric]
        improved = best is None or (metric > best if higher else metric < best)
        best, evals_without_improvement = (metric, 0) if improved else (best, evals_without_improvement + 1)
      stop_early = bool(patience) and evals_without_improvement >= patience
      if step % config.checkpoint_every_steps == 0 or is_last or stop_early:
        if not math.isfinite(val[config.best_metric]):
          print(f'step {step}: validation metric is not finite; checkpoint not written', flush=True)
        else:
          ckpt.save(step, state, train_iter, config.to_dict(), {config.best_metric: val[config.best_metric]})
      if stop_early:
        print(f'Early stopping at step {step}: {config.best_metric} has not improved in '
              f'{patience} evaluations', flush=True)
        break
    writer.flush()

    best_step = ckpt.best_step()
    if best_step is not None and best_step != int(state.step):
      state, _, _ = ckpt.restore(best_step, checkpoint_lib.abstract(state, replicated))
    final = {**evaluate(s, state.variables, 'validation', predict),
             **evaluate(s, state.variables, 'test', predict)}
    final['best_step'] = int(state.step)
    final['skipped_steps'] = int(state.skipped_steps)
    writer.write(int(state.step), {f'final/{k}': v for k, v in final.items()})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'final_metrics.json'), 'w') as f:
      json.dump(final, f, indent=1, sort_keys=True)
  return final


def _warn_config_changes(saved: dict, config) -> None:
  current = json.loads(json.dumps(config.to_dict()))
  changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  if changed:
    print(f'Warning: resuming with a config that differs from the checkpoint in: '
          f'{", ".join(changed)}', flush=True)
