"""Orbax checkpoints of the whole run: train state, data-iterator position and config.

Kept: the latest checkpoint (to resume) and the best `keep_best` by the validation metric (to
report). Orbax's legacy `max_to_keep` + `best_fn` would rank the latest checkpoint by its metric and
could delete it, losing the resume point; a preservation policy that is the union of `LatestN(1)`
and `BestN(n)` keeps both.
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
  """Saves and restores {state, data iterator, config} under `directory`."""

  def __init__(self, directory: str, best_metric: str, higher_is_better: bool,
               keep_best: int = 2):
    self.best_metric = best_metric
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=1),
        policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                       reverse=not higher_is_better, n=keep_best,
                       keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda metrics: metrics[best_metric],
        best_mode='max' if higher_is_better else 'min',
        create=True,
        # Synchronous: the step donates its input state, and a save that returns has hit disk.
        enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iterator, config: dict, metrics: dict) -> None:
    self.manager.save(step, metrics={k: float(v) for k, v in metrics.items()}, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config)))

  def restore(self, step: int, abstract_state: Any, data_iterator=None):
    """Returns (state, data iterator positioned where the checkpoint left it, saved config)."""
    items = {'state': ocp.args.StandardRestore(abstract_state),
             'config': ocp.args.JsonRestore()}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state'], restored.get('data'), restored['config']

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(tree: Any, sharding) -> Any:
  """Shape/dtype/sharding placeholders to restore into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
