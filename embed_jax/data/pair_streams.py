"""Pair files read lazily, line by line, for corpora larger than memory (no tensorflow).

`iter_pairs(files, ...)` yields (x, y, negatives) with the same strictness as
`pair_files.read_pairs` (bad lines raise `BadInputError` naming file and line,
or are skipped and counted with `skip_bad_examples`), but holds one line at a
time. Sharding as for documents: with at least as many files as shards, shard
i reads only files i, i + n, ...; else every shard reads all files and keeps
pairs i, i + n, ....
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from embed_jax.data import pair_files


def _file_pairs(path: str, fields: pair_files.PairFields, format: str | None,  # pylint: disable=redefined-builtin
                skip: bool, skipped: list) -> Iterator[tuple[str, str, list[str]]]:
  kind = pair_files.file_format(path, format)
  columns = None
  for number, line in pair_files._decoded_lines(path):  # pylint: disable=protected-access
    try:
      if isinstance(line, pair_files._Bad):  # pylint: disable=protected-access
        raise line
      if not line.strip():
        continue
      if kind == "tsv" and columns is None:
        columns = pair_files._tsv_columns(path, number, line, fields)  # pylint: disable=protected-access
        continue
      if kind == "jsonl":
        yield pair_files._jsonl_pair(line, fields)  # pylint: disable=protected-access
      else:
        yield pair_files._tsv_pair(line, columns, fields)  # pylint: disable=protected-access
    except pair_files._Bad as bad:  # pylint: disable=protected-access
      if not skip:
        raise pair_files.BadInputError(path, number, str(bad)) from None
      skipped.append((path, number, str(bad)))


def iter_pairs(files: Sequence[str], fields: pair_files.PairFields = pair_files.PairFields(),
               format: str | None = None,  # pylint: disable=redefined-builtin
               skip_bad_examples: bool | None = None, shard: int = 0, num_shards: int = 1,
               skipped: list | None = None) -> Iterator[tuple[str, str, list[str]]]:
  """(x, y, negatives) of shard `shard` of `num_shards` over `files`, lazily, in file order."""
  skip = pair_files.skip_bad_examples_default() if skip_bad_examples is None else skip_bad_examples
  skipped = [] if skipped is None else skipped
  if len(files) >= num_shards:
    for path in files[shard::num_shards]:
      yield from _file_pairs(path, fields, format, skip, skipped)
    return
  index = 0
  for path in files:
    for pair in _file_pairs(path, fields, format, skip, skipped):
      if index % num_shards == shard:
        yield pair
      index += 1
