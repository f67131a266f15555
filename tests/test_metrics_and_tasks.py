"""Losses and metrics of each task kind against definitions written out independently."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax import metrics
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.tasks import Task, select


def _auc_by_pairs(scores, labels):
  """AUC as the fraction of (positive, negative) pairs ranked right, ties counting one half."""
  pos = [s for s, y in zip(scores, labels) if y]
  neg = [s for s, y in zip(scores, labels) if not y]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_binary_auc_matches_pair_counting_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 60).astype(float)  # many ties
  labels = rng.integers(0, 2, 60)
  assert metrics.auc('binary', scores, labels) == pytest.approx(_auc_by_pairs(scores, labels))


def test_auc_respects_the_mask_and_is_nan_with_one_class():
  scores = np.array([0.1, 0.9, 0.8, 0.2])
  labels = np.array([0, 1, 0, 1])
  mask = np.array([True, True, False, False])
  assert metrics.auc('binary', scores, labels, mask) == 1.0
  assert np.isnan(metrics.auc('binary', scores, np.ones(4)))


def test_multilabel_and_multiclass_auc_are_macro_averages():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(40, 3))
  labels = rng.integers(0, 2, (40, 3))
  expected = np.mean([_auc_by_pairs(scores[:, j], labels[:, j]) for j in range(3)])
  assert metrics.auc('multilabel', scores, labels) == pytest.approx(expected)
  classes = rng.integers(0, 3, 40)
  expected = np.mean([_auc_by_pairs(scores[:, c], classes == c) for c in range(3)])
  assert metrics.auc('multiclass', scores, classes) == pytest.approx(expected)


def test_accuracy_f1_rmse_mae():
  logits = np.array([2.0, -1.0, 0.5, -3.0, 1.0])
  labels = np.array([1, 0, 0, 1, 1])
  assert metrics.accuracy('binary', logits, labels) == pytest.approx(3 / 5)
  # predicted positive: 0, 2, 4; tp = 2 (0, 4); precision 2/3, recall 2/3
  assert metrics.f1('binary', logits, labels) == pytest.approx(2 / 3)
  class_logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]])
  classes = np.array([0, 1, 1, 2])
  assert metrics.accuracy('multiclass', class_logits, classes) == pytest.approx(0.5)
  # per class F1: c0: tp1 fp1 fn0 -> 2/3; c1: tp1 fp0 fn1 -> 2/3; c2: tp0 fp1 fn1 -> 0
  assert metrics.f1('multiclass', class_logits, classes) == pytest.approx(4 / 9)
  predictions, targets = np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0])
  assert metrics.rmse('regression', predictions, targets) == pytest.approx(np.sqrt(13 / 3))
  assert metrics.mae('regression', predictions, targets) == pytest.approx(5 / 3)


def test_miou_is_the_mean_over_classes_of_intersection_over_union():
  # Predicted classes 0 0 1 1 2, labels 0 1 1 1 0 (and a masked-out row predicting 2):
  # class 0: intersection 1, union {0,1,4} = 3; class 1: 2 / {1,2,3} = 3; class 2 is neither
  # labelled nor predicted under the mask... except row 4 predicts 2: 0 / 1.
  predictions = np.eye(3)[[0, 0, 1, 1, 2, 2]]
  labels = np.array([0, 1, 1, 1, 0, 2])
  mask = np.array([True] * 5 + [False])
  assert metrics.miou('multiclass', predictions, labels, mask) == pytest.approx(
      (1 / 3 + 2 / 3 + 0 / 1) / 3)
  # A class absent from both predictions and labels is left out, not counted as 0 or 1.
  assert metrics.miou('multiclass', np.eye(4)[[0, 1]], np.array([0, 1])) == 1.0
  with pytest.raises(ValueError, match='multiclass'):
    metrics.miou('binary', np.zeros(2), np.zeros(2))
  assert metrics.HIGHER_IS_BETTER['miou']


@pytest.mark.parametrize('kind,outputs,labels,expected', [
    ('binary', [0.0, 2.0], [1, 0], (np.log(2) + np.log1p(np.exp(2.0))) / 2),
    ('multiclass', [[0.0, np.log(3.0)], [0.0, 0.0]], [1, 0], (np.log(4 / 3) + np.log(2)) / 2),
    ('multilabel', [[0.0, 0.0], [0.0, 0.0]], [[1, 0], [0, 1]], np.log(2)),
    ('regression', [1.0, 3.0], [0.0, 0.0], 5.0),
])
def test_losses_by_kind(kind, outputs, labels, expected):
  num_outputs = {'binary': 1, 'multiclass': 2, 'multilabel': 2, 'regression': 1}[kind]
  task = Task('t', kind, num_outputs)
  got = task.loss(jnp.asarray(outputs), jnp.asarray(labels), None)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Masking the second example leaves the first example's loss alone.
  mask = jnp.array([True, False])
  single = task.loss(jnp.asarray(outputs)[:1], jnp.asarray(labels)[:1], None)
  assert float(task.loss(jnp.asarray(outputs), jnp.asarray(labels), mask)) == pytest.approx(
      float(single), rel=1e-6)


def test_task_checks_and_selection():
  with pytest.raises(UserError, match="unknown kind 'ranking'"):
    Task('t', 'ranking')
  with pytest.raises(UnknownNameError, match="unknown metric 'bleu'"):
    Task('t', 'binary', metrics=('bleu',))
  with pytest.raises(UserError, match="label 7 out of range in split 'x'"):
    Task('t', 'multiclass', 3).check_labels(np.array([0, 7]), None, "split 'x'")
  Task('t', 'multiclass', 3).check_labels(np.array([0, 7]), np.array([True, False]), 'x')
  tasks = (Task('a', 'binary'), Task('b', 'regression'))
  assert [t.name for t in select(tasks, ['b', 'a'], 'd')] == ['b', 'a']
  with pytest.raises(UnknownNameError, match="valid tasks: a, b"):
    select(tasks, ['c'], 'd')
