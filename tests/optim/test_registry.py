import jax.numpy as jnp
import numpy as np
import pytest

import mtl_jax.optim as optim
from mtl_jax.errors import UnknownNameError, UserError
from mtl_jax.optim import METHODS, get
from tests.optim import helpers

NAMES = ['ew', 'static', 'uw', 'dwa', 'rlw', 'mgda', 'task_sampling']


def test_names_and_factories():
  assert set(NAMES) <= set(METHODS.names())
  for name in NAMES:
    assert METHODS.get(name) is getattr(optim, name)


def test_unknown_name_lists_valid_names():
  with pytest.raises(UnknownNameError) as info:
    get('pcgrad_typo', 3)
  message = str(info.value)
  assert 'pcgrad_typo' in message
  for name in NAMES:
    assert name in message


def test_bad_hyperparameter_lists_valid_ones():
  with pytest.raises(UserError) as info:
    get('dwa', 3, temp=1.0)
  assert 'temp' in str(info.value) and 'temperature=2.0' in str(info.value)
  with pytest.raises(UserError, match="takes no hyperparameters"):
    get('ew', 3, foo=1)
  with pytest.raises(UserError, match='weights'):
    get('static', 3)
  with pytest.raises(UserError, match='unexpected'):
    get('mgda', 3, temperature=3)


def test_num_tasks_passed_only_where_taken():
  assert get('uw', 4).init(None).log_vars.shape == (4,)
  assert get('dwa', 5, temperature=1.0).init(None).prev.shape == (5,)
  tx = get('mgda', 3, normalization='l2')  # mgda takes no num_tasks
  assert tx.name == 'mgda'
  assert get('static', 2, weights=[1.0, 2.0]).name == 'static'
  assert get('task_sampling', 3, strategy='proportional', sizes=[1, 2, 3]).name == 'task_sampling'


@pytest.mark.parametrize('name,kwargs', [
    ('ew', {}), ('static', {'weights': [1.0, 0.5, 2.0]}), ('uw', {}), ('dwa', {}), ('rlw', {}),
    ('mgda', {}), ('task_sampling', {'tasks_per_step': 2})])
def test_every_method_runs_in_a_chain(name, kwargs):
  grads, losses = helpers.random_problem(0, 3)
  tx = get(name, 3, **kwargs)
  combined, _ = helpers.chain_update(tx, grads, losses)
  assert jnp.shape(combined['w0']) == (3, 2)
  assert np.all(np.isfinite(helpers.flat(combined)))
  helpers.assert_chain_matches_weights(tx, grads, losses)
