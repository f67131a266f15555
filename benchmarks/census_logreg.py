"""The reference the default experiment must not fall below: logistic regression per task.

One-hot categorical columns and the standardised numeric columns of our own train/val/test split
of Census-Income, scikit-learn's LogisticRegression (L2, C=1, lbfgs) fitted on train, test AUC
printed per task. scikit-learn is not a dependency of mtl_jax: install it to run this
(`pip install scikit-learn`).

    python benchmarks/census_logreg.py [--data_dir DIR]
"""

import argparse

import numpy as np

from mtl_jax import data


def features(columns, vocab_sizes):
  categorical = columns['categorical']
  offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]])
  from scipy import sparse
  rows = np.repeat(np.arange(len(categorical)), categorical.shape[1])
  cols = (categorical + offsets).reshape(-1)
  one_hot = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)),
                              shape=(len(categorical), int(np.sum(vocab_sizes))))
  return sparse.hstack([one_hot, sparse.csr_matrix(columns['numeric'])]).tocsr()


def main():
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  parser = argparse.ArgumentParser()
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  spec = data.get('census_income')
  builder = data.prepare(spec.builder_cls, args.data_dir)
  vocab = spec.input_info(builder)['vocab_sizes']
  train, test = (data.load_columns(builder, s) for s in ('train', 'test'))
  x_train, x_test = features(train, vocab), features(test, vocab)
  for task in ('income', 'never_married'):
    model = LogisticRegression(max_iter=2000).fit(x_train, train[task])
    auc = roc_auc_score(test[task], model.decision_function(x_test))
    print(f'{task:<14} test AUC {auc:.4f}')


if __name__ == '__main__':
  main()
