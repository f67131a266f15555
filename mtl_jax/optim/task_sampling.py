"""Task sampling: at each update, train only a random subset of the tasks."""

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError
from mtl_jax.optim import _util
from mtl_jax.optim.base import MultiTaskTransformation, loss_weighting

STRATEGIES = ('uniform', 'proportional', 'temperature', 'annealed')


class TaskSamplingState(NamedTuple):
  """`key`: raw uint32 PRNG key data; `count`: updates taken so far (int32), which drives the
  annealed schedule."""
  key: jax.Array
  count: jax.Array


def sampling_probabilities(strategy: str, sizes: Optional[np.ndarray], num_tasks: int,
                           temperature: float, anneal_steps: Optional[int],
                           step: jax.Array) -> jax.Array:
  """p_k at update `step` (0-based), float32 [K]; see `task_sampling`."""
  if strategy == 'uniform':
    return jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
  log_sizes = jnp.log(jnp.asarray(sizes, jnp.float32))
  if strategy == 'proportional':
    alpha = jnp.float32(1.0)
  elif strategy == 'temperature':
    alpha = jnp.float32(1.0 / temperature)
  else:  # annealed
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / anneal_steps, 1.0)
    alpha = 1.0 - 0.8 * progress
  return jax.nn.softmax(alpha * log_sizes)


def task_sampling(
    num_tasks: int,
    strategy: str = 'uniform',
    sizes: Optional[Sequence[float]] = None,
    temperature: float = 2.0,
    anneal_steps: Optional[int] = None,
    tasks_per_step: int = 1,
    seed: int = 0,
) -> MultiTaskTransformation:
  """Samples which tasks train at each update: `w_k = 1` if task k is drawn, else 0.

  `tasks_per_step` distinct tasks are drawn without replacement with probabilities p, where N_k
  is the size (number of training examples) of task k:

    * 'uniform':      p_k = 1 / K
    * 'proportional': p_k ∝ N_k
    * 'temperature':  p_k ∝ N_k^(1/T)        (T = `temperature`; T = 1 is proportional,
                                              T -> inf uniform)
    * 'annealed':     p_k ∝ N_k^alpha(t),  alpha(t) = 1 - 0.8 min(t / anneal_steps, 1), with t
      the 0-based update count: proportional at the first update, down to alpha = 0.2 after
      `anneal_steps` updates. This is the schedule of Stickland & Murray, "BERT and PALs", ICML
      2019, alpha = 1 - 0.8 (e - 1) / (E - 1) over epochs e = 1..E, by update instead of by
      epoch: `anneal_steps = num_train_steps - 1` reproduces it.

  With one task per step (the default) P(w_k = 1) = E[w_k] = p_k. With m = `tasks_per_step` > 1
  the tasks are drawn one after the other, each with probability p renormalised over the tasks
  not drawn yet (the Gumbel-top-m trick; the law of `numpy.random.choice(replace=False, p=p)`), so
  the inclusion probabilities lie between p_k and m p_k and are flatter than m p_k.

  Output scale: the sum of the drawn tasks' gradients (m of them; equal weighting sums K). This
  samples tasks inside a batch that has every task's labels; when tasks have separate datasets,
  mixing them at the data level (`mtl_jax.data`) is the counterpart that saves the forward passes.

  The key (raw uint32 data) and the update count live in the state: a fixed seed gives the same
  sequence of draws and restoring the state resumes it.

  Args:
    num_tasks: K.
    strategy: 'uniform', 'proportional', 'temperature' or 'annealed'.
    sizes: N_k > 0 for every task, in task order; required by every strategy but 'uniform'.
    temperature: T > 0, for 'temperature'.
    anneal_steps: updates over which alpha goes from 1 to 0.2, for 'annealed' (required there).
    tasks_per_step: m, 1 <= m <= K.
    seed: the PRNG seed.
  """
  num_tasks = _util.check_num_tasks(num_tasks, 'task_sampling')
  if strategy not in STRATEGIES:
    raise UserError(f'task_sampling(strategy={strategy!r}) is not one of '
                    f'{", ".join(map(repr, STRATEGIES))}')
  size_array = None
  if strategy != 'uniform':
    if sizes is None:
      raise UserError(f'task_sampling(strategy={strategy!r}) needs sizes=[N_1, ..., N_K], the '
                      f'number of training examples of each of the {num_tasks} tasks')
    try:
      size_array = np.asarray(sizes, dtype=np.float64)
    except (TypeError, ValueError):
      raise UserError(
          f'task_sampling(sizes=...) must be a list of numbers, got {sizes!r}') from None
    if size_array.shape != (num_tasks,):
      raise UserError(f'task_sampling(sizes=...) needs one size per task ({num_tasks}), got '
                      f'{len(size_array) if size_array.ndim == 1 else size_array.shape}: {sizes!r}')
    if not np.all(np.isfinite(size_array) & (size_array > 0)):
      raise UserError(f'task_sampling(sizes=...) must all be positive and finite, got {sizes!r}')
  if strategy == 'temperature' and not temperature > 0:
    raise UserError(f'task_sampling(temperature=...) must be positive, got {temperature!r}')
  if strategy == 'annealed':
    if anneal_steps is None:
      raise UserError("task_sampling(strategy='annealed') needs anneal_steps=..., the number of "
                      'updates over which to anneal (e.g. num_train_steps - 1)')
    if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 1:
      raise UserError(f'task_sampling(anneal_steps=...) must be a positive integer, '
                      f'got {anneal_steps!r}')
  if (isinstance(tasks_per_step, bool) or not isinstance(tasks_per_step, int)
      or not 1 <= tasks_per_step <= num_tasks):
    raise UserError(f'task_sampling(tasks_per_step=...) must be an integer in [1, {num_tasks}], '
                    f'got {tasks_per_step!r}')
  key = _util.key_data(seed)

  def init_state():
    return TaskSamplingState(key, jnp.zeros((), jnp.int32))

  def probabilities(state):
    return sampling_probabilities(strategy, size_array, num_tasks, temperature, anneal_steps,
                                  state.count)

  def loss_weights(state, losses):
    _util.check_losses_shape(losses, num_tasks, 'task_sampling')
    _, use = _util.split_key_data(state.key)
    scores = jnp.log(probabilities(state)) + jax.random.gumbel(use, (num_tasks,), jnp.float32)
    _, drawn = jax.lax.top_k(scores, tasks_per_step)
    return jnp.zeros((num_tasks,), jnp.float32).at[drawn].set(1.0)

  def advance(state, losses, w):
    del losses, w
    return TaskSamplingState(_util.split_key_data(state.key)[0], state.count + 1)

  tx = loss_weighting('task_sampling', init_state, loss_weights, advance)
  tx.probabilities = probabilities
  return tx
