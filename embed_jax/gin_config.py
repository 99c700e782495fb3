"""Gin plumbing shared by every subcommand: config files, overrides, clear errors.

A run is a list of `.gin` files plus `--gin.NAME=VALUE` overrides, applied in
that order. Files are looked up as given, then under `configs/` (the folder
shipped with embed_jax), so `--gin_file=runs/quickstart.gin` works anywhere.
"""

from __future__ import annotations

import difflib
import importlib.resources
import logging
import os
import tokenize
from collections.abc import Sequence
from pathlib import Path

import gin
from etils import epath

from embed_jax import gin_types
from embed_jax.errors import UserError


class GinConfigError(UserError):
  """A gin file or binding cannot be applied; the message names which one."""


def configs_dir() -> Path:
  """The folder holding the shipped `.gin` files (`configs/` of the repository)."""
  source_tree = Path(__file__).resolve().parent.parent / "configs"
  if source_tree.is_dir():
    return source_tree
  return Path(str(importlib.resources.files("embed_jax.configs")))


def search_paths() -> list[Path]:
  """Folders a relative gin file name is looked up in, in order."""
  paths = [Path.cwd()]
  extra = os.environ.get("EMBED_JAX_GIN_PATH")
  if extra:
    paths += [Path(p) for p in extra.split(os.pathsep) if p]
  paths.append(configs_dir())
  return paths


def _is_cloud_file(name: str) -> bool:
  return "://" in name and epath.Path(name).is_file()


# gin opens a bucket path (gs://) through epath, like every other path (an include too).
gin.config.register_file_reader(lambda name: epath.Path(name).open("r"), _is_cloud_file)


def resolve_gin_file(name: str) -> Path:
  """Finds `name` as given or in the search paths; raises naming every place tried."""
  if "://" in name:
    if not _is_cloud_file(name):
      raise GinConfigError(f"gin file {name!r} not found")
    return name
  candidates = [Path(name)] if Path(name).is_absolute() else [p / name for p in search_paths()]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  tried = ", ".join(str(c) for c in candidates)
  hint = ""
  shipped = sorted(str(p.relative_to(configs_dir())) for p in configs_dir().rglob("*.gin"))
  close = difflib.get_close_matches(name, shipped, n=3)
  if close:
    hint = f"; did you mean {' or '.join(close)}?"
  raise GinConfigError(f"gin file {name!r} not found (tried {tried}){hint}")


def _binding_value_is_plain_text(binding: str) -> bool:
  """True when VALUE in NAME=VALUE is not gin syntax and should be read as a string."""
  _, _, value = binding.partition("=")
  value = value.strip()
  if not value or value[0] in "'\"[({@%-0123456789" or value in ("True", "False", "None"):
    return False
  try:
    float(value)
    return False
  except ValueError:
    return True


class _QuietSearchMisses(logging.Filter):
  """Drops gin's "Path not found" log lines: it tries each search path for an include, and
  a miss in all of them is raised as an error anyway."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Path not found:")


def parse(gin_files: Sequence[str] = (), bindings: Sequence[str] = (), *, finalize: bool = True) -> None:
  """Applies gin files, then bindings (`NAME=VALUE` strings), to the global gin config.

  A VALUE that is not gin syntax (e.g. a bare path) is taken as a string, so
  `--gin.train.model_dir=/tmp/run` works without shell-escaped quotes.

  Raises:
    GinConfigError: naming the missing file, or the binding and what is wrong with it.
  """
  for path in search_paths():
    if path.is_dir():
      gin.add_config_file_search_path(str(path))
  quiet = _QuietSearchMisses()
  logging.getLogger().addFilter(quiet)
  try:
    for name in gin_files:
      path = resolve_gin_file(name)
      try:
        gin.parse_config_file(str(path), skip_unknown=False)
      except (ValueError, SyntaxError, ImportError, OSError, tokenize.TokenError) as e:
        raise GinConfigError(f"in gin file {path}: {_explain(e)}") from e
  finally:
    logging.getLogger().removeFilter(quiet)
  for binding in bindings:
    if "=" not in binding:
      raise GinConfigError(f"--gin.{binding}: expected --gin.NAME=VALUE")
    text = binding
    if _binding_value_is_plain_text(binding):
      name, _, value = binding.partition("=")
      text = f"{name}={value.strip()!r}"
    try:
      gin.parse_config(text)
    except (ValueError, SyntaxError, tokenize.TokenError) as e:
      raise GinConfigError(f"--gin.{binding}: {_explain(e)}") from e
  gin_types.check_bindings()
  if finalize:
    gin.finalize()


def _explain(error: Exception) -> str:
  """Adds close configurable names to gin's 'No configurable matching' message."""
  if isinstance(error, tokenize.TokenError):
    what, (line, _) = error.args
    return f"{what} (an unclosed bracket or quote? the file ends at line {line})"
  message = str(error).split("\n")[0]
  if "No configurable matching" in message:
    wanted = message.split("'")[1] if "'" in message else ""
    known = [name for _, name in _registered_names()]
    close = difflib.get_close_matches(wanted, known, n=3)
    if close:
      message += f" Did you mean {' or '.join(close)}?"
  return message


def _registered_names() -> list[tuple[str, str]]:
  """(full selector, short name) of every registered configurable."""
  registry = gin.config._REGISTRY  # pylint: disable=protected-access
  return [(selector, selector.split(".")[-1]) for selector, _ in registry.items()]


def operative_config() -> str:
  """The gin config actually used by the run so far (to save beside checkpoints)."""
  return gin.operative_config_str()


def reset() -> None:
  """Clears every binding (tests, notebooks and repeated runs in one process)."""
  gin.clear_config(clear_constants=True)
