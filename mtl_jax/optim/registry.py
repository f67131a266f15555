"""Method names -> factories, so that `--config.method=mgda` works."""

import inspect
from typing import Any

from mtl_jax.errors import UserError
from mtl_jax.optim.aligned_mtl import aligned_mtl
from mtl_jax.optim.base import MultiTaskTransformation
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
from mtl_jax.optim.rlw import rlw
from mtl_jax.optim.si import si
from mtl_jax.optim.static import static
from mtl_jax.optim.stch import stch
from mtl_jax.optim.task_sampling import task_sampling
from mtl_jax.optim.upgrad import upgrad
from mtl_jax.optim.uw import uw
from mtl_jax.registry import Registry

METHODS: Registry = Registry('method')

for _name, _factory in [('ew', ew), ('static', static), ('uw', uw), ('dwa', dwa), ('rlw', rlw),
                        ('mgda', mgda), ('task_sampling', task_sampling),
                        ('gls', gls),
                        ('si', si),
                        ('gradnorm', gradnorm),
                        ('famo', famo),
                        ('imtl', imtl),
                        ('dbmtl', dbmtl),
                        ('stch', stch),
                        ('pcgrad', pcgrad),
                        ('graddrop', graddrop),
                        ('gradvac', gradvac),
                        ('cagrad', cagrad),
                        ('nash_mtl', nash_mtl),
                        ('fairgrad', fairgrad),
                        ('upgrad', upgrad),
                        ('dualproj', dualproj),
                        ('aligned_mtl', aligned_mtl),
                        ('config', config),
                        ]:
  METHODS.register(_name, _factory)


def hyperparameters(name: str) -> dict[str, Any]:
  """The hyperparameters of method `name` (without `num_tasks`) and their defaults
  (`inspect.Parameter.empty` where required)."""
  params = inspect.signature(METHODS.get(name)).parameters
  return {k: p.default for k, p in params.items()
          if k != 'num_tasks' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def get(name: str, num_tasks: int, **kwargs: Any) -> MultiTaskTransformation:
  """Builds method `name` for `num_tasks` tasks with hyperparameters `kwargs`.

  `num_tasks` is passed only to factories that take it. Unknown names raise `UnknownNameError`
  listing the valid names; a hyperparameter the factory does not take, or a missing required one,
  raises `UserError` listing the factory's hyperparameters.
  """
  factory = METHODS.get(name)
  signature = inspect.signature(factory)
  params = signature.parameters
  accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())

  def describe():
    hps = hyperparameters(name)
    if not hps:
      return f'method {name!r} takes no hyperparameters'
    parts = [k if v is inspect.Parameter.empty else f'{k}={v!r}' for k, v in hps.items()]
    return f'valid hyperparameters of {name!r}: {", ".join(parts)}'

  unexpected = sorted(k for k in kwargs if k not in params)
  if unexpected and not accepts_any:
    raise UserError(f'method {name!r} got unexpected hyperparameter(s) '
                    f'{", ".join(unexpected)}; {describe()}')
  if 'num_tasks' in params:
    kwargs = {'num_tasks': num_tasks, **kwargs}
  try:
    signature.bind(**kwargs)
  except TypeError as e:
    raise UserError(f'method {name!r}: {e}; {describe()}') from None
  return factory(**kwargs)
