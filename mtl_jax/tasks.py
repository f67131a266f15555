"""A task: what is predicted, how it is scored, and how its labels must look."""

import dataclasses
from typing import Sequence

import jax
import numpy as np

from mtl_jax import losses as losses_lib
from mtl_jax import metrics as metrics_lib
from mtl_jax.errors import UnknownNameError, UserError

KINDS = ('binary', 'multiclass', 'multilabel', 'regression')
# Kinds whose per-example loss and metrics extend to one label per token unchanged.
PER_TOKEN_KINDS = ('binary', 'multiclass')

DEFAULT_METRICS = {
    'binary': ('auc', 'accuracy', 'f1'),
    'multiclass': ('accuracy', 'f1'),
    'multilabel': ('auc', 'accuracy', 'f1'),
    'regression': ('rmse', 'mae'),
}


@dataclasses.dataclass(frozen=True)
class Task:
  """One task of a multi-task problem.

  Attributes:
    name: the task's name (also the key of its labels and outputs).
    kind: 'binary' (labels [B] in {0,1}), 'multiclass' (integer labels [B] in [0, num_outputs)),
      'multilabel' (labels [B, num_outputs] in {0,1}) or 'regression' (targets [B], or
      [B, num_outputs] when num_outputs > 1).
    num_outputs: classes, labels or regression targets; 1 for binary.
    metrics: metric names from `mtl_jax.metrics.METRICS`; defaults by kind.
    per_token: a sequence-labelling task ('binary' or 'multiclass'): one label per token, labels
      [B, T] with a label mask [B, T] (False on padding and missing labels), outputs [B, T] or
      [B, T, num_outputs]. The loss is the mean over the batch's real tokens (every token weighs
      the same, whatever its sentence's length) and metrics pool all real tokens of the split.
    class_weights: None, or one weight per class (2 for binary: [w_0, w_1]) for a binary or
      multiclass task: the loss becomes the weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i} over
      the labelled examples (tokens). Metrics are unweighted. See `with_class_weights`.
  """

  name: str
  kind: str
  num_outputs: int = 1
  metrics: tuple[str, ...] = ()
  per_token: bool = False
  class_weights: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise UserError(f'task {self.name!r}: unknown kind {self.kind!r}; valid: {", ".join(KINDS)}')
    if self.kind == 'binary' and self.num_outputs != 1:
      raise UserError(f'task {self.name!r}: a binary task has num_outputs=1')
    if self.kind == 'multiclass' and self.num_outputs < 2:
      raise UserError(f'task {self.name!r}: a multiclass task needs num_outputs >= 2')
    if self.per_token and self.kind not in PER_TOKEN_KINDS:
      raise UserError(f'task {self.name!r}: a per-token task must be one of '
                      f'{", ".join(PER_TOKEN_KINDS)}, not {self.kind!r}')
    if not self.metrics:
      object.__setattr__(self, 'metrics', DEFAULT_METRICS[self.kind])
    if self.class_weights is not None:
      weights = tuple(float(w) for w in self.class_weights)
      classes = 2 if self.kind == 'binary' else self.num_outputs
      if self.kind not in ('binary', 'multiclass'):
        raise UserError(f'task {self.name!r}: class weights need a binary or multiclass task, '
                        f'not {self.kind!r}')
      if len(weights) != classes or not all(np.isfinite(w) and w > 0 for w in weights):
        raise UserError(f'task {self.name!r}: class weights must be {classes} positive numbers '
                        f'(one per class), got {list(self.class_weights)}')
      object.__setattr__(self, 'class_weights', weights)
    for metric in self.metrics:
      if metric not in metrics_lib.METRICS:
        raise UnknownNameError(
            f'task {self.name!r}: unknown metric {metric!r}; valid: '
            f'{", ".join(sorted(metrics_lib.METRICS))}')

  @property
  def output_size(self) -> int:
    """Width of the head's output layer."""
    return self.num_outputs

  def loss(self, outputs: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Masked mean of the per-example (per-token for a per-token task) loss.

    Labels under the mask are replaced by 0 before the loss: `where` alone would zero the forward
    value but a NaN label would still reach the gradient as NaN * 0.
    """
    if self.per_token:
      self._check_token_shapes(outputs.shape, labels.shape)
    if mask is not None:
      keep = mask.astype(bool).reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
      labels = jax.numpy.where(keep, labels, jax.numpy.zeros_like(labels))
    weights = None
    if self.class_weights is not None:
      weights = jax.numpy.asarray(self.class_weights, jax.numpy.float32)[labels.astype(int)]
    return losses_lib.masked_mean(losses_lib.BY_KIND[self.kind](outputs, labels), mask, weights)

  def evaluate(self, outputs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None):
    """{metric: value} over the labels under `mask` (for a per-token task: the real tokens)."""
    if self.per_token:
      outputs, labels = np.asarray(outputs), np.asarray(labels)
      self._check_token_shapes(outputs.shape, labels.shape)
      # Metrics take one row per scored item: pool the tokens.
      mask = (np.ones(labels.shape, bool) if mask is None
              else np.broadcast_to(np.asarray(mask, bool), labels.shape))
      outputs, labels, mask = outputs[mask], labels[mask], None
    return {name: metrics_lib.METRICS[name](self.kind, outputs, labels, mask)
            for name in self.metrics}

  def _check_token_shapes(self, output_shape, label_shape) -> None:
    expected = tuple(label_shape[:2]) + ((self.num_outputs,) if self.kind == 'multiclass' else ())
    if len(label_shape) != 2 or tuple(output_shape) != expected:
      raise UserError(
          f'task {self.name!r} is per-token: it needs labels [B, T] and outputs '
          f'[B, T{", " + str(self.num_outputs) if self.kind == "multiclass" else ""}], got labels '
          f'{list(label_shape)} and outputs {list(output_shape)}; use an encoder that keeps the '
          f'position axis (bilstm or transformer for tokens, fcn for pixels)')

  def check_labels(self, labels: np.ndarray, mask: np.ndarray | None, where: str) -> None:
    """Raises a UserError naming the task, the place and the offending value."""
    labels = np.asarray(labels)
    if self.per_token:
      if labels.ndim != 2:
        raise UserError(f'task {self.name!r} is per-token: its labels in {where} must be [N, T] '
                        f'(-1 on padding), not of shape {list(labels.shape)}')
      # -1 marks padding and missing labels; a row mask (from the data pipeline) leaves them in.
      keep = labels != -1
      if mask is not None:
        mask = np.asarray(mask, bool)
        keep &= mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
      mask = keep
    if mask is not None:
      labels = labels[np.asarray(mask, bool)]
    if labels.size == 0:
      return
    if self.kind == 'regression':
      if not np.all(np.isfinite(labels)):
        raise UserError(f'task {self.name!r}: non-finite regression target in {where}')
      return
    if self.kind == 'multiclass':
      bad = (labels < 0) | (labels >= self.num_outputs) | (labels != np.round(labels))
      expected = f'integers in [0, {self.num_outputs})'
    else:
      bad = (labels != 0) & (labels != 1)
      expected = '0 or 1'
    if np.any(bad):
      raise UserError(
          f'task {self.name!r}: label {labels[bad].flat[0].item()!r} out of range in {where}; '
          f'a {self.kind} task expects {expected}')


def select(available: Sequence[Task], names: Sequence[str], dataset: str) -> tuple[Task, ...]:
  """The tasks named in the config, in the config's order; unknown names list the valid ones."""
  by_name = {task.name: task for task in available}
  if not names:
    raise UserError(f'no tasks selected; dataset {dataset!r} has: {", ".join(by_name)}')
  for name in names:
    if name not in by_name:
      raise UnknownNameError(
          f'unknown task {name!r} for dataset {dataset!r}; valid tasks: {", ".join(by_name)}')
  if len(set(names)) != len(names):
    raise UserError(f'a task is listed twice: {list(names)}')
  return tuple(by_name[name] for name in names)


def with_class_weights(tasks: Sequence[Task], class_weights: dict,
                       train_labels: dict[str, Sequence[np.ndarray]]) -> tuple[Task, ...]:
  """`tasks` with `config.class_weights` applied: {task: 'balanced' or [w_0, w_1, ...]}.

  'balanced' is w_c = n / (C n_c) (scikit-learn's rule): n labelled training examples (tokens)
  of which n_c are of class c, C classes; computed from `train_labels[task]` (arrays of labels,
  -1 = missing). A class absent from the training labels is a UserError (its weight would be
  infinite). Explicit weights are used as given.
  """
  by_name = {task.name: task for task in tasks}
  unknown = sorted(set(class_weights) - set(by_name))
  if unknown:
    raise UnknownNameError(f'class_weights names unknown task {unknown[0]!r}; the tasks are: '
                           f'{", ".join(by_name)}')
  out = []
  for task in tasks:
    spec = class_weights.get(task.name)
    if spec is None:
      out.append(task)
      continue
    if isinstance(spec, str):
      if spec != 'balanced':
        raise UserError(f"class_weights[{task.name!r}] = {spec!r}: use 'balanced' or a list of "
                        f'weights, one per class')
      if task.kind not in ('binary', 'multiclass'):
        raise UserError(f'task {task.name!r}: class weights need a binary or multiclass task, '
                        f'not {task.kind!r}')
      classes = 2 if task.kind == 'binary' else task.num_outputs
      labels = np.concatenate([np.asarray(y).reshape(-1) for y in train_labels[task.name]])
      labels = labels[labels != -1].astype(np.int64)
      counts = np.bincount(labels, minlength=classes)[:classes]
      if np.any(counts == 0):
        raise UserError(f"task {task.name!r}: 'balanced' class weights, but class "
                        f'{int(np.flatnonzero(counts == 0)[0])} never occurs in the training '
                        f'labels; give explicit weights')
      spec = tuple(len(labels) / (classes * counts))
    try:
      spec = tuple(float(w) for w in spec)
    except (TypeError, ValueError):
      raise UserError(f"class_weights[{task.name!r}] = {spec!r}: use 'balanced' or a list of "
                      f'weights, one per class') from None
    out.append(dataclasses.replace(task, class_weights=spec))
  return tuple(out)
