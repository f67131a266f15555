"""Training: state, the step and its gradient modes, the loop, checkpoints, sharding, writers."""

from mtl_jax.train.experiment import run
from mtl_jax.train.loop import evaluate, setup, train_and_evaluate
from mtl_jax.train.step import TrainState, create_state, make_train_step, resolve_mode

__all__ = ['run', 'train_and_evaluate', 'setup', 'evaluate', 'TrainState', 'create_state',
           'make_train_step', 'resolve_mode']
