import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl_jax.errors import UserError
from mtl_jax.optim import task_sampling
from mtl_jax.optim.task_sampling import TaskSamplingState
from tests.optim import helpers


def draws(tx, num_tasks, num_steps, state=None):
  """The weights of `num_steps` consecutive updates ([num_steps, K]) and the final state."""
  state = tx.init(None) if state is None else state
  losses = jnp.ones((num_tasks,))

  def body(state, _):
    w = tx.loss_weights(state, losses)
    return tx.advance(state, losses, w), w

  state, ws = jax.lax.scan(body, state, None, length=num_steps)
  return np.asarray(ws), state


def draws_at_step(tx, num_tasks, step, num_keys):
  """Weights drawn at one fixed update count from many independent keys (for the annealed
  schedule, whose probabilities change with the step)."""
  keys = jax.vmap(lambda k: jax.random.key_data(k))(jax.random.split(jax.random.key(123), num_keys))
  losses = jnp.ones((num_tasks,))
  states = TaskSamplingState(keys, jnp.full((num_keys,), step, jnp.int32))
  return np.asarray(jax.vmap(lambda s: tx.loss_weights(s, losses))(states))


def assert_rates(ws, probs):
  """Empirical inclusion rates within 4.5 binomial standard deviations of `probs`."""
  n = ws.shape[0]
  probs = np.asarray(probs, np.float64)
  rates = ws.mean(axis=0)
  tol = 4.5 * np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(rates - probs) <= tol), (rates, probs, tol)


@pytest.mark.parametrize('strategy,sizes,kwargs,probs', [
    ('uniform', None, {}, [0.25, 0.25, 0.25, 0.25]),
    ('proportional', [1, 3, 6, 10], {}, [0.05, 0.15, 0.3, 0.5]),
    ('temperature', [1, 4, 16, 1], {'temperature': 2.0}, [1 / 8, 2 / 8, 4 / 8, 1 / 8]),
    ('temperature', [1, 8, 27, 64], {'temperature': 3.0}, [0.1, 0.2, 0.3, 0.4]),
])
def test_sampling_rates(strategy, sizes, kwargs, probs):
  tx = task_sampling(4, strategy=strategy, sizes=sizes, seed=1, **kwargs)
  np.testing.assert_allclose(tx.probabilities(tx.init(None)), probs, rtol=1e-6)
  ws, _ = draws(tx, 4, 4000)
  assert set(np.unique(ws)) <= {0.0, 1.0}
  np.testing.assert_array_equal(ws.sum(axis=1), 1.0)
  assert_rates(ws, probs)


def test_annealed_schedule():
  sizes = np.array([1.0, 10.0, 100.0])
  tx = task_sampling(3, strategy='annealed', sizes=list(sizes), anneal_steps=10)

  def expected(alpha):
    p = sizes ** alpha
    return p / p.sum()

  state = tx.init(None)
  for step, alpha in [(0, 1.0), (5, 0.6), (10, 0.2), (50, 0.2)]:
    np.testing.assert_allclose(tx.probabilities(state._replace(count=jnp.int32(step))),
                               expected(alpha), rtol=1e-5)
  # The draws follow the probabilities of their own step.
  for step, alpha in [(0, 1.0), (10, 0.2)]:
    assert_rates(draws_at_step(tx, 3, step, 4000), expected(alpha))
  # And the count in the state advances by one per update.
  _, state = draws(tx, 3, 7)
  assert int(state.count) == 7


def test_several_tasks_per_step_without_replacement():
  p = np.array([0.1, 0.2, 0.3, 0.4])
  tx = task_sampling(4, strategy='proportional', sizes=[1, 2, 3, 4], tasks_per_step=2, seed=5)
  ws, _ = draws(tx, 4, 4000)
  np.testing.assert_array_equal(ws.sum(axis=1), 2.0)  # two distinct tasks every step
  # Successive sampling without replacement: P(k in the pair) = sum over ordered pairs.
  incl = np.zeros(4)
  for i, j in itertools.permutations(range(4), 2):
    prob = p[i] * p[j] / (1 - p[i])
    incl[i] += prob
    incl[j] += prob
  np.testing.assert_allclose(incl.sum(), 2.0)
  assert_rates(ws, incl)


def test_same_seed_same_draws_and_resume():
  make = lambda seed: task_sampling(5, seed=seed, tasks_per_step=2)
  a, _ = draws(make(3), 5, 50)
  b, _ = draws(make(3), 5, 50)
  c, _ = draws(make(4), 5, 50)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  first, state = draws(make(3), 5, 20)
  rest, _ = draws(make(3), 5, 30, state=state)
  np.testing.assert_array_equal(np.concatenate([first, rest]), a)


@pytest.mark.parametrize('kwargs,match', [
    ({'strategy': 'proportional'}, 'needs sizes'),
    ({'strategy': 'temperature', 'sizes': [1, 2]}, 'one size per task'),
    ({'strategy': 'proportional', 'sizes': [1, 2, -3]}, 'positive'),
    ({'strategy': 'proportional', 'sizes': ['a', 2, 3]}, 'numbers'),
    ({'strategy': 'annealed', 'sizes': [1, 2, 3]}, 'anneal_steps'),
    ({'strategy': 'annealed', 'sizes': [1, 2, 3], 'anneal_steps': 0}, 'anneal_steps'),
    ({'strategy': 'bogus'}, 'uniform'),
    ({'tasks_per_step': 4}, 'tasks_per_step'),
    ({'strategy': 'temperature', 'sizes': [1, 2, 3], 'temperature': 0}, 'temperature'),
])
def test_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    task_sampling(3, **kwargs)


def test_chain_weighted_mode_jit_and_state():
  grads, losses = helpers.random_problem(5, 3)
  tx = task_sampling(3, seed=2)
  w = helpers.assert_chain_matches_weights(tx, grads, losses)
  assert sorted(w.tolist()) == [0.0, 0.0, 1.0]
  params, losses_fn = helpers.toy_model(3)
  helpers.assert_weighted_mode_consistent(tx, params, losses_fn)
  problems = [helpers.random_problem(s, 3) for s in range(5)]
  annealed = task_sampling(3, 'annealed', sizes=[1, 2, 3], anneal_steps=4)
  helpers.assert_jit_traces_once(annealed, problems, steps_per_problem=2)
  helpers.assert_state_roundtrips(annealed, problems)
