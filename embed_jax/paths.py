"""Paths that are local or in a bucket (`gs://`, `s3://`): `etils.epath` everywhere.

`embed_jax` sets `EPATH_USE_TF=false` when it is imported (unless already
set), so epath reaches `gs://` through fsspec/gcsfs rather than through
tensorflow's gfile: no tensorflow outside `embed_jax/data`, the usual Google
credentials (Application Default Credentials), and `STORAGE_EMULATOR_HOST`
honoured. orbax/tensorstore read and write checkpoints on gs:// themselves.

Object stores have no atomic rename and no append. Where the code needs one,
it does this instead (see each caller):
  * one object written whole is atomic on GCS: a file is written in one go;
  * a folder that must be complete (the final model) is written in place with
    its marker file (model.json) last;
  * an exclusive create (`create_exclusive`, the run lock) uses the object
    store's create-only precondition (GCS `ifGenerationMatch=0`).
"""

from __future__ import annotations

import contextlib
import glob as glob_lib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath


class _DropBucketTypeProbe(logging.Filter):
  """gcsfs warns on every call that it cannot tell the bucket type without credentials: noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Could not determine bucket type" not in record.getMessage()


logging.getLogger("gcsfs").addFilter(_DropBucketTypeProbe())


def is_cloud(path: os.PathLike | str) -> bool:
  """True for a `scheme://` path (gs://, s3://, ...)."""
  return "://" in os.fspath(path)


def path(p: os.PathLike | str) -> epath.Path:
  """An epath for `p` (`~` expanded for local paths)."""
  return epath.Path(p if is_cloud(p) else os.path.expanduser(os.fspath(p)))


def absolute(p: os.PathLike | str) -> epath.Path:
  """`path(p)`, made absolute when local (a bucket path is absolute already)."""
  result = path(p)
  return result if is_cloud(result) else result.absolute()


def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (sorted); `*`, `?` and `[...]` work in bucket paths too.

  A local pattern goes to Python's `glob` exactly. In a bucket, `**` matches
  within one folder level only.
  """
  if not is_cloud(pattern):
    return sorted(glob_lib.glob(pattern))
  parts = pattern.split("/")
  fixed = next(i for i, part in enumerate(parts) if glob_lib.has_magic(part))
  base, rest = "/".join(parts[:fixed]), "/".join(parts[fixed:])
  if not epath.Path(base).is_dir():
    return []
  return sorted(str(p) for p in epath.Path(base).glob(rest))


def copy_tree(source: os.PathLike | str, target: os.PathLike | str) -> None:
  """Copies a file, or a folder and everything below it, between local and bucket paths."""
  source, target = path(source), path(target)
  if not source.is_dir():
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return
  target.mkdir(parents=True, exist_ok=True)
  for child in source.iterdir():
    copy_tree(child, target / child.name)


@contextlib.contextmanager
def local_copy(p: os.PathLike | str) -> Iterator[str]:
  """A local path holding `p`: `p` itself when local, else a temporary download (file or folder).

  For readers that only open local files (safetensors, gguf, tokenizers).
  """
  if not is_cloud(p):
    yield os.path.expanduser(os.fspath(p))
    return
  source = path(p)
  with tempfile.TemporaryDirectory(prefix="embed_jax_download_") as tmp:
    local = os.path.join(tmp, source.name)
    copy_tree(source, local)
    yield local


@contextlib.contextmanager
def local_output(p: os.PathLike | str) -> Iterator[str]:
  """A local folder to write `p`'s contents into: `p` itself when local, else uploaded on success."""
  if not is_cloud(p):
    yield os.path.expanduser(os.fspath(p))
    return
  with tempfile.TemporaryDirectory(prefix="embed_jax_upload_") as tmp:
    local = os.path.join(tmp, "out")
    yield local
    copy_tree(local, p)


def rmtree(p: os.PathLike | str) -> None:
  """Removes a folder tree if it exists (local or bucket)."""
  target = path(p)
  if is_cloud(target):
    if target.exists():
      target.rmtree()
  else:
    shutil.rmtree(target, ignore_errors=True)


def create_exclusive(p: os.PathLike | str, text: str) -> bool:
  """Writes `text` to a new file `p`; False (nothing written) when `p` exists already.

  Local: O_EXCL. Bucket: a create-only upload (GCS `ifGenerationMatch=0`), so
  of two writers racing exactly one succeeds.
  """
  if not is_cloud(p):
    try:
      fd = os.open(os.fspath(p), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    return True
  import fsspec  # pylint: disable=import-outside-toplevel
  if path(p).exists():
    return False
  try:
    with fsspec.open(os.fspath(p), "xb") as f:
      f.write(text.encode("utf-8"))
  except FileExistsError:
    return False
  return True
