"""Multi-task optimisation as optax transforms over per-task gradients.

`mtl_jax.optim.<method>(**hyperparameters)` returns a `MultiTaskTransformation` (an
`optax.GradientTransformationExtraArgs`) whose update maps per-task gradients (leading task axis K)
and `losses=` (shape [K]) to one combined gradient::

    tx = optax.chain(mtl_jax.optim.mgda(), optax.adam(1e-3))
    state = tx.init(params)
    updates, state = tx.update(task_grads, state, params, losses=losses)

`METHODS` maps names to factories; `get(name, num_tasks, **hyperparameters)` builds one by name.
"""

from mtl_jax.optim.aligned_mtl import aligned_mtl
from mtl_jax.optim.base import (
    MultiTaskTransformation,
    combine,
    gramian,
    gramian_weighting,
    loss_weighting,
)
from mtl_jax.optim.cagrad import cagrad
from mtl_jax.optim.config import config
from mtl_jax.optim.dbmtl import dbmtl
from mtl_jax.optim.dualproj import dualproj
from mtl_jax.optim.dwa import dwa
from mtl_jax.optim.ew import ew
from mtl_jax.optim.fairgrad import fairgrad
from mtl_jax.optim.famo import famo
from mtl_jax.optim.gls import gls
from mtl_jax.optim.graddrop import graddrop
from mtl_jax.optim.gradnorm import gradnorm
from mtl_jax.optim.gradvac import gradvac
from mtl_jax.optim.imtl import imtl
from mtl_jax.optim.mgda import mgda
from mtl_jax.optim.nash_mtl import nash_mtl
from mtl_jax.optim.pcgrad import pcgrad
from mtl_jax.optim.penalty import penalty
from mtl_jax.optim.registry import METHODS, get
from mtl_jax.optim.rlw import rlw
from mtl_jax.optim.si import si
from mtl_jax.optim.soft_sharing import soft_sharing
from mtl_jax.optim.static import static
from mtl_jax.optim.stch import stch
from mtl_jax.optim.task_sampling import task_sampling
from mtl_jax.optim.upgrad import upgrad
from mtl_jax.optim.uw import uw

__all__ = [
    'METHODS',
    'MultiTaskTransformation',
    'aligned_mtl',
    'cagrad',
    'combine',
    'config',
    'dbmtl',
    'dualproj',
    'dwa',
    'ew',
    'fairgrad',
    'famo',
    'get',
    'gls',
    'graddrop',
    'gradnorm',
    'gradvac',
    'gramian',
    'gramian_weighting',
    'imtl',
    'loss_weighting',
    'mgda',
    'nash_mtl',
    'pcgrad',
    'penalty',
    'rlw',
    'si',
    'soft_sharing',
    'static',
    'stch',
    'task_sampling',
    'upgrad',
    'uw',
]
