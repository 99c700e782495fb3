"""Reading the user's pair files: fields, formats, and bad input named by file and line."""

import logging

import pytest

from embed_jax import gin_config
from embed_jax.data import pair_files
from embed_jax.data.pair_files import BadInputError, PairFields

FIELDS = PairFields(x="query", y="positive", negatives=("negatives",))


def test_jsonl_with_configured_fields_and_negatives(tmp_path, write_jsonl):
  path = write_jsonl(tmp_path / "a.jsonl", [
      {"query": "q1", "positive": "p1", "negatives": ["n1", "n2"], "extra": 1},
      "",
      {"query": "q2", "positive": "p2", "negatives": "n3"},
      {"query": "q3", "positive": "p3", "negatives": []},
  ])
  records = pair_files.read_pairs(path, FIELDS)
  assert records.x == ["q1", "q2", "q3"] and records.y == ["p1", "p2", "p3"]
  assert records.negatives == [["n1", "n2"], ["n3"], []]
  assert records.skipped == []


def test_tsv_with_header_and_globs(tmp_path):
  (tmp_path / "b1.tsv").write_text("id\tquery\tpositive\tnegatives\n1\tq1\tp1\tn1\n2\tq2\tp2\tn2\n")
  (tmp_path / "b2.tsv").write_text("query\tpositive\tnegatives\nq3\tp3\tn3\n")
  records = pair_files.read_pairs(str(tmp_path / "b*.tsv"), FIELDS)
  assert records.x == ["q1", "q2", "q3"]
  assert records.negatives == [["n1"], ["n2"], ["n3"]]


@pytest.mark.parametrize("content, line, message", [
    (b'{"x": "a", "y": "b"}\n{"x": "a", "y": \n', 2, "malformed JSON"),
    (b'{"x": "a", "y": "b"}\n\n{"x": "a"}\n', 3, "missing field 'y'"),
    (b'{"x": "a", "y": "b"}\n{"x": "caf\xe9", "y": "b"}\n', 2, "not valid UTF-8 \\(byte 0xe9 at column 11\\)"),
    (b'{"x": "a", "y": "  "}\n', 1, "field 'y' is empty"),
    (b'{"x": "a", "y": 3}\n', 1, "field 'y' must be a string"),
    (b'["a", "b"]\n', 1, "expected a JSON object"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, content, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(content)
  with pytest.raises(BadInputError, match=f"bad.jsonl:{line}: {message}") as raised:
    pair_files.read_pairs(str(path))
  assert raised.value.path == str(path) and raised.value.line == line


def test_empty_file_is_an_error(tmp_path):
  (tmp_path / "empty.jsonl").write_bytes(b"")
  with pytest.raises(BadInputError, match=r"empty.jsonl: empty file"):
    pair_files.read_pairs(str(tmp_path / "empty.jsonl"))
  (tmp_path / "header_only.tsv").write_text("x\ty\n")
  with pytest.raises(BadInputError, match=r"header_only.tsv: no pairs after the TSV header"):
    pair_files.read_pairs(str(tmp_path / "header_only.tsv"))


def test_bad_tsv_rows_and_headers(tmp_path):
  (tmp_path / "rows.tsv").write_text("x\ty\na\tb\na\tb\tc\n")
  with pytest.raises(BadInputError, match=r"rows.tsv:3: expected 2 tab-separated columns, got 3"):
    pair_files.read_pairs(str(tmp_path / "rows.tsv"))
  (tmp_path / "header.tsv").write_text("x\tz\na\tb\n")
  with pytest.raises(BadInputError, match=r"header.tsv:1: the TSV header has no column 'y'"):
    pair_files.read_pairs(str(tmp_path / "header.tsv"), skip_bad_examples=True)


def test_missing_files_and_unknown_suffix(tmp_path):
  with pytest.raises(BadInputError, match="no such file"):
    pair_files.read_pairs(str(tmp_path / "nothing-*.jsonl"))
  (tmp_path / "pairs.txt").write_text("x\n")
  with pytest.raises(BadInputError, match="pairs.txt: cannot tell the format"):
    pair_files.read_pairs(str(tmp_path / "pairs.txt"))


def test_skipping_counts_and_logs_every_bad_line(tmp_path, caplog):
  (tmp_path / "a.jsonl").write_bytes(
      b'{"x": "a", "y": "b"}\n{oops\n{"x": "c"}\n\xff\xfe\n{"x": "d", "y": "e"}\n')
  (tmp_path / "b.jsonl").write_bytes(b"")
  with caplog.at_level(logging.WARNING):
    records = pair_files.read_pairs([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                                    skip_bad_examples=True)
  assert records.x == ["a", "d"]
  assert [(p.rsplit("/", 1)[-1], n) for p, n, _ in records.skipped] == [
      ("a.jsonl", 2), ("a.jsonl", 3), ("a.jsonl", 4), ("b.jsonl", None)]
  assert "skipped 4 bad lines or empty files" in caplog.text
  assert "a.jsonl:2: malformed JSON" in caplog.text and "b.jsonl: empty file" in caplog.text


def test_nothing_left_after_skipping_is_an_error(tmp_path):
  (tmp_path / "a.jsonl").write_text("{oops\n")
  with pytest.raises(BadInputError, match="no pairs in these files"):
    pair_files.read_pairs(str(tmp_path / "a.jsonl"), skip_bad_examples=True)


def test_gin_flag_skip_bad_examples(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"x": "a", "y": "b"}\n{oops\n')
  with pytest.raises(BadInputError):
    pair_files.read_pairs(str(tmp_path / "a.jsonl"))
  gin_config.parse([], ["skip_bad_examples=True"])  # What --gin.skip_bad_examples=True does.
  assert pair_files.read_pairs(str(tmp_path / "a.jsonl")).x == ["a"]


def test_cached_reads_see_changed_files(tmp_path, write_jsonl):
  path = write_jsonl(tmp_path / "a.jsonl", [{"x": "a", "y": "b"}])
  first = pair_files.read_pairs_cached(path)
  assert pair_files.read_pairs_cached(path) is first
  write_jsonl(path, [{"x": "a", "y": "b"}, {"x": "c", "y": "d"}])
  assert pair_files.read_pairs_cached(path).x == ["a", "c"]
