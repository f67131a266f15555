"""Preference vectors of the Gramian methods (private): validated once, checked against K at trace
time."""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from mtl_jax.errors import UserError


def check_pref_vector(pref_vector: Optional[Sequence[float]], name: str) -> Optional[np.ndarray]:
  """None, or the preferences as a float32 numpy vector: finite, non-negative, not all zero."""
  if pref_vector is None:
    return None
  try:
    p = np.asarray(pref_vector, dtype=np.float64)
  except (TypeError, ValueError):
    raise UserError(f'{name}(pref_vector=...) needs a list of numbers, got {pref_vector!r}') from None
  if p.ndim != 1 or p.size == 0:
    raise UserError(f'{name}(pref_vector=...) needs one number per task, got {pref_vector!r}')
  if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.any(p > 0):
    raise UserError(f'{name}(pref_vector=...) must be finite and non-negative, with at least one '
                    f'positive entry; got {pref_vector!r}')
  return p.astype(np.float32)


def resolve(pref: Optional[np.ndarray], num_tasks: int, default: float, name: str,
            dtype) -> jnp.ndarray:
  """The preference vector for K = num_tasks tasks (`default` for every task when none was given)."""
  if pref is None:
    return jnp.full((num_tasks,), default, dtype)
  if pref.shape != (num_tasks,):
    raise UserError(f'{name}: pref_vector has {pref.size} entries for {num_tasks} tasks; '
                    'pass one entry per task')
  return jnp.asarray(pref, dtype)
