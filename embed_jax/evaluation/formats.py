"""Readers for the evaluation sets in their original file formats.

Each reader returns plain Python data and raises `DataFormatError` naming the
file, the line and the expected columns when a file does not match its format.

  SentEval classification   `<label> <sentence>` per line (UTF-8, Latin-1 lines accepted)
  MRPC                      TSV with header `Quality  #1 ID  #2 ID  #1 String  #2 String`
  STS-B                     TSV: score in field 5, sentences in fields 6 and 7 (extra fields ignored)
  BEIR                      corpus.jsonl (`_id`, `title`, `text`), queries.jsonl (`_id`, `text`),
                            qrels/<split>.tsv (`query-id  corpus-id  score`, header row)
  CoSQA                     cosqa-retrieval-<split>-500.json (a list of {`doc`, `retrieval_idx`, ...})
                            and code_idx_map.txt (a JSON object: code -> pool index)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

from embed_jax import paths
from embed_jax.errors import UserError

MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


class DataFormatError(UserError):
  """An evaluation file that is missing or does not have the expected format."""


@dataclasses.dataclass
class RetrievalData:
  """A retrieval task: documents, queries and relevance judgements, all keyed by string ids."""
  corpus: dict[str, str]
  queries: dict[str, str]
  qrels: dict[str, dict[str, float]]


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, text without newline) of every non-blank line; Latin-1 where not UTF-8."""
  if not paths.path(path).is_file():
    raise DataFormatError(f"{path}: file not found")
  with paths.path(path).open("rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
      except UnicodeDecodeError:
        line = raw.decode("latin-1")
      line = line.rstrip("\r\n")
      if line.strip():
        yield number, line


def read_labelled_sentences(path: str) -> tuple[list[str], list[int]]:
  """(sentences, integer labels) of a SentEval file with `<label> <sentence>` lines.

  A label with nothing after it is a record of the empty sentence (CR has one);
  it is kept, so the counts and folds stay those of the data set.
  """
  sentences, labels = [], []
  for number, line in _lines(path):
    label, _, sentence = line.partition(" ")
    if not label.lstrip("-").isdigit():
      raise DataFormatError(
          f"{path}:{number}: expected `<integer label> <sentence>`, got {line[:80]!r}")
    sentences.append(sentence.strip())
    labels.append(int(label))
  if not sentences:
    raise DataFormatError(f"{path}: no `<label> <sentence>` lines")
  return sentences, labels


def read_mrpc(path: str) -> tuple[list[str], list[str], list[int]]:
  """(first sentences, second sentences, labels 0/1) of an MRPC TSV file with its header row."""
  lines = list(_lines(path))
  expected = "\t".join(MRPC_COLUMNS)
  if not lines or tuple(c.strip() for c in lines[0][1].split("\t")) != MRPC_COLUMNS:
    got = lines[0][1][:120] if lines else "an empty file"
    raise DataFormatError(f"{path}:1: expected the header {expected!r}, got {got!r}")
  first, second, labels = [], [], []
  for number, line in lines[1:]:
    fields = line.split("\t")
    if len(fields) != 5 or fields[0] not in ("0", "1"):
      raise DataFormatError(
          f"{path}:{number}: expected 5 tab-separated columns {MRPC_COLUMNS} with Quality 0 or 1, "
          f"got {len(fields)} columns: {line[:80]!r}")
    labels.append(int(fields[0]))
    first.append(fields[3])
    second.append(fields[4])
  return first, second, labels


def read_stsb(path: str) -> tuple[list[str], list[str], list[float]]:
  """(first sentences, second sentences, gold scores) of an STS-B TSV file."""
  first, second, scores = [], [], []
  for number, line in _lines(path):
    fields = line.split("\t")
    try:
      if len(fields) < 7:
        raise ValueError
      score = float(fields[4])
    except ValueError:
      raise DataFormatError(
          f"{path}:{number}: expected tab-separated STS-B columns (genre, file, year, id, score, "
          f"sentence1, sentence2[, ...]) with a numeric score in column 5, got {line[:80]!r}") from None
    scores.append(score)
    first.append(fields[5])
    second.append(fields[6])
  if not scores:
    raise DataFormatError(f"{path}: no STS-B rows")
  return first, second, scores


def _read_jsonl(path: str, fields: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  for number, line in _lines(path):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{number}: not a JSON object ({e.msg})") from None
    if not isinstance(record, dict) or any(f not in record for f in fields):
      raise DataFormatError(f"{path}:{number}: expected a JSON object with fields {list(fields)}, "
                            f"got {line[:80]!r}")
    yield number, record


def beir_document_text(title: str, text: str) -> str:
  """A BEIR document as one text: `title text` (as BEIR's dense models join them), or the text alone."""
  title, text = (title or "").strip(), (text or "").strip()
  return f"{title} {text}" if title else text


def _unique_ids(path: str, text_of) -> dict[str, str]:
  """{`_id`: text_of(record)} of a JSONL file; a repeated `_id` is an error naming both lines."""
  texts: dict[str, str] = {}
  first_line: dict[str, int] = {}
  for number, record in _read_jsonl(path, ("_id", "text")):
    key = str(record["_id"])
    if key in first_line:
      raise DataFormatError(f"{path}:{number}: duplicate _id {key!r} (first on line "
                            f"{first_line[key]}); each document and query needs its own id")
    first_line[key] = number
    texts[key] = text_of(record)
  return texts


def read_beir(folder: str, split: str = "test") -> RetrievalData:
  """A BEIR-format folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.

  Only the queries that have judgements in the split are kept.
  """
  corpus_path = os.path.join(folder, "corpus.jsonl")
  queries_path = os.path.join(folder, "queries.jsonl")
  qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
  for path in (corpus_path, queries_path, qrels_path):
    if not paths.path(path).is_file():
      raise DataFormatError(f"{path}: file not found (a BEIR folder holds corpus.jsonl, "
                            f"queries.jsonl and qrels/{split}.tsv)")
  corpus = _unique_ids(corpus_path, lambda r: beir_document_text(r.get("title", ""), r["text"]))
  queries = _unique_ids(queries_path, lambda r: r["text"])
  qrels: dict[str, dict[str, float]] = {}
  for number, line in _lines(qrels_path):
    fields = line.split("\t")
    if number == 1 and fields[0] == "query-id":
      continue
    try:
      if len(fields) != 3:
        raise ValueError
      qid, did, grade = fields[0], fields[1], float(fields[2])
    except ValueError:
      raise DataFormatError(f"{qrels_path}:{number}: expected 3 tab-separated columns "
                            f"query-id, corpus-id, score (numeric), got {line[:80]!r}") from None
    if qid not in queries:
      raise DataFormatError(f"{qrels_path}:{number}: query {qid!r} is not in {queries_path}")
    if did not in corpus:
      raise DataFormatError(f"{qrels_path}:{number}: document {did!r} is not in {corpus_path}")
    qrels.setdefault(qid, {})[did] = grade
  if not qrels:
    raise DataFormatError(f"{qrels_path}: no relevance judgements")
  return RetrievalData(corpus, {q: queries[q] for q in qrels}, qrels)


def read_cosqa(folder: str, split: str = "test") -> RetrievalData:
  """CoSQA code search: queries of cosqa-retrieval-<split>-500.json against the code_idx_map.txt pool."""
  queries_path = os.path.join(folder, f"cosqa-retrieval-{split}-500.json")
  pool_path = os.path.join(folder, "code_idx_map.txt")
  records, pool = _read_json(queries_path), _read_json(pool_path)
  if not isinstance(pool, dict) or not all(isinstance(v, int) for v in pool.values()):
    raise DataFormatError(f"{pool_path}: expected a JSON object mapping code (str) -> pool index (int)")
  corpus = {str(idx): code for code, idx in pool.items()}
  if not isinstance(records, list):
    raise DataFormatError(f"{queries_path}: expected a JSON list of objects with fields "
                          "'doc' and 'retrieval_idx'")
  queries, qrels = {}, {}
  for i, record in enumerate(records):
    if not isinstance(record, dict) or "doc" not in record or "retrieval_idx" not in record:
      raise DataFormatError(f"{queries_path}: entry {i}: expected an object with fields 'doc' and "
                            "'retrieval_idx'")
    target = str(record["retrieval_idx"])
    if target not in corpus:
      raise DataFormatError(f"{queries_path}: entry {i}: retrieval_idx {target} is not in {pool_path}")
    queries[str(i)] = record["doc"]
    qrels[str(i)] = {target: 1.0}
  return RetrievalData(corpus, queries, qrels)


def _read_json(path: str):
  if not paths.path(path).is_file():
    raise DataFormatError(f"{path}: file not found")
  try:
    with paths.path(path).open("r", encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataFormatError(f"{path}: not valid JSON ({e})") from None


def read_pair_jsonl_as_retrieval(path: str, query_field: str = "x", document_field: str = "y") -> RetrievalData:
  """Pairs (one JSON object per line) as retrieval: each query's relevant document is its own pair's.

  Equal documents share one id, so a query whose document text occurs in
  several pairs has one relevant document.
  """
  corpus_ids: dict[str, str] = {}
  queries, qrels = {}, {}
  for number, record in _read_jsonl(path, (query_field, document_field)):
    doc_id = corpus_ids.setdefault(record[document_field], str(len(corpus_ids)))
    queries[str(number)] = record[query_field]
    qrels[str(number)] = {doc_id: 1.0}
  if not queries:
    raise DataFormatError(f"{path}: no pairs")
  return RetrievalData({i: text for text, i in corpus_ids.items()}, queries, qrels)
