"""Name -> object registries, so that `--config.method=mgda` and friends work."""

from typing import Callable, Generic, Iterator, TypeVar

from mtl_jax.errors import UnknownNameError

T = TypeVar('T')


class Registry(Generic[T]):
  """A mapping from names to factories whose lookup errors list the valid names."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, obj: T | None = None):
    """`registry.register('x', f)` or `@registry.register('x')`."""
    if obj is None:
      return lambda o: self.register(name, o)
    if name in self._entries:
      raise ValueError(f'{self.kind} {name!r} is already registered')
    self._entries[name] = obj
    return obj

  def get(self, name: str) -> T:
    try:
      return self._entries[name]
    except KeyError:
      raise UnknownNameError(
          f'unknown {self.kind} {name!r}; valid {self.kind} names: '
          f'{", ".join(sorted(self._entries))}') from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
