"""The user-error base class: a mistake in a config, a file or a command, reported in one line.

Every error a user can cause and fix (a gin binding of the wrong type, a
malformed data file, a mesh that does not fit the devices, a model directory
that is not one, ...) derives from `UserError`. The command line prints such
an error as one line naming the place and exits with code 2; the traceback is
shown only with `--verbose` or `EMBED_JAX_DEBUG=1`. It derives from
ValueError, so code that catches ValueError keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
  """A user mistake; the message names the place (file:line, setting, path) and what was expected."""


class ConfigError(UserError):
  """A configuration value that cannot work (a batch that does not split, an unknown name, ...)."""
