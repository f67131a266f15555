"""Errors a user can fix. `launch.py` prints their message alone and exits non-zero."""


class UserError(ValueError):
  """Bad configuration, data or input: the message says what is wrong and how to fix it."""


class UnknownNameError(UserError, KeyError):
  """A name (method, architecture, task, dataset) that is not registered."""

  def __str__(self):  # KeyError would quote the message.
    return self.args[0] if self.args else ''
