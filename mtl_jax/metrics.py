"""Evaluation metrics, computed on the host in NumPy over a whole split.

Every function takes predictions (the model's raw outputs: logits or values), labels and a boolean
mask of which labels exist, and returns a float. Ranking metrics (AUC) need the whole split at once,
which is why evaluation gathers outputs on the host rather than averaging per batch. A per-token
task's tokens are pooled into one row each before its metrics (`Task.evaluate`), so that accuracy
is over the split's real tokens and a class's F1 counts every token of it.
"""

import numpy as np
from scipy import stats


def _select(predictions, labels, mask):
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  if mask is None:
    return predictions, labels
  mask = np.asarray(mask, bool)
  return predictions[mask], labels[mask]


def _binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Mann-Whitney U form of the ROC AUC, ties counted as one half. NaN if one class is absent."""
  labels = labels.astype(bool)
  num_pos = int(labels.sum())
  num_neg = labels.size - num_pos
  if num_pos == 0 or num_neg == 0:
    return float('nan')
  ranks = stats.rankdata(scores)
  return float((ranks[labels].sum() - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


def _binary_f1(predicted: np.ndarray, labels: np.ndarray) -> float:
  predicted, labels = predicted.astype(bool), labels.astype(bool)
  tp = np.sum(predicted & labels)
  denominator = predicted.sum() + labels.sum()
  return float(2 * tp / denominator) if denominator else 0.0


def auc(kind, predictions, labels, mask=None) -> float:
  """ROC AUC: binary; macro average over labels for multilabel; one-vs-rest macro for multiclass."""
  predictions, labels = _select(predictions, labels, mask)
  if kind == 'binary':
    return _binary_auc(predictions, labels)
  if kind == 'multilabel':
    return float(np.nanmean([_binary_auc(predictions[:, j], labels[:, j])
                             for j in range(labels.shape[1])]))
  if kind == 'multiclass':
    return float(np.nanmean([_binary_auc(predictions[:, c], labels == c)
                             for c in range(predictions.shape[1])]))
  raise ValueError(f'auc is not defined for {kind} tasks')


def accuracy(kind, predictions, labels, mask=None) -> float:
  """Fraction correct; for multilabel, over all (example, label) pairs."""
  predictions, labels = _select(predictions, labels, mask)
  if labels.size == 0:
    return float('nan')
  if kind == 'binary' or kind == 'multilabel':
    return float(np.mean((predictions > 0) == labels.astype(bool)))
  if kind == 'multiclass':
    return float(np.mean(predictions.argmax(-1) == labels))
  raise ValueError(f'accuracy is not defined for {kind} tasks')


def f1(kind, predictions, labels, mask=None) -> float:
  """F1: binary; macro over classes (multiclass) or labels (multilabel)."""
  predictions, labels = _select(predictions, labels, mask)
  if kind == 'binary':
    return _binary_f1(predictions > 0, labels)
  if kind == 'multilabel':
    return float(np.mean([_binary_f1(predictions[:, j] > 0, labels[:, j])
                          for j in range(labels.shape[1])]))
  if kind == 'multiclass':
    predicted = predictions.argmax(-1)
    return float(np.mean([_binary_f1(predicted == c, labels == c)
                          for c in range(predictions.shape[1])]))
  raise ValueError(f'f1 is not defined for {kind} tasks')


def rmse(kind, predictions, labels, mask=None) -> float:
  predictions, labels = _select(predictions, labels, mask)
  return float(np.sqrt(np.mean(np.square(predictions - labels)))) if labels.size else float('nan')


def mae(kind, predictions, labels, mask=None) -> float:
  predictions, labels = _select(predictions, labels, mask)
  return float(np.mean(np.abs(predictions - labels))) if labels.size else float('nan')


def miou(kind, predictions, labels, mask=None) -> float:
  """Mean intersection over union of the classes, |pred = c and label = c| / |pred = c or
  label = c|, pooled over the split (for a per-pixel task: over all its labelled pixels), as in
  segmentation benchmarks; a class neither predicted nor labelled is left out of the mean."""
  if kind != 'multiclass':
    raise ValueError(f'miou is defined for multiclass tasks, not {kind}')
  predictions, labels = _select(predictions, labels, mask)
  predicted = predictions.argmax(-1)
  ious = []
  for c in range(predictions.shape[-1]):
    union = np.sum((predicted == c) | (labels == c))
    if union:
      ious.append(np.sum((predicted == c) & (labels == c)) / union)
  return float(np.mean(ious)) if ious else float('nan')


METRICS = {'auc': auc, 'accuracy': accuracy, 'f1': f1, 'miou': miou, 'rmse': rmse, 'mae': mae}

# Which direction is better, for checkpoint selection and early stopping.
HIGHER_IS_BETTER = {'auc': True, 'accuracy': True, 'f1': True, 'miou': True, 'rmse': False, 'mae': False,
                    'loss': False}
