"""Readers accept the original formats and name the file, line and expected columns otherwise."""

import json
import os

import pytest

from embed_jax.evaluation import formats, tasks
from embed_jax.evaluation.formats import DataFormatError


def _write(path, text, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode) as f:
    f.write(text)
  return str(path)


def test_senteval_lines_with_latin1(tmp_path):
  path = _write(tmp_path / "s.all", "1 caf\xe9 au lait\n\n0 plain text \n".encode("latin-1"), "wb")
  assert formats.read_labelled_sentences(path) == (["caf\xe9 au lait", "plain text"], [1, 0])
  # A label alone is the empty sentence (CR's line 769 is "0 "), not an error.
  assert formats.read_labelled_sentences(_write(tmp_path / "e.all", "0 \n1 ok\n")) == (["", "ok"], [0, 1])
  bad = _write(tmp_path / "bad.all", "1 fine\npositive great movie\n")
  with pytest.raises(DataFormatError, match=r"bad.all:2: expected `<integer label> <sentence>`"):
    formats.read_labelled_sentences(bad)


def test_mrpc_header_bom_and_crlf(tmp_path):
  header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
  path = _write(tmp_path / "m.tsv", header + "1\t1\t2\tA b.\tA c.\r\n")
  assert formats.read_mrpc(path) == (["A b."], ["A c."], [1])
  with pytest.raises(DataFormatError, match=r"m2.tsv:1: expected the header 'Quality\\t#1 ID"):
    formats.read_mrpc(_write(tmp_path / "m2.tsv", "label\ts1\ts2\n"))
  with pytest.raises(DataFormatError, match=r"m3.tsv:2: expected 5 tab-separated columns"):
    formats.read_mrpc(_write(tmp_path / "m3.tsv", header + "1\tonly two\n"))


def test_stsb_extra_fields_and_errors(tmp_path):
  path = _write(tmp_path / "sts.csv", "g\tf\ty\t1\t2.5\tA.\tB.\n"
                "g\tf\ty\t2\t4\tC.\tD.\textra\tfields\n")
  assert formats.read_stsb(path) == (["A.", "C."], ["B.", "D."], [2.5, 4.0])
  with pytest.raises(DataFormatError, match=r"bad.csv:1: expected tab-separated STS-B columns .*score"):
    formats.read_stsb(_write(tmp_path / "bad.csv", "g\tf\ty\t1\thigh\tA.\tB.\n"))
  with pytest.raises(DataFormatError, match=r"missing.csv: file not found"):
    formats.read_stsb(str(tmp_path / "missing.csv"))


def _beir(folder, corpus_lines, qrels="query-id\tcorpus-id\tscore\nq1\td1\t2\n"):
  _write(folder / "corpus.jsonl", corpus_lines)
  _write(folder / "queries.jsonl", json.dumps({"_id": "q1", "text": "what?"}) + "\n"
         + json.dumps({"_id": "q2", "text": "unjudged"}) + "\n")
  _write(folder / "qrels" / "test.tsv", qrels)


def test_beir_joins_title_and_text_and_keeps_judged_queries(tmp_path):
  _beir(tmp_path, json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n"
        + json.dumps({"_id": "d2", "title": "", "text": "alone"}) + "\n")
  data = formats.read_beir(str(tmp_path))
  assert data.corpus == {"d1": "T body", "d2": "alone"}
  assert data.queries == {"q1": "what?"} and data.qrels == {"q1": {"d1": 2.0}}
  assert tasks.get_task(tmp_path.name, str(tmp_path.parent)).headline == "ndcg@10"


def test_beir_errors_name_file_and_fields(tmp_path):
  _beir(tmp_path / "a", json.dumps({"id": "d1", "text": "x"}) + "\n")
  with pytest.raises(DataFormatError, match=r"corpus.jsonl:1: expected a JSON object with fields \['_id', 'text'\]"):
    formats.read_beir(str(tmp_path / "a"))
  _beir(tmp_path / "b", json.dumps({"_id": "d1", "text": "x"}) + "\n", qrels="q1 d1 1\n")
  with pytest.raises(DataFormatError, match=r"test.tsv:1: expected 3 tab-separated columns query-id, corpus-id, score"):
    formats.read_beir(str(tmp_path / "b"))
  _beir(tmp_path / "c", json.dumps({"_id": "d1", "text": "x"}) + "\n", qrels="q1\td9\t1\n")
  with pytest.raises(DataFormatError, match=r"document 'd9' is not in .*corpus.jsonl"):
    formats.read_beir(str(tmp_path / "c"))
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    tasks.get_task("nope", str(tmp_path))


def test_cosqa_format_and_errors(tmp_path):
  _write(tmp_path / "code_idx_map.txt", json.dumps({"def f(): pass": 0, "def g(): pass": 1}))
  _write(tmp_path / "cosqa-retrieval-test-500.json",
         json.dumps([{"doc": "make g", "retrieval_idx": 1, "code": "def g(): pass"}]))
  data = formats.read_cosqa(str(tmp_path))
  assert data.corpus == {"0": "def f(): pass", "1": "def g(): pass"}
  assert data.queries == {"0": "make g"} and data.qrels == {"0": {"1": 1.0}}
  _write(tmp_path / "cosqa-retrieval-test-500.json", json.dumps([{"query": "make g"}]))
  with pytest.raises(DataFormatError, match=r"test-500.json: entry 0: expected an object with fields 'doc' and 'retrieval_idx'"):
    formats.read_cosqa(str(tmp_path))
